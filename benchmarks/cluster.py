"""The Redis a benchmark measures on: one redis-server, or (`--cluster`) a Redis Cluster.

The cluster is the tests' (tests/cluster.py): CLUSTER_MASTERS masters with CLUSTER_REPLICAS
replica each, on loopback, made by `redis-cli --cluster create` from the redis-server on
PATH. A receiver on it gets every node as a seed (`redis+cluster://`) and
RECEIVER_PARTITIONS=CLUSTER_PARTITIONS, set explicitly to what it would default to.
A benchmark reaches either through a `Target`: a store that routes each key to its node,
its receiver children's REDIS_URL and extra environment, and its redis-server processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from redis.asyncio import Redis

from benchmarks.common import RedisServer, say, server_version
from receiver.settings import Settings
from receiver.store import Store, connect_store

if TYPE_CHECKING:
    from tests.cluster import ClusterProcesses

CLUSTER_MASTERS = 3
CLUSTER_REPLICAS = 1  # per master
# The default of a new deployment on a cluster: store.server.PARTITIONS_PER_MASTER (4) each.
CLUSTER_PARTITIONS = 4 * CLUSTER_MASTERS
# Seconds the benchmark's cluster store may take to close. Once, a close waited on with no
# end in sight for a task of the router (its slot map refresh) it had cancelled; bounded,
# the close goes on to the clients, and the benchmark says it waited.
CLOSE_TIMEOUT = 10.0
# redis-server options of every node, by whether it keeps an AOF (the tests' fixture does).
_PERSISTENCE = {
    True: ("--appendonly", "yes", "--appendfsync", "everysec"),
    False: ("--appendonly", "no"),
}


@dataclass
class RedisCluster:
    processes: ClusterProcesses
    persistence: str  # the options every node runs with, as on its command line
    version: str

    @property
    def pids(self) -> list[int]:
        """Every node's redis-server, masters and replicas."""
        return [node.process.pid for node in self.processes.nodes]

    def flushall(self) -> None:
        self.processes.flushall()


@dataclass
class Target:
    """Where one measurement's Redis is, for the benchmark and its receiver children."""

    name: str  # one | cluster
    url: str  # REDIS_URL of the receiver children
    store: Store  # the benchmark's own: each key on the node that holds it
    pids: list[int]  # the redis-server processes serving it
    env: dict[str, str] = field(default_factory=dict)  # more environment of the children


@contextlib.contextmanager
def redis_cluster(*, aof: bool) -> Iterator[RedisCluster]:
    """A whole cluster for the block's duration; with `aof`, AOF fsynced every second as
    the tests' fixture runs it, else no persistence. Its nodes and files removed after."""
    from tests.cluster import redis_cluster_binaries, run_redis_cluster

    binaries = redis_cluster_binaries()
    if binaries is None:
        raise SystemExit("--cluster needs a redis-server (>= 5) and a redis-cli on PATH")
    options = _PERSISTENCE[aof]
    version = ".".join(map(str, binaries.version))
    started = time.monotonic()
    with run_redis_cluster(CLUSTER_MASTERS, CLUSTER_REPLICAS, *options, binaries=binaries) as made:
        say(
            f"Redis Cluster {version}: {CLUSTER_MASTERS} masters with {CLUSTER_REPLICAS} "
            f"replica each, {' '.join(options)}; whole in {time.monotonic() - started:.1f} s"
        )
        yield RedisCluster(made, " ".join(options), version)


@contextlib.asynccontextmanager
async def on_one(server: RedisServer) -> AsyncIterator[Target]:
    """One redis-server, one partition: the store the benchmarks have always used."""
    store = Store(Redis.from_url(server.url))
    try:
        yield Target("one", server.url, store, [server.child.pid])
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def on_cluster(cluster: RedisCluster) -> AsyncIterator[Target]:
    """The cluster with CLUSTER_PARTITIONS partitions, recorded in it by the store."""
    url = cluster.processes.seeds_url
    settings = Settings(redis_url=url, redis_cluster=True, partitions=CLUSTER_PARTITIONS)
    store = await connect_store(settings)
    env = {"RECEIVER_PARTITIONS": str(CLUSTER_PARTITIONS)}
    try:
        yield Target("cluster", url, store, cluster.pids, env)
    finally:
        await close_within(store, CLOSE_TIMEOUT)


async def close_within(store: Store, timeout: float) -> None:
    started = time.monotonic()
    await asyncio.wait_for(store.close(), timeout)
    if time.monotonic() - started > timeout / 2:
        say(f"the cluster store took {time.monotonic() - started:.1f} s to close")


def embedded_version() -> str:
    """The version of the redis-server a benchmark's one Redis runs (common.redis_server)."""
    from receiver.embedded import redis_server_binary

    return server_version(redis_server_binary())
