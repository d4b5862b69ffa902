"""Assembling the processes: the web app, the worker, or both in one (`receiver run`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import prometheus_client
import uvicorn
from redis.exceptions import RedisError
from starlette.applications import Starlette

from receiver.app import Background, create_app
from receiver.providers.base import open_http
from receiver.settings import Settings
from receiver.store import open_redis, open_store
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
    if settings.metrics_port:
        prometheus_client.start_http_server(settings.metrics_port, addr=settings.host)
    redis = open_redis(settings)
    store = open_store(settings, redis)
    try:
        async with open_http(settings) as http:
            await build_worker(settings, store, http).run()
    finally:
        with contextlib.suppress(RedisError, OSError):
            await redis.aclose()


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
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        # Uvicorn's loggers propagate to the root handler of configure_logging: one format,
        # JSON included, rather than uvicorn's own plain-text handlers.
        log_config=None,
        lifespan="on",
        proxy_headers=False,
        access_log=False,
        server_header=False,
        # Requests in flight get this long to finish on SIGTERM; open event streams are
        # then cut, and their clients resume with Last-Event-ID.
        timeout_graceful_shutdown=max(1, round(settings.shutdown_timeout)),
    )
    uvicorn.Server(config).run()
