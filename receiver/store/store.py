"""The store: every room of it behind one object, the one door to Redis."""

from __future__ import annotations

import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from receiver.errors import ConfigError
from receiver.settings import Settings
from receiver.store.batching import Batcher
from receiver.store.health import Health
from receiver.store.jobs import Callback, Jobs
from receiver.store.keys import Keys
from receiver.store.queue import Queue
from receiver.store.rates import Rates
from receiver.store.routing import Router
from receiver.store.schedule import Schedule
from receiver.store.server import open_redis

log = logging.getLogger("receiver.store")

# Batches of callbacks in flight at once. With `appendfsync always` each script call waits
# for Redis's fsync: a second batch in flight is taken while the first one's is on disk.
COMMITS_IN_FLIGHT = 2


class Store(Jobs, Schedule, Queue, Rates, Health):
    """Reads and atomic writes of jobs, tasks, results, events, scheduled and queued work,
    rate limits and heartbeats (each room in its module)."""

    def _setup(self) -> None:
        self._setup_jobs()
        self._setup_reads()
        self._setup_schedule()
        self._setup_queue()

    async def settle_partitions(self) -> None:
        """Record this deployment's number of partitions if its Redis holds none yet;
        ConfigError if it holds another (see server.settle_partitions, which the CLI runs
        before a process starts). A Redis away meanwhile leaves it to that check."""
        meta = self.keys.meta
        try:
            await self._for(meta).hsetnx(meta, "partitions", self.keys.partitions)
            recorded = int(await self._for(meta).hget(meta, "partitions") or 1)
        except RedisError as exc:
            log.warning("could not read the partitions", extra={"error": type(exc).__name__})
            return
        if recorded != self.keys.partitions:
            raise ConfigError(
                f"this process has {self.keys.partitions} partitions, but this deployment's "
                f"Redis holds {recorded} ({meta})"
            )

    async def close(self) -> None:
        await self._router.aclose()


async def connect_store(settings: Settings) -> Store:
    """The store of a process: its Redis (a cluster's slot map read) and the deployment's
    number of partitions checked."""
    store = open_store(settings, open_redis(settings))
    await store.router.start()
    await store.settle_partitions()
    return store


def open_store(settings: Settings, redis: Redis | Router) -> Store:
    return Store(
        redis,
        Keys(settings.key_prefix, settings.partitions or 1),
        events_maxlen=settings.events_maxlen,
        confirm=settings.durability_confirm,
        confirm_timeout=settings.durability_timeout,
    )


def callback_committer(store: Store, max_batch: int = 512) -> Batcher[Callback, str]:
    """Group commit of callbacks: those that arrive in one event-loop turn share one script
    call (one Redis round trip per batch); each caller gets its code."""
    return Batcher(store.apply_callbacks, max_batch, COMMITS_IN_FLIGHT)
