"""Assembling the processes: the web app, the worker, or both in one (`receiver run`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import prometheus_client
import uvicorn
from starlette.applications import Starlette

from receiver.app import create_app
from receiver.settings import Settings
from receiver.web import Services
from receiver.wiring import build_worker, open_http, open_redis, open_store


def run_forever(main: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine on uvloop when it is installed (it is with uvicorn[standard])."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a platform without uvloop
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


async def run_worker(settings: Settings) -> None:
    """`receiver worker`: work until cancelled."""
    if settings.metrics_port:
        prometheus_client.start_http_server(settings.metrics_port, addr=settings.host)
    redis = open_redis(settings)
    store = open_store(settings, redis)
    try:
        async with open_http(settings) as http:
            await build_worker(settings, store, http).run()
    finally:
        await redis.aclose()


@contextlib.asynccontextmanager
async def worker_beside(services: Services) -> AsyncIterator[None]:
    """Run a worker in the web process for the app's lifetime (`receiver run`)."""
    async with open_http(services.settings) as http:
        worker = build_worker(services.settings, services.store, http)
        task = asyncio.create_task(worker.run())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def web_app(settings: Settings, *, with_worker: bool = False) -> Starlette:
    return create_app(settings, background=worker_beside if with_worker else None)


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
    )
    uvicorn.Server(config).run()
