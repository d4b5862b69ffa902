"""Firecrawl's v2 batch scrape: submit a batch, poll its status, collect documents, cancel.

What a real (self-hosted, Aug 2025) server does, and this client allows for:
- `next` is present on every `scraping` poll and absent (not null) once all is returned;
- `skip` and `limit` are ignored, so every page repeats every finished document;
- `total` shrinks when pages fail outright; documents keep arriving after `cancelled`;
- the failed pages are listed at `GET /v2/crawl/{id}/errors` and `GET /v1/batch/scrape/{id}/
  errors`; `GET /v2/batch/scrape/{id}/errors` is Express's HTML 404 (captures 024, 025).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from receiver.errors import (
    NotFound,
    PaymentRequired,
    Rejected,
    Unauthorized,
    Unavailable,
)
from receiver.providers.base import (
    ProviderClient,
    error_message,
    json_object,
    path_part,
    raise_for_status,
    summary,
)

log = logging.getLogger(__name__)

# Batch statuses after which nothing changes but late documents (SDK: completed, failed, cancelled).
TERMINAL = frozenset({"completed", "failed", "cancelled"})
# The path of a batch's status (v2, or v1 on older self-hosted servers): all a `next` may name.
_STATUS_PATH = re.compile(r"/v[12]/batch/scrape/[A-Za-z0-9-]{1,64}")
# Zod issues quoted in a 400's message; the full body stays on the exception.
_DETAILS_QUOTED = 5


@dataclass(frozen=True)
class Submitted:
    id: str
    invalid_urls: list[str]  # dropped by the server when `ignoreInvalidURLs` is true


@dataclass(frozen=True)
class PageError:
    """A page that failed, as the errors route lists it."""

    url: str
    code: str | None  # SCRAPE_TIMEOUT, SCRAPE_ALL_ENGINES_FAILED, UNKNOWN_ERROR...; may lack
    error: str


# The code we give a URL the errors route lists as blocked by robots.txt (it gives none).
ROBOTS_BLOCKED = "ROBOTS_BLOCKED"


@dataclass(frozen=True)
class BatchStatus:
    status: str  # scraping, completed, failed or cancelled
    completed: int
    total: int  # shrinks as pages fail outright
    credits_used: int | None
    expires_at: str | None  # ISO timestamp; moves forward between polls
    next: str | None  # absent or null both read as None
    documents: list[dict[str, Any]]

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


class FirecrawlClient(ProviderClient):
    name = "firecrawl"

    def __init__(self, http: httpx.AsyncClient, base_url: str, api_key: str) -> None:
        super().__init__(
            http, base_url, {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        )

    async def submit(
        self, urls: list[str], options: Mapping[str, Any], webhook: Mapping[str, Any] | None
    ) -> Submitted:
        """POST /v2/batch/scrape: `urls`, the scrape options flat beside it, and `webhook`."""
        if "urls" in options or "webhook" in options:
            raise ValueError("pass `urls` and `webhook` as arguments, not as options")
        body: dict[str, Any] = {"urls": list(urls), **options}
        if webhook is not None:
            body["webhook"] = dict(webhook)
        response = await self.request("POST", self.url("/v2/batch/scrape"), json=body)
        answer = _successful(response)
        batch_id = answer.get("id")
        if not isinstance(batch_id, str) or not batch_id:
            raise Rejected(
                "firecrawl accepted a batch without an id", body=response.text, reason="bad_answer"
            )
        invalid = answer.get("invalidURLs")
        urls = [u for u in invalid if isinstance(u, str)] if isinstance(invalid, list) else []
        return Submitted(batch_id, urls)

    async def status(self, batch_id: str) -> BatchStatus:
        """GET /v2/batch/scrape/{id}: progress and every document finished so far."""
        return await self._get_status(self.url(f"/v2/batch/scrape/{_path_part(batch_id)}"))

    async def collect(
        self, first: BatchStatus, turn: Callable[[], Awaitable[None]] | None = None
    ) -> list[dict[str, Any]]:
        """Every document of a terminal batch: `first`'s, then its `next` pages', deduplicated.

        Stops when `next` is absent, when a page adds nothing new (servers that ignore
        `skip` repeat everything) or after `total` pages. A `next` is followed on our own
        origin whatever host it names (see `on_our_origin`).
        `turn` is awaited before each `next` request: the caller's request-rate limit.
        """
        if not first.terminal:
            raise ValueError(f"collect() needs a terminal batch, not {first.status!r}")
        documents: dict[str, dict[str, Any]] = {}
        _add_new(documents, first.documents)
        url, pages = first.next, 0
        while url is not None:
            if pages >= max(1, first.total):
                log.warning("firecrawl pages capped", extra={"pages": pages, "total": first.total})
                break
            url = self.on_our_origin(url)
            if turn is not None:
                await turn()
            page = await self._get_status(url)
            pages += 1
            if not _add_new(documents, page.documents):
                break
            url = page.next
        return list(documents.values())

    async def errors(self, batch_id: str) -> list[PageError]:
        """The batch's failed pages: `GET /v2/crawl/{id}/errors` (which serves batches too),
        else `GET /v1/batch/scrape/{id}/errors` where that route is absent (a 404); NotFound
        when neither has the batch. URLs blocked by robots.txt come last, as ROBOTS_BLOCKED."""
        part = _path_part(batch_id)
        try:
            response = await self.request("GET", self.url(f"/v2/crawl/{part}/errors"))
            answer = _json_object(response)
        except NotFound:
            response = await self.request("GET", self.url(f"/v1/batch/scrape/{part}/errors"))
            answer = _json_object(response)
        return _page_errors(answer, response)

    async def cancel(self, batch_id: str) -> str:
        """DELETE /v2/batch/scrape/{id}: the status it answers ("cancelled")."""
        url = self.url(f"/v2/batch/scrape/{_path_part(batch_id)}")
        response = await self.request("DELETE", url)
        status = _json_object(response).get("status")
        if not isinstance(status, str):
            raise Rejected(
                "firecrawl cancel answered no status", body=response.text, reason="bad_answer"
            )
        return status

    def on_our_origin(self, next_url: str) -> str:
        """A `next` URL's path and query on the configured origin, never the host it names:
        a self-hosted server without ENV=local writes `https://` on its own plain-HTTP
        port, and a `next` is no way to send our key anywhere. Only a batch status path is
        followed; anything else is refused, saying what differs."""
        try:
            given = httpx.URL(next_url)
        except (httpx.InvalidURL, ValueError) as exc:
            said = " ".join(str(exc).split())[:200]
            raise Rejected(
                f"firecrawl next URL is not a URL: {said}", reason="foreign_next_url"
            ) from None
        path = given.raw_path.split(b"?", 1)[0].decode("ascii", "replace")
        prefix = httpx.URL(self.base_url).path.rstrip("/")
        if prefix and not path.startswith(prefix + "/"):
            path = prefix + path  # a server behind a proxy's path prefix writes it without
        if not _STATUS_PATH.fullmatch(path[len(prefix) :]):
            raise Rejected(
                f"firecrawl next URL path {path[:200]!r} is not a batch status path "
                f"({prefix}/v2/batch/scrape/<id>)",
                reason="foreign_next_url",
            )
        query = given.query.decode("ascii", "replace")
        return f"{str(self.origin).rstrip('/')}{path}" + (f"?{query}" if query else "")

    async def _get_status(self, url: str) -> BatchStatus:
        response = await self.request("GET", url)
        return _batch_status(_successful(response), response)


def raise_for_firecrawl_status(response: httpx.Response) -> None:
    """Turn Firecrawl's non-success answer into the matching ProviderError."""
    status = response.status_code
    if status < 300:
        return
    body, said = response.text, error_message(response)
    message = f"firecrawl answered {status}: {said or summary(response)}"
    if status < 400:
        raise Rejected(message, status=status, body=body, reason="unexpected_redirect")
    if status == 400:
        message = f"firecrawl answered 400: {_describe_bad_request(response) or summary(response)}"
        raise Rejected(message, status=status, body=body, reason="bad_request")
    if status in (401, 403):
        raise Unauthorized(message, status=status, body=body, reason="unauthorized")
    if status == 402:
        raise PaymentRequired(message, status=status, body=body, reason="payment_required")
    if status == 404:
        reason = "expired" if "expired" in said.lower() else "not_found"
        raise NotFound(message, status=status, body=body, reason=reason)
    if status == 408:  # the request timed out at Firecrawl's end: worth another try
        raise Unavailable(message, status=status, body=body)
    if status == 409:
        raise Rejected(message, status=status, body=body, reason="already_completed")
    raise_for_status("firecrawl", response)  # 429 with its retry-after, 5xx, the rest


