"""Ingest: validly signed Decodo callbacks posted at full speed to one `receiver web` process.

Once per durability level (RECEIVER_DURABILITY), each against its own real redis-server:
`fsync` (the default) with `appendonly yes` and `appendfsync always`, so every write is on
disk before Redis answers; `none` with `appendonly no`. No worker runs. Redis keeps its data
in the benchmark's temporary directory; the output names its filesystem (an fsync on tmpfs
costs nothing). The baseline is a bare Starlette endpoint under the same uvicorn settings
(benchmarks/bare.py), measured against each level in turn: rounds alternate bare, receiver,
bare, receiver, ...; each receiver round posts task ids never posted before. Then the
acknowledgement latency at a fixed offered rate (open loop), and the check that every
callback answered 202 is recorded `done` in Redis.

With `--cluster`, the same again on a Redis Cluster (benchmarks/cluster.py: 3 masters with a
replica each, no persistence, as the `none` level's redis-server, which is then measured
whatever `--durability` says), once at each of CLUSTER_LEVELS: `none`, and `replica` (a 202
waits for `WAIT 1` on the write's connection). The cluster is emptied between the two.
Every callback is of one job, so of one partition on one master: what is measured is the
cost of cluster mode (routing, a replica fed), not a spread over masters. `cluster_ratio`
is the cluster's `none` rate over the one redis-server's; `replica_wait_ratio` the
cluster's `replica` rate over its `none` rate.

    python -m benchmarks.ingest [--quick] [--durability fsync,none] [--cluster]
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from benchmarks.callbacks import PreparedJob, count_done, count_missing, prepare_job
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
    HOST,
    PYTHON,
    Child,
    arguments,
    child,
    cpu_seconds,
    emit,
    filesystem,
    free_port,
    median,
    receiver_env,
    redis_server,
    run,
    say,
    workdir,
)
from benchmarks.loadgen import LoadResult, Spec, run_load


@dataclass(frozen=True)
class Sizes:
    rounds: int  # of each kind
    seconds: float  # of one throughput round
    receiver_cap: int  # most callbacks in one receiver round (task ids are reserved for it)
    bare_cap: int  # most requests in one bare round
    warmup: int  # requests to each server before the rounds
    latency_rate: float  # offered callbacks per second for the latency figure
    latency_seconds: float
    connections: int = 64

    @property
    def tasks(self) -> int:
        latency = int(self.latency_rate * self.latency_seconds)
        return self.warmup + self.rounds * self.receiver_cap + latency


# Caps are far above the rates seen (receiver ~15,000/s, bare ~32,000/s on 2 cores), so a
# round ends by time, not by running out of task ids.
FULL = Sizes(3, 5.0, 150_000, 300_000, 3000, 2000.0, 5.0)
QUICK = Sizes(3, 1.0, 30_000, 60_000, 1000, 2000.0, 1.0)
# The persistence of each level's redis-server: whether it keeps an AOF, and how it fsyncs.
LEVELS: dict[str, tuple[bool, str]] = {"fsync": (True, "always"), "none": (False, "")}
# The levels measured on the cluster (--cluster); each one's figures end in _cluster_<level>.
CLUSTER_LEVELS = ("none", "replica")


@dataclass(frozen=True)
class Round:
    level: str  # the durability level of the receiver measured against
    target: str  # bare | receiver
    rps: float
    answered: int
    server_cpu_pct: float  # of one core
    server_cpu_us_per_answer: float
    redis_cpu_pct: float
    loadgen_cpu_pct: float


@dataclass
class Servers:
    level: str
    bare: Child
    bare_port: int
    receiver: Child
    receiver_port: int
    redis_pids: list[int]  # every redis-server serving the receiver


@dataclass
class Measured:
    """One level's figures: its rounds, every load posted, the latency load, and counts."""

    level: str
    in_force: str  # the level the receiver says it runs at (/readyz)
    rounds: list[Round]
    loads: list[LoadResult]
    latency: LoadResult
    done: int
    missing: int


def bare_spec(job: PreparedJob, port: int, count: int, sizes: Sizes, duration: float) -> Spec:
    """The same callbacks, byte for byte, for the bare app (which reads and drops them): a
    copy of the job with its own cursor, so no task id of the job is used up."""
    copy = PreparedJob(job.job_id, job.token, count)
    return copy.spec(port, count, connections=sizes.connections, duration=duration)


def round_on(servers: Servers, target: str, spec: Spec) -> tuple[LoadResult, float, float]:
    """One load; with the server's and Redis' share of a core while it ran, in percent."""
    server = servers.bare if target == "bare" else servers.receiver
    before = cpu_seconds(server.pid), redis_cpu_seconds(servers)
    result = run_load(spec)
    if not result.answered:
        raise RuntimeError(f"no answer from {target}: {result.errors or result.statuses}")
    after = cpu_seconds(server.pid), redis_cpu_seconds(servers)
    server_pct = 100 * (after[0] - before[0]) / result.elapsed
    redis_pct = 100 * (after[1] - before[1]) / result.elapsed
    return result, round(server_pct, 1), round(redis_pct, 1)


