"""A local Firecrawl v2 batch-scrape server: submit, poll, cancel, per-page errors and webhooks.

Progress is computed from the clock at request time: each batch stores the finish time of
every page, so a poll is a bisect and a slice, however many batches are tracked.
Run it with `python -m receiver.sandbox.firecrawl --port 9002 --scrape-delay 0.5`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import html
import logging
import random
import re
import time
import uuid
from array import array
from bisect import bisect_right
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.sandbox.common import (
    Clock,
    Stats,
    add_config_arguments,
    config_from_arguments,
    control_routes,
    json_response,
)
from receiver.sandbox.faults import FaultKnobs, Faults, SandboxApp

logger = logging.getLogger(__name__)

Issue = dict[str, Any]
Handler = Callable[[Request], Awaitable[Response]]

STRICT_MESSAGE = (
    "Unrecognized key in body -- please review the v2 API documentation for request body changes"
)
CREDITS_MESSAGE = (
    "Insufficient credits to perform this request. For more credits, you can upgrade your plan"
    " at https://firecrawl.dev/pricing."
)
ENGINES_FAILED = (
    "All scraping engines failed! -- Double check the URL to make sure it's not broken."
    " If the issue persists, contact us at help@firecrawl.com."
)
UNEXPECTED_MESSAGE = "An unexpected error occurred. Please contact help@firecrawl.com for help."
PAYMENT_MESSAGE = "Payment required to access this resource."  # seed 000's 402 example
BATCH_FAILED = "Batch scrape failed"
NO_TLD_MESSAGE = "URL must have a valid top-level domain or be a valid path"
CANCELLED_PAGE = "(Internal server error) - Parent crawl/batch scrape was cancelled"
WEBHOOK_EVENTS = ("completed", "failed", "page", "started")
FORMAT_TYPES = frozenset(
    "markdown html rawHtml rawBase64 links images summary json deterministicJson changeTracking"
    " screenshot attributes branding product menu question highlights query audio video".split()
)
PROXIES = ("basic", "stealth", "enhanced", "auto")

# Page outcomes, one byte per page.
OK, NOT_FOUND, FAILED = 0, 1, 2


@dataclass
class FirecrawlSandboxConfig(FaultKnobs):
    """Knobs of the simulator; each is also `--knob-name` on the command line. The fault
    knobs it shares with the other sandboxes are in `faults.FaultKnobs`."""

    api_key: str = "fc-sandbox"  # the only bearer token accepted
    scrape_delay: float = 1.0  # seconds one page takes to scrape
    jitter: float = 0.0  # up to this many extra seconds per page, drawn from the seeded RNG
    concurrency: int = 10  # pages scraped at once (a smaller body maxConcurrency wins)
    fail_rate: float = 0.0  # share of pages that fail outright and drop out of `total`
    not_found_rate: float = 0.0  # share of pages whose target answers 404 (still a success)
    linger: float = 0.0  # seconds to stay `scraping` with completed == total
    batch_fails: bool = False  # a batch whose pages are done ends `failed`, not `completed`
    stall: bool = False  # the last page never finishes, so the batch never completes
    paging: str = "cloud"  # "cloud" honours skip/limit; "selfhosted" returns every document
    page_size: int = 100  # most documents in one cloud page
    page_max_bytes: int = 10 * 1024 * 1024  # serialized documents in one cloud page (10 MiB)
    next_base_url: str | None = None  # origin for `next` URLs instead of the request's own
    expiry: float = 86400.0  # seconds a batch lives after its last save
    max_urls: int = 1000  # most URLs in one submission
    credits: int | None = None  # credits for all submissions together; None is unlimited
    conflict_on_completed_cancel: bool = False  # DELETE of a completed batch answers 409
    get_429_rate: float = 0.0  # share of status polls answered 429
    get_500_rate: float = 0.0  # share of status polls answered 500
    get_402_rate: float = 0.0  # share of status polls answered 402 (seed 000's body)
    post_429_rate: float = 0.0  # share of submissions answered 429
    post_500_rate: float = 0.0  # share of submissions answered 500
    delete_429_rate: float = 0.0  # share of cancels answered 429
    delete_500_rate: float = 0.0  # share of cancels answered 500
    retry_after: int = 2  # seconds quoted in the 429 message
    retry_after_header: bool = False  # also send Retry-After (the real server does not)
    webhook_secret: str | None = None  # signs webhooks with X-Firecrawl-Signature when set
    webhook_drop_rate: float = 0.0  # share of webhook deliveries never sent
    webhook_duplicate_rate: float = 0.0  # share of deliveries sent twice, identically
    webhook_retry_delays: str = "60,300,900"  # seconds before each retry of a non-2xx delivery
    webhook_timeout: float = 10.0  # seconds before a webhook delivery is abandoned
    get_latency: float = 0.0  # seconds a status poll takes to answer
    seed: int | None = None  # seed of the RNG behind every random choice


@dataclass
class Webhook:
    url: str
    headers: dict[str, str]
    metadata: dict[str, Any]
    events: frozenset[str]


@dataclass
class Submission:
    urls: list[str]
    invalid: list[str]
    formats: frozenset[str]
    webhook: Webhook | None
    concurrency: int | None
    append_to: str | None


@dataclass
class Batch:
    id: str
    created: float
    delay: float  # seconds per page, kept to know which pages were in flight at a cancel
    formats: frozenset[str]
    webhook: Webhook | None
    urls: list[str] = field(default_factory=list)
    finish: array[float] = field(default_factory=lambda: array("d"))  # sorted, absolute
    outcomes: bytearray | None = None  # None when every page succeeds
    saved_at: float = 0.0
    cancelled_at: float | None = None
    cutoff: int | None = None  # pages kept by a cancel; the rest were dropped
    forced_at: float | None = None  # when /_sandbox/batches/{id}/finish ended every page
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def pages(self) -> int:
        """Pages that will run: all of them, or those already started when it was cancelled."""
        return len(self.urls) if self.cutoff is None else self.cutoff

    @property
    def credits_per_page(self) -> int:
        return 5 if "json" in self.formats else 1

    def last_finish(self) -> float:
        """When the last page that will run finishes by itself (its scheduled time)."""
        return self.finish[self.pages - 1] if self.pages else self.created

    def outcome(self, index: int) -> int:
        return OK if self.outcomes is None else self.outcomes[index]

    def page_time(self, index: int) -> float:
        natural = self.finish[index]
        return natural if self.forced_at is None else min(natural, self.forced_at)

    def ok_pages(self, finished: int) -> Sequence[int]:
        if self.outcomes is None:
            return range(finished)
        return [i for i in range(finished) if self.outcomes[i] != FAILED]

    def failed_pages(self, finished: int) -> int:
        return 0 if self.outcomes is None else self.outcomes[:finished].count(FAILED)


@dataclass
class View:
    """A batch as seen at one instant."""

    finished: int  # pages done, failed or not, in page order
    completed: int  # pages done and not failed
    total: int  # pages that will run, less the failed ones
    status: str
    expires_at: float


# ---------------------------------------------------------------- request validation

Check = Callable[[list[Any], Any], list[Issue]]


def _issue(code: str, path: list[Any], message: str, **details: Any) -> Issue:
    """One zod issue, as the real server lists them in `details`."""
    return {"code": code, **details, "path": path, "message": message}


def _js_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _type_issue(path: list[Any], expected: str, value: Any) -> Issue:
    received = _js_type(value)
    if expected == "integer" and received == "number":
        received = "float"
    elif expected == "integer":
        expected = "number"
    message = f"Expected {expected}, received {received}"
    return _issue("invalid_type", path, message, expected=expected, received=received)


def _required(path: list[Any], expected: str) -> Issue:
    return _issue("invalid_type", path, "Required", expected=expected, received="undefined")


def _matches(expected: str, value: Any) -> bool:
    if expected == "integer":
        number = isinstance(value, int | float) and not isinstance(value, bool)
        return number and float(value).is_integer()
    return _js_type(value) == expected


def _typed(expected: str, item: str | None = None) -> Check:
    """A check of one JSON type; `item` types the elements of an array or values of a record."""

    def check(path: list[Any], value: Any) -> list[Issue]:
        if not _matches(expected, value):
            return [_type_issue(path, expected, value)]
        if item is None:
            return []
        members = enumerate(value) if isinstance(value, list) else value.items()
        return [_type_issue([*path, k], item, v) for k, v in members if not _matches(item, v)]

    return check


def _one_of(options: tuple[str, ...]) -> Check:
    expected = " | ".join(f"'{option}'" for option in options)

    def check(path: list[Any], value: Any) -> list[Issue]:
        if value in options:
            return []
        message = f"Invalid enum value. Expected {expected}, received '{value}'"
        return [_issue("invalid_enum_value", path, message, options=list(options), received=value)]

    return check


def _each(first: Check, then: Check) -> Check:
    """`first` on the value; when it passes, `then` on every element."""

    def check(path: list[Any], value: Any) -> list[Issue]:
        return first(path, value) or [i for n, v in enumerate(value) for i in then([*path, n], v)]

    return check


def _positive(path: list[Any], value: Any) -> list[Issue]:
    issues = _typed("integer")(path, value)
    if issues or value > 0:
        return issues
    details = {"minimum": 0, "type": "number", "inclusive": False, "exact": False}
    return [_issue("too_small", path, "Number must be greater than 0", **details)]


def _uuid(path: list[Any], value: Any) -> list[Issue]:
    issues = _typed("string")(path, value)
    if issues or _is_uuid(value):
        return issues
    return [_issue("invalid_string", path, "Invalid uuid", validation="uuid")]


def _format(path: list[Any], value: Any) -> list[Issue]:
    if _format_type(value) in FORMAT_TYPES:
        return []
    return [_issue("invalid_union", path, "Invalid input", unionErrors=[])]


def _format_type(item: Any) -> str | None:
    if isinstance(item, dict):
        kind = item.get("type")
        return kind if isinstance(kind, str) else None
    return item if isinstance(item, str) else None


def _url(path: list[Any], value: Any) -> list[Issue]:
    return _typed("string")(path, value) or _url_issues(path, value)


def _anything(path: list[Any], value: Any) -> list[Issue]:
    return []


# The keys of a webhook object, each with its check.
WEBHOOK_FIELDS: dict[str, Check] = {
    "url": _url,
    "headers": _typed("object", "string"),
    "metadata": _typed("object"),
    "events": _each(_typed("array"), _one_of(WEBHOOK_EVENTS)),
}


def _webhook(path: list[Any], value: Any) -> list[Issue]:
    if isinstance(value, str):
        return _url_issues(path, value)
    return _typed("object")(path, value) or _strict_object(
        path, value, WEBHOOK_FIELDS, {"url": "string"}
    )


# Every key the body may carry, in schema order: the flat scrape options, then the batch ones.
FIELDS: dict[str, Check] = {
    "formats": _each(_typed("array"), _format),
    "headers": _typed("object", "string"),
    "includeTags": _typed("array", "string"),
    "excludeTags": _typed("array", "string"),
    "onlyMainContent": _typed("boolean"),
    "onlyCleanContent": _typed("boolean"),
    "timeout": _typed("integer"),
    "waitFor": _typed("integer"),
    "mobile": _typed("boolean"),
    "parsers": _typed("array"),
    "actions": _typed("array"),
    "location": _typed("object"),
    "skipTlsVerification": _typed("boolean"),
    "removeBase64Images": _typed("boolean"),
    "fastMode": _typed("boolean"),
    "useMock": _typed("string"),
    "blockAds": _typed("boolean"),
    "proxy": _one_of(PROXIES),
    "maxAge": _typed("integer"),
    "minAge": _typed("integer"),
    "storeInCache": _typed("boolean"),
    "lockdown": _typed("boolean"),
    "safeMode": _typed("boolean"),
    "redactPII": _anything,
    "profile": _typed("object"),
    "urls": _typed("array", "string"),
    "origin": _typed("string"),
    "integration": _typed("string"),
    "webhook": _webhook,
    "appendToId": _uuid,
    "ignoreInvalidURLs": _typed("boolean"),
    "maxConcurrency": _positive,
    "zeroDataRetention": _typed("boolean"),
}


def _strict_object(
    path: list[Any], value: dict[str, Any], fields: dict[str, Check], required: dict[str, str]
) -> list[Issue]:
    """Like zod's `.strict()`: each known key checked, a missing required one or any unknown
    key reported."""
    issues = [
        i for key, check in fields.items() if key in value for i in check([*path, key], value[key])
    ]
    issues += [_required([*path, key], kind) for key, kind in required.items() if key not in value]
    unknown = [key for key in value if key not in fields]
    if unknown:
        issues.append(_issue("unrecognized_keys", path, STRICT_MESSAGE, keys=unknown))
    return issues


def _normalize_url(url: str) -> str:
    return url if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", url) else f"http://{url}"


def _url_issues(path: list[Any], url: str) -> list[Issue]:
    """The zod issues of Firecrawl's URL schema for one string, none when it is acceptable."""
    candidate = _normalize_url(url)
    try:
        parts = urlsplit(candidate)
        host = parts.hostname or ""
    except ValueError:
        host = ""
    no_tld = _issue("custom", path, NO_TLD_MESSAGE)
    if not host or re.search(r"\s", candidate):
        invalid = _issue("invalid_string", path, "Invalid url", validation="url")
        return [invalid, no_tld, _issue("custom", path, "Invalid URL")]
    if parts.scheme.lower() not in ("http", "https"):
        return [_issue("invalid_string", path, "URL uses unsupported protocol", validation="regex")]
    if "." not in host and host != "localhost" and ":" not in host:
        return [no_tld]
    return []


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return len(value) == 36