def _successful(response: httpx.Response) -> dict[str, Any]:
    """The JSON object of a 2xx answer whose `success` is not false."""
    answer = _json_object(response)
    if answer.get("success") is False:
        said = str(answer.get("error") or "no error given")
        message = f"firecrawl answered success=false: {said[:200]}"
        status, body = response.status_code, response.text
        if "expired" in said.lower():
            raise NotFound(message, status=status, body=body, reason="expired")
        if "not found" in said.lower():
            raise NotFound(message, status=status, body=body, reason="not_found")
        raise Unavailable(message, status=status, body=body)  # Firecrawl's SDK: a plain error
    return answer


def _json_object(response: httpx.Response) -> dict[str, Any]:
    raise_for_firecrawl_status(response)
    return json_object("firecrawl", response)


def _batch_status(answer: Mapping[str, Any], response: httpx.Response) -> BatchStatus:
    status = answer.get("status")
    completed, total = _int(answer.get("completed")), _int(answer.get("total"))
    if not isinstance(status, str) or completed is None or total is None:
        raise Rejected(
            "firecrawl status lacks status, completed or total",
            body=response.text,
            reason="bad_answer",
        )
    expires, next_url, data = answer.get("expiresAt"), answer.get("next"), answer.get("data")
    return BatchStatus(
        status=status,
        completed=completed,
        total=total,
        credits_used=_int(answer.get("creditsUsed")),
        expires_at=expires if isinstance(expires, str) else None,
        next=next_url if isinstance(next_url, str) and next_url else None,
        documents=[d for d in data if isinstance(d, dict)] if isinstance(data, list) else [],
    )


