"""Where every URL of an ended batch went: completed, failed (with its reason) or invalid,
and the documents Firecrawl did not serve.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from receiver.providers.firecrawl import BatchStatus, PageError
from receiver.store import JobStatus, one_line


@dataclass(frozen=True)
class Tally:
    """Where every URL of a batch ended, once it is over."""

    total: int  # URLs: those submitted, or (tracked) Firecrawl's total and its failed pages
    completed: int  # pages scraped
    failed: int  # the rest: failed, invalid, dropped by a cancel or never landed
    failures: list[dict[str, Any]]  # {url, code, error} of the pages the errors route lists
    documents: int  # distinct documents read
    documents_missing: int  # pages scraped whose documents Firecrawl did not serve
    missing_urls: list[str]  # of those, the URLs known (submitted jobs only)

    def fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "total": self.total,
            "completed": self.completed,
            "failed": self.failed,
            "documents": self.documents,
            "documents_missing": self.documents_missing,
        }
        for name in ("failures", "missing_urls"):
            if getattr(self, name):
                fields[name] = orjson.dumps(getattr(self, name))
        return fields

    def detail(self) -> dict[str, Any]:
        # Lists only when not empty: the event script's cjson writes an empty one as {}.
        detail: dict[str, Any] = {
            "documents": self.documents,
            "documents_missing": self.documents_missing,
        }
        for name in ("failures", "missing_urls"):
            if getattr(self, name):
                detail[name] = getattr(self, name)
        return detail


def live_counts(job: Mapping[str, Any], batch: BatchStatus) -> dict[str, int]:
    """completed, total and failed while the batch runs. A submitted job's total is what was
    submitted: the pages Firecrawl dropped from its own total have failed (or were invalid)."""
    urls = submitted_urls(job)
    if urls is None:
        return {"completed": batch.completed, "total": batch.total}
    total = len(urls)
    completed = min(batch.completed, total)
    dropped = max(len(job.get("invalid_urls") or []), total - batch.total)
    return {"completed": completed, "total": total, "failed": min(dropped, total - completed)}


def tally(
    job: Mapping[str, Any],
    batch: BatchStatus,
    documents: list[dict[str, Any]],
    errors: list[PageError],
) -> Tally:
    """Every URL of an ended batch as completed or failed, and the documents not served."""
    failures = [{"url": e.url, "code": e.code, "error": one_line(e.error)} for e in errors]
    urls = submitted_urls(job)
    total = len(urls) if urls is not None else batch.total + len(failures)
    completed = min(batch.completed, total)
    missing = max(0, completed - len(documents))
    known: list[str] = []
    if urls is not None and missing:
        known = _unread(urls, documents, errors, job.get("invalid_urls") or [])
        if len(known) > missing:  # URLs that do not match their documents': not known
            known = []
    return Tally(total, completed, total - completed, failures, len(documents), missing, known)


def submitted_urls(job: Mapping[str, Any]) -> list[str] | None:
    urls = (job.get("params") or {}).get("urls")
    return urls if isinstance(urls, list) else None


def _unread(
    urls: list[str],
    documents: list[dict[str, Any]],
    errors: list[PageError],
    invalid: list[str],
) -> list[str]:
    """The submitted URLs neither read, failed nor invalid: scraped, but not served."""
    accounted = {_plain(e.url) for e in errors} | {_plain(u) for u in invalid}
    for document in documents:
        metadata = document.get("metadata")
        if isinstance(metadata, Mapping):
            accounted |= {
                _plain(metadata[k])
                for k in ("sourceURL", "url")
                if isinstance(metadata.get(k), str)
            }
    return [url for url in urls if _plain(url) not in accounted]


def _plain(url: str) -> str:
    return url.rstrip("/")


def ending(job: Mapping[str, Any], batch: BatchStatus, counted: Tally) -> tuple[JobStatus, str]:
    """The job's outcome and the reason given with it ("" for a whole completed batch)."""
    missing = ""
    if counted.documents_missing:
        missing = (
            f"firecrawl served only {counted.documents} of {counted.completed} documents: "
            f"{counted.documents_missing} could not be read from its result pages"
        )
    if batch.status == "cancelled":
        user = job.get("cancel_requested_at")
        who = "cancelled by a user" if user else "firecrawl reported the batch cancelled"
        scraped = f"{counted.completed} of {counted.total} pages scraped"
        return JobStatus.CANCELLED, _joined(f"{who}: {scraped}", missing)
    failed = ""
    if counted.failed:
        invalid = len(job.get("invalid_urls") or [])
        failed = f"{counted.failed} of {counted.total} URLs failed"
        failed += f" ({invalid} invalid)" if invalid else ""
    if batch.status == "failed":
        return JobStatus.FAILED, _joined("firecrawl reported the batch failed", failed, missing)
    if counted.completed == 0 and counted.failed:
        return JobStatus.FAILED, _joined(f"no page scraped: {failed}", _first_failure(counted))
    return JobStatus.COMPLETED, _joined(failed, missing)


def _first_failure(counted: Tally) -> str:
    if not counted.failures:
        return ""
    first = counted.failures[0]
    return f"first: {first['url']} {first['code'] or ''} {first['error']}".strip()


def _joined(*parts: str) -> str:
    return "; ".join(part for part in parts if part)
