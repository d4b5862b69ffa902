"""receiver on a real Redis Cluster (tests/cluster.py): found from any node, its keys spread
over every master, its events read by the helpers and over SSE as on one Redis."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio.cluster import RedisCluster

from receiver.events import consume, subscribe, wait
from receiver.settings import Settings
from receiver.store import connect_store
from receiver.store.routing import ClusterAddress
from receiver.store.server import detect_cluster, settle_partitions
from tests.cluster import ClusterProcesses
from tests.e2e import deployment
from tests.servers import RedisProcess
from tests.test_events import sse_frames, until

pytestmark = pytest.mark.cluster


def test_a_cluster_is_found_from_any_node_or_named_by_its_seeds(
    redis_cluster: ClusterProcesses, redis_process: RedisProcess
) -> None:
    for node in redis_cluster.nodes:
        assert detect_cluster(Settings(redis_url=f"redis://127.0.0.1:{node.port}/0"))
    assert detect_cluster(Settings(redis_url=redis_cluster.seeds_url))
    assert not detect_cluster(Settings(redis_url=redis_process.url))
    seeds = ClusterAddress.parse("rediss+cluster://u:p%40ss@h1:7000,h2:7001")
    assert seeds == ClusterAddress((("h1", 7000), ("h2", 7001)), True, "u", "p@ss")


def test_a_new_deployment_on_a_cluster_gets_partitions_on_every_master(
    redis_cluster: ClusterProcesses,
) -> None:
    redis_cluster.flushall()
    settings = Settings(redis_url=redis_cluster.seeds_url, redis_cluster=True)
    assert settle_partitions(settings) == 4 * len(redis_cluster.masters())


def test_the_keys_of_many_jobs_spread_over_every_master(redis_cluster: ClusterProcesses) -> None:
    redis_cluster.flushall()
    settings = Settings(redis_url=redis_cluster.url, redis_cluster=True, partitions=12)

    async def create() -> None:
        store = await connect_store(settings)
        for index in range(300):
            job_id = f"job{index:03}"
            await store.create_job(job_id, "decodo", total=1, params={})
            await store.record_submission(job_id, 0, [("t", "u")], last=True, reconcile_after=60)
        await store.close()

    asyncio.run(create())
    import redis as sync_redis

    per_master = {
        master.port: int(sync_redis.Redis(port=master.port).dbsize())
        for master in redis_cluster.masters()
    }
    total = sum(per_master.values())
    assert total >= 300 * 3  # a hash, tasks and inputs per job, and the partitions' keys
    for count in per_master.values():
        assert total / 3 * 0.7 <= count <= total / 3 * 1.3, per_master


def test_events_on_a_cluster_reach_sse_and_the_helpers(redis_cluster: ClusterProcesses) -> None:
    with deployment(redis_cluster, settings={"sse_heartbeat": 0.2}) as d:
        urls = [[f"https://example.com/{n}/{i}" for i in range(3)] for n in range(6)]
        jobs = [d.submit({"urls": batch}) for batch in urls]
        for job_id in jobs:
            assert d.wait(job_id)["status"] == "completed"
        expected = sum(len(d.events(job_id)) for job_id in jobs)
        start = ",".join(["0-0"] * d.keys.partitions)
        frames: list[dict[str, str]] = []
        deadline = time.monotonic() + 30
        headers = {**d.headers(), "Last-Event-ID": start}
        with httpx.stream("GET", f"{d.api}/events", headers=headers, timeout=30) as response:
            assert response.status_code == 200
            for frame in sse_frames(until(deadline, response.iter_lines())):
                frames.append(frame)
                if len(frames) == expected:
                    break
        sent = [orjson.loads(frame["data"]) for frame in frames]
        for job_id in jobs:
            assert [e for e in sent if e["job_id"] == job_id] == d.events(job_id)
        assert asyncio.run(_helpers(redis_cluster.url, jobs))


async def _helpers(url: str, jobs: list[str]) -> bool:
    """subscribe(), consume() and wait() on redis-py's own cluster client."""
    client: Any = RedisCluster.from_url(url)
    finals: set[str] = set()
    consumed: list[str] = []
    async with asyncio.timeout(30):
        async for event in subscribe(client, after="0"):
            if event.final:
                finals.add(event.job_id)
            if finals == set(jobs):
                break
        async for event in consume(client, "g", "c", start="0"):
            if event.final:
                consumed.append(event.job_id)
            if len(consumed) == len(jobs):
                break
        ended = [await wait(client, job_id, timeout=10) for job_id in jobs]
    await client.aclose()
    return sorted(consumed) == sorted(jobs) and all(e.type == "job.completed" for e in ended)
