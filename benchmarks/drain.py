"""Drain: one `receiver worker` fetching the results of 10,000 finished Decodo tasks.

The Decodo sandbox serves each task's results with 50 ms latency, so at the default fetch
concurrency (100) no worker can beat 10,000 x 0.05 / 100 = 5 s. The tasks are created in the
sandbox with `POST /v3/task/batch`, recorded in Redis as a running job, and the worker is
started and waits (its heartbeat is in Redis). The clock starts when the benchmark begins
marking the tasks done (`Store.apply_callbacks`, which enqueues each results fetch on the
work stream, as a callback would) and stops when the job's `completed` field reaches the
number of tasks (Redis polled every 50 ms). The worker's RSS is sampled on each poll; the
peak is its VmHWM.

With `--cluster`, the same drain again, of as many new tasks, on a Redis Cluster
(benchmarks/cluster.py, AOF fsynced every second, as the one redis-server): its figures end
in `_cluster`, and `cluster_ratio` is its seconds over the one redis-server's (above 1: the
cluster drains slower).

    python -m benchmarks.drain [--quick] [--cluster]
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.callbacks import create_tasks, record_job
from benchmarks.cluster import (
    CLUSTER_PARTITIONS,
    Target,
    embedded_version,
    on_cluster,
    on_one,
    redis_cluster,
)
from benchmarks.common import (
    PYTHON,
    Child,
    arguments,
    child,
    cpu_seconds,
    emit,
    peak_rss_mb,
    receiver_env,
    redis_server,
    rss_mb,
    run,
    sandbox,
    say,
    workdir,
)
from receiver.sandbox.decodo import DEFAULT_AUTH
from receiver.store import Store

RESULTS_LATENCY = 0.05  # seconds the sandbox takes to answer /results
CONCURRENCY = 100  # the worker's default RECEIVER_FETCH_CONCURRENCY
CALLBACKS_PER_CALL = 500  # tasks marked done per script call
POLL_EVERY = 0.05  # seconds between looks at the job's progress
TIMEOUT = 600.0  # seconds the drain may take before the benchmark gives up
# The figures of the drain on the cluster that are shown, each with `_cluster` appended.
CLUSTER_FIGURES = (
    "seconds",
    "ratio",
    "peak_rss_mb",
    "worker_cpu_pct",
    "worker_cpu_ms_per_fetch",
    "results_stored",
    "failed",
    "results_requests",
)


async def wait_for_heartbeat(store: Store, worker: Child) -> None:
    deadline = time.monotonic() + 30
    heartbeats = store.keys.heartbeats
    while not await store.router.of(heartbeats).zcard(heartbeats):
        if worker.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the worker did not start; its log ends with:\n{worker.tail()}")
        await asyncio.sleep(0.05)


async def drain(store: Store, job_id: str, task_ids: list[str], worker: Child) -> float:
    """Seconds from the first fetch enqueued until every result is stored."""
    started = time.monotonic()
    for start in range(0, len(task_ids), CALLBACKS_PER_CALL):
        chunk = task_ids[start : start + CALLBACKS_PER_CALL]
        await store.apply_callbacks([(job_id, t, "done") for t in chunk])
    say(f"enqueued {len(task_ids)} fetches in {time.monotonic() - started:.2f} s")
    last_report = started
    key = store.keys.job(job_id)
    while True:
        completed, failed = await store.router.of(key).hmget(key, ["completed", "failed"])
        now = time.monotonic()
        if int(completed or 0) + int(failed or 0) >= len(task_ids):
            return now - started
        if now - started > TIMEOUT:
            raise TimeoutError(f"{int(completed or 0)} of {len(task_ids)} stored after {TIMEOUT} s")
        if now - last_report >= 1.0:
            rss = rss_mb(worker.pid)
            say(f"  {now - started:5.1f} s: {int(completed or 0)} stored, RSS {rss:.1f} MiB")
            last_report = now
        rss_mb(worker.pid)  # fails loudly if the worker died
        await asyncio.sleep(POLL_EVERY)


async def measure(directory: Path, tasks: int, cluster: bool) -> dict[str, object]:
    knobs = {"results_latency": RESULTS_LATENCY, "batch_rps": 0, "completion_delay": 0.01}
    with sandbox("decodo", directory, **knobs) as decodo:
        with redis_server(directory, aof=True) as redis_process:
            async with on_one(redis_process) as target:
                one = await drain_on(target, directory, decodo, tasks)
        if not cluster:
            return one
        with redis_cluster(aof=True) as nodes:
            async with on_cluster(nodes) as target:
                on = await drain_on(target, directory, decodo, tasks)
    return {
        **one,
        **{f"{name}_cluster": value for name, value in on.items() if name in CLUSTER_FIGURES},
        "cluster_ratio": round(float(on["seconds"]) / float(one["seconds"]), 3),
        "cluster_persistence": nodes.persistence,
        "cluster_partitions": CLUSTER_PARTITIONS,
        "redis_version": embedded_version(),
        "cluster_redis_version": nodes.version,
    }


async def drain_on(target: Target, directory: Path, decodo: str, tasks: int) -> dict[str, Any]:
    """`tasks` new finished tasks in the sandbox, recorded on the target's Redis and drained
    by one worker on it."""
    store = target.store
    before = httpx.get(f"{decodo}/_sandbox/stats", timeout=10).json()
    task_ids = await create_tasks(decodo, tasks)
    job_id = await record_job(store, task_ids)
    say(f"job {job_id}: {len(task_ids)} finished tasks in the sandbox and in Redis ({target.name})")
    env = receiver_env(
        target.url,
        None,
        DECODO_BASE_URL=decodo,
        DECODO_AUTH=DEFAULT_AUTH,
        RECEIVER_FETCH_CONCURRENCY=str(CONCURRENCY),
        RECEIVER_RECONCILE_AFTER="86400",
        **target.env,
    )
    argv = [PYTHON, "-m", "receiver", "worker"]
    with child(f"receiver-worker-{target.name}", argv, directory, env=env) as worker:
        await wait_for_heartbeat(store, worker)
        idle_rss, cpu_before = rss_mb(worker.pid), cpu_seconds(worker.pid)
        seconds = await drain(store, job_id, task_ids, worker)
        cpu = cpu_seconds(worker.pid) - cpu_before
        peak = peak_rss_mb(worker.pid)
        final_rss = rss_mb(worker.pid)
    job = await store.get_job(job_id)
    results = store.keys.results(job_id)
    stored = await store.router.of(results).hlen(results)
    stats = httpx.get(f"{decodo}/_sandbox/stats", timeout=10).json()
    stats = {k: v - before.get(k, 0) for k, v in stats.items() if isinstance(v, int | float)}
    assert job is not None
    limit = tasks * RESULTS_LATENCY / CONCURRENCY
    say(
        f"drained {stored} results in {seconds:.2f} s (limit {limit:.2f} s); job "
        f"{job['status']}, failed {job.get('failed', 0)}; sandbox /results answers: "
        f"{ {k: v for k, v in stats.items() if k.startswith('results')} }"
    )
    return {
        "benchmark": "drain",
        "tasks": tasks,
        "seconds": round(seconds, 3),
        "limit_seconds": round(limit, 3),
        "ratio": round(seconds / limit, 3),
        "peak_rss_mb": round(peak, 1),
        "worker_cpu_pct": round(100 * cpu / seconds, 1),
        "worker_cpu_ms_per_fetch": round(1000 * cpu / tasks, 3),
        "idle_rss_mb": round(idle_rss, 1),
        "final_rss_mb": round(final_rss, 1),
        "results_stored": stored,
        "failed": job.get("failed", 0),
        "results_requests": stats.get("results", 0),
        "concurrency": CONCURRENCY,
    }


async def main_async(quick: bool, cluster: bool) -> dict[str, object]:
    tasks = 1000 if quick else 10_000
    say(
        f"drain: {tasks} results at {RESULTS_LATENCY * 1000:.0f} ms each, concurrency {CONCURRENCY}"
    )
    with workdir("drain") as directory:
        return await measure(directory, tasks, cluster)


def main() -> None:
    args = arguments(
        "results drain of one receiver worker against the Decodo sandbox", cluster=True
    )
    emit(run(main_async(args.quick, args.cluster)))


if __name__ == "__main__":
    main()