def redis_cpu_seconds(servers: Servers) -> float:
    return sum(cpu_seconds(pid) for pid in servers.redis_pids)


def throughput_rounds(
    servers: Servers, job: PreparedJob, sizes: Sizes
) -> tuple[list[Round], list[LoadResult]]:
    rounds: list[Round] = []
    loads: list[LoadResult] = []
    for number in range(sizes.rounds):
        for target in ("bare", "receiver"):
            if target == "bare":
                spec = bare_spec(job, servers.bare_port, sizes.bare_cap, sizes, sizes.seconds)
            else:
                spec = job.spec(
                    servers.receiver_port,
                    sizes.receiver_cap,
                    connections=sizes.connections,
                    duration=sizes.seconds,
                )
            result, server_pct, redis_pct = round_on(servers, target, spec)
            if target == "receiver":
                loads.append(result)
            say(
                f"{servers.level:5} round {number + 1} {target:8}: {result.rps:8.0f} answers/s  "
                f"({result.answered} in {result.elapsed:.2f} s, statuses {result.statuses}; "
                f"cpu: server {server_pct}%, redis {redis_pct}%, load generator "
                f"{result.cpu_pct}%; latency p50 {result.latency_ms.get('p50')} ms)"
            )
            rounds.append(
                Round(
                    servers.level,
                    target,
                    result.rps,
                    result.answered,
                    server_pct,
                    round(10_000 * server_pct * result.elapsed / max(result.answered, 1), 1),
                    redis_pct,
                    result.cpu_pct,
                )
            )
    return rounds, loads


def warm_up(servers: Servers, job: PreparedJob, sizes: Sizes) -> LoadResult:
    run_load(bare_spec(job, servers.bare_port, sizes.warmup, sizes, 30.0))
    load = run_load(
        job.spec(servers.receiver_port, sizes.warmup, connections=sizes.connections, duration=30)
    )
    say(f"warm-up: {load.answered} callbacks, statuses {load.statuses}")
    return load


def latency_run(servers: Servers, job: PreparedJob, sizes: Sizes) -> LoadResult:
    count = int(sizes.latency_rate * sizes.latency_seconds)
    spec = job.spec(
        servers.receiver_port,
        count,
        connections=sizes.connections,
        duration=sizes.latency_seconds,
        rate=sizes.latency_rate,
    )
    result, server_pct, redis_pct = round_on(servers, "receiver", spec)
    say(
        f"{servers.level:5} latency at {sizes.latency_rate:.0f}/s offered for "
        f"{sizes.latency_seconds:g} s: "
        f"{result.answered} answered, statuses {result.statuses}, latency {result.latency_ms} "
        f"(client's own send lag {result.lag_ms}); cpu: receiver {server_pct}%, "
        f"redis {redis_pct}%"
    )
    return result


async def measure(
    directory: Path, sizes: Sizes, levels: list[str], cluster: bool
) -> dict[str, object]:
    say(f"redis data on {filesystem(directory)}")
    bare_port = free_port()
    bare_argv = [PYTHON, "-m", "benchmarks.bare", "--port", str(bare_port)]
    on: list[Measured] = []
    extra: dict[str, object] = {}
    with child("bare", bare_argv, directory, port=bare_port) as bare:
        measured = [
            await measure_level(directory / level, level, bare, bare_port, sizes)
            for level in levels
        ]
        if cluster:
            with redis_cluster(aof=False) as nodes:
                for level in CLUSTER_LEVELS:
                    on.append(
                        await measure_cluster(directory, level, nodes, bare, bare_port, sizes)
                    )
            extra = cluster_figures(measured, on, nodes)
    return summarize(sizes, measured + on, filesystem(directory), extra)


async def measure_level(
    directory: Path, level: str, bare: Child, bare_port: int, sizes: Sizes
) -> Measured:
    """One receiver on its own Redis, at one durability level, against the bare app."""
    directory.mkdir()
    aof, fsync = LEVELS[level]
    with redis_server(directory, aof=aof, fsync=fsync) as redis_process:
        async with on_one(redis_process) as target:
            return await measure_on(target, directory, level, bare, bare_port, sizes)


async def measure_cluster(
    directory: Path, level: str, nodes: RedisCluster, bare: Child, bare_port: int, sizes: Sizes
) -> Measured:
    """One receiver on the cluster, at one durability level, against the bare app; the
    cluster emptied afterwards."""
    directory = directory / f"cluster_{level}"
    directory.mkdir()
    try:
        async with on_cluster(nodes) as target:
            return await measure_on(target, directory, level, bare, bare_port, sizes)
    finally:
        nodes.flushall()


async def measure_on(
    target: Target, directory: Path, level: str, bare: Child, bare_port: int, sizes: Sizes
) -> Measured:
    """One receiver on the target's Redis, at one durability level, against the bare app;
    the figures named `level` on one redis-server, `cluster_<level>` on the cluster."""
    name = level if target.name == "one" else f"{target.name}_{level}"
    job = await prepare_job(target.store, sizes.tasks)
    port = free_port()
    env = receiver_env(target.url, port, RECEIVER_DURABILITY=level, **target.env)
    argv = [PYTHON, "-m", "receiver", "web"]
    with child("receiver-web", argv, directory, env=env, port=port) as web:
        in_force = durability_in_force(port)
        say(f"{name}: the receiver runs at durability {in_force!r}")
        servers = Servers(name, bare, bare_port, web, port, target.pids)
        loads = [warm_up(servers, job, sizes)]
        rounds, measured = throughput_rounds(servers, job, sizes)
        latency = latency_run(servers, job, sizes)
        loads += [*measured, latency]
    done = await count_done(target.store, job)
    missing = await count_missing(target.store, job, loads)
    say(f"{name}: {sum(load.accepted for load in loads)} acknowledged, {done} `done` in Redis")
    return Measured(name, in_force, rounds, loads, latency, done, missing)


def durability_in_force(port: int) -> str:
    """The level /readyz names (it answers 503 without a worker, and names it still)."""
    answer = httpx.get(f"http://{HOST}:{port}/readyz", timeout=10)
    return str(answer.json().get("durability", "?"))


def summarize(
    sizes: Sizes, measured: list[Measured], redis_fs: str, extra: dict[str, object]
) -> dict[str, object]:
    result: dict[str, object] = {"benchmark": "ingest", "redis_filesystem": redis_fs}
    for one in measured:
        result.update({f"{name}_{one.level}": value for name, value in figures(one).items()})
    return {
        **result,
        **extra,
        "latency_offered_rps": sizes.latency_rate,
        "connections": sizes.connections,
        "round_seconds": sizes.seconds,
        "rounds": [asdict(r) for one in measured for r in one.rounds],
    }


def cluster_figures(
    one: list[Measured], on: list[Measured], nodes: RedisCluster
) -> dict[str, object]:
    """The cluster's `none` rate over the one redis-server's, and the cost of waiting for a
    replica on the cluster."""
    rate = {m.level: median([r.rps for r in m.rounds if r.target == "receiver"]) for m in one + on}
    return {
        "cluster_ratio": round(rate["cluster_none"] / rate["none"], 3),
        "replica_wait_ratio": round(rate["cluster_replica"] / rate["cluster_none"], 3),
        "cluster_persistence": nodes.persistence,
        "cluster_partitions": CLUSTER_PARTITIONS,
        "redis_version": embedded_version(),
        "cluster_redis_version": nodes.version,
    }


def figures(one: Measured) -> dict[str, object]:
    """One level's figures, named without the level."""
    bare = [r for r in one.rounds if r.target == "bare"]
    receiver = [r for r in one.rounds if r.target == "receiver"]
    bare_rps, receiver_rps = median([r.rps for r in bare]), median([r.rps for r in receiver])
    latency = one.latency
    return {
        "in_force": one.in_force,
        "receiver_rps": round(receiver_rps, 1),
        "bare_rps": round(bare_rps, 1),
        "ratio": round(receiver_rps / bare_rps, 3),
        "p50_ms_at_2000": latency.latency_ms.get("p50"),
        "p99_ms_at_2000": latency.latency_ms.get("p99"),
        "latency_max_ms": latency.latency_ms.get("max"),
        "latency_answered": latency.answered,
        "client_lag_p99_ms": latency.lag_ms.get("p99"),
        "acknowledged": sum(load.accepted for load in one.loads),
        "missing": one.missing,
        "done_in_redis": one.done,
        "receiver_cpu_us_per_callback": median([r.server_cpu_us_per_answer for r in receiver]),
        "bare_cpu_us_per_request": median([r.server_cpu_us_per_answer for r in bare]),
        "redis_cpu_pct": median([r.redis_cpu_pct for r in receiver]),
    }


async def main_async(quick: bool, levels: list[str], cluster: bool) -> dict[str, object]:
    sizes = QUICK if quick else FULL
    if cluster and "none" not in levels:  # the one redis-server cluster_ratio compares with
        levels = [*levels, "none"]
    also = f"; on the cluster at {', '.join(CLUSTER_LEVELS)}" if cluster else ""
    say(
        f"ingest at durability {', '.join(levels)}{also}: {sizes.rounds}+{sizes.rounds} "
        f"alternating {sizes.seconds:g} s rounds each, {sizes.connections} keep-alive "
        f"connections; then {sizes.latency_rate:.0f}/s offered for {sizes.latency_seconds:g} s"
    )
    with workdir("ingest") as directory:
        return await measure(directory, sizes, levels, cluster)


def durability_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--durability",
        default=",".join(LEVELS),
        help=f"comma-separated levels to measure, of {', '.join(LEVELS)} (default: all)",
    )


def main() -> None:
    args = arguments(
        "Decodo callback ingest: receiver web vs a bare Starlette endpoint",
        durability_option,
        cluster=True,
    )
    levels = [level.strip() for level in args.durability.split(",") if level.strip()]
    unknown = sorted(set(levels) - set(LEVELS))
    if unknown or not levels:
        raise SystemExit(f"--durability: unknown levels {unknown}; choose among {list(LEVELS)}")
    emit(run(main_async(args.quick, levels, args.cluster)))


if __name__ == "__main__":
    main()
