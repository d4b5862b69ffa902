"""The redis_cluster fixture: a whole cluster, keys on every master, and a failover that a
running client lives through."""

from __future__ import annotations

import time
from collections import Counter

import anyio
import pytest
import redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import ClusterDownError, SlotNotCoveredError, TryAgainError

from tests.cluster import SLOTS, ClusterProcesses

pytestmark = pytest.mark.cluster

# What redis-py raises while a master is dead and before its replica has taken over: the
# node refuses connections, then the survivors answer CLUSTERDOWN until the election ends.
TRANSIENT = (
    redis.ConnectionError,
    redis.TimeoutError,
    ClusterDownError,
    TryAgainError,
    SlotNotCoveredError,
)


def key_in(slots: tuple[tuple[int, int], ...], prefix: str) -> str:
    """A key whose slot is one of `slots`."""
    for number in range(100_000):
        key = f"{prefix}:{number}"
        if any(first <= key_slot(key.encode()) <= last for first, last in slots):
            return key
    raise AssertionError(f"no key in {slots}")


async def write_until_accepted(
    client: RedisCluster, key: str, value: str, timeout: float
) -> Counter[str]:
    """SET `key` again and again until it succeeds; the transient errors seen, by name."""
    seen: Counter[str] = Counter()
    deadline = time.monotonic() + timeout
    while True:
        try:
            await client.set(key, value)
            return seen
        except TRANSIENT as error:
            seen[type(error).__name__] += 1
            if time.monotonic() > deadline:
                raise
        await anyio.sleep(0.05)


def restart_dead(cluster: ClusterProcesses) -> None:
    """Leave the session's cluster whole for the next test, whatever happened in this one."""
    for node in cluster.nodes:
        if not node.alive:
            cluster.restart(node.port)


def test_cluster_covers_every_slot_with_three_masters_and_three_replicas(
    redis_cluster: ClusterProcesses,
) -> None:
    masters = redis_cluster.masters()
    ranges = sorted(slots for master in masters for slots in master.slots)
    assert len(masters) == 3
    assert [len(master.replicas) for master in masters] == [1, 1, 1]
    assert sum(last - first + 1 for first, last in ranges) == SLOTS
    assert all(ranges[i][1] + 1 == ranges[i + 1][0] for i in range(len(ranges) - 1))
    assert ranges[0][0] == 0 and ranges[-1][1] == SLOTS - 1
    roles = Counter(node.role() for node in redis_cluster.nodes)
    assert roles == {"master": 3, "replica": 3}
    assert redis_cluster.seeds_url.count("127.0.0.1:") == 6


@pytest.mark.anyio
async def test_cluster_client_writes_keys_on_every_master(
    redis_cluster: ClusterProcesses,
) -> None:
    redis_cluster.flushall()
    client = RedisCluster.from_url(redis_cluster.url)
    try:
        for number in range(300):
            await client.set(f"spread:{number}", number)
        for number in range(300):
            assert await client.get(f"spread:{number}") == str(number).encode()
    finally:
        await client.aclose()
    sizes = []
    for master in redis_cluster.masters():
        with redis.Redis(port=master.port) as node:
            sizes.append(node.dbsize())
    assert sum(sizes) == 300
    assert all(size > 50 for size in sizes), sizes


@pytest.mark.anyio
async def test_cluster_failover_lets_a_running_client_write_again(
    redis_cluster: ClusterProcesses,
) -> None:
    victim = redis_cluster.masters()[0]
    key = key_in(victim.slots, "failover")
    client = RedisCluster.from_url(redis_cluster.url)
    try:
        await client.set(key, "before")
        redis_cluster.kill_master(victim.port)
        async with anyio.create_task_group() as group:
            group.start_soon(write_until_accepted, client, key, "during", 60)
            promoted = await anyio.to_thread.run_sync(redis_cluster.wait_for_failover, victim.port)
        assert promoted in victim.replicas
        with anyio.fail_after(30):
            await write_until_accepted(client, key, "after", 30)
        assert await client.get(key) == b"after"
    finally:
        await client.aclose()
        restart_dead(redis_cluster)


def test_cluster_restart_brings_a_killed_master_back_as_a_replica(
    redis_cluster: ClusterProcesses,
) -> None:
    victim = redis_cluster.masters()[-1]
    try:
        redis_cluster.kill_master(victim.port)
        promoted = redis_cluster.wait_for_failover(victim.port)
        assert redis_cluster.node(victim.port).role() == "down"
        redis_cluster.restart(victim.port)
    finally:
        restart_dead(redis_cluster)
    assert redis_cluster.node(victim.port).role() == "replica"
    masters = {master.port: master for master in redis_cluster.masters()}
    assert victim.port not in masters
    assert masters[promoted].replicas == (victim.port,)
    assert masters[promoted].slots == victim.slots
