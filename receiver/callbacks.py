"""The public endpoints providers call: Decodo's callbacks and Firecrawl's webhooks."""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import orjson
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from receiver.errors import (
    ExpiredToken,
    InvalidRequest,
    InvalidToken,
    NotConfirmed,
    PayloadTooLarge,
    ReceiverError,
    UnknownJob,
)
from receiver.metrics import CALLBACKS
from receiver.store import Callback, codes
from receiver.tokens import verify_webhook
from receiver.web import (
    Services,
    json_response,
    parse_json_object,
    read_asgi_body,
    read_body,
)

log = logging.getLogger(__name__)

# Codes of the callbacks script that mean "recorded, or nothing left to record": 202,
# with their answers encoded once.
_ACKNOWLEDGED: dict[str, bytes] = {
    code: orjson.dumps({"status": code})
    for code in (codes.ACCEPTED, codes.DUPLICATE, codes.EARLY, codes.CLOSED)
}
# Outcomes that are not refusals (the webhook's "ignored" included), and refusals for
# Redis's sake, logged once per outage (receiver.outages) rather than per callback.
_UNLOGGED_OUTCOMES = frozenset({*_ACKNOWLEDGED, "ignored", "unavailable", "not_confirmed"})
_UNKNOWN_TASK = orjson.dumps(
    {"error": "unknown_task", "message": "the task is not one of this job's tasks"}
)
_UNAVAILABLE = orjson.dumps(
    {"error": "unavailable", "message": "storage is unavailable; retry later"}
)
_JSON_HEADERS = [(b"content-type", b"application/json")]
_RETRY_HEADERS = [*_JSON_HEADERS, (b"retry-after", b"1")]
# prometheus children by (provider, outcome), so counting costs a dict lookup.
_COUNTERS: dict[tuple[str, str], Any] = {}
# Seconds over which refused callbacks are counted into one log line (see RefusalLog).
REFUSALS_INTERVAL = 60.0
# The attribute of the app's state that holds its RefusalLog: one per app (a test's own).
REFUSALS_STATE = "callback_refusals"
# A Decodo task id as a callback may carry it: 1 to 64 printable ASCII characters.
TASK_ID = re.compile(r"[ -~]{1,64}")
# Task statuses a Decodo callback may carry, mapped to what we record.
_CALLBACK_STATUS = {"done": "done", "faulted": "faulted", "failed": "faulted"}
# Webhook events after which the batch is worth polling at once.
_FINAL_WEBHOOKS = frozenset({"batch_scrape.completed", "batch_scrape.failed"})


def _rejection(exc: Exception) -> str:
    """The reason a callback was refused, as counted and logged."""
    if isinstance(exc, ExpiredToken):
        return "expired_token"
    if isinstance(exc, InvalidToken):
        return "bad_token"
    if isinstance(exc, PayloadTooLarge):
        return "too_large"
    if isinstance(exc, UnknownJob):
        return "unknown_job"
    if isinstance(exc, RedisError):
        return "unavailable"
    if isinstance(exc, NotConfirmed):
        return "not_confirmed"
    return "malformed"


class RefusalLog:
    """Refused callbacks in the log without a line each (an attack sends thousands): the
    first of each provider and reason in an interval is logged at once, the others counted,
    and the interval's counts logged in one line by the first callback after it ends.
    `receiver_callbacks_total` counts every one. Never the token or the body."""

    def __init__(
        self, interval: float = REFUSALS_INTERVAL, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval = interval
        self._clock = clock
        self._started = clock()
        self._counts: dict[tuple[str, str], int] = {}  # (provider, reason) -> refusals
        self._unlogged = 0  # refusals of this interval without a line of their own

    def refused(self, provider: str, reason: str) -> None:
        self.tick()
        seen = self._counts.get((provider, reason), 0)
        self._counts[(provider, reason)] = seen + 1
        if seen:
            self._unlogged += 1
        else:
            log.warning("callback rejected", extra={"provider": provider, "reason": reason})

    def tick(self) -> None:
        """End the interval once it is over, logging its counts if some went unlogged."""
        now = self._clock()
        if now - self._started < self.interval:
            return
        if self._unlogged:
            rejected: dict[str, dict[str, int]] = {}
            for (provider, reason), refusals in self._counts.items():
                rejected.setdefault(provider, {})[reason] = refusals
            extra = {"rejected": rejected, "seconds": round(now - self._started, 1)}
            log.warning("callbacks rejected", extra=extra)
        self._started, self._counts, self._unlogged = now, {}, 0


# The RefusalLog of callbacks served outside a Starlette app (a test calling the ASGI app).
_REFUSALS = RefusalLog()


def refusals_of(scope: Scope) -> RefusalLog:
    """The RefusalLog of the app serving the request, made on its first refusal."""
    app = scope.get("app")
    if app is None:
        return _REFUSALS
    found: RefusalLog | None = getattr(app.state, REFUSALS_STATE, None)
    if found is None:
        found = RefusalLog()
        setattr(app.state, REFUSALS_STATE, found)
    return found


def count(provider: str, outcome: str, refusals: RefusalLog) -> None:
    """Count a callback's outcome, and log a refusal through `refusals`."""
    counter = _COUNTERS.get((provider, outcome))
    if counter is None:
        counter = _COUNTERS[(provider, outcome)] = CALLBACKS.labels(provider, outcome)
    counter.inc()
    if outcome in _UNLOGGED_OUTCOMES:
        refusals.tick()
    else:
        refusals.refused(provider, outcome)


class DecodoCallbacks:
    """POST /callbacks/decodo as a bare ASGI app: the hot path, with nothing on it but
    reading, verifying, one shared Redis round trip and the answer."""

    def __init__(self, current: Callable[[], Services]) -> None:
        self._current = current

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        status, body, outcome = await self._answer(scope, receive, self._current())
        count("decodo", outcome, refusals_of(scope))
        headers = _RETRY_HEADERS if status == 503 else _JSON_HEADERS
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _answer(
        self, scope: Scope, receive: Receive, services: Services
    ) -> tuple[int, bytes, str]:
        try:
            callback = _read_callback(
                await read_asgi_body(scope, receive, services.settings.max_body), services
            )
            code = await services.committer.submit(callback)
        except ReceiverError as exc:
            return _refusal(exc)
        except RedisError as exc:
            services.outages.failed(exc)
            return 503, _UNAVAILABLE, "unavailable"
        services.outages.recovered()
        if code in _ACKNOWLEDGED:
            return 202, _ACKNOWLEDGED[code], code
        if code == codes.UNKNOWN_JOB:
            return _refusal(UnknownJob("no such job"))
        return 404, _UNKNOWN_TASK, "unknown_task"


def _read_callback(raw: bytes, services: Services) -> Callback:
    """What the callback says: (job id, task id, status). The body, raw and parsed, is
    dropped here, before the Redis round trip: a large body is not kept while it waits."""
    body = parse_json_object(raw)
    token = body.get("passthrough", body.get("passtrough"))
    if token is None:
        raise InvalidToken("missing passthrough token")
    return services.signer.verify(token), _task_id(body), _status(body)


def _refusal(exc: ReceiverError) -> tuple[int, bytes, str]:
    status = getattr(exc, "status_code", 400)
    code = getattr(exc, "code", "invalid_request")
    return status, orjson.dumps({"error": code, "message": str(exc)}), _rejection(exc)


def _task_id(body: dict[str, Any]) -> str:
    raw = body.get("id", body.get("task_id"))
    if isinstance(raw, bool) or not isinstance(raw, str | int) or raw == "":
        raise InvalidRequest("the callback has no task id (id or task_id)")
    task_id = raw if isinstance(raw, str) else str(raw)
    if not TASK_ID.fullmatch(task_id):
        raise InvalidRequest("the task id is not a Decodo task id")
    return task_id


def _status(body: dict[str, Any]) -> str:
    raw = body.get("status")
    if raw is None:
        return _short_status(body.get("status_code"))
    if not isinstance(raw, str) or raw not in _CALLBACK_STATUS:
        raise InvalidRequest("status must be done or faulted")
    return _CALLBACK_STATUS[raw]


def _short_status(code: Any) -> str:
    """The short variant {task_id, status_code}: a 2xx is done, anything else faulted.
    Neither field: done, and the results fetch tells."""
    if code is None:
        return "done"
    if isinstance(code, str) and 0 < len(code) <= 3 and code.isascii() and code.isdigit():
        code = int(code)
    if isinstance(code, bool) or not isinstance(code, int):
        raise InvalidRequest("status_code must be an HTTP status code")
    return "done" if 200 <= code < 300 else "faulted"


class CallbackFastPath:
    """Middleware that hands POST /callbacks/decodo straight to its ASGI app, past routing."""

    def __init__(self, app: ASGIApp, endpoint: ASGIApp) -> None:
        self.app = app
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == "/callbacks/decodo"
            and scope["method"] == "POST"
        ):
            await self.endpoint(scope, receive, send)
        else:
            await self.app(scope, receive, send)


