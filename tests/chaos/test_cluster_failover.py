"""A Redis Cluster master killed with -9 under two web and two worker processes."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis.cluster

from receiver.store.keys import Keys
from tests.chaos.harness import (
    Chaos,
    ReceiverApi,
    assert_invariants,
    assert_recorded,
    job_urls,
    receiver_env,
    wait_for_jobs,
    wait_until,
)
from tests.cluster import run_redis_cluster
from tests.servers import consecutive_free_ports

pytestmark = pytest.mark.cluster

PARTITIONS = 6  # two on each master
TASKS = 60  # per job


def test_a_master_killed_mid_storm_is_replaced_and_nothing_acknowledged_is_lost(
    chaos: Chaos,
) -> None:
    # A 202 waits for a replica (RECEIVER_DURABILITY=replica: WAIT 1 on the write's own
    # connection), so the replica that takes over holds every acknowledged write. The
    # sandbox sends no callbacks (the storms do) and nothing is reconciled within the test.
    with run_redis_cluster() as cluster:
        sandbox = chaos.sandbox(completion_delay=0.05, drop_rate=1.0, results_latency=0.05)
        settings = {
            "RECEIVER_DURABILITY": "replica",
            "RECEIVER_DURABILITY_TIMEOUT": "2",
            "RECEIVER_PARTITIONS": str(PARTITIONS),
            "RECEIVER_RECONCILE_AFTER": "300",
            "RECEIVER_CLAIM_IDLE": "2",
        }
        apis, webs = [], []
        for index in (1, 2):
            port = consecutive_free_ports(1)
            env = receiver_env(port, sandbox, cluster.seeds_url, **settings)
            webs.append(chaos.receiver("web", env, f"web-{index}"))
            apis.append(ReceiverApi(port))
        workers = [chaos.receiver("worker", env, f"worker-{i}") for i in (1, 2)]
        keys = Keys(partitions=PARTITIONS)
        client = redis.cluster.RedisCluster.from_url(cluster.url)

        def tasks_of(job_id: str) -> list[str]:
            def recorded() -> list[str]:
                found: Any = client.hkeys(keys.tasks(job_id))
                return [t.decode() for t in found] if len(found) >= TASKS else []

            return wait_until(recorded, 30, f"the tasks of {job_id}")

        before = [apis[n % 2].submit(job_urls(TASKS, f"b{n}")) for n in range(6)]
        assert len({keys.partition_of(job_id) for job_id in before}) > 1
        storms = [
            chaos.storm(apis[n % 2].url, job_id, tasks_of(job_id), copies=2, spread=6.0)
            for n, job_id in enumerate(before)
        ]
        wait_until(lambda: sum(len(s.accepted()) for s in storms) >= TASKS, 30, "callbacks taken")
        killed = max(cluster.masters(), key=lambda m: len(m.slots)).port
        cluster.kill_master(killed)
        # Meanwhile /readyz says Redis is what is missing.
        seen = wait_until(lambda: _not_ready(apis[0]), 30, "/readyz saying redis is missing")
        assert seen["reason"].startswith("redis unavailable"), seen
        cluster.wait_for_failover(killed, timeout=60)
        # Its node comes back as a replica of the promoted one: a 202 needs a replica.
        cluster.restart(killed)

        # Created while the processes may still learn where the slots went: a 503 then is
        # tried again after its Retry-After, as any client does.
        after = [apis[n % 2].submit(job_urls(TASKS, f"a{n}"), retry_for=30) for n in range(4)]
        storms += [
            chaos.storm(apis[n % 2].url, job_id, tasks_of(job_id), copies=2, spread=3.0)
            for n, job_id in enumerate(after)
        ]
        for storm in storms:
            storm.wait(120)
        jobs = [*before, *after]

        def connect() -> redis.cluster.RedisCluster:
            return redis.cluster.RedisCluster.from_url(cluster.url)

        wait_for_jobs(connect, jobs, 120, watch=[*webs, *workers], keys=keys)
        for job_id, storm in zip(jobs, storms, strict=True):
            assert set(storm.outcomes()) <= {"202", "503"}, storm.outcomes()
            assert_recorded(client, job_id, storm.accepted(), keys)
        assert_invariants(
            client,
            dict.fromkeys(jobs, TASKS),
            sandbox.stats(),
            extra_fetches=4 * 100,  # fetches a failover cut off may be made again
            keys=keys,
        )
        for process in [*webs, *workers]:
            process.assert_alive("after the failover")
        deadline = time.monotonic() + 30
        while (ready := apis[0].ready())[0] != 200:
            assert time.monotonic() < deadline, ready
            time.sleep(0.2)
        client.close()


def _not_ready(api: ReceiverApi) -> dict[str, Any] | None:
    status, body = api.ready()
    return body if status == 503 and body.get("missing") == "redis" else None
