"""Footprint: Redis bytes per tracked job, and the RSS growth of `receiver web` under callbacks.

1. `INFO memory` used_memory of a fresh redis-server before and after 100,000 Firecrawl jobs
   are tracked with `Store.track_job` (no results: tracked jobs hold none until they end),
   with the bytes of each kind of key beside it (MEMORY USAGE).
2. The resident set size of one `receiver web` process (from /proc) after a warm-up of a few
   thousand callbacks, then after 200,000 more distinct valid callbacks (the ingest load
   generator, at full speed).

    python -m benchmarks.footprint [--quick]
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from benchmarks.callbacks import count_missing, prepare_job
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


async def used_memory(redis: Redis) -> int:
    info = await redis.info("memory")
    return int(info["used_memory"])


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
    redis, keys, count = store.redis, store.keys, len(job_ids)
    sample = job_ids[:: max(1, count // SAMPLED_JOBS)]
    hashes = [await redis.memory_usage(keys.job(j), samples=0) or 0 for j in sample]
    shared = {
        "external_index": keys.external("firecrawl"),
        "jobs_index": keys.jobs(0),
        "due_schedule": keys.due(0),
        "events_stream": keys.events(0),
    }
    per_job = {"job_hash": sum(hashes) / len(hashes)}
    for name, key in shared.items():
        per_job[name] = (await redis.memory_usage(key, samples=0) or 0) / count
    return {name: round(value, 1) for name, value in per_job.items()}


async def redis_per_job(redis: Redis, jobs: int) -> dict[str, Any]:
    store = Store(redis)
    before = await used_memory(redis)
    started = time.monotonic()
    job_ids = await track_many(store, jobs)
    seconds = time.monotonic() - started
    after = await used_memory(redis)
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


async def web_growth(directory: Path, redis: Redis, redis_url: str, sizes: Sizes) -> dict[str, Any]:
    job = await prepare_job(redis, sizes.warmup + sizes.callbacks)
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
    missing = await count_missing(redis, job, [warm, load])
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


async def measure(directory: Path, sizes: Sizes) -> dict[str, object]:
    with redis_server(directory, aof=False) as redis_process:
        redis = Redis.from_url(redis_process.url)
        try:
            memory = await redis_per_job(redis, sizes.jobs)
            web = await web_growth(directory, redis, redis_process.url, sizes)
        finally:
            await redis.aclose()
    return {"benchmark": "footprint", "jobs": sizes.jobs, **memory, **web}


async def main_async(quick: bool) -> dict[str, object]:
    sizes = QUICK if quick else FULL
    say(
        f"footprint: Redis memory of {sizes.jobs} tracked jobs; receiver web RSS over "
        f"{sizes.callbacks} callbacks after a {sizes.warmup}-callback warm-up"
    )
    with workdir("footprint") as directory:
        return await measure(directory, sizes)


def main() -> None:
    args = arguments("Redis bytes per tracked job and receiver web RSS growth")
    emit(run(main_async(args.quick)))


if __name__ == "__main__":
    main()
