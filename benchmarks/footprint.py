"""Footprint: Redis bytes per tracked job, and the RSS growth of `receiver web` under callbacks.

1. `INFO memory` used_memory of a fresh redis-server before and after 100,000 Firecrawl jobs
   are tracked with `Store.track_job` (no results: tracked jobs hold none until they end),
   with the bytes of each kind of key beside it (MEMORY USAGE).
2. The resident set size of one `receiver web` process (from /proc) after a warm-up of a few
   thousand callbacks, then after 200,000 more distinct valid callbacks (the ingest load
   generator, at full speed).

With `--cluster`, step 1 again on a Redis Cluster (benchmarks/cluster.py, no persistence, as
the one redis-server): used_memory summed over the masters, less what their replication
buffers grew by meanwhile (bounded by repl-backlog-size, not by the number of jobs; shown
beside), and MEMORY USAGE of each kind of key summed over the partitions; `cluster_ratio` is
its bytes per job over the one redis-server's.

    python -m benchmarks.footprint [--quick] [--cluster]
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.callbacks import count_missing, prepare_job
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
    arguments,
    child,
    emit,
    free_port,
    peak_rss_mb,
    receiver_env,
    redis_server,
    rss_mb,
    run,
    say,
    workdir,
)
from benchmarks.loadgen import run_load
from receiver.store import Store

TRACK_CONCURRENCY = 64  # track_job calls in flight
SAMPLED_JOBS = 200  # job hashes whose MEMORY USAGE is averaged
SETTLE = 1.0  # seconds of quiet before reading an RSS


@dataclass(frozen=True)
class Sizes:
    jobs: int
    warmup: int  # callbacks before the first RSS reading
    callbacks: int
    connections: int = 64


FULL = Sizes(100_000, 5000, 200_000)
QUICK = Sizes(10_000, 2000, 20_000)


async def used_memory(store: Store, *fields: str) -> int:
    """A field of INFO memory (used_memory unless told), summed over the masters."""
    total = 0
    for master in store.router.masters():
        info = await master.info("memory")
        total += sum(int(info.get(name, 0)) for name in fields or ("used_memory",))
    return total


async def replication_memory(store: Store) -> int:
    """Bytes of the masters' replication backlog and replicas' output buffers."""
    return await used_memory(store, "mem_replication_backlog", "mem_clients_slaves")


async def track_many(store: Store, count: int) -> list[str]:
    """`count` tracked Firecrawl jobs, at most TRACK_CONCURRENCY being created at once."""
    gate = asyncio.Semaphore(TRACK_CONCURRENCY)

    async def track() -> str:
        batch_id = str(uuid.uuid4())
        async with gate:
            job_id, _ = await store.track_job("firecrawl", batch_id, {"batch_id": batch_id})
        return job_id

    return list(await asyncio.gather(*(track() for _ in range(count))))


async def key_bytes(store: Store, job_ids: list[str]) -> dict[str, float]:
    """Bytes per job of each kind of key the jobs use."""
    keys, count = store.keys, len(job_ids)
    sample = job_ids[:: max(1, count // SAMPLED_JOBS)]
    hashes = [await memory_usage(store, keys.job(j)) for j in sample]
    partitions = range(keys.partitions)
    shared = {
        "external_index": [keys.external("firecrawl")],
        "jobs_index": [keys.jobs(p) for p in partitions],
        "due_schedule": [keys.due(p) for p in partitions],
        "events_stream": [keys.events(p) for p in partitions],
    }
    per_job = {"job_hash": sum(hashes) / len(hashes)}
    for name, names in shared.items():
        per_job[name] = sum([await memory_usage(store, key) for key in names]) / count
    return {name: round(value, 1) for name, value in per_job.items()}


async def memory_usage(store: Store, key: str) -> int:
    """MEMORY USAGE of the key (every element counted), on the node that holds it."""
    return await store.router.of(key).memory_usage(key, samples=0) or 0


async def redis_per_job(store: Store, jobs: int) -> dict[str, Any]:
    before = await used_memory(store)
    started = time.monotonic()
    job_ids = await track_many(store, jobs)
    seconds = time.monotonic() - started
    after = await used_memory(store)
    per_key = await key_bytes(store, job_ids)
    per_job = (after - before) / jobs
    say(
        f"tracked {jobs} Firecrawl jobs in {seconds:.1f} s: used_memory {before} -> {after} "
        f"bytes, {per_job:.0f} bytes per job; by key, per job: {per_key}"
    )
    return {
        "bytes_per_job": round(per_job, 1),
        "used_memory_before": before,
        "used_memory_after": after,
        "bytes_per_job_by_key": per_key,
    }


async def cluster_per_job(target: Target, jobs: int) -> dict[str, Any]:
    """`redis_per_job` on the cluster, less the masters' replication buffers' growth, read
    once the replicas have had SETTLE seconds to catch up."""
    store = target.store
    before, buffers_before = await used_memory(store), await replication_memory(store)
    job_ids = await track_many(store, jobs)
    await asyncio.sleep(SETTLE)
    after, buffers = await used_memory(store), await replication_memory(store) - buffers_before
    per_job = (after - before - buffers) / jobs
    per_key = await key_bytes(store, job_ids)
    say(
        f"cluster: {jobs} jobs tracked; used_memory of the masters {before} -> {after} bytes, "
        f"{buffers} of it replication buffers: {per_job:.0f} bytes per job; by key: {per_key}"
    )
    return {
        "bytes_per_job_cluster": round(per_job, 1),
        "used_memory_before_cluster": before,
        "used_memory_after_cluster": after,
        "replication_buffers_growth_cluster": buffers,
        "bytes_per_job_by_key_cluster": per_key,
    }


async def web_growth(directory: Path, store: Store, redis_url: str, sizes: Sizes) -> dict[str, Any]:
    job = await prepare_job(store, sizes.warmup + sizes.callbacks)
    port = free_port()
    env = receiver_env(redis_url, port)
    argv = [PYTHON, "-m", "receiver", "web"]
    with child("receiver-web", argv, directory, env=env, port=port) as web:
        started_rss = rss_mb(web.pid)
        warm = run_load(job.spec(port, sizes.warmup, connections=sizes.connections, duration=60))
        await asyncio.sleep(SETTLE)
        before = rss_mb(web.pid)
        say(f"RSS {started_rss:.1f} MiB at start, {before:.1f} MiB after {warm.answered} callbacks")
        spec = job.spec(port, sizes.callbacks, connections=sizes.connections, duration=300)
        load = run_load(spec)
        await asyncio.sleep(SETTLE)
        after, peak = rss_mb(web.pid), peak_rss_mb(web.pid)
    missing = await count_missing(store, job, [warm, load])
    growth = 100 * (after - before) / before
    say(
        f"{load.answered} more callbacks at {load.rps:.0f}/s (statuses {load.statuses}): RSS "
        f"{before:.1f} -> {after:.1f} MiB ({growth:+.2f}%), peak {peak:.1f} MiB; missing {missing}"
    )
    return {
        "rss_start_mb": round(started_rss, 2),
        "rss_before_mb": round(before, 2),
        "rss_after_mb": round(after, 2),
        "rss_peak_mb": round(peak, 2),
        "rss_growth_pct": round(growth, 2),
        "warmup_callbacks": warm.answered,
        "callbacks": load.answered,
        "callbacks_missing": missing,
    }


async def measure(directory: Path, sizes: Sizes) -> dict[str, Any]:
    with redis_server(directory, aof=False) as redis_process:
        async with on_one(redis_process) as target:
            memory = await redis_per_job(target.store, sizes.jobs)
            web = await web_growth(directory, target.store, redis_process.url, sizes)
    return {"benchmark": "footprint", "jobs": sizes.jobs, **memory, **web}


async def measure_cluster(sizes: Sizes, one_bytes_per_job: float) -> dict[str, object]:
    """Bytes per job on the cluster, and their ratio to the one redis-server's."""
    with redis_cluster(aof=False) as nodes:
        async with on_cluster(nodes) as target:
            memory = await cluster_per_job(target, sizes.jobs)
    return {
        **memory,
        "cluster_ratio": round(memory["bytes_per_job_cluster"] / one_bytes_per_job, 3),
        "cluster_persistence": nodes.persistence,
        "cluster_partitions": CLUSTER_PARTITIONS,
        "redis_version": embedded_version(),
        "cluster_redis_version": nodes.version,
    }


async def main_async(quick: bool, cluster: bool) -> dict[str, object]:
    sizes = QUICK if quick else FULL
    say(
        f"footprint: Redis memory of {sizes.jobs} tracked jobs; receiver web RSS over "
        f"{sizes.callbacks} callbacks after a {sizes.warmup}-callback warm-up"
    )
    with workdir("footprint") as directory:
        one = await measure(directory, sizes)
    if not cluster:
        return one
    return {**one, **await measure_cluster(sizes, one["bytes_per_job"])}


def main() -> None:
    args = arguments("Redis bytes per tracked job and receiver web RSS growth", cluster=True)
    emit(run(main_async(args.quick, args.cluster)))


if __name__ == "__main__":
    main()
