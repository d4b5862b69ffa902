from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from receiver.store import Store
from receiver.store.keys import Keys
from tests.cluster import ClusterProcesses, run_redis_cluster
from tests.e2e import Target
from tests.receiver_app import Receiver, running_receiver
from tests.servers import RedisProcess, run_redis


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def redis_process() -> Iterator[RedisProcess]:
    """One real redis-server for the session; tests use their own key prefix or flush."""
    with run_redis() as server:
        yield server


@pytest.fixture
async def redis(redis_process: RedisProcess) -> AsyncIterator[Redis]:
    """A client of the session's redis-server, emptied before the test."""
    client = Redis.from_url(redis_process.url)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
def store(redis: Redis) -> Store:
    """A store whose scripts fail on a key they were not given in KEYS."""
    return Store(redis, Keys(), events_maxlen=10_000, strict_scripts=True)


@pytest.fixture
def receiver(redis_process: RedisProcess) -> Iterator[Receiver]:
    """The web app (no worker) under uvicorn on the session's Redis, emptied first."""
    with running_receiver(redis_process) as running:
        yield running


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[ClusterProcesses]:
    """One real Redis Cluster for the session (3 masters, 1 replica each), skipped when no
    Redis is installed (failed in CI). Roles move with failovers: read them live, and start
    again any node a test kills."""
    with run_redis_cluster() as cluster:
        yield cluster


@pytest.fixture(params=["one", "cluster"])
def redis_target(request: pytest.FixtureRequest) -> Target:
    """One redis-server, then the Redis Cluster: the end-to-end tests that take it run on
    both (`-m "not cluster"` leaves the cluster out)."""
    if request.param == "cluster":
        request.applymarker(pytest.mark.cluster)
        cluster: ClusterProcesses = request.getfixturevalue("redis_cluster")
        return cluster
    server: RedisProcess = request.getfixturevalue("redis_process")
    return server
