"""Faults every sandbox can put in front of its own answers: the network's and the proxies'
failures, not the provider's. Off unless the `inject` knob names some.

A faulted request gets one of:
- `reset`: the connection is closed at once (RST), with no answer at all;
- `slow`: the answer waits `inject_delay` seconds, longer than a client waits; a client
  that gave up meanwhile gets nothing;
- `429` with `Retry-After: inject_retry_after`, `429_bare` with no hint when to retry;
- `5xx`: `inject_status` with the provider's own error body;
- `truncated`: the provider's 2xx answer, its body cut in half (a well-formed HTTP answer
  whose JSON ends too soon); an answer with no body is left alone and not counted;
- `html`: a reverse proxy's error page (`inject_html_status`, 502 by default).

Which requests: those whose "METHOD /route/{param}" matches a glob of `inject_routes`; of
these, the first `inject_burst` to each path, in a row, and every one for `inject_seconds`
after a path's first (an outage), then an `inject_rate` share at random; `inject_limit` at
most in all. The control routes under /_sandbox are never faulted.

Every request to a provider route is counted in Stats as "requests METHOD /route" with its
arrival time, faulted or not; faults as "injected KIND" and "injected METHOD /route"; a request
repeated after a 429 as "injected retries in time" or "injected retries too early".
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import random
import socket
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import Message, Receive, Scope, Send

from receiver.sandbox.common import Stats

KINDS = ("reset", "slow", "429", "429_bare", "5xx", "truncated", "html")
# An nginx reverse proxy's own page, as a CDN or gateway in front of a provider sends it.
PROXY_PAGE = (
    "<html>\r\n<head><title>{status} {phrase}</title></head>\r\n<body>\r\n"
    "<center><h1>{status} {phrase}</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)
_PHRASES = {
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Temporarily Unavailable",
}

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
# The provider's own error answer for a status, with the seconds to wait when it says so.
ErrorAnswer = Callable[[int, int | None], Response]


@dataclass
class FaultKnobs:
    """The fault knobs every sandbox config has (see the module docstring)."""

    # Comma-separated kinds, one drawn at random per fault: reset, slow, 429, 429_bare,
    # 5xx, truncated, html. Empty: no faults.
    inject: str = ""
    # Comma-separated globs over "METHOD /route/{param}", e.g. "GET /v3/task/*/results".
    inject_routes: str = "*"
    # Share of the matching requests faulted at random, after each path's burst.
    inject_rate: float = 0.0
    # The first N matching requests to each path are faulted, in a row.
    inject_burst: int = 0
    # Seconds each path is down from its first matching request: all of them are faulted.
    inject_seconds: float = 0.0
    # Most faults in all; 0 for no limit.
    inject_limit: int = 0
    # Seconds a `slow` answer waits before the sandbox answers as usual.
    inject_delay: float = 60.0
    # Seconds a `429` asks the client to wait.
    inject_retry_after: int = 1
    # Status of a `5xx` answer, and of an `html` page.
    inject_status: int = 503
    inject_html_status: int = 502


class Faults:
    """Draws, answers and counts the faults of one sandbox."""

    def __init__(self, knobs: FaultKnobs, stats: Stats, error_answer: ErrorAnswer) -> None:
        self.knobs = knobs
        self.stats = stats
        self.error_answer = error_answer
        # Its own generator: the sandbox's seeded draws stay as they were without faults.
        self._rng = random.Random(getattr(knobs, "seed", None))
        self._bursts: Counter[str] = Counter()  # path -> faults it got
        self._outages: dict[str, float] = {}  # path -> monotonic time of its first request
        self._total = 0
        self._setting: tuple[Any, ...] = ()  # the knobs the counts above were made under
        self._not_before: dict[str, float] = {}  # path -> monotonic end of its 429 wait

    async def serve(
        self, name: str, scope: Scope, receive: Receive, send: Send, app: ASGIApp
    ) -> None:
        """Answer one request to the provider route `name`, faulted or by `app`."""
        path = scope["path"]
        self.stats.arrive(name)
        self._check_retry(path)
        kind = self._draw(name, path)
        if kind is None:
            await app(scope, receive, send)
        elif kind == "truncated":
            await self._truncated(name, path, scope, receive, send, app)
        elif kind == "slow":
            self._count(name, path, kind)
            await self._slow(scope, receive, send, app)
        elif kind == "reset":
            self._count(name, path, kind)
            await _reset(receive, send)
        else:
            self._count(name, path, kind)
            await self._answer(kind, path)(scope, receive, send)

    def _draw(self, name: str, path: str) -> str | None:
        """The fault this request gets, if any."""
        knobs = self.knobs
        kinds = [k.strip() for k in knobs.inject.split(",") if k.strip()]
        if not kinds or not self._matches(name):
            return None
        self._refresh()
        if knobs.inject_limit and self._total >= knobs.inject_limit:
            return None
        if not self._hit(path):
            return None
        kind = kinds[0] if len(kinds) == 1 else self._rng.choice(kinds)
        if kind not in KINDS:
            raise ValueError(f"unknown fault {kind!r}; known: {', '.join(KINDS)}")
        return kind

    def _refresh(self) -> None:
        """New knobs: each path's burst and outage, and the limit, count afresh."""
        knobs = self.knobs
        setting = (
            knobs.inject,
            knobs.inject_routes,
            knobs.inject_burst,
            knobs.inject_seconds,
            knobs.inject_limit,
        )
        if setting != self._setting:
            self._setting, self._total = setting, 0
            self._bursts.clear()
            self._outages.clear()

    def _hit(self, path: str) -> bool:
        """Whether the path is in its burst or its outage, else whether the draw says so."""
        knobs = self.knobs
        if self._bursts[path] < knobs.inject_burst:
            return True
        if knobs.inject_seconds > 0:
            began = self._outages.setdefault(path, time.monotonic())
            if time.monotonic() - began < knobs.inject_seconds:
                return True
        return knobs.inject_rate > 0 and self._rng.random() < knobs.inject_rate

    def _matches(self, name: str) -> bool:
        patterns = [p.strip() for p in self.knobs.inject_routes.split(",") if p.strip()]
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)

    def _count(self, name: str, path: str, kind: str) -> None:
        self._bursts[path] += 1
        self._total += 1
        self.stats.requests[f"injected {kind}"] += 1
        self.stats.requests[f"injected {name}"] += 1

    def _check_retry(self, path: str) -> None:
        not_before = self._not_before.pop(path, None)
        if not_before is not None:
            early = time.monotonic() < not_before
            self.stats.requests[
                "injected retries too early" if early else "injected retries in time"
            ] += 1

    def _answer(self, kind: str, path: str) -> Response:
        knobs = self.knobs
        if kind == "html":
            status = knobs.inject_html_status
            phrase = _PHRASES.get(status, "Error")
            page = PROXY_PAGE.format(status=status, phrase=phrase)
            return Response(page, status, media_type="text/html")
        if kind == "5xx":
            return self.error_answer(knobs.inject_status, None)
        if kind == "429":
            self._not_before[path] = time.monotonic() + knobs.inject_retry_after
            return self.error_answer(429, knobs.inject_retry_after)
        return self.error_answer(429, None)

    async def _slow(self, scope: Scope, receive: Receive, send: Send, app: ASGIApp) -> None:
        """Answer after the delay, unless the client hung up meanwhile."""
        messages = await _read_request(receive)
        hung_up = False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.knobs.inject_delay):
                await _until_disconnect(receive)
                hung_up = True
        if not hung_up:
            await app(scope, _replay(messages, receive), send)

    async def _truncated(
        self, name: str, path: str, scope: Scope, receive: Receive, send: Send, app: ASGIApp
    ) -> None:
        start: Message = {}
        chunks: list[bytes] = []

        async def keep(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await app(scope, receive, keep)
        body = b"".join(chunks)
        if body and 200 <= start.get("status", 0) < 300:
            self._count(name, path, "truncated")
            body = body[: len(body) // 2]
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})


