"""A local Decodo Web Scraping API (async v3): tasks, batches, results, callbacks, and faults.

Run it with `python -m receiver.sandbox.decodo --port 9001 --drop-rate 0.5`. Every field of
`DecodoSandboxConfig` is a `--knob-name` option and can be changed at run time with
`PATCH /_sandbox/config`.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import hmac
import html
import itertools
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from heapq import heappop, heappush
from http import HTTPStatus
from typing import Any
from urllib.parse import quote_plus

import httpx
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.sandbox.common import Clock, Stats, control_routes, json_response
from receiver.sandbox.faults import FaultKnobs, Faults, SandboxApp
from receiver.sandbox.runner import run_sandbox

logger = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]

# The token after "Basic ": base64 of the sandbox's "user:pass".
DEFAULT_AUTH = base64.b64encode(b"sandbox:sandbox").decode()
# The seed's own example of the callback body (002_86429b235c9c91fd.txt), key for key.
SEED_CALLBACK: dict[str, object] = {
    "id": "7039164056019693569",
    "status": "done",
    "target": "universal",
    "query": "",
    "url": "https://ip.decodo.com",
    "domain": "com",
    "limit": 10,
    "locale": None,
    "geo": None,
    "device_type": "desktop",
    "page_from": 1,
    "parse": 0,
    "output_schema": None,
    "headless": None,
    "priority": 0,
    "persist": True,
    "content_encoding": "utf-8",
    "created_at": "2023-03-08 09:24:52",
    "updated_at": "2023-03-08 09:24:52",
}

# Echoed request parameters with Decodo's default when absent, in the order of the seed's example;
# the server-owned fields (created_at, id, status, ...) sit between the two groups.
_ECHOED_HEAD: tuple[tuple[str, Any], ...] = (
    ("url", None),
    ("page_from", 1),
    ("limit", 10),
    ("geo", None),
    ("device_type", "desktop"),
    ("headless", None),
    ("parse", False),
    ("locale", None),
    ("domain", "com"),
    ("output_schema", None),
)
_ECHOED_TAIL: tuple[tuple[str, Any], ...] = (
    ("page_count", 1),
    ("http_method", "get"),
    ("cookies", ()),
    ("force_headers", False),
    ("force_cookies", False),
    ("headers", ()),
    ("session_id", None),
    ("successful_status_codes", ()),
    ("follow_redirect", None),
    ("payload", None),
    ("store_id", None),
    ("headers_cookies_policy", False),
)
# Echoed only when the request gave them.
_ECHOED_IF_GIVEN = ("target", "query", "callback_url")
# The fields of GET /v3/task/{id}, in the order of the seed's status examples.
_STATUS_FIELDS = (
    "status", "id", "created_at", "updated_at", "target", "query", "page_from", "limit",
    "device_type", "headless", "parse", "domain", "page_count", "force_headers", "force_cookies",
    "headers_cookies_policy",
)  # fmt: skip

_SCHEDULER_BURST = 500  # timers run per scheduler turn before yielding to the event loop
_JSON_HEADERS = {"content-type": "application/json"}


@dataclass
class DecodoSandboxConfig(FaultKnobs):
    """Knobs of the Decodo simulator; every one is a `--knob-name` command-line option.
    The fault knobs it shares with the other sandboxes are in `faults.FaultKnobs`."""

    # Expected token after "Authorization: Basic " (base64 of "user:pass").
    auth: str = field(default=DEFAULT_AUTH, repr=False)
    # Seconds from creation until a task leaves "pending".
    completion_delay: float = 0.05
    # Extra completion delay, uniform in [0, jitter] seconds.
    completion_jitter: float = 0.0
    # Fraction of tasks that end "faulted" instead of "done".
    fault_rate: float = 0.0
    # Answer of /results for a faulted task: "404" (JSON error) or "204" (empty).
    faulted_results: str = "404"
    # Seconds after creation, by the sandbox clock, until a task and its results expire.
    retention: float = 86400.0
    # Seconds /results waits before answering.
    results_latency: float = 0.0
    # Most urls or queries in one batch.
    batch_max_items: int = 3000
    # Most POST /v3/task/batch per second (sandbox clock); 0 means no limit.
    batch_rps: int = 1
    # Fractions (0..1) of requests answered 429 or 500 instead, per endpoint.
    submit_429_rate: float = 0.0
    submit_500_rate: float = 0.0
    batch_429_rate: float = 0.0
    batch_500_rate: float = 0.0
    status_429_rate: float = 0.0
    status_500_rate: float = 0.0
    results_429_rate: float = 0.0
    results_500_rate: float = 0.0
    # Seconds in the Retry-After header of an injected 429.
    retry_after: int = 1
    # Callback body: "task" (the seed's task object) or "short" (task_id, status_code).
    callback_variant: str = "task"
    # Key the passthrough note is echoed under: "passthrough" or the seed's "passtrough".
    passthrough_key: str = "passthrough"
    # Seconds from completion until the callback POST.
    callback_delay: float = 0.0
    # Fraction of callbacks never sent.
    drop_rate: float = 0.0
    # Fraction of callbacks sent twice.
    duplicate_rate: float = 0.0
    # Each callback waits a uniform extra in [0, window] seconds, so they arrive out of order.
    reorder_window: float = 0.0
    # Retries of a callback answered non-2xx or not answered at all.
    callback_retries: int = 0
    # Seconds between callback retries.
    callback_retry_delay: float = 0.5
    # Seconds before a callback POST times out.
    callback_timeout: float = 5.0
    # Callback POSTs in flight at once.
    callback_concurrency: int = 64
    # Seed of the random generator (faults, drops, jitter); None for a random one.
    seed: int | None = None


class _Failure(Exception):
    """An error answer, raised anywhere in a handler and rendered by the endpoint wrapper."""

    def __init__(
        self, status: int, message: str, errors: list[Any] | None = None, retry_after: int = 0
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors
        self.retry_after = retry_after

    def to_response(self) -> Response:
        body: dict[str, Any] = {"status": "failed", "message": self.message}
        if self.errors is not None:
            body["errors"] = self.errors
        headers = {"Retry-After": str(self.retry_after)} if self.status == 429 else None
        return json_response(body, self.status, headers)


def _bad_request(message: str, field_name: str) -> _Failure:
    return _Failure(400, message, [{"field": field_name, "message": message}])


@dataclass(slots=True)
class _Task:
    fields: dict[str, Any]  # the task object, as POST /v3/task answers it
    created: float  # sandbox-clock seconds
    callback_url: str | None
    passthrough: Any  # the note to echo in the callback; None when not given
    results: bytes | None = None  # the /results body, built on first request once finished


def _stamp(seconds: float) -> str:
    """Decodo's timestamp: UTC, "YYYY-MM-DD HH:MM:SS"."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))


