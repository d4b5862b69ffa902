"""Assembling the processes: the web app, the worker, or both in one (`receiver run`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson
import prometheus_client
import uvicorn
from redis.exceptions import RedisError
from starlette.applications import Starlette
from uvicorn._types import (
    ASGI3Application,
    ASGIReceiveCallable,
    ASGISendCallable,
    ASGISendEvent,
    Scope,
)
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from receiver.app import Background, create_app
from receiver.metrics import CONNECTIONS_CUT
from receiver.processes import uvicorn_options
from receiver.providers.base import open_http
from receiver.settings import Settings
from receiver.store import STREAM_POOL_SIZE, connect_store, pool_size
from receiver.web import Services
from receiver.worker import build_worker

log = logging.getLogger(__name__)


def run_forever(main: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine on uvloop when it is installed (it is with uvicorn[standard]), until
    it returns or SIGTERM/SIGINT cancel it (its `finally` blocks run: a worker withdraws
    its heartbeat on the way out)."""
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - a platform without uvloop
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_cancelled_by_signals(main))


async def _cancelled_by_signals(main: Coroutine[Any, Any, None]) -> None:
    task = asyncio.ensure_future(main)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def run_worker(settings: Settings) -> None:
    """`receiver worker`: work until cancelled; `Fatal` when Redis can never be used."""
    raise_file_limit()  # a Redis connection and a provider one per concurrent fetch or poll
    if settings.metrics_port:
        prometheus_client.start_http_server(settings.metrics_port, addr=settings.host)
    store = await connect_store(settings)
    try:
        async with open_http(settings) as http:
            await build_worker(settings, store, http).run()
    finally:
        with contextlib.suppress(RedisError, OSError):
            await store.close()


class ProcessStop:
    """Why a `receiver run` process must stop, when its worker met a fatal fault: the
    worker asks uvicorn to shut down (SIGTERM to ourselves) and the command then exits
    non-zero, so that systemd or Kubernetes restarts it."""

    def __init__(self, *, signal_self: bool = True) -> None:
        self.reason: str | None = None
        self.signal_self = signal_self  # False in tests, where the process is pytest's

    def request(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            if self.signal_self:
                os.kill(os.getpid(), signal.SIGTERM)


def worker_beside(stop: ProcessStop) -> Background:
    """Run a worker in the web process for the app's lifetime (`receiver run`)."""

    @contextlib.asynccontextmanager
    async def beside(services: Services) -> AsyncIterator[None]:
        async with open_http(services.settings) as http:
            worker = build_worker(services.settings, services.store, http, services.outages)
            task = asyncio.create_task(worker.run())
            task.add_done_callback(lambda done: _worker_ended(done, stop))
            try:
                yield
            finally:
                task.cancel()
                # Whatever the worker met, the web shuts down cleanly (it was logged).
                with contextlib.suppress(BaseException):
                    await task

    return beside


def _worker_ended(task: asyncio.Task[None], stop: ProcessStop) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    reason = f"{type(exc).__name__}: {exc}" if exc else "the worker returned"
    log.critical("worker stopped; shutting down", extra={"reason": reason})
    stop.request(reason)


def web_app(settings: Settings, *, stop: ProcessStop | None = None) -> Starlette:
    """The web app; with a `stop`, a worker beside it (`receiver run`)."""
    return create_app(settings, background=worker_beside(stop) if stop else None)


def serve(app: Starlette, settings: Settings) -> None:
    """Serve `app` in this process (`receiver web`, `receiver run`)."""
    config = uvicorn.Config(
        app,
        # httptools, with the bounds uvicorn does not give it (GuardedProtocol).
        http=guarded_protocol(connection_limits(settings)),
        **uvicorn_options(settings),
    )
    _Server(config).run()


# Set by the SIGTERM handler: a stop was asked for. Kept even where the SystemExit the
# handler raises is lost: raised while a `__del__` runs (a garbage-collected client's),
# Python prints it and carries on, and the process went on serving.
_STOPPING = threading.Event()


def exit_on_sigterm() -> None:
    """Unwind on SIGTERM as on Ctrl-C, so the embedded Redis is stopped on the way out.

    uvicorn re-raises the signal it caught once it has shut down; this handler then turns
    it into SystemExit instead of letting the default action kill the process on the spot.
    A SIGTERM taken before uvicorn's own handlers were in place stops the server too
    (`_Server`), should its SystemExit have been lost.
    """

    def stop(signum: int, frame: object) -> None:
        _STOPPING.set()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)