class SandboxApp(Starlette):
    """A sandbox's Starlette app, its provider routes behind its `Faults`.

    The faults come before Starlette's own middleware, where `send` is still the server's
    (a reset needs uvicorn's transport)."""

    def __init__(self, faults: Faults, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.faults = faults

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = self._route_name(scope)
        app = partial(Starlette.__call__, self)
        if name is None:
            await app(scope, receive, send)
        else:
            await self.faults.serve(name, scope, receive, send, app)

    def _route_name(self, scope: Scope) -> str | None:
        """ "METHOD /route/{param}" of a request to a provider route, else None."""
        if scope["type"] != "http" or scope["path"].startswith("/_sandbox/"):
            return None
        for route in self.router.routes:
            if isinstance(route, Route) and route.matches(scope)[0] == Match.FULL:
                return f"{scope['method']} {route.path}"
        return None


async def _reset(receive: Receive, send: Send) -> None:
    """Close the connection with an RST and no answer. uvicorn's `send` is a method of the
    request's cycle, which holds the transport; elsewhere (an in-process ASGI client) the
    closest thing is an error raised to that client."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None:
        raise ConnectionResetError("sandbox fault: connection reset")
    with contextlib.suppress(OSError):
        sock = transport.get_extra_info("socket")
        if sock is not None:  # linger 0: the close sends RST, not FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    await _until_disconnect(receive)  # then uvicorn sends nothing of its own


async def _read_request(receive: Receive) -> list[Message]:
    messages = [await receive()]
    while messages[-1]["type"] == "http.request" and messages[-1].get("more_body", False):
        messages.append(await receive())
    return messages


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed
