"""Poll: one `receiver worker` polling 20,000 Firecrawl and 5,000 Dify jobs, all due at once.

The batches are created in the two sandboxes so they stay running for the whole benchmark
(Firecrawl pages take an hour to scrape, Dify steps an hour to index), and tracked in Redis
with `Store.track_job`, which makes each one due now. The worker runs with rate limits far
above what it can reach and short poll intervals, so due work never runs out. Polls per
second are the sandboxes' status GETs (`/_sandbox/stats`) counted over a window after a
warm-up. The baseline makes the same GETs from a bare loop (benchmarks/bare_poll.py) in a
process of its own, at the worker's poll concurrency (50 per provider) and client limits.
Rounds alternate: bare, worker, bare, worker.

With `--cluster`, the same batches are then tracked on a Redis Cluster (benchmarks/cluster.py,
AOF fsynced every second, as the one redis-server), and as many worker rounds run on it
(`worker-cluster`) after the others: `polls_per_s_cluster`, its `ratio_cluster` to the bare
loop, and `cluster_ratio`, its rate over the worker's on the one redis-server.

    python -m benchmarks.poll [--quick] [--cluster]
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from benchmarks.bare_poll import PollSpec
from benchmarks.cluster import (
    CLUSTER_PARTITIONS,
    RedisCluster,
    Target,
    embedded_version,
    on_cluster,
    on_one,
    redis_cluster,
)
from benchmarks.common import (
    PYTHON,
    Child,
    CpuMeter,
    arguments,
    child,
    emit,
    median,
    receiver_env,
    redis_server,
    run,
    sandbox,
    say,
    workdir,
)
from receiver.store import Store

POLL_CONCURRENCY = 50  # the worker's default RECEIVER_POLL_CONCURRENCY, per provider
FETCH_CONCURRENCY = 100  # the worker's default RECEIVER_FETCH_CONCURRENCY
SETUP_CONCURRENCY = 32  # requests or Redis calls in flight while setting up
FIRECRAWL_STATUS = "GET /v2/batch/scrape/{id}"
DIFY_STATUS = "GET /v1/datasets/{dataset_id}/documents/{batch}/indexing-status"


@dataclass(frozen=True)
class Sizes:
    firecrawl: int
    dify: int
    warmup: float  # seconds of polling before the window opens
    window: float  # seconds counted
    rounds: int  # of each kind


FULL = Sizes(20_000, 5000, 3.0, 10.0, 2)
QUICK = Sizes(2000, 500, 1.0, 3.0, 1)


@dataclass(frozen=True)
class Round:
    target: str  # bare | worker
    polls_per_s: float
    cpu_pct: float  # the poller's share of one core
    cpu_ms_per_poll: float


@dataclass
class Deployment:
    directory: Path
    redis_url: str
    firecrawl: str
    dify: str
    batch_ids: list[str]
    dify_batches: list[tuple[str, str]]
    env: dict[str, str] = field(default_factory=dict)  # more environment of the workers


async def bounded(calls: Iterable[Callable[[], Awaitable[Any]]], limit: int) -> list[Any]:
    """Run the calls with at most `limit` in flight; their results in order."""
    gate = asyncio.Semaphore(limit)

    async def one(call: Callable[[], Awaitable[Any]]) -> Any:
        async with gate:
            return await call()

    return list(await asyncio.gather(*(one(call) for call in calls)))


async def create_firecrawl_batches(base_url: str, count: int) -> list[str]:
    headers = {"Authorization": "Bearer fc-sandbox"}
    limits = httpx.Limits(max_connections=SETUP_CONCURRENCY)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits) as http:

        async def create(i: int) -> str:
            body = {"urls": [f"https://site.example/page/{i}"]}
            response = await http.post("/v2/batch/scrape", json=body, timeout=60)
            response.raise_for_status()
            return str(response.json()["id"])

        return await bounded((partial(create, i) for i in range(count)), SETUP_CONCURRENCY)


async def create_dify_batches(base_url: str, count: int) -> list[tuple[str, str]]:
    limits = httpx.Limits(max_connections=SETUP_CONCURRENCY)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as http:
        dataset = (await http.post("/_sandbox/datasets", json={"name": "benchmark"})).json()["id"]

        async def create(i: int) -> tuple[str, str]:
            # One document per batch, each its own name: a name given again moves the document.
            body = {"documents": [{"name": f"document-{i}.txt"}]}
            response = await http.post(f"/_sandbox/datasets/{dataset}/batches", json=body)
            response.raise_for_status()
            return str(dataset), str(response.json()["batch"])

        return await bounded((partial(create, i) for i in range(count)), SETUP_CONCURRENCY)


async def track_jobs(
    store: Store, batch_ids: list[str], dify_batches: list[tuple[str, str]]
) -> None:
    """Every batch a tracked job, due now; the providers interleaved in the schedule."""

    def firecrawl(batch_id: str) -> Callable[[], Awaitable[Any]]:
        return lambda: store.track_job("firecrawl", batch_id, {"batch_id": batch_id})

    def dify(dataset: str, batch: str) -> Callable[[], Awaitable[Any]]:
        external = {"dataset_id": dataset, "batch": batch}
        return lambda: store.track_job("dify", f"{dataset}:{batch}", external)

    calls = [firecrawl(b) for b in batch_ids]
    share = max(1, len(batch_ids) // max(1, len(dify_batches)))
    for index, (dataset, batch) in enumerate(dify_batches):
        calls.insert(index * (share + 1), dify(dataset, batch))
    await bounded(calls, SETUP_CONCURRENCY)


def status_gets(deployment: Deployment) -> int:
    """Status GETs the two sandboxes have answered so far."""
    firecrawl = httpx.get(f"{deployment.firecrawl}/_sandbox/stats", timeout=30).json()
    dify = httpx.get(f"{deployment.dify.removesuffix('/v1')}/_sandbox/stats", timeout=30).json()
    return int(firecrawl.get(FIRECRAWL_STATUS, 0)) + int(dify.get(DIFY_STATUS, 0))


def count_window(deployment: Deployment, poller: Child, sizes: Sizes) -> tuple[float, float]:
    """(polls per second over the window, the poller's share of a core in percent)."""
    start, deadline = status_gets(deployment), time.monotonic() + 30
    while status_gets(deployment) == start:  # the poller is up and polling
        if poller.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{poller.name} does not poll; its log ends with:\n{poller.tail()}")
        time.sleep(0.05)
    time.sleep(sizes.warmup)
    meter = CpuMeter({"poller": poller.pid})
    before, opened = status_gets(deployment), time.monotonic()
    meter.start()
    time.sleep(sizes.window)
    after, closed = status_gets(deployment), time.monotonic()
    cpu = meter.read()["poller"]
    return (after - before) / (closed - opened), cpu


def worker_round(deployment: Deployment, sizes: Sizes, number: int) -> tuple[float, float]:
    env = receiver_env(
        deployment.redis_url,
        None,
        FIRECRAWL_BASE_URL=deployment.firecrawl,
        FIRECRAWL_API_KEY="fc-sandbox",
        DIFY_BASE_URL=deployment.dify,
        DIFY_API_KEY="dataset-sandbox",
        RECEIVER_FIRECRAWL_RPS="100000",
        RECEIVER_DIFY_RPS="100000",
        RECEIVER_POLL_MIN="1",
        RECEIVER_POLL_MAX="2",
        RECEIVER_POLL_CONCURRENCY=str(POLL_CONCURRENCY),
        RECEIVER_FETCH_CONCURRENCY=str(FETCH_CONCURRENCY),
        **deployment.env,
    )
    argv = [PYTHON, "-m", "receiver", "worker"]
    with child(f"receiver-worker-{number}", argv, deployment.directory, env=env) as worker:
        return count_window(deployment, worker, sizes)


def bare_round(
    deployment: Deployment, sizes: Sizes, number: int, transport: str = "worker"
) -> tuple[float, float]:
    spec = PollSpec(
        firecrawl=deployment.firecrawl,
        dify=deployment.dify,
        batch_ids=deployment.batch_ids,
        dify_batches=deployment.dify_batches,
        concurrency=POLL_CONCURRENCY,
        pool=FETCH_CONCURRENCY + 20,
        seconds=sizes.warmup + sizes.window + 60,
        transport=transport,
    )
    path = deployment.directory / "bare-poll.json"
    path.write_text(json.dumps(asdict(spec)))
    argv = [PYTHON, "-m", "benchmarks.bare_poll", str(path)]
    with child(f"bare-poll-{number}-{transport}", argv, deployment.directory) as bare:
        return count_window(deployment, bare, sizes)


async def prepare(deployment: Deployment, sizes: Sizes, target: Target) -> None:
    started = time.monotonic()
    deployment.batch_ids = await create_firecrawl_batches(deployment.firecrawl, sizes.firecrawl)
    dify_root = deployment.dify.removesuffix("/v1")
    deployment.dify_batches = await create_dify_batches(dify_root, sizes.dify)
    say(
        f"created {len(deployment.batch_ids)} Firecrawl and {len(deployment.dify_batches)} Dify "
        f"batches in the sandboxes in {time.monotonic() - started:.1f} s"
    )
    await track_all(deployment, target)


async def track_all(deployment: Deployment, target: Target) -> None:
    """Every batch a tracked job on the target's Redis, due now."""
    started = time.monotonic()
    await track_jobs(target.store, deployment.batch_ids, deployment.dify_batches)
    due = await count_due(target.store)
    say(f"tracked them as jobs in {time.monotonic() - started:.1f} s; {due} polls due")


async def count_due(store: Store) -> int:
    """Scheduled polls, over every partition's schedule."""
    keys = [store.keys.due(p) for p in range(store.keys.partitions)]
    return sum([await store.router.of(key).zcard(key) for key in keys])


async def measure(directory: Path, sizes: Sizes, cluster: bool) -> dict[str, object]:
    firecrawl_knobs = {"scrape_delay": 3600, "max_urls": 1000}
    dify_knobs = {"step_seconds": 3600, "jitter_seconds": 0}
    with (
        redis_server(directory, aof=True) as redis_process,
        sandbox("firecrawl", directory, **firecrawl_knobs) as firecrawl,
        sandbox("dify", directory, **dify_knobs) as dify,
    ):
        deployment = Deployment(directory, redis_process.url, firecrawl, f"{dify}/v1", [], [])
        async with on_one(redis_process) as target:
            await prepare(deployment, sizes, target)
        rounds = run_rounds(deployment, sizes, worker_plan(sizes))
        if not cluster:
            return summarize(sizes, rounds)
        with redis_cluster(aof=True) as nodes:
            rounds += await cluster_rounds(deployment, sizes, nodes, len(rounds))
        return {**summarize(sizes, rounds), **cluster_figures(rounds, nodes)}


Plan = list[tuple[str, Callable[..., tuple[float, float]]]]


def worker_plan(sizes: Sizes) -> Plan:
    plan: Plan = []
    for _ in range(sizes.rounds):
        plan += [("bare", bare_round), ("worker", worker_round)]
    # Not a figure of the target: the same bare loop on httpx's default transport
    # (httpcore and h11), to show what the worker's aiohttp transport saves.
    plan.append(("bare-httpcore", partial(bare_round, transport="httpcore")))
    return plan


def run_rounds(deployment: Deployment, sizes: Sizes, plan: Plan, first: int = 0) -> list[Round]:
    rounds: list[Round] = []
    for number, (kind, measure_round) in enumerate(plan, start=first):
        rate, cpu = measure_round(deployment, sizes, number)
        say(f"round {number + 1} {kind:15}: {rate:7.0f} polls/s (poller cpu {cpu}%)")
        rounds.append(Round(kind, round(rate, 1), cpu, round(10 * cpu / max(rate, 1e-9), 3)))
    return rounds


async def cluster_rounds(
    deployment: Deployment, sizes: Sizes, nodes: RedisCluster, first: int
) -> list[Round]:
    """The batches tracked on the cluster, and `sizes.rounds` worker rounds on it."""
    async with on_cluster(nodes) as target:
        await track_all(deployment, target)
        on = replace(deployment, redis_url=target.url, env=target.env)
        plan: Plan = [("worker-cluster", worker_round)] * sizes.rounds
        return run_rounds(on, sizes, plan, first)


def summarize(sizes: Sizes, rounds: list[Round]) -> dict[str, object]:
    worker_rounds = [r for r in rounds if r.target == "worker"]
    bare_rounds = [r for r in rounds if r.target == "bare"]
    worker = median([r.polls_per_s for r in worker_rounds])
    bare = median([r.polls_per_s for r in bare_rounds])
    return {
        "benchmark": "poll",
        "polls_per_s": round(worker, 1),
        "bare_per_s": round(bare, 1),
        "ratio": round(worker / bare, 3),
        "bare_httpcore_per_s": [r.polls_per_s for r in rounds if r.target == "bare-httpcore"][0],
        "worker_cpu_ms_per_poll": round(median([r.cpu_ms_per_poll for r in worker_rounds]), 3),
        "bare_cpu_ms_per_poll": round(median([r.cpu_ms_per_poll for r in bare_rounds]), 3),
        "jobs": {"firecrawl": sizes.firecrawl, "dify": sizes.dify},
        "window_seconds": sizes.window,
        "rounds": [asdict(r) for r in rounds],
    }


def cluster_figures(rounds: list[Round], nodes: RedisCluster) -> dict[str, object]:
    """The worker on the cluster, against the bare loop and the worker on one redis-server."""
    on = [r for r in rounds if r.target == "worker-cluster"]
    rate = median([r.polls_per_s for r in on])
    worker = median([r.polls_per_s for r in rounds if r.target == "worker"])
    bare = median([r.polls_per_s for r in rounds if r.target == "bare"])
    return {
        "polls_per_s_cluster": round(rate, 1),
        "ratio_cluster": round(rate / bare, 3),
        "cluster_ratio": round(rate / worker, 3),
        "worker_cpu_ms_per_poll_cluster": round(median([r.cpu_ms_per_poll for r in on]), 3),
        "cluster_persistence": nodes.persistence,
        "cluster_partitions": CLUSTER_PARTITIONS,
        "redis_version": embedded_version(),
        "cluster_redis_version": nodes.version,
    }


async def main_async(quick: bool, cluster: bool) -> dict[str, object]:
    sizes = QUICK if quick else FULL
    say(
        f"poll: {sizes.firecrawl} Firecrawl and {sizes.dify} Dify jobs due at once; "
        f"{sizes.rounds}+{sizes.rounds} alternating rounds (+1 informative), "
        f"{sizes.window:g} s windows after {sizes.warmup:g} s of warm-up"
    )
    with workdir("poll") as directory:
        return await measure(directory, sizes, cluster)


def main() -> None:
    args = arguments("polls per second of one receiver worker vs a bare httpx loop", cluster=True)
    emit(run(main_async(args.quick, args.cluster)))


if __name__ == "__main__":
    main()