class _Server(uvicorn.Server):
    async def on_tick(self, counter: int) -> bool:
        return _STOPPING.is_set() or await super().on_tick(counter)


# -- the bounds of an HTTP connection ---------------------------------------------------
#
# uvicorn's httptools protocol bounds neither the size of a request's headers (httptools
# gathers a header line in memory however long it grows) nor the time a client takes to
# send them or its body (the keep-alive timeout only runs between requests; a connection
# that never sends a byte is never timed out), nor the number of open connections
# (limit_concurrency answers 503 to requests, once their headers are in, and counts the
# slow connections it should shed against the good ones). Its h11 protocol bounds the
# headers (400, not 431) but not the times either, and parses in pure Python. So:
# httptools, and a subclass that adds the bounds on the bytes as they arrive, with one
# timer at most per connection (none for a request that arrives whole in one read on a
# kept-alive connection, as callbacks do).

# Seconds a connection being closed reads and drops what its client still sends, after
# the answer and a FIN: the client reads the answer before a reset can destroy it.
LINGER = 0.5
# Open files a process needs besides its client connections, beyond its Redis pools and
# provider connections: the listening socket, logs, the embedded redis-server's pipes.
_FILES_SPARE = 64
# The soft file limit asked for when the hard one is unlimited.
_FILES_WANTED = 1 << 20
_LINGERING = -2  # GuardedProtocol._head of a connection being closed


@dataclass(frozen=True)
class ConnectionLimits:
    max_header_size: int  # bytes of a request line and headers
    header_timeout: float  # seconds to send them
    body_timeout: float  # seconds to send the body, once the headers are in
    max_connections: int  # open at once


def connection_limits(settings: Settings) -> ConnectionLimits:
    """The settings' limits, with as many connections as the file limit leaves room for
    (raised to its hard limit first)."""
    files = raise_file_limit()
    pools = pool_size(settings)
    providers = settings.fetch_concurrency + settings.poll_concurrency  # `run`'s worker
    reserve = pools + STREAM_POOL_SIZE + providers + _FILES_SPARE
    room = max(files - reserve, files // 4)
    if settings.max_connections > room:
        log.warning(
            "fewer connections than RECEIVER_MAX_CONNECTIONS for lack of open files",
            extra={"max_connections": room, "file_limit": files, "reserved": reserve},
        )
    return ConnectionLimits(
        settings.max_header_size,
        settings.header_timeout,
        settings.body_timeout,
        min(settings.max_connections, room),
    )


def raise_file_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit; the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = _FILES_WANTED if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return _FILES_WANTED if soft == resource.RLIM_INFINITY else soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError) as exc:
        log.warning("the file limit could not be raised", extra={"limit": soft, "error": exc})
        return soft
    return wanted


def guarded_protocol(limits: ConnectionLimits) -> type[GuardedProtocol]:
    return type("ReceiverHttpProtocol", (GuardedProtocol,), {"limits": limits})


