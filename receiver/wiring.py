"""Building the long-lived parts from the settings: Redis, the HTTP client, the worker."""

from __future__ import annotations

import httpx
from httpx_aiohttp import AiohttpTransport
from redis.asyncio import BlockingConnectionPool, Redis

from receiver.dispatch import Dispatcher
from receiver.jobs.decodo import DecodoJobs
from receiver.jobs.dify import DifyJobs
from receiver.jobs.firecrawl import FirecrawlJobs
from receiver.keys import Keys
from receiver.outages import Outages
from receiver.polling import Poller
from receiver.providers.base import CONNECT_TIMEOUT
from receiver.providers.decodo import DecodoClient
from receiver.providers.dify import DifyClient
from receiver.providers.firecrawl import FirecrawlClient
from receiver.settings import Settings
from receiver.store import Store
from receiver.tokens import PassthroughSigner
from receiver.worker import Worker

# Seconds any one Redis command may take before the call fails (and counts as an outage),
# chosen here rather than inherited from redis-py (5 s in 8.x). Every blocking read asks
# for less than this (events.read_events and the worker block for at most half of it).
REDIS_TIMEOUT = 10.0
# Seconds to open a connection to Redis.
REDIS_CONNECT_TIMEOUT = 5.0


def open_redis(settings: Settings) -> Redis:
    """A client whose pool waits for a free connection rather than failing when busy, with
    every timeout chosen: a command, a connection, and the wait for a pooled connection."""
    pool = BlockingConnectionPool.from_url(
        settings.redis_url or "",
        max_connections=2 * settings.fetch_concurrency + 2 * settings.poll_concurrency + 64,
        timeout=REDIS_TIMEOUT,
        socket_timeout=REDIS_TIMEOUT,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT,
        socket_keepalive=True,
        health_check_interval=30,
    )
    return Redis.from_pool(pool)  # closing the client closes the pool too


def open_http(settings: Settings) -> httpx.AsyncClient:
    """The one HTTP client of a process; it never follows redirects with our keys.

    httpx's interface on aiohttp's connections: aiohttp parses HTTP in C, and costs half
    the CPU per request of httpx's own transport (pure-Python h11), the most of a fetch.
    """
    connections = settings.fetch_concurrency + settings.poll_concurrency * 2 + 20
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    transport = AiohttpTransport(limits=limits, trust_env=False)
    timeout = httpx.Timeout(settings.provider_timeout, connect=CONNECT_TIMEOUT)
    return httpx.AsyncClient(transport=transport, timeout=timeout, follow_redirects=False)


def open_store(settings: Settings, redis: Redis) -> Store:
    return Store(
        redis,
        Keys(settings.key_prefix),
        events_maxlen=settings.events_maxlen,
        due_shards=settings.due_shards,
        confirm=settings.durability_confirm,
        confirm_timeout=settings.durability_timeout,
    )


def firecrawl_jobs(settings: Settings, store: Store, http: httpx.AsyncClient) -> FirecrawlJobs:
    client = FirecrawlClient(http, settings.firecrawl_base_url, settings.firecrawl_api_key)
    return FirecrawlJobs(store, client, settings)


def build_worker(
    settings: Settings, store: Store, http: httpx.AsyncClient, outages: Outages | None = None
) -> Worker:
    signer = PassthroughSigner(settings.secret_keys, settings.token_max_age)
    decodo_client = DecodoClient(http, settings.decodo_base_url, settings.decodo_auth)
    decodo = DecodoJobs(store, decodo_client, signer, settings)
    dify_client = DifyClient(http, settings.dify_base_url, settings.dify_api_key)
    pollers: dict[str, Poller] = {
        "firecrawl": firecrawl_jobs(settings, store, http),
        "dify": DifyJobs(store, dify_client, settings),
    }
    return Worker(
        store,
        Dispatcher(store, decodo, pollers, settings.poll_concurrency),
        # Room for a second step while each fetch stores its results and is acknowledged.
        concurrency=2 * settings.fetch_concurrency,
        claim_idle=settings.claim_idle,
        lease=settings.lease,
        heartbeat_interval=settings.heartbeat_interval,
        outages=outages,
    )
