"""The public endpoints providers call: Decodo's callbacks and Firecrawl's webhooks."""

from __future__ import annotations

import logging
from typing import Any

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response

from receiver import store as codes
from receiver.errors import (
    ExpiredToken,
    InvalidRequest,
    InvalidToken,
    PayloadTooLarge,
    ReceiverError,
    UnknownJob,
)
from receiver.metrics import CALLBACKS
from receiver.tokens import verify_webhook
from receiver.web import (
    Endpoint,
    Services,
    error_response,
    json_response,
    parse_json_object,
    read_body,
)

log = logging.getLogger(__name__)

# Codes of the callbacks script that mean "recorded, or nothing left to record": 202.
_ACKNOWLEDGED = frozenset({codes.ACCEPTED, codes.DUPLICATE, codes.EARLY, codes.CLOSED})
# Outcomes answered without an exception that are still refusals.
_REFUSED = frozenset({"unknown_task"})
# Task statuses a Decodo callback may carry, mapped to what we record.
_CALLBACK_STATUS = {"done": "done", "faulted": "faulted", "failed": "faulted"}
# Seconds a Firecrawl webhook delivery id is remembered, to drop its retries.
_WEBHOOK_DEDUPE_TTL = 24 * 3600
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
    return "malformed"


def _counted(provider: str, endpoint: Endpoint) -> Endpoint:
    """Count every answer of a callback endpoint; log each refusal once, with its reason
    but never the token or the body."""

    async def count(request: Request, services: Services) -> Response:
        try:
            response = await endpoint(request, services)
        except (ReceiverError, RedisError) as exc:
            reason = _rejection(exc)
            CALLBACKS.labels(provider, reason).inc()
            log.warning("callback rejected", extra={"provider": provider, "reason": reason})
            raise
        outcome = response.headers.get("x-receiver-outcome", "accepted")
        CALLBACKS.labels(provider, outcome).inc()
        if outcome in _REFUSED:
            log.warning("callback rejected", extra={"provider": provider, "reason": outcome})
        return response

    return count


async def decodo_callback(request: Request, services: Services) -> Response:
    return await _decodo(request, services)


async def _decodo_callback(request: Request, services: Services) -> Response:
    """Verify, then record in one atomic step; 202 only once Redis has it."""
    body = parse_json_object(await read_body(request, services.settings.max_body))
    token = body.get("passthrough", body.get("passtrough"))
    if token is None:
        raise InvalidToken("missing passthrough token")
    job_id = services.signer.verify(token)
    task_id = _task_id(body)
    status = _callback_status(body)
    code = await services.committer.commit((job_id, task_id, status))
    if code in _ACKNOWLEDGED:
        return json_response({"status": code}, 202, {"x-receiver-outcome": code})
    if code == codes.UNKNOWN_JOB:
        raise UnknownJob("no such job")
    refused = error_response(404, "unknown_task", "the task is not one of this job's tasks")
    refused.headers["x-receiver-outcome"] = "unknown_task"
    return refused


def _task_id(body: dict[str, Any]) -> str:
    raw = body.get("id", body.get("task_id"))
    if isinstance(raw, bool) or not isinstance(raw, str | int) or raw == "":
        raise InvalidRequest("the callback has no task id (id or task_id)")
    task_id = str(raw)
    if len(task_id) > 64 or not task_id.isascii() or not task_id.isprintable():
        raise InvalidRequest("the task id is not a Decodo task id")
    return task_id


def _callback_status(body: dict[str, Any]) -> str:
    raw = body.get("status")
    if raw is None:  # the short variant {task_id, status_code}: the results will tell
        return "done"
    if not isinstance(raw, str) or raw not in _CALLBACK_STATUS:
        raise InvalidRequest("status must be done or faulted")
    return _CALLBACK_STATUS[raw]


async def firecrawl_webhook(request: Request, services: Services) -> Response:
    return await _firecrawl(request, services)


async def _firecrawl_webhook(request: Request, services: Services) -> Response:
    """A signed hint that a batch moved: the poll stays the source of truth."""
    secret = services.settings.firecrawl_webhook_secret
    if not secret:
        return error_response(404, "not_configured", "Firecrawl webhooks are not enabled")
    raw = await read_body(request, services.settings.max_body)
    verify_webhook(secret, raw, request.headers.get("x-firecrawl-signature"))
    body = parse_json_object(raw)
    delivery, batch_id, kind = body.get("webhookId"), body.get("id"), body.get("type")
    if not all(isinstance(v, str) and v for v in (delivery, batch_id, kind)):
        raise InvalidRequest("a webhook needs string webhookId, id and type")
    store = services.store
    first = await store.redis.set(
        store.keys.webhook_seen(str(delivery)), 1, nx=True, ex=_WEBHOOK_DEDUPE_TTL
    )
    if not first:
        return json_response({"status": "duplicate"}, headers={"x-receiver-outcome": "duplicate"})
    job_id = await store.job_of("firecrawl", str(batch_id))
    if job_id is None:
        return json_response({"status": "ignored"}, headers={"x-receiver-outcome": "ignored"})
    if kind in _FINAL_WEBHOOKS:
        await store.schedule(f"poll:{job_id}", store.clock())
    log.info("firecrawl webhook", extra={"job_id": job_id, "type": kind})
    return json_response({"status": "accepted"})


_decodo = _counted("decodo", _decodo_callback)
_firecrawl = _counted("firecrawl", _firecrawl_webhook)
