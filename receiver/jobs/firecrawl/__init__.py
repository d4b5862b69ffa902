"""Firecrawl batch scrape jobs: validate, submit, poll to the end, collect every document."""

from receiver.jobs.firecrawl.provider import PROVIDER, Firecrawl
from receiver.jobs.firecrawl.request import MAX_URLS, OPTIONS, UUID, parse_request
from receiver.jobs.firecrawl.tally import Tally, ending, tally
from receiver.jobs.firecrawl.workflow import CANCEL_SETTLE, FirecrawlJobs

__all__ = [
    "CANCEL_SETTLE",
    "MAX_URLS",
    "OPTIONS",
    "PROVIDER",
    "UUID",
    "Firecrawl",
    "FirecrawlJobs",
    "Tally",
    "ending",
    "parse_request",
    "tally",
]
