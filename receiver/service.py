"""Assembling the processes: the web app, the worker, or both in one (`receiver run`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import uvicorn
from redis.asyncio import Redis
from starlette.applications import Starlette

from receiver.app import Services, create_app
from receiver.jobs.decodo import DecodoJobs
from receiver.keys import Keys
from receiver.providers.base import DEFAULT_TIMEOUT
from receiver.providers.decodo import DecodoClient
from receiver.settings import Settings
from receiver.store import Store
from receiver.tokens import PassthroughSigner
from receiver.worker import Worker


def open_redis(settings: Settings) -> Redis:
    return Redis.from_url(settings.redis_url or "", health_check_interval=30)


def open_http(settings: Settings) -> httpx.AsyncClient:
    """The one HTTP client of a worker process; it never follows redirects with our keys."""
    limits = httpx.Limits(
        max_connections=settings.fetch_concurrency + 20,
        max_keepalive_connections=settings.fetch_concurrency + 20,
    )
    return httpx.AsyncClient(timeout=DEFAULT_TIMEOUT, limits=limits, follow_redirects=False)


def build_worker(settings: Settings, store: Store, http: httpx.AsyncClient) -> Worker:
    signer = PassthroughSigner(settings.secret_keys, settings.token_max_age)
    decodo = DecodoJobs(
        store, DecodoClient(http, settings.decodo_base_url, settings.decodo_auth), signer, settings
    )
    return Worker(
        store,
        decodo,
        concurrency=settings.fetch_concurrency,
        claim_idle=settings.claim_idle,
        heartbeat_interval=settings.heartbeat_interval,
    )


async def run_worker(settings: Settings) -> None:
    """`receiver worker`: work until cancelled."""
    redis = open_redis(settings)
    store = Store(redis, Keys(settings.key_prefix), events_maxlen=settings.events_maxlen)
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
        lifespan="on",
        proxy_headers=False,
        server_header=False,
    )
    uvicorn.Server(config).run()
