"""receiver: reliable callbacks and polls for asynchronous provider jobs."""

__version__ = "0.1.0"