def _page_errors(answer: Mapping[str, Any], response: httpx.Response) -> list[PageError]:
    listed, blocked = answer.get("errors"), answer.get("robotsBlocked", [])
    if not isinstance(listed, list) or not isinstance(blocked, list):
        raise Rejected(
            "firecrawl errors answer lacks its errors list", body=response.text, reason="bad_answer"
        )
    found = []
    for entry in listed:
        if isinstance(entry, Mapping) and isinstance(entry.get("url"), str):
            code = entry.get("code")
            said = entry.get("error")
            found.append(
                PageError(
                    entry["url"],
                    code if isinstance(code, str) and code else None,
                    said if isinstance(said, str) else "",
                )
            )
    robots = "blocked by the site's robots.txt"
    found += [PageError(url, ROBOTS_BLOCKED, robots) for url in blocked if isinstance(url, str)]
    return found


def _add_new(documents: dict[str, dict[str, Any]], page: Iterable[dict[str, Any]]) -> int:
    """Add the documents not seen yet; the number added."""
    added = 0
    for document in page:
        key = document_key(document)
        if key not in documents:
            documents[key] = document
            added += 1
    return added


def document_key(document: Mapping[str, Any]) -> str:
    """What makes a document itself: its scrapeId, else its URL, else all of it."""
    metadata = document.get("metadata")
    if isinstance(metadata, Mapping):
        for field, kind in (("scrapeId", "scrape"), ("sourceURL", "url"), ("url", "url")):
            value = metadata.get(field)
            if isinstance(value, str) and value:
                return f"{kind}:{value}"
    return "json:" + orjson.dumps(document, option=orjson.OPT_SORT_KEYS).decode()


def _describe_bad_request(response: httpx.Response) -> str:
    """`error` of a 400, with its code and the first zod issues: `path: message`."""
    try:
        answer = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return ""
    if not isinstance(answer, dict):
        return ""
    said = f"{answer.get('code', '')} {answer.get('error', '')}".strip()
    details = answer.get("details")
    issues = (
        [_issue(i) for i in details if isinstance(i, dict)] if isinstance(details, list) else []
    )
    if issues:
        said += " (" + "; ".join(issues[:_DETAILS_QUOTED]) + ")"
    return said


def _issue(issue: Mapping[str, Any]) -> str:
    path = ".".join(str(p) for p in issue.get("path") or [])
    keys = issue.get("keys")
    extra = f" {keys}" if isinstance(keys, list) else ""
    return f"{path or '<body>'}: {issue.get('message', issue.get('code', '?'))}{extra}"


def _path_part(value: str) -> str:
    return path_part("firecrawl", value)


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
