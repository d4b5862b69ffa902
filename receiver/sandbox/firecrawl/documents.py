"""What a batch's finished pages look like: their Documents, their entries at /errors, and
the pages of results a status poll answers with."""

from __future__ import annotations

import html
import time
import uuid
from collections.abc import Sequence
from typing import Any

import orjson

from receiver.sandbox.firecrawl.batches import NOT_FOUND, Batch, View
from receiver.sandbox.firecrawl.config import (
    FAIL_MESSAGES,
    SELFHOSTED_PAGING,
    FirecrawlSandboxConfig,
)

FILLER = " Sandbox filler text to make documents as big as the document_bytes knob asks."
# The /errors entry of a page a cancel dropped (capture 025).
CANCELLED = ("UNKNOWN_ERROR", "(Internal server error) - Parent crawl/batch scrape was cancelled")


def iso(moment: float) -> str:
    """Unix seconds as the real server writes times: UTC, milliseconds, a Z."""
    whole = int(moment)
    millis = int((moment - whole) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


def _scrape_id(batch: Batch, index: int) -> str:
    """Stable across polls, so clients can dedupe documents by it."""
    return str(uuid.uuid5(uuid.UUID(batch.id), f"page:{index}"))


def render_document(batch: Batch, index: int, size: int = 0) -> dict[str, Any]:
    """The Document of one finished page, shaped like the real server's; its markdown
    padded so that it serializes to `size` bytes, when it is smaller."""
    url = batch.urls[index]
    missing = batch.outcome(index) == NOT_FOUND
    title = "Error response" if missing else f"Sandbox page {index + 1}"
    text = "Error code: 404\n\nMessage: File not found." if missing else f"Sandbox text of {url}."
    doc: dict[str, Any] = {}
    formats = batch.formats
    if "markdown" in formats:
        doc["markdown"] = f"{title}\n{'=' * len(title)}\n\n{text}"
    if "html" in formats:
        doc["html"] = f"<h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>"
    if "rawHtml" in formats:
        doc["rawHtml"] = (
            f"<!DOCTYPE html><html><head><title>{html.escape(title)}</title></head>"
            f"<body><h1>{html.escape(title)}</h1><p>{html.escape(text)}</p></body></html>"
        )
    if "links" in formats:
        doc["links"] = [] if missing else [f"{url.rstrip('/')}/next"]
    if "summary" in formats:
        doc["summary"] = f"A sandbox page: {title}."
    if "json" in formats:
        doc["json"] = {"title": title, "url": url}
    doc["metadata"] = _metadata(batch, index, title, missing)
    if "markdown" in doc:
        _pad(doc, size)
    return doc


def _pad(doc: dict[str, Any], size: int) -> None:
    """Append filler to the markdown: plain ASCII, one serialized byte per character."""
    shortfall = size - len(orjson.dumps(doc))
    if shortfall > 0:
        repeats = shortfall // len(FILLER) + 1
        doc["markdown"] += (FILLER * repeats)[:shortfall]


def _metadata(batch: Batch, index: int, title: str, missing: bool) -> dict[str, Any]:
    url = batch.urls[index]
    meta: dict[str, Any] = {"title": title}
    if not missing:
        meta["description"] = f"Sandbox page number {index + 1}"
    meta.update(
        {
            "language": "en",
            "ogLocaleAlternate": [],
            "scrapeId": _scrape_id(batch, index),
            "sourceURL": url,
            "url": url,
            "statusCode": 404 if missing else 200,
            "contentType": "text/html;charset=utf-8" if missing else "text/html",
            "proxyUsed": "basic",
            "cacheState": "miss",
            "creditsUsed": batch.credits_per_page,
        }
    )
    return meta


def page_failure(config: FirecrawlSandboxConfig, index: int) -> tuple[str, str]:
    """The code and message of the failed page `index`: the fail_codes in turn."""
    codes = config.failure_codes()
    code = codes[index % len(codes)]
    return code, FAIL_MESSAGES[code]


def page_error(batch: Batch, index: int, moment: float, failure: tuple[str, str]) -> dict[str, Any]:
    """The /errors entry of a page that failed, or that a cancel dropped."""
    code, message = failure
    return {
        "id": str(uuid.uuid5(uuid.UUID(batch.id), f"error:{index}")),
        "timestamp": iso(moment),
        "url": batch.urls[index],
        "code": code,
        "error": message,
    }


def results_page(
    config: FirecrawlSandboxConfig, batch: Batch, view: View, skip: int, limit: int | None
) -> list[bytes]:
    """The serialized documents one status poll answers with, paged as `config.paging` says."""
    pages = batch.ok_pages(view.finished)
    if config.paging == SELFHOSTED_PAGING:
        return _serialize_page(batch, pages, config)
    size = min(limit, config.page_size) if limit else config.page_size
    return _serialize_page(batch, pages[skip : skip + size], config)


def _serialize_page(
    batch: Batch, pages: Sequence[int], config: FirecrawlSandboxConfig
) -> list[bytes]:
    """Serialized documents, cut like the real server once they pass page_max_bytes."""
    parts: list[bytes] = []
    size = 0
    for index in pages:
        part = orjson.dumps(render_document(batch, index, config.document_bytes))
        parts.append(part)
        size += len(part)
        if size > config.page_max_bytes:
            if len(parts) > 1:
                parts.pop()
            break
    return parts
