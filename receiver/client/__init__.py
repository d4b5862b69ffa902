"""What the CLI needs to talk to a running receiver: HTTP calls, watch, the SSE parser, tables.

Only `receiver.cli` imports this package; the web app and the worker never do.
"""