def _answer(status: int, reason: str, message: str, *extra: bytes) -> bytes:
    """A whole JSON answer that closes its connection."""
    body = orjson.dumps({"error": reason, "message": message})
    head = [
        b"HTTP/1.1 %d %s" % (status, HTTPStatus(status).phrase.encode()),
        b"content-type: application/json",
        b"content-length: %d" % len(body),
        b"connection: close",
        *extra,
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


_ANSWERS = {
    "header_too_large": _answer(431, "header_too_large", "the request headers are too large"),
    "header_timeout": _answer(408, "timeout", "the request headers were not sent in time"),
    "body_timeout": _answer(408, "timeout", "the request body was not sent in time"),
    "too_many_connections": _answer(
        503, "unavailable", "too many open connections; retry later", b"retry-after: 1"
    ),
}


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with bounds: headers over `max_header_size` bytes are
    answered 431 without being parsed, headers not in after `header_timeout` seconds and a
    body not in `body_timeout` seconds after them 408, a connection beyond
    `max_connections` 503; each of those closes its connection, as does an answer that did
    not read its request's body."""

    limits: ConnectionLimits

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._head = 0  # bytes of the request head being read; -1 while none is
        self._tail = b""  # the last bytes of the head so far, where its blank line may start
        self._in_body = False
        self._unread = False  # the answer being sent started before the body was in
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            CONNECTIONS_CUT.labels("too_many_connections").inc()
            transport.write(_ANSWERS["too_many_connections"])
            transport.close()
            return
        self._arm()  # a connection that never sends a byte is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._head >= 0:
            self._head += len(data)
            if self._head > self.limits.max_header_size and not self._head_ends(data):
                self._cut("header_too_large")
                return
        elif self._head == _LINGERING:
            return
        super().data_received(data)
        if self._head > 0:  # a head begun, not complete
            self._tail = data[-3:]
        if self._timer is None and (self._head > 0 or self._in_body):
            self._arm()

    def _head_ends(self, data: bytes) -> bool:
        """Whether the head ends in `data` within max_header_size bytes."""
        seen = self._tail + data
        room = self.limits.max_header_size - (self._head - len(data)) + len(self._tail)
        return seen.find(b"\r\n\r\n", 0, room) >= 0

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._head, self._tail, self._in_body = -1, b"", True
        self._disarm()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        super()._start_asgi_task(cycle, self._closing_unread(cycle, app))

    def _closing_unread(
        self, cycle: RequestResponseCycle, app: ASGI3Application
    ) -> ASGI3Application:
        """The app, with an answer that starts before the request's body was received whole
        (a 413 that did not read it) sent with `connection: close`, and its connection then
        closed (on_response_complete): what is left of the body would otherwise be swallowed
        for as long as the client sends. Nothing is wrapped for a request received whole by
        the time the app runs (a callback in one read)."""

        async def run(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
            if not cycle.more_body:
                await app(scope, receive, send)
                return

            async def send_closing(message: ASGISendEvent) -> None:
                if cycle.response_started or not cycle.more_body:
                    await send(message)
                    return
                self._unread = True
                cycle.keep_alive = False  # uvicorn then writes `connection: close`...
                await send(message)
                cycle.keep_alive = True  # ...and on_response_complete closes, lingering

            await app(scope, receive, send_closing)

        return run

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._head, self._in_body = 0, False  # what comes next is the next request's head
        self._disarm()

    def on_response_complete(self) -> None:
        if self._unread:
            self.server_state.total_requests += 1
            self._linger()
            return
        super().on_response_complete()

    def _arm(self) -> None:
        delay = self.limits.body_timeout if self._in_body else self.limits.header_timeout
        self._timer = self.loop.call_later(delay, self._timed_out)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self._in_body:
            self._cut("body_timeout")
        elif self._head > 0:
            self._cut("header_timeout")
        else:  # not a byte of a request: nothing to answer
            CONNECTIONS_CUT.labels("header_timeout").inc()
            self.transport.close()

    def _cut(self, reason: str) -> None:
        """Answer (unless an answer is under way) and close, lingering; the app, if it is
        still reading the request, is told that the client went away."""
        CONNECTIONS_CUT.labels(reason).inc()
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not cycle.response_started:
            self.transport.write(_ANSWERS[reason])
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
        self._linger()

    def _linger(self) -> None:
        """Send what is written and a FIN, drop what the client still sends for LINGER
        seconds, then close."""
        self._disarm()
        self._head, self._in_body = _LINGERING, False
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._timer = self.loop.call_later(LINGER, self.transport.close)