async def firecrawl_webhook(request: Request, services: Services) -> Response:
    refusals = refusals_of(request.scope)
    try:
        response = await _firecrawl_webhook(request, services)
    except (ReceiverError, RedisError) as exc:
        count("firecrawl", _rejection(exc), refusals)
        raise
    outcome = str(orjson.loads(bytes(response.body)).get("status", "accepted"))
    count("firecrawl", outcome, refusals)
    return response


async def _firecrawl_webhook(request: Request, services: Services) -> Response:
    """A hint that a batch moved, from the cloud (signed) or a self-hosted server (unsigned,
    without webhookId): authenticated by the token in the URL we gave, by the signature, or
    both; the poll stays the source of truth. A refused delivery records nothing."""
    raw = await read_body(request, services.settings.max_body)
    token_job = _authenticate_webhook(request, raw, services)
    body = parse_json_object(raw)
    batch_id, kind = body.get("id"), body.get("type")
    if not (_short_text(batch_id) and _short_text(kind)):
        raise InvalidRequest("a webhook needs the batch id (`id`) and its `type` as strings")
    store = services.store
    job_id = await store.job_of("firecrawl", str(batch_id))
    if token_job is not None and job_id is not None and job_id != token_job:
        raise InvalidToken("the webhook token is for another job than the batch's")
    if not await store.first_delivery(_delivery_key(body, raw)):
        return json_response({"status": "duplicate"})
    if job_id is None:
        return json_response({"status": "ignored"})
    hint = ""
    if kind in _FINAL_WEBHOOKS:
        # Sooner, but never into a lease in force: one poll of a job at a time.
        hint = await store.hint_poll(job_id)
    log.info("firecrawl webhook", extra={"job_id": job_id, "type": kind, "hint": hint})
    return json_response({"status": "accepted"})


def _authenticate_webhook(request: Request, raw: bytes, services: Services) -> str | None:
    """The job the URL's token names (None without a token), once what came is valid: a
    token must verify, and so must a signature when FIRECRAWL_WEBHOOK_SECRET is set to
    check it with; one of the two at least. InvalidToken (or ExpiredToken) otherwise."""
    secret = services.settings.firecrawl_webhook_secret
    signature = request.headers.get("x-firecrawl-signature")
    signed = False
    if signature is not None and secret:
        verify_webhook(secret, raw, signature)
        signed = True
    token = request.query_params.get("token")
    if token is None:
        if signed:
            return None
        raise InvalidToken("missing webhook token (and no signature to check)")
    return services.signer.webhook_signer().verify(token)


def _short_text(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 200


def _delivery_key(body: dict[str, Any], raw: bytes) -> str:
    """What tells one delivery from another: the cloud's webhookId, else (a self-hosted
    server sends none) a digest of the raw body, so only an identical repeat is dropped."""
    delivery = body.get("webhookId")
    if _short_text(delivery):
        return f"id:{delivery}"
    return "sha256:" + hashlib.sha256(raw).hexdigest()