def _is_true(value: Any) -> bool:
    return value is True or value in (1, "1", "true", "True")


class _IdGenerator:
    """Snowflake ids like Decodo's: 7434928397127555073 >> 22 is its created_at in unix ms."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._sequence = 0

    def next(self) -> str:
        self._sequence = (self._sequence + 1) & 0x3FFFFF  # the low 22 bits
        raw = (int(self._clock() * 1000) << 22) | self._sequence
        if not 10**18 <= raw < 10**19:  # a clock far from today: still 19 digits
            raw = 10**18 + raw % (9 * 10**18)
        return str(raw)


class _Scheduler:
    """One asyncio task over a heap of timers, so a 10,000-task batch costs one timer loop."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()  # breaks ties, so callables are never compared
        self._wake = asyncio.Event()

    def call_later(self, delay: float, action: Callable[[], None]) -> None:
        entry = (time.monotonic() + max(delay, 0.0), next(self._order), action)
        heappush(self._heap, entry)
        if self._heap[0] is entry:
            self._wake.set()

    async def run(self) -> None:
        while True:
            self._run_due()
            await self._sleep_until_next()

    def _run_due(self) -> None:
        now = time.monotonic()
        for _ in range(_SCHEDULER_BURST):
            if not self._heap or self._heap[0][0] > now:
                return
            action = heappop(self._heap)[2]
            try:
                action()
            except Exception:
                logger.exception("sandbox timer failed")

    async def _sleep_until_next(self) -> None:
        self._wake.clear()
        if not self._heap:
            await self._wake.wait()
            return
        delay = self._heap[0][0] - time.monotonic()
        if delay <= 0:
            await asyncio.sleep(0)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()


class _CallbackSender:
    """POSTs callback bodies with one shared client, retrying and counting in Stats."""

    def __init__(self, config: DecodoSandboxConfig, stats: Stats, scheduler: _Scheduler) -> None:
        self._config = config
        self._stats = stats
        self._scheduler = scheduler
        self._client: httpx.AsyncClient | None = None
        self._semaphore = asyncio.Semaphore(max(config.callback_concurrency, 1))
        self._running: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        concurrency = max(self._config.callback_concurrency, 1)
        self._semaphore = asyncio.Semaphore(concurrency)
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self._client = httpx.AsyncClient(timeout=self._config.callback_timeout, limits=limits)

    async def close(self) -> None:
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def send_later(self, delay: float, url: str, body: bytes, attempt: int = 0) -> None:
        self._scheduler.call_later(delay, partial(self._start, url, body, attempt))

    def _start(self, url: str, body: bytes, attempt: int) -> None:
        task = asyncio.create_task(self._deliver(url, body, attempt))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _deliver(self, url: str, body: bytes, attempt: int) -> None:
        async with self._semaphore:
            delivered = await self._post(url, body)
        if delivered:
            self._stats.requests["callbacks sent"] += 1
            return
        self._stats.requests["callbacks failed"] += 1
        if attempt < self._config.callback_retries:
            self._stats.requests["callbacks retried"] += 1
            self.send_later(self._config.callback_retry_delay, url, body, attempt + 1)

    async def _post(self, url: str, body: bytes) -> bool:
        if self._client is None:
            return False
        try:
            response = await self._client.post(url, content=body, headers=_JSON_HEADERS)
        except httpx.HTTPError as error:
            logger.debug("callback to %s failed: %s", url, type(error).__name__)
            return False
        self._stats.count("callback", response.status_code)
        return response.is_success


