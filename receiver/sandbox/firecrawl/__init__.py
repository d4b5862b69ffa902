"""A local Firecrawl v2 batch-scrape server: submit, poll, cancel, per-page errors and webhooks.

Run it with `python -m receiver.sandbox.firecrawl --port 9002 --scrape-delay 0.5`. Its parts:
`config` (the knobs), `validation` (the submit body), `batches` (progress from the clock),
`documents` (documents, error entries, result pages), `webhooks`, `app` (routes and guards).
"""

from receiver.sandbox.firecrawl.app import create_app, main
from receiver.sandbox.firecrawl.config import FirecrawlSandboxConfig

__all__ = ["FirecrawlSandboxConfig", "create_app", "main"]