def validate_submission(body: Any, max_urls: int) -> Submission | list[Issue]:
    """The body of POST /v2/batch/scrape as Firecrawl's strict zod schema sees it."""
    if not isinstance(body, dict):
        return [_type_issue([], "object", body)]
    issues = _strict_object([], body, FIELDS, {"urls": "array"})
    if not any(issue["path"][:1] == ["urls"] for issue in issues):
        issues[:0] = _urls_issues(body["urls"], max_urls, body.get("ignoreInvalidURLs") is True)
    return issues or _submission(body)


def _urls_issues(urls: list[str], max_urls: int, ignore_invalid: bool) -> list[Issue]:
    if len(urls) > max_urls:
        details = {"maximum": max_urls, "type": "array", "inclusive": True, "exact": False}
        return [
            _issue(
                "too_big", ["urls"], f"Array must contain at most {max_urls} element(s)", **details
            )
        ]
    if ignore_invalid:
        return []
    return [issue for i, url in enumerate(urls) for issue in _url_issues(["urls", i], url)]


def _submission(body: dict[str, Any]) -> Submission:
    urls: list[str] = []
    invalid: list[str] = []
    for url in body["urls"]:
        (invalid if _url_issues([], url) else urls).append(url)
    formats = body.get("formats", ["markdown"])
    return Submission(
        urls=[_normalize_url(u) for u in urls],
        invalid=invalid,
        formats=frozenset(t for t in map(_format_type, formats) if t),
        webhook=_parse_webhook(body.get("webhook")),
        concurrency=body.get("maxConcurrency"),
        append_to=body.get("appendToId"),
    )


