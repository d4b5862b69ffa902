"""The routes of the Firecrawl simulator: submit, poll, cancel, per-page errors, behind auth,
injected answers and request counts."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import html
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from email.utils import formatdate
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.sandbox.common import Clock, Stats, control_routes, json_response
from receiver.sandbox.faults import Faults, SandboxApp
from receiver.sandbox.firecrawl.batches import FAILED, Batch, Batches, View, chance
from receiver.sandbox.firecrawl.config import FirecrawlSandboxConfig
from receiver.sandbox.firecrawl.documents import (
    CANCELLED,
    iso,
    page_error,
    page_failure,
    results_page,
)
from receiver.sandbox.firecrawl.validation import Submission, validate_submission
from receiver.sandbox.firecrawl.webhooks import WebhookSender
from receiver.sandbox.runner import run_sandbox

Handler = Callable[[Request], Awaitable[Response]]

CREDITS_MESSAGE = (
    "Insufficient credits to perform this request. For more credits, you can upgrade your plan"
    " at https://firecrawl.dev/pricing."
)
UNEXPECTED_MESSAGE = "An unexpected error occurred. Please contact help@firecrawl.com for help."
PAYMENT_MESSAGE = "Payment required to access this resource."  # seed 000's 402 example
EXPRESS_PAGE = (
    '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>Error</title>\n'
    "</head>\n<body>\n<pre>{message}</pre>\n</body>\n</html>\n"
)
EXPRESS_HEADERS = {
    "X-Powered-By": "Express",
    "Content-Security-Policy": "default-src 'none'",
    "X-Content-Type-Options": "nosniff",
}


class _FirecrawlSandbox:
    """The route handlers and their guards, around the batches and the webhook sender."""

    def __init__(self, config: FirecrawlSandboxConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.stats = Stats()
        self.rng = random.Random(config.seed)
        self.batches = Batches(config, clock, self.rng)
        self.webhooks = WebhookSender(config, self.batches, self.stats, self.rng)
        self.credits_spent = 0
        self._polling: dict[str, int] = {}  # batch id -> status polls in flight
        self._retry_not_before: dict[str, float] = {}  # "METHOD path" -> end of its 429 wait

    def _lookup(self, request: Request, now: float) -> tuple[Batch, View] | None:
        batch = self.batches.get(request.path_params["id"])
        return None if batch is None else (batch, self.batches.view(batch, now))

    # -------------------------------------------------------- guards

    def _unauthorized(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        expected = self.config.api_key.encode()
        return scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), expected)

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
        if chance(self.rng, rate_429):
            return self._rate_limited(self.config.retry_after)
        if chance(self.rng, rate_500):
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
        self.batches.add_pages(batch, submission)
        return json_response(
            {
                "success": True,
                "id": batch.id,
                "url": f"{self._origin(request)}/v2/batch/scrape/{batch.id}",
                "invalidURLs": submission.invalid,
            }
        )

    def _target(self, submission: Submission) -> Batch | None:
        if submission.append_to is not None:
            return self.batches.get(submission.append_to)
        batch = self.batches.create(submission)
        self.webhooks.start(batch)
        return batch

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
        if chance(self.rng, self.config.get_402_rate):
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
        parts = results_page(self.config, batch, view, skip, limit)
        head: dict[str, Any] = {
            "success": True,
            "status": view.status,
            "completed": view.completed,
            "total": view.total,
            "creditsUsed": view.completed * batch.credits_per_page,
            "expiresAt": iso(view.expires_at),
        }
        if view.total > skip + len(parts):
            head["next"] = self._next_url(request, batch, skip + len(parts), limit)
        return _bytes_response(head, parts)

    def _next_url(self, request: Request, batch: Batch, skip: int, limit: int | None) -> str:
        base = self.config.next_base_url or self._origin(request)
        url = f"{base.rstrip('/')}/v2/batch/scrape/{batch.id}?skip={skip}"
        return url if limit is None else f"{url}&limit={limit}"

    def _origin(self, request: Request) -> str:
        """The host and port the request named, with the url_scheme knob's scheme."""
        scheme = self.config.url_scheme or request.base_url.scheme
        return str(request.base_url.replace(scheme=scheme)).rstrip("/")

    async def cancel(self, request: Request) -> Response:
        now = self.clock()
        found = self._lookup(request, now)
        if found is None or now >= found[1].expires_at:
            return _error("Job not found", 404, with_success=False)
        batch, view = found
        if view.status == "completed" and self.config.conflict_on_completed_cancel:
            return _error("Crawl is already completed", 409, with_success=False)
        self.batches.cancel(batch, view)
        return json_response({"status": "cancelled"})

    async def list_errors(self, request: Request) -> Response:
        now = self.clock()
        found = self._lookup(request, now)
        if found is None or now >= found[1].expires_at:
            return _error("Job not found", 404)
        batch, view = found
        failed = [
            page_error(batch, i, batch.page_time(i), page_failure(self.config, i))
            for i in range(view.finished)
            if batch.outcome(i) == FAILED
        ]
        dropped = [
            page_error(batch, i, batch.cancelled_at or now, CANCELLED)
            for i in range(batch.pages, len(batch.urls))
        ]
        return json_response({"errors": failed + dropped, "robotsBlocked": []})

    async def list_batch_errors(self, request: Request) -> Response:
        """The v2 batch route of the list, which the self-hosted build does not have."""
        if not self.config.v2_batch_errors:
            return express_not_found(request)
        return self._refusal(request) or await self.list_errors(request)

    async def finish(self, request: Request) -> Response:
        """Control route: every page of the batch is done now, stall and linger aside."""
        batch = self.batches.get(request.path_params["id"])
        if batch is None:
            return _error("Job not found", 404)
        self.batches.finish_now(batch)
        return json_response({"id": batch.id, "finished": True})

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        async with self.webhooks.running():
            yield


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


def express_not_found(request: Request) -> Response:
    """Express's page for a route it does not have, whatever the method (capture 024)."""
    raw = request.scope.get("raw_path") or request.url.path.encode()
    path = raw.partition(b"?")[0].decode("latin-1")  # as it was sent, without the query
    text = f"Cannot {request.method} {path}"
    message = html.escape(text).replace("&#x27;", "&#39;")  # as npm's escape-html writes it
    return Response(EXPRESS_PAGE.format(message=message), 404, EXPRESS_HEADERS, "text/html")


async def _unmatched(request: Request, exc: Exception) -> Response:
    return express_not_found(request)


def _int_param(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or not raw.strip().isdigit():
        return None
    return int(raw)


def _request_key(request: Request) -> str:
    return f"{request.method} {request.url.path}"


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
        sandbox.route(f"{batch}/errors", "GET", sandbox.list_batch_errors, guarded=False),
        sandbox.route("/v2/crawl/{id}/errors", "GET", sandbox.list_errors),
        sandbox.route("/v1/batch/scrape/{id}/errors", "GET", sandbox.list_errors),
        sandbox.route("/_sandbox/batches/{id}/finish", "POST", sandbox.finish, guarded=False),
        *control_routes(sandbox.config, sandbox.clock, sandbox.stats),
    ]
    faults = Faults(sandbox.config, sandbox.stats, sandbox.error_answer)
    unmatched = {404: _unmatched, 405: _unmatched}
    app = SandboxApp(faults, routes=routes, lifespan=sandbox.lifespan, exception_handlers=unmatched)
    app.state.sandbox = sandbox
    return app


def main(argv: list[str] | None = None) -> None:
    """`python -m receiver.sandbox.firecrawl [--host H] [--port P] [--knob-name VALUE ...]`."""
    run_sandbox("firecrawl", argv)