class _DecodoSandbox:
    """The task store and the /v3 handlers."""

    def __init__(self, config: DecodoSandboxConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.stats = Stats()
        self.scheduler = _Scheduler()
        self.sender = _CallbackSender(config, self.stats, self.scheduler)
        self._rng = random.Random(config.seed)
        self._ids = _IdGenerator(clock)
        self._tasks: dict[str, _Task] = {}
        self._batch_times: collections.deque[float] = collections.deque()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self.sender.open()
        runner = asyncio.create_task(self.scheduler.run())
        try:
            yield
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
            await self.sender.close()

    def routes(self) -> list[Route]:
        return [
            Route("/v3/task", self._endpoint("submit", self.submit), methods=["POST"]),
            Route("/v3/task/batch", self._endpoint("batch", self.submit_batch), methods=["POST"]),
            Route("/v3/task/{task_id}", self._endpoint("status", self.status), methods=["GET"]),
            Route(
                "/v3/task/{task_id}/results",
                self._endpoint("results", self.results),
                methods=["GET"],
            ),
            Route("/_sandbox/tasks/{task_id}/complete", self.complete_now, methods=["POST"]),
            *control_routes(self.config, self.clock, self.stats),
        ]

    # -- the wrapper every /v3 endpoint shares

    def _endpoint(self, name: str, handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            try:
                self._check_auth(request)
                self._inject_error(name)
                response = await handler(request)
            except _Failure as failure:
                response = failure.to_response()
            self.stats.count(name, response.status_code)
            return response

        return endpoint

    def _check_auth(self, request: Request) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        valid = hmac.compare_digest(token.strip().encode(), self.config.auth.encode())
        if scheme.lower() != "basic" or not valid:
            raise _Failure(401, "Username invalid.")

    def _inject_error(self, name: str) -> None:
        # The knobs are named after the endpoint: submit_429_rate, results_500_rate, ...
        rate_429 = float(getattr(self.config, f"{name}_429_rate"))
        rate_500 = float(getattr(self.config, f"{name}_500_rate"))
        if rate_429 > 0 and self._rng.random() < rate_429:
            raise _Failure(429, "Too many requests", retry_after=self.config.retry_after)
        if rate_500 > 0 and self._rng.random() < rate_500:
            raise _Failure(500, "Internal server error")

    # -- /v3 handlers

    async def submit(self, request: Request) -> Response:
        params = await _read_object(request)
        _check_single_input(params)
        return json_response(self._create_task(params).fields)

    async def submit_batch(self, request: Request) -> Response:
        params = await _read_object(request)
        key, items = _read_batch_input(params, self.config.batch_max_items)
        # Only a valid batch takes the slot: a 400 leaves the rate budget as it was.
        if not self._take_batch_slot():
            raise _Failure(429, "Too many requests", retry_after=self.config.retry_after)
        queries = [self._create_task({**params, key: item}).fields for item in items]
        return json_response({"id": self._new_id(), "queries": queries, "errors": []})

    async def status(self, request: Request) -> Response:
        return json_response(_status_object(self._find_live(request.path_params["task_id"])))

    async def results(self, request: Request) -> Response:
        if self.config.results_latency > 0:
            await asyncio.sleep(self.config.results_latency)
        task = self._find_live(request.path_params["task_id"])
        status = task.fields["status"]
        if status == "pending" or (status == "faulted" and self.config.faulted_results == "204"):
            return Response(status_code=204)
        if status == "faulted":
            raise _Failure(404, "Task faulted")
        if task.results is None:
            task.results = orjson.dumps({"results": [_result_entry(task)]})
        return Response(task.results, 200, media_type="application/json")

    async def complete_now(self, request: Request) -> Response:
        """POST /_sandbox/tasks/{id}/complete {"status": "done"|"faulted"}: finish a task now."""
        response = await self._finish_now(request)
        self.stats.count("complete", response.status_code)
        return response

    async def _finish_now(self, request: Request) -> Response:
        try:
            task = self._find_live(request.path_params["task_id"])
            status = (await _read_object(request, allow_empty=True)).get("status", "done")
            if status not in ("done", "faulted"):
                raise _bad_request("status must be done or faulted", "status")
            if task.fields["status"] != "pending":
                raise _Failure(409, "Task already finished")
        except _Failure as failure:
            return failure.to_response()
        self._complete(task.fields["id"], status)
        return json_response(task.fields)

    # -- the task store

    def _new_id(self) -> str:
        task_id = self._ids.next()
        while task_id in self._tasks:
            task_id = self._ids.next()
        return task_id

    def _create_task(self, params: dict[str, Any]) -> _Task:
        now = self.clock()
        fields = _task_object(params, self._new_id(), _stamp(now))
        callback_url = params.get("callback_url")
        if not isinstance(callback_url, str):
            callback_url = None
        # The seed's own example spells the note "passtrough".
        task = _Task(fields, now, callback_url, params.get("passthrough", params.get("passtrough")))
        self._tasks[fields["id"]] = task
        delay = self.config.completion_delay + self._jitter(self.config.completion_jitter)
        self.scheduler.call_later(delay, partial(self._complete, fields["id"], None))
        return task

    def _find_live(self, task_id: str) -> _Task:
        task = self._tasks.get(task_id)
        if task is None:
            raise _Failure(404, "Task not found")
        if self.clock() - task.created > self.config.retention:
            raise _Failure(404, "Task results expired")
        return task

    def _take_batch_slot(self) -> bool:
        """A sliding one-second window over accepted batch requests, by the sandbox clock."""
        if self.config.batch_rps <= 0:
            return True
        now = self.clock()
        while self._batch_times and now - self._batch_times[0] >= 1.0:
            self._batch_times.popleft()
        if len(self._batch_times) >= self.config.batch_rps:
            return False
        self._batch_times.append(now)
        return True

    def _jitter(self, window: float) -> float:
        return self._rng.uniform(0.0, window) if window > 0 else 0.0

    # -- completion and callbacks

    def _complete(self, task_id: str, status: str | None) -> None:
        task = self._tasks.get(task_id)
        if task is None or task.fields["status"] != "pending":
            return  # already finished by /_sandbox/tasks/{id}/complete
        if status is None:
            status = "faulted" if self._rng.random() < self.config.fault_rate else "done"
        task.fields["status"] = status
        task.fields["updated_at"] = _stamp(self.clock())
        if task.callback_url:
            self._schedule_callbacks(task, task.callback_url)

    def _schedule_callbacks(self, task: _Task, url: str) -> None:
        if self._rng.random() < self.config.drop_rate:
            self.stats.requests["callbacks dropped"] += 1
            return
        copies = 1
        if self._rng.random() < self.config.duplicate_rate:
            self.stats.requests["callbacks duplicated"] += 1
            copies = 2
        body = orjson.dumps(self._callback_body(task))
        for _ in range(copies):
            delay = self.config.callback_delay + self._jitter(self.config.reorder_window)
            self.sender.send_later(delay, url, body)

    def _callback_body(self, task: _Task) -> dict[str, Any]:
        if self.config.callback_variant == "short":
            body = _short_callback(task)
        else:
            body = _task_callback(task)
        if task.passthrough is not None:
            body[self.config.passthrough_key] = task.passthrough
        return body


async def _read_object(request: Request, allow_empty: bool = False) -> dict[str, Any]:
    raw = await request.body()
    if allow_empty and not raw:
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _bad_request("Request body is not valid JSON.", "body") from None
    if not isinstance(body, dict):
        raise _bad_request("Request body must be a JSON object.", "body")
    return body


def _check_single_input(params: dict[str, Any]) -> None:
    if not params.get("url") and not params.get("query"):
        raise _bad_request("Either url or query is required.", "url")
    for key in ("url", "query"):
        if params.get(key) is not None and not isinstance(params[key], str):
            raise _bad_request(f"{key} must be a string.", key)


def _read_batch_input(params: dict[str, Any], max_items: int) -> tuple[str, list[str]]:
    """The batch's input key ("url" or "query") and its items, or a 400."""
    given = [key for key in ("url", "query") if params.get(key) is not None]
    if len(given) != 1:
        raise _bad_request("A batch takes either url or query, not both and not neither.", "url")
    key = given[0]
    items = params[key]
    if not isinstance(items, list) or not items:
        raise _bad_request(f"{key} must be a non-empty list.", key)
    if len(items) > max_items:
        raise _bad_request(f"A batch takes at most {max_items} items.", key)
    if not all(isinstance(item, str) and item for item in items):
        raise _bad_request(f"Every {key} item must be a non-empty string.", key)
    if isinstance(params.get("target"), list):
        raise _bad_request("A batch takes a single target.", "target")
    return key, items


def _task_object(params: dict[str, Any], task_id: str, stamp: str) -> dict[str, Any]:
    """The task object of the seed's submit example, with target/query/callback_url if given."""
    fields = {key: params.get(key, default) for key, default in _ECHOED_HEAD}
    fields.update(
        created_at=stamp, id=task_id, status="pending", content_encoding="utf-8", updated_at=stamp
    )
    fields.update({key: params.get(key, default) for key, default in _ECHOED_TAIL})
    fields.update({key: params[key] for key in _ECHOED_IF_GIVEN if key in params})
    return fields


def _status_object(task: _Task) -> dict[str, Any]:
    """The seed's status example: its fields only, target and query filled as in callbacks."""
    status = {key: task.fields.get(key) for key in _STATUS_FIELDS}
    status["target"] = status["target"] or "universal"
    status["query"] = status["query"] or ""
    return status


def _task_callback(task: _Task) -> dict[str, Any]:
    """The seed's callback example: the task object, with parse as 0/1."""
    fields = task.fields
    return {
        "id": fields["id"],
        "status": fields["status"],
        "target": fields.get("target") or "universal",
        "query": fields.get("query") or "",
        "url": fields["url"] or "",
        "domain": fields["domain"],
        "limit": fields["limit"],
        "locale": fields["locale"],
        "geo": fields["geo"],
        "device_type": fields["device_type"],
        "page_from": fields["page_from"],
        "parse": int(_is_true(fields["parse"])),
        "output_schema": fields["output_schema"],
        "headless": fields["headless"],
        "priority": 0,
        "persist": True,
        "content_encoding": fields["content_encoding"],
        "created_at": fields["created_at"],
        "updated_at": fields["updated_at"],
    }


def _short_callback(task: _Task) -> dict[str, Any]:
    """The third-party shape: a 2xx status_code means done, anything else faulted."""
    status_code = 200 if task.fields["status"] == "done" else 500
    return {"task_id": task.fields["id"], "status_code": status_code}


def _result_entry(task: _Task) -> dict[str, Any]:
    fields = task.fields
    parsed = _is_true(fields["parse"])
    url = fields["url"] or _search_url(fields)
    content_type = "application/json" if parsed else "text/html; charset=utf-8"
    return {
        "content": _parsed_content(fields, url) if parsed else _html_content(fields, url),
        "status_code": 200,
        "url": url,
        "task_id": fields["id"],
        "created_at": fields["created_at"],
        "updated_at": fields["updated_at"],
        "headers": {"content-type": content_type},
        "cookies": [],
    }


def _search_url(fields: dict[str, Any]) -> str:
    return f"https://www.example.{fields['domain']}/search?q={quote_plus(str(fields['query']))}"


def _html_content(fields: dict[str, Any], url: str) -> str:
    subject = html.escape(str(fields.get("query") or url))
    return (
        "<!doctype html><html><head><title>Decodo sandbox</title></head>"
        f"<body><h1>{subject}</h1><p>task {fields['id']}</p></body></html>"
    )


def _parsed_content(fields: dict[str, Any], url: str) -> dict[str, Any]:
    organic = {"pos": 1, "url": url, "title": "Decodo sandbox", "desc": f"task {fields['id']}"}
    return {"url": url, "page": 1, "results": {"organic": [organic]}, "parse_status_code": 12000}


def create_app(config: DecodoSandboxConfig | None = None, clock: Clock | None = None) -> Starlette:
    """The Decodo simulator as a Starlette app; timers and the callback client live in its
    lifespan, so run it under a server that runs the lifespan."""
    sandbox = _DecodoSandbox(config or DecodoSandboxConfig(), clock or Clock())
    faults = Faults(sandbox.config, sandbox.stats, _error_answer)
    return SandboxApp(faults, routes=sandbox.routes(), lifespan=sandbox.lifespan)


def _error_answer(status: int, retry_after: int | None) -> Response:
    """Decodo's error body for an injected fault; Retry-After only when it is given."""
    message = "Too many requests" if status == 429 else HTTPStatus(status).phrase
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return json_response({"status": "failed", "message": message}, status, headers)


def main(argv: list[str] | None = None) -> None:
    """`python -m receiver.sandbox.decodo [--host H] [--port P] [--knob-name VALUE ...]`."""
    run_sandbox("decodo", argv)


if __name__ == "__main__":
    main()