def _parse_webhook(value: Any) -> Webhook | None:
    if value is None:
        return None
    if isinstance(value, str):
        return Webhook(_normalize_url(value), {}, {}, frozenset(WEBHOOK_EVENTS))
    return Webhook(
        url=_normalize_url(value["url"]),
        headers=dict(value.get("headers", {})),
        metadata=dict(value.get("metadata", {})),
        events=frozenset(value.get("events", WEBHOOK_EVENTS)),
    )


# ---------------------------------------------------------------- documents and formatting


def _iso(moment: float) -> str:
    whole = int(moment)
    millis = int((moment - whole) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


def _scrape_id(batch: Batch, index: int) -> str:
    """Stable across polls, so clients can dedupe documents by it."""
    return str(uuid.uuid5(uuid.UUID(batch.id), f"page:{index}"))


def render_document(batch: Batch, index: int) -> dict[str, Any]:
    """The Document of one finished page, shaped like the real server's."""
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
    return doc


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


def _page_error(batch: Batch, index: int, moment: float, cancelled: bool) -> dict[str, Any]:
    if cancelled:
        code, message = "UNKNOWN_ERROR", CANCELLED_PAGE
    elif index % 2:
        code, message = "SCRAPE_TIMEOUT", "Scrape timed out"
    else:
        code, message = "SCRAPE_ALL_ENGINES_FAILED", ENGINES_FAILED
    return {
        "id": str(uuid.uuid5(uuid.UUID(batch.id), f"error:{index}")),
        "timestamp": _iso(moment),
        "url": batch.urls[index],
        "code": code,
        "error": message,
    }


def _serialize_page(batch: Batch, pages: Sequence[int], max_bytes: int | None) -> list[bytes]:
    """Serialized documents, cut like the real server once they pass `max_bytes`."""
    parts: list[bytes] = []
    size = 0
    for index in pages:
        part = orjson.dumps(render_document(batch, index))
        parts.append(part)
        size += len(part)
        if max_bytes is not None and size > max_bytes:
            if len(parts) > 1:
                parts.pop()
            break
    return parts


def _bytes_response(head: dict[str, Any], parts: list[bytes]) -> Response:
    """`head` plus a `data` array of already serialized documents, as one JSON object."""
    body = orjson.dumps(head)[:-1] + b',"data":[' + b",".join(parts) + b"]}"
    return Response(body, 200, media_type="application/json")


def _error(message: str, status: int, with_success: bool = True) -> Response:
    """`{"success": false, "error"}`, or `{"error"}` alone as the cancel route answers."""
    body = {"success": False, "error": message} if with_success else {"error": message}
    return json_response(body, status)


def _unexpected(status: int) -> Response:
    """The real server's answer to an exception (500 UNKNOWN_ERROR)."""
    message = f"{UNEXPECTED_MESSAGE} Your exception ID is {uuid.uuid4().hex}"
    return json_response({"success": False, "code": "UNKNOWN_ERROR", "error": message}, status)


def _int_param(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or not raw.strip().isdigit():
        return None
    return int(raw)


def _request_key(request: Request) -> str:
    return f"{request.method} {request.url.path}"


def _retry_delays(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


# ---------------------------------------------------------------- the simulator


class _FirecrawlSandbox:
    """Batches in memory, the route handlers and the webhook sender."""

    def __init__(self, config: FirecrawlSandboxConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.stats = Stats()
        self.rng = random.Random(config.seed)
        self.batches: dict[str, Batch] = {}
        self.credits_spent = 0
        self.client: httpx.AsyncClient | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self._polling: dict[str, int] = {}  # batch id -> status polls in flight
        self._retry_not_before: dict[str, float] = {}  # "METHOD path" -> end of its 429 wait

    # -------------------------------------------------------- state

    def view(self, batch: Batch, now: float) -> View:
        finished = self._finished(batch, now)
        failed = batch.failed_pages(finished)
        last = batch.page_time(finished - 1) if finished else batch.created
        return View(
            finished=finished,
            completed=finished - failed,
            total=batch.pages - failed,
            status=self._status(batch, finished, now),
            expires_at=max(batch.saved_at, last) + self.config.expiry,
        )

    def _finished(self, batch: Batch, now: float) -> int:
        pages = batch.pages
        if batch.forced_at is not None and now >= batch.forced_at:
            return pages
        done = bisect_right(batch.finish, now, 0, pages)
        if self.config.stall and pages:
            return min(done, pages - 1)  # the last page hangs
        return done

    def _status(self, batch: Batch, finished: int, now: float) -> str:
        if batch.cancelled_at is not None:
            return "cancelled"
        if finished < batch.pages:
            return "scraping"
        if batch.forced_at is not None and now >= batch.forced_at:
            return "completed"
        if self.config.stall or now < batch.last_finish() + self.config.linger:
            return "scraping"
        return "failed" if self.config.batch_fails else "completed"

    def find_next_change(self, batch: Batch, now: float) -> float | None:
        """When the batch next changes by itself; None when only an outside event can change it."""
        view = self.view(batch, now)
        if view.finished < batch.pages:
            stalled = self.config.stall and view.finished == batch.pages - 1
            return None if stalled and batch.forced_at is None else batch.finish[view.finished]
        if view.status == "scraping" and not self.config.stall:
            return batch.last_finish() + self.config.linger
        return None

    def _lookup(self, request: Request, now: float) -> tuple[Batch, View] | None:
        batch = self.batches.get(request.path_params["id"])
        return None if batch is None else (batch, self.view(batch, now))

    def _schedule(self, batch: Batch, count: int, concurrency: int | None, now: float) -> None:
        """Append `count` pages: with c at once, page i ends (i+1)·delay/c after `now`."""
        lanes = max(1, min(concurrency or self.config.concurrency, self.config.concurrency))
        step = batch.delay / lanes
        previous = batch.finish[-1] if batch.finish else now
        for i in range(count):
            jitter = self.rng.uniform(0, self.config.jitter) if self.config.jitter > 0 else 0.0
            previous = max(previous, now + (i + 1) * step + jitter)
            batch.finish.append(previous)
        self._draw_outcomes(batch, count)

    def _draw_outcomes(self, batch: Batch, count: int) -> None:
        fail, missing = self.config.fail_rate, self.config.not_found_rate
        if fail <= 0 and missing <= 0 and batch.outcomes is None:
            return
        if batch.outcomes is None:
            batch.outcomes = bytearray(len(batch.finish) - count)
        for _ in range(count):
            draw = self.rng.random()
            batch.outcomes.append(
                FAILED if draw < fail else NOT_FOUND if draw < fail + missing else OK
            )

    # -------------------------------------------------------- guards

    def _unauthorized(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        expected = self.config.api_key.encode()
        return scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), expected)

    def _chance(self, rate: float) -> bool:
        """A seeded draw; no draw at all when the rate is zero, so other draws stay put."""
        return rate > 0 and self.rng.random() < rate

    def _fault_rates(self, method: str) -> tuple[float, float]:
        c = self.config
        rates = {
            "GET": (c.get_429_rate, c.get_500_rate),
            "POST": (c.post_429_rate, c.post_500_rate),
            "DELETE": (c.delete_429_rate, c.delete_500_rate),
        }
        return rates.get(method, (0.0, 0.0))

    def _refusal(self, request: Request) -> Response | None:
        if self._unauthorized(request):
            return _error("Unauthorized: Invalid token", 401)
        rate_429, rate_500 = self._fault_rates(request.method)
        if self._chance(rate_429):
            return self._rate_limited(self.config.retry_after)
        if self._chance(rate_500):
            return _unexpected(500)
        return None

    def _check_retry_after(self, request: Request) -> None:
        """Count a request repeated after a 429: too early when before the wait it was told."""
        not_before = self._retry_not_before.pop(_request_key(request), None)
        if not_before is not None:
            early = self.clock() < not_before
            self.stats.requests["retries too early" if early else "retries in time"] += 1

    def _rate_limited(self, wait: int | None) -> Response:
        """Firecrawl's 429, its wait in the message (and in Retry-After, by the knob); with
        `wait` None, as an injected fault may have it, nothing says when to retry."""
        message = (
            "Rate limit exceeded. Consumed (req/min): 101, Remaining (req/min): 0. Upgrade your "
            "plan at https://firecrawl.dev/pricing for increased rate limits"
        )
        headers = None
        if wait is not None:
            resets = formatdate(self.clock() + wait, usegmt=True)
            message += f" or please retry after {wait}s, resets at {resets}"
            if self.config.retry_after_header:
                headers = {"Retry-After": str(wait)}
        return json_response({"success": False, "error": message}, 429, headers)

    def error_answer(self, status: int, retry_after: int | None) -> Response:
        """The answer of an injected fault (faults.Faults): a 429 or the 5xx body."""
        if status == 429:
            return self._rate_limited(retry_after)
        return _unexpected(status)

    def route(self, path: str, method: str, handler: Handler, guarded: bool = True) -> Route:
        """A route whose every answer is counted in Stats, behind auth and fault injection."""
        name = f"{method} {path}"

        async def endpoint(request: Request) -> Response:
            self._check_retry_after(request)
            response = (self._refusal(request) if guarded else None) or await handler(request)
            self.stats.count(name, response.status_code)
            if response.status_code == 429:
                self._retry_not_before[_request_key(request)] = (
                    self.clock() + self.config.retry_after
                )
            return response

        return Route(path, endpoint, methods=[method])

    # -------------------------------------------------------- handlers

    async def submit(self, request: Request) -> Response:
        try:
            body = orjson.loads(await request.body() or b"{}")
        except orjson.JSONDecodeError:
            return json_response(
                {
                    "success": False,
                    "code": "BAD_REQUEST_INVALID_JSON",
                    "error": "Bad request, malformed JSON",
                },
                400,
            )
        result = validate_submission(body, self.config.max_urls)
        if isinstance(result, list):
            bad = {"success": False, "code": "BAD_REQUEST", "error": "Bad Request"}
            return json_response({**bad, "details": result}, 400)
        return self._accept(request, result)

    def _accept(self, request: Request, submission: Submission) -> Response:
        needed = len(submission.urls) * (5 if "json" in submission.formats else 1)
        credits = self.config.credits
        if credits is not None and self.credits_spent + needed > credits:
            return _error(CREDITS_MESSAGE, 402)
        batch = self._target(submission)
        if batch is None:
            return _error("Job not found", 404)
        self.credits_spent += needed
        self._add_pages(batch, submission)
        base = str(request.base_url).rstrip("/")
        return json_response(
            {
                "success": True,
                "id": batch.id,
                "url": f"{base}/v2/batch/scrape/{batch.id}",
                "invalidURLs": submission.invalid,
            }
        )

    def _target(self, submission: Submission) -> Batch | None:
        if submission.append_to is not None:
            return self.batches.get(submission.append_to)
        now = self.clock()
        batch = Batch(
            id=str(uuid.uuid4()),
            created=now,
            delay=self.config.scrape_delay,
            formats=submission.formats,
            webhook=submission.webhook,
            saved_at=now,
        )
        self.batches[batch.id] = batch
        if batch.webhook is not None:
            self._spawn(self._send_webhooks(batch))
        return batch

    def _add_pages(self, batch: Batch, submission: Submission) -> None:
        now = self.clock()
        batch.urls.extend(submission.urls)
        self._schedule(batch, len(submission.urls), submission.concurrency, now)
        batch.saved_at = now
        batch.changed.set()

    async def get_status(self, request: Request) -> Response:
        # Two polls of one batch at the same time are counted: clients should not do that.
        batch_id = request.path_params.get("id", "")
        if batch_id in self._polling:
            self.stats.requests["overlapping polls"] += 1
        self._polling[batch_id] = self._polling.get(batch_id, 0) + 1
        try:
            if self.config.get_latency > 0:
                await asyncio.sleep(self.config.get_latency)
            return self._status_response(request)
        finally:
            self._polling[batch_id] -= 1
            if not self._polling[batch_id]:
                del self._polling[batch_id]

    def _status_response(self, request: Request) -> Response:
        if self._chance(self.config.get_402_rate):
            return json_response({"error": PAYMENT_MESSAGE}, 402)
        now = self.clock()
        found = self._lookup(request, now)
        if found is None:
            return _error("Job not found", 404)
        batch, view = found
        if now >= view.expires_at:
            return _error("Job expired", 404)
        skip = _int_param(request, "skip") or 0
        limit = _int_param(request, "limit")
        parts = self._documents(batch, view, skip, limit)
        head: dict[str, Any] = {
            "success": True,
            "status": view.status,
            "completed": view.completed,
            "total": view.total,
            "creditsUsed": view.completed * batch.credits_per_page,
            "expiresAt": _iso(view.expires_at),
        }
        if view.total > skip + len(parts):
            head["next"] = self._next_url(request, batch, skip + len(parts), limit)
        return _bytes_response(head, parts)

    def _documents(self, batch: Batch, view: View, skip: int, limit: int | None) -> list[bytes]:
        pages = batch.ok_pages(view.finished)
        if self.config.paging == "selfhosted":
            return _serialize_page(batch, pages, None)
        size = min(limit, self.config.page_size) if limit else self.config.page_size
        return _serialize_page(batch, pages[skip : skip + size], self.config.page_max_bytes)

    def _next_url(self, request: Request, batch: Batch, skip: int, limit: int | None) -> str:
        base = self.config.next_base_url or str(request.base_url)
        url = f"{base.rstrip('/')}/v2/batch/scrape/{batch.id}?skip={skip}"
        return url if limit is None else f"{url}&limit={limit}"

    async def cancel(self, request: Request) -> Response:
        now = self.clock()
        found = self._lookup(request, now)
        if found is None or now >= found[1].expires_at:
            return _error("Job not found", 404, with_success=False)
        batch, view = found
        if view.status == "completed" and self.config.conflict_on_completed_cancel:
            return _error("Crawl is already completed", 409, with_success=False)
        if batch.cancelled_at is None:
            batch.cancelled_at = now
            # Pages already started still finish; the queued ones are dropped.
            started = bisect_right(batch.finish, now + batch.delay, 0, batch.pages)
            batch.cutoff = max(started, view.finished)
        batch.saved_at = now
        batch.changed.set()
        return json_response({"status": "cancelled"})

    async def list_errors(self, request: Request) -> Response:
        now = self.clock()
        found = self._lookup(request, now)
        if found is None or now >= found[1].expires_at:
            return _error("Job not found", 404)
        batch, view = found
        failed = [
            _page_error(batch, i, batch.page_time(i), False)
            for i in range(view.finished)
            if batch.outcome(i) == FAILED
        ]
        dropped = [
            _page_error(batch, i, batch.cancelled_at or now, True)
            for i in range(batch.pages, len(batch.urls))
        ]
        return json_response({"errors": failed + dropped, "robotsBlocked": []})

    async def finish(self, request: Request) -> Response:
        """Control route: every page of the batch is done now, stall and linger aside."""
        batch = self.batches.get(request.path_params["id"])
        if batch is None:
            return _error("Job not found", 404)
        batch.forced_at = self.clock()
        batch.changed.set()
        return json_response({"id": batch.id, "finished": True})

    # -------------------------------------------------------- webhooks

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _send_webhooks(self, batch: Batch) -> None:
        """Started, then one page event per finished page, then completed, as time passes."""
        await self._emit(batch, "started", [])
        sent = 0
        while True:
            now = self.clock()
            view = self.view(batch, now)
            if now >= view.expires_at:
                return
            for index in range(sent, view.finished):
                await self._emit_page(batch, index)
            sent = view.finished
            if view.status == "completed":
                await self._emit(batch, "completed", [])
                return
            if view.status == "failed":
                await self._emit(batch, "failed", [], error=BATCH_FAILED)
                return
            if view.status == "cancelled" and view.finished >= batch.pages:
                return
            await self._wait_for_change(batch, self.find_next_change(batch, now), now)

    async def _wait_for_change(self, batch: Batch, wake: float | None, now: float) -> None:
        # Capped, so knob changes and clock shifts are noticed within a second.
        timeout = 1.0 if wake is None else min(max(wake - now, 0.0), 1.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(batch.changed.wait(), timeout)
        batch.changed.clear()

    async def _emit_page(self, batch: Batch, index: int) -> None:
        if batch.outcome(index) == FAILED:
            await self._emit(batch, "page", [], error=ENGINES_FAILED)
        else:
            await self._emit(batch, "page", [render_document(batch, index)])

    async def _emit(
        self, batch: Batch, event: str, data: list[Any], error: str | None = None
    ) -> None:
        hook = batch.webhook
        if hook is None or event not in hook.events:
            return
        if self._chance(self.config.webhook_drop_rate):
            self.stats.count("webhook dropped", 0)
            return
        payload: dict[str, Any] = {
            "success": error is None,
            "type": f"batch_scrape.{event}",
            "id": batch.id,
            "webhookId": str(uuid.uuid4()),
            "data": data,
        }
        if error is not None:
            payload["error"] = error
        payload["metadata"] = hook.metadata
        await self._deliver(hook, orjson.dumps(payload), payload["type"])

    def _webhook_headers(self, hook: Webhook, body: bytes) -> dict[str, str]:
        headers = {"Content-Type": "application/json", **hook.headers}
        secret = self.config.webhook_secret
        if secret:
            digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
            headers["X-Firecrawl-Signature"] = f"sha256={digest}"
        return headers

    async def _deliver(self, hook: Webhook, body: bytes, kind: str) -> None:
        headers = self._webhook_headers(hook, body)
        delivered = await self._post(hook.url, body, headers, kind)
        if self._chance(self.config.webhook_duplicate_rate):
            await self._post(hook.url, body, headers, kind)
        delays = _retry_delays(self.config.webhook_retry_delays)
        if not delivered and delays:
            self._spawn(self._retry(hook.url, body, headers, kind, delays))

    async def _retry(
        self, url: str, body: bytes, headers: dict[str, str], kind: str, delays: list[float]
    ) -> None:
        for delay in delays:
            await asyncio.sleep(delay)
            if await self._post(url, body, headers, kind):
                return

    async def _post(self, url: str, body: bytes, headers: dict[str, str], kind: str) -> bool:
        assert self.client is not None, "webhooks need the app's lifespan to have started"
        try:
            timeout = self.config.webhook_timeout
            response = await self.client.post(url, content=body, headers=headers, timeout=timeout)
        except httpx.HTTPError as exc:
            logger.info("webhook delivery failed", extra={"kind": kind, "error": repr(exc)})
            self.stats.count(f"webhook {kind}", 0)
            return False
        self.stats.count(f"webhook {kind}", response.status_code)
        return response.is_success

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        async with httpx.AsyncClient() as client:
            self.client = client
            try:
                yield
            finally:
                await self._cancel_tasks()
                self.client = None

    async def _cancel_tasks(self) -> None:
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def create_app(
    config: FirecrawlSandboxConfig | None = None, clock: Clock | None = None
) -> Starlette:
    """The Firecrawl v2 batch-scrape simulator as an ASGI app."""
    sandbox = _FirecrawlSandbox(config or FirecrawlSandboxConfig(), clock or Clock())
    batch = "/v2/batch/scrape/{id}"
    routes = [
        sandbox.route("/v2/batch/scrape", "POST", sandbox.submit),
        sandbox.route(batch, "GET", sandbox.get_status),
        sandbox.route(batch, "DELETE", sandbox.cancel),
        sandbox.route(f"{batch}/errors", "GET", sandbox.list_errors),
        sandbox.route("/v2/crawl/{id}/errors", "GET", sandbox.list_errors),
        sandbox.route("/_sandbox/batches/{id}/finish", "POST", sandbox.finish, guarded=False),
        *control_routes(sandbox.config, sandbox.clock, sandbox.stats),
    ]
    faults = Faults(sandbox.config, sandbox.stats, sandbox.error_answer)
    app = SandboxApp(faults, routes=routes, lifespan=sandbox.lifespan)
    app.state.sandbox = sandbox
    return app


def parse_arguments(argv: list[str] | None = None) -> tuple[str, int, FirecrawlSandboxConfig]:
    parser = argparse.ArgumentParser(description="Firecrawl v2 batch-scrape sandbox")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9002)
    add_config_arguments(parser, FirecrawlSandboxConfig)
    values = vars(parser.parse_args(argv))
    host, port = values.pop("host"), values.pop("port")
    return host, port, config_from_arguments(FirecrawlSandboxConfig, values)


def main(argv: list[str] | None = None) -> None:
    host, port, config = parse_arguments(argv)
    uvicorn.run(create_app(config), host=host, port=port, log_level="info")


if __name__ == "__main__":
    main()
