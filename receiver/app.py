"""The web app: provider callbacks, the job API, health."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver import api, callbacks, metrics, streams
from receiver.jobs.base import Context
from receiver.outages import Outages, outage_reason
from receiver.providers.base import open_http
from receiver.registry import workflows
from receiver.settings import Settings
from receiver.store import (
    EventLog,
    callback_committer,
    connect_store,
    open_stream_redis,
)
from receiver.tokens import PassthroughSigner
from receiver.web import AllowedHosts, Services, StreamSlots, authed, handler, json_response

Background = Callable[[Services], contextlib.AbstractAsyncContextManager[None]]


def create_app(
    settings: Settings,
    *,
    background: Background | None = None,
) -> Starlette:
    """The ASGI app. `background` runs beside it for its lifetime (the worker, in `run`)."""
    services: dict[str, Services] = {}

    def current() -> Services:
        return services["s"]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        store = await connect_store(settings)
        events = EventLog(open_stream_redis(settings), store.keys)
        await events.router.start()
        signer = PassthroughSigner(settings.secret_keys, settings.token_max_age)
        outages = Outages()
        outages.listeners += [store.router.noticed, events.router.noticed]
        feeds = [
            streams.EventFeed(events, partition, outages, settings.sse_heartbeat)
            for partition in range(store.keys.partitions)
        ]
        async with open_http(settings) as http:
            services["s"] = Services(
                settings,
                store,
                signer,
                callback_committer(store),
                http,
                workflows(Context(settings, store, http, signer)),
                metrics.RedisGauges(),
                outages,
                events,
                StreamSlots(settings.max_streams),
                feeds,
            )
            metrics.DURABILITY.labels(settings.durability or "none").set(1)
            try:
                if background is None:
                    yield
                else:
                    async with background(services["s"]):
                        yield
            finally:
                for feed in feeds:
                    await feed.close()
                await events.close()
                await store.close()

    decodo_callbacks = callbacks.DecodoCallbacks(current)
    routes = [
        Route("/callbacks/decodo", decodo_callbacks, methods=["POST"]),
        Route(
            "/callbacks/firecrawl", handler(current, callbacks.firecrawl_webhook), methods=["POST"]
        ),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", handler(current, readyz), methods=["GET"]),
        Route("/jobs", authed(current, api.create_job), methods=["POST"]),
        Route("/jobs", authed(current, api.list_jobs), methods=["GET"]),
        Route("/jobs/{job_id}", authed(current, api.get_job), methods=["GET"]),
        Route("/jobs/{job_id}", authed(current, api.cancel_job), methods=["DELETE"]),
        Route("/jobs/{job_id}/results", authed(current, api.get_results), methods=["GET"]),
        Route("/jobs/{job_id}/retry", authed(current, api.retry_job), methods=["POST"]),
        Route("/jobs/{job_id}/events", authed(current, streams.job_events), methods=["GET"]),
        Route("/events", authed(current, streams.all_events), methods=["GET"]),
        Route("/metrics", handler(current, metrics_endpoint), methods=["GET"]),
        Route("/openapi.json", openapi_endpoint, methods=["GET"]),
    ]
    # The callback path skips routing (and the Host check): it is the one that must be fast.
    fast_path = Middleware(callbacks.CallbackFastPath, endpoint=decodo_callbacks)
    hosts = Middleware(AllowedHosts, hosts=settings.hosts())
    app = Starlette(routes=routes, lifespan=lifespan, middleware=[fast_path, hosts])
    # No 307 from /jobs/ to /jobs: an empty or "/" job id is a 404 like any unknown one, and
    # no answer builds a Location from the request's Host header.
    app.router.redirect_slashes = False
    return app


async def metrics_endpoint(request: Request, services: Services) -> Response:
    # Served during an outage too, with the gauges Redis cannot give left out: the
    # outage counter and receiver_redis_up are what an operator looks for then.
    try:
        await services.gauges.refresh(services.store)
    except RedisError as exc:
        services.gauges.values = {}
        if not services.outages.failed(exc):
            raise
    return Response(metrics.exposition(services.gauges), media_type=CONTENT_TYPE_LATEST)


async def openapi_endpoint(request: Request) -> Response:
    from receiver.openapi import document

    return json_response(document())


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request, services: Services) -> Response:
    """Ready when Redis answers, has room to write, and a worker's heartbeat is fresh; the
    answer names what is missing, and the durability level in force."""
    settings, store = services.settings, services.store
    body: dict[str, object] = {"durability": settings.durability or "none"}
    window = 3 * settings.heartbeat_interval
    try:
        memory = await store.memory()
        workers = await store.live_workers(window)
    except RedisError as exc:
        services.outages.failed(exc)
        reason = outage_reason(exc) or type(exc).__name__
        return _not_ready(body, "redis", f"redis unavailable ({reason})")
    services.outages.recovered()
    if memory.full:
        return _not_ready(body, "redis", memory.full)
    if not workers:
        return _not_ready(body, "worker", f"no worker heartbeat in the last {window:g} s")
    return json_response({"ready": True, "workers": workers, **body})


def _not_ready(body: dict[str, object], missing: str, reason: str) -> Response:
    return json_response({"ready": False, "missing": missing, "reason": reason, **body}, 503)
