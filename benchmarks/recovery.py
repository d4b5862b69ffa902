"""Recovery: seconds the receiver takes to come back from a Redis crash and a worker's death.

Real processes on loopback: a redis-server with an fsynced AOF (`appendfsync always`) on a
fixed port, its data in the benchmark's temporary directory; the Decodo sandbox; one
`receiver web` and `receiver worker` processes, on their default settings.

- Redis crash: while callbacks of new tasks are posted (POSTERS posters, each waiting PACE
  s between two posts) and /readyz is polled every PACE s, Redis is killed with SIGKILL,
  then started again on the same port and data REDIS_DOWN s later. The figures are the
  seconds from Redis answering PING again to the first 202 on POST /callbacks/decodo, to
  /readyz's first 200, and until every task acknowledged before the kill has its results
  fetched. The probes look every few milliseconds, so a figure within 0.01 s of 0 (even
  just below it: the receiver got there before the benchmark's own PING) means at once.
  At the end, every task whose callback was answered 202 is looked up in Redis: one still
  pending was acknowledged, then lost.
- Worker death: two workers share a job's results fetches (the sandbox answers /results
  after RESULTS_LATENCY s); one is killed with SIGKILL while it holds some. The figures are
  the seconds from its death until none of its entries is pending under its name (the
  other took them over with XAUTOCLAIM) and until all of them are acknowledged (fetched
  and stored), on the default RECEIVER_CLAIM_IDLE and on SHORT_CLAIM_IDLE.

Each is repeated; the figures are medians.

    python -m benchmarks.recovery [--quick]
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from redis.asyncio import Redis

from benchmarks.callbacks import callback_body, create_tasks, record_job, sign
from benchmarks.common import (
    CALLBACK_PATH,
    HOST,
    PYTHON,
    Child,
    RedisServer,
    arguments,
    child,
    emit,
    filesystem,
    free_port,
    median,
    receiver_env,
    redis_server,
    run,
    sandbox,
    say,
    workdir,
)
from receiver.sandbox.decodo import DEFAULT_AUTH
from receiver.settings import Settings
from receiver.store import Store
from receiver.store.keys import WORK_GROUP

# Seconds the sandbox takes to answer /results while workers are killed (0 around the
# Redis crashes).
RESULTS_LATENCY = 1.0
# Seconds of RECEIVER_CLAIM_IDLE in the short runs (the default is Settings().claim_idle).
SHORT_CLAIM_IDLE = 2.0
# Seconds Redis stays down before it is started again (a supervisor restarting it).
REDIS_DOWN = 1.0
# Concurrent callback posters, and the seconds each waits between two posts (and the
# readiness poller between two GETs).
POSTERS = 4
PACE = 0.01
# Tasks of the job a worker is killed in: more than two workers' fetch concurrency.
TASKS_PER_DEATH = 300
# Seconds between two looks at Redis or at the answers while waiting.
LOOK_EVERY = 0.01
# Seconds one recovery may take, beyond the claim idle, before the benchmark gives up.
TIMEOUT = 60.0


@dataclass(frozen=True)
class Sizes:
    restarts: int  # Redis crashes
    deaths: int  # worker deaths on SHORT_CLAIM_IDLE
    default_deaths: int  # worker deaths on the default claim idle
    tasks: int  # sandbox tasks for the callbacks posted around the crashes


FULL = Sizes(5, 5, 3, 20_000)
QUICK = Sizes(1, 1, 1, 5_000)


# -- Redis that can crash -----------------------------------------------------------------


class RestartableRedis:
    """A redis-server with an fsynced AOF that can be killed and started again on the same
    port and data directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.server: RedisServer | None = None
        self._stack = contextlib.ExitStack()

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> None:
        started = redis_server(self.directory, aof=True, fsync="always", port=self.port)
        self.server = self._stack.enter_context(started)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no last write; what was not on disk is gone."""
        assert self.server is not None
        self.server.child.process.kill()
        self.server.child.process.wait()
        self.close()

    def close(self) -> None:
        self._stack.close()
        self.server = None


@contextlib.contextmanager
def restartable_redis(directory: Path) -> Iterator[RestartableRedis]:
    redis = RestartableRedis(directory)
    redis.start()
    try:
        yield redis
    finally:
        redis.close()


async def answers_ping(port: int) -> bool:
    """Whether a new connection's PING is answered PONG (not refused, not LOADING)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 0.5)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(b"PING\r\n")
        return (await asyncio.wait_for(reader.readline(), 0.5)).startswith(b"+PONG")
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()


async def wait_until(
    check: Callable[[], Awaitable[bool]],
    what: str,
    *,
    timeout: float = TIMEOUT,
    every: float = LOOK_EVERY,
    alive: Sequence[Child] = (),
) -> float:
    """When (monotonic) `check` first held; looked at every `every` s while the `alive`
    processes live, for at most `timeout` s."""
    deadline = time.monotonic() + timeout
    while not await check():
        check_alive(alive)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        await asyncio.sleep(every)
    return time.monotonic()


def check_alive(processes: Sequence[Child]) -> None:
    for process in processes:
        if process.process.poll() is not None:
            raise RuntimeError(
                f"{process.name} exited with {process.process.returncode}; "
                f"its log ends with:\n{process.tail()}"
            )


# -- the deployment -----------------------------------------------------------------------


@dataclass
class Deployment:
    directory: Path
    redis: RestartableRedis
    decodo: str  # the sandbox's base URL
    api: str  # the receiver's base URL
    web: Child

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a `receiver worker` child of this deployment."""
        env = receiver_env(self.redis.url, DECODO_BASE_URL=self.decodo, DECODO_AUTH=DEFAULT_AUTH)
        return {**env, **extra}

    def worker(self, name: str, env: dict[str, str]) -> contextlib.AbstractContextManager[Child]:
        return child(name, [PYTHON, "-m", "receiver", "worker"], self.directory, env=env)


@contextlib.asynccontextmanager
async def connected(url: str) -> AsyncIterator[Store]:
    """A store on a client of its own (one opened before a Redis restart would first
    fail on its dead connections)."""
    redis = Redis.from_url(url)
    try:
        yield Store(redis)
    finally:
        await redis.aclose()


async def post_callback(http: httpx.AsyncClient, token: str, task: str) -> httpx.Response | None:
    """POST the callback of a finished task; the answer, None for none."""
    body = orjson.dumps(callback_body(task, token))
    headers = {"content-type": "application/json"}
    return await answer_of(http.post(CALLBACK_PATH, content=body, headers=headers))


async def answer_of(request: Awaitable[httpx.Response]) -> httpx.Response | None:
    """The answer, or None when there is none (refused, reset, timed out)."""
    try:
        return await request
    except httpx.HTTPError:
        return None


async def work_drained(store: Store) -> bool:
    """No work entry left on the stream (workers delete what they acknowledge)."""
    return await store.redis.xlen(store.keys.work(0)) == 0


# -- Redis crashes --------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    at: float  # monotonic, when it came back
    status: int  # 0: none (refused, reset, timed out)


@dataclass
class Probe:
    """Callbacks of new tasks posted and /readyz polled while it runs; every answer kept."""

    http: httpx.AsyncClient
    token: str
    tasks: Iterator[str]  # ids of tasks never posted, shared by the posters
    callbacks: list[Answer] = field(default_factory=list)
    readiness: list[Answer] = field(default_factory=list)
    acknowledged: list[str] = field(default_factory=list)  # task ids answered 202
    odd: list[str] = field(default_factory=list)  # the first answers neither 202 nor 503

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Posting and polling for the block's duration."""
        probing = asyncio.gather(*(self._post() for _ in range(POSTERS)), self._poll_ready())
        try:
            yield
        finally:
            probing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probing

    async def _post(self) -> None:
        while True:
            task = next(self.tasks, None)
            if task is None:
                raise RuntimeError("every task of the job was posted; raise Sizes.tasks")
            answer = await post_callback(self.http, self.token, task)
            status = answer.status_code if answer is not None else 0
            self.callbacks.append(Answer(time.monotonic(), status))
            if status == 202:
                self.acknowledged.append(task)
            elif answer is not None and status != 503 and len(self.odd) < 5:
                self.odd.append(f"{status} {answer.text[:200]}")
            await asyncio.sleep(PACE)

    async def _poll_ready(self) -> None:
        while True:
            answer = await answer_of(self.http.get("/readyz"))
            status = answer.status_code if answer is not None else 0
            self.readiness.append(Answer(time.monotonic(), status))
            await asyncio.sleep(PACE)


async def first_answer(
    answers: list[Answer], status: int, since: float, alive: Sequence[Child]
) -> float:
    """When (monotonic) the first answer with `status` came back after `since`."""

    def first() -> float | None:
        return next((a.at for a in answers if a.at > since and a.status == status), None)

    async def arrived() -> bool:
        return first() is not None

    await wait_until(arrived, f"an answer {status}", alive=alive)
    found = first()
    assert found is not None
    return found


def statuses_between(answers: list[Answer], start: float, end: float) -> dict[str, int]:
    counts = Counter(str(a.status or "none") for a in answers if start < a.at <= end)
    return dict(sorted(counts.items()))


@dataclass(frozen=True)
class Restart:
    load_s: float  # from the restart to Redis answering PING
    first_202_s: float  # from Redis answering PING to the first 202 on a callback
    ready_s: float  # from Redis answering PING to the first 200 on /readyz
    caught_up_s: float  # from Redis answering PING until the work acknowledged before is done
    callbacks_while_down: dict[str, int]  # statuses from the kill to the first 202


async def crash_redis(d: Deployment, probe: Probe, job_id: str, alive: Sequence[Child]) -> Restart:
    """Kill Redis under load, start it again; how long the receiver took to come back."""
    async with probe.running():
        steady = time.monotonic()
        await first_answer(probe.callbacks, 202, steady, alive)
        await first_answer(probe.readiness, 200, steady, alive)
        killed, before = time.monotonic(), list(probe.acknowledged)
        await asyncio.to_thread(d.redis.kill)
        await asyncio.sleep(REDIS_DOWN)
        restarted = time.monotonic()
        pong = asyncio.create_task(
            wait_until(lambda: answers_ping(d.redis.port), "redis PING", every=0.002)
        )
        await asyncio.to_thread(d.redis.start)
        up = await pong
        accepted = await first_answer(probe.callbacks, 202, restarted, alive)
        ready = await first_answer(probe.readiness, 200, restarted, alive)
    caught_up = await catch_up(d, job_id, before, alive)
    return Restart(
        round(up - restarted, 3),
        round(accepted - up, 3),
        round(ready - up, 3),
        round(caught_up - up, 3),
        statuses_between(probe.callbacks, killed, accepted),
    )


async def catch_up(d: Deployment, job_id: str, tasks: list[str], alive: Sequence[Child]) -> float:
    """When (monotonic) none of these acknowledged tasks waits for its results any more."""
    async with connected(d.redis.url) as store:
        key = store.keys.tasks(job_id)
        states = await store.redis.hmget(key, tasks) if tasks else []
        waiting = [task for task, state in zip(tasks, states, strict=True) if state == b"done"]

        async def fetched() -> bool:
            if waiting:
                states = await store.redis.hmget(key, waiting)
                waiting[:] = [t for t, s in zip(waiting, states, strict=True) if s == b"done"]
            return not waiting

        timeout = TIMEOUT + Settings().claim_idle
        return await wait_until(fetched, "the fetches", timeout=timeout, every=0.05, alive=alive)


async def count_lost(store: Store, job_id: str, acknowledged: list[str]) -> int:
    """Tasks whose callback was answered 202 but that Redis does not have past pending."""
    if not acknowledged:
        return 0
    states = await store.redis.hmget(store.keys.tasks(job_id), acknowledged)
    return sum(1 for state in states if state in (None, b"pending"))


@dataclass(frozen=True)
class Crashes:
    restarts: list[Restart]
    acknowledged: int  # callbacks answered 202 around the crashes
    lost: int  # of those, tasks Redis does not have as done
    statuses: dict[str, int]  # of every callback posted around the crashes
    odd: list[str]  # the first answers neither 202 nor 503, with their bodies


async def redis_crashes(d: Deployment, sizes: Sizes) -> Crashes:
    async with connected(d.redis.url) as store:
        task_ids = await create_tasks(d.decodo, sizes.tasks)
        job_id = await record_job(store, task_ids)
    restarts = []
    with d.worker("receiver-worker", d.env()) as worker:
        async with httpx.AsyncClient(base_url=d.api, timeout=5) as http:
            probe = Probe(http, sign(job_id), iter(task_ids))
            for number in range(sizes.restarts):
                restarts.append(await crash_redis(d, probe, job_id, [d.web, worker]))
                say_restart(number, restarts[-1])
        async with connected(d.redis.url) as store:
            await wait_until(lambda: work_drained(store), "the fetches of the callbacks posted")
            lost = await count_lost(store, job_id, probe.acknowledged)
    statuses = statuses_between(probe.callbacks, 0.0, time.monotonic())
    return Crashes(restarts, len(probe.acknowledged), lost, statuses, probe.odd)


def say_restart(number: int, restart: Restart) -> None:
    say(
        f"redis crash {number + 1}: PING answered {restart.load_s:.3f} s after the restart; "
        f"then first 202 after {restart.first_202_s:.3f} s, /readyz 200 after "
        f"{restart.ready_s:.3f} s, the work acknowledged before the kill done after "
        f"{restart.caught_up_s:.3f} s (callbacks from the kill on: "
        f"{restart.callbacks_while_down})"
    )


# -- worker deaths --------------------------------------------------------------------------


@dataclass(frozen=True)
class Death:
    held: int  # entries pending under the killed worker's name at its death
    reclaimed_s: float  # from its death until none is pending under its name
    finished_s: float  # from its death until every one of them is acknowledged


async def worker_name(store: Store, worker: Child) -> str:
    """The name a worker beats (and consumes) under, once it beats: it holds its pid."""
    marker = f"-{worker.pid}-"
    names: list[str] = []

    async def beating() -> bool:
        members: Any = await store.redis.zrange(store.keys.heartbeats, 0, -1)
        names[:] = [m.decode() for m in members if marker in m.decode()]
        return bool(names)

    await wait_until(beating, f"a heartbeat of {worker.name}", alive=[worker])
    return names[0]


async def pending_of(store: Store, consumer: str | None = None) -> set[str]:
    """Ids of the work entries read and not acknowledged (by `consumer`, else anyone)."""
    pending: Any = await store.redis.xpending_range(
        store.keys.work(0), WORK_GROUP, "-", "+", 100_000, consumername=consumer
    )
    return {p["message_id"].decode() for p in pending}


async def post_all(api: str, job_id: str, task_ids: list[str]) -> None:
    token = sign(job_id)
    async with httpx.AsyncClient(base_url=api, timeout=10) as http:
        answers = await asyncio.gather(*(post_callback(http, token, t) for t in task_ids))
    statuses = Counter(answer.status_code if answer else 0 for answer in answers)
    if set(statuses) != {202}:
        raise RuntimeError(f"callbacks answered {dict(statuses)}")


async def kill_worker(d: Deployment, store: Store, env: dict[str, str], name: str) -> Death:
    """Two workers share a job's fetches; one (`name`, its log's) dies holding some. How
    long until they are taken over by the other, and done."""
    claim_idle = float(env.get("RECEIVER_CLAIM_IDLE", Settings().claim_idle))
    consumer, died = await die_holding_work(d, store, env, name, claim_idle)
    held = await pending_of(store, consumer)
    timeout = TIMEOUT + 2 * claim_idle

    async def reclaimed() -> bool:
        return not await pending_of(store, consumer)

    async def finished() -> bool:
        return not held & await pending_of(store)

    taken = await wait_until(reclaimed, "the reclaim", timeout=timeout, alive=[d.web])
    done = await wait_until(finished, "the reclaimed work", timeout=timeout, alive=[d.web])
    await wait_until(lambda: work_drained(store), "the job's other fetches", alive=[d.web])
    return Death(len(held), round(taken - died, 3), round(done - died, 3))


async def die_holding_work(
    d: Deployment, store: Store, env: dict[str, str], name: str, claim_idle: float
) -> tuple[str, float]:
    """Start a worker, give it work, kill it while it fetches; its consumer name, and when
    (monotonic) it died."""
    task_ids = await create_tasks(d.decodo, TASKS_PER_DEATH)
    job_id = await record_job(store, task_ids)
    with d.worker(name, env) as doomed:
        consumer = await worker_name(store, doomed)
        # At a random point of the survivor's reclaim cycle (a pass every claim_idle / 2),
        # not always the same one.
        await asyncio.sleep(random.uniform(0, claim_idle / 2))
        await post_all(d.api, job_id, task_ids)

        async def holding() -> bool:
            return bool(await pending_of(store, consumer))

        await wait_until(holding, f"{name} taking work", alive=[doomed])
        await asyncio.sleep(RESULTS_LATENCY / 3)  # well into its fetches
        doomed.process.kill()
        doomed.process.wait()
        return consumer, time.monotonic()


async def worker_deaths(d: Deployment, claim_idle: float | None, count: int) -> list[Death]:
    """`count` deaths of a worker beside one survivor, on `claim_idle` (None: default)."""
    extra = {} if claim_idle is None else {"RECEIVER_CLAIM_IDLE": f"{claim_idle:g}"}
    env = d.env(**extra)
    label = "default" if claim_idle is None else f"{claim_idle:g}s"
    deaths = []
    async with connected(d.redis.url) as store:
        with d.worker(f"receiver-worker-survivor-{label}", env) as survivor:
            await worker_name(store, survivor)
            for number in range(count):
                killed = f"receiver-worker-killed-{label}-{number + 1}"
                deaths.append(await kill_worker(d, store, env, killed))
                check_alive([survivor])
                say_death(label, number, deaths[-1])
    return deaths


def say_death(label: str, number: int, death: Death) -> None:
    say(
        f"worker death {number + 1} (claim idle {label}): {death.held} entries held; "
        f"reclaimed after {death.reclaimed_s:.3f} s, done after {death.finished_s:.3f} s"
    )


# -- the run --------------------------------------------------------------------------------


async def configure_sandbox(base_url: str, **knobs: object) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        (await http.patch("/_sandbox/config", json=knobs)).raise_for_status()


async def measure(directory: Path, sizes: Sizes) -> dict[str, object]:
    fs = filesystem(directory)
    say(f"redis data on {fs}")
    port = free_port()
    with (
        restartable_redis(directory) as redis,
        sandbox("decodo", directory, batch_rps=0, completion_delay=0.01) as decodo,
    ):
        env = receiver_env(redis.url, port, DECODO_BASE_URL=decodo, DECODO_AUTH=DEFAULT_AUTH)
        argv = [PYTHON, "-m", "receiver", "web"]
        with child("receiver-web", argv, directory, env=env, port=port) as web:
            d = Deployment(directory, redis, decodo, f"http://{HOST}:{port}", web)
            crashes = await redis_crashes(d, sizes)
            await configure_sandbox(decodo, results_latency=RESULTS_LATENCY)
            short = await worker_deaths(d, SHORT_CLAIM_IDLE, sizes.deaths)
            default = await worker_deaths(d, None, sizes.default_deaths)
    return summarize(fs, crashes, short, default)


def summarize(
    fs: str, crashes: Crashes, short: list[Death], default: list[Death]
) -> dict[str, object]:
    restarts = crashes.restarts
    say(
        f"{crashes.acknowledged} callbacks acknowledged around {len(restarts)} redis crashes; "
        f"{crashes.lost} of them lost; every answer: {crashes.statuses}"
        + (f"; answers neither 202 nor 503: {crashes.odd}" if crashes.odd else "")
    )
    return {
        "benchmark": "recovery",
        "redis_filesystem": fs,
        "redis_down_s": REDIS_DOWN,
        "redis_load_s": median([r.load_s for r in restarts]),
        "first_202_s": median([r.first_202_s for r in restarts]),
        "first_202_s_max": max(r.first_202_s for r in restarts),
        "ready_s": median([r.ready_s for r in restarts]),
        "ready_s_max": max(r.ready_s for r in restarts),
        "caught_up_s": median([r.caught_up_s for r in restarts]),
        "caught_up_s_max": max(r.caught_up_s for r in restarts),
        "acknowledged": crashes.acknowledged,
        "lost": crashes.lost,
        "callback_statuses": crashes.statuses,
        "results_latency_s": RESULTS_LATENCY,
        **death_figures("short", SHORT_CLAIM_IDLE, short),
        **death_figures("default", Settings().claim_idle, default),
        "restarts": [asdict(r) for r in restarts],
    }


def death_figures(label: str, claim_idle: float, deaths: list[Death]) -> dict[str, object]:
    return {
        f"claim_idle_{label}_s": claim_idle,
        f"reclaimed_s_{label}": median([d.reclaimed_s for d in deaths]),
        f"finished_s_{label}": median([d.finished_s for d in deaths]),
        f"deaths_{label}": [asdict(d) for d in deaths],
    }


async def main_async(quick: bool) -> dict[str, object]:
    sizes = QUICK if quick else FULL
    say(
        f"recovery: {sizes.restarts} redis crashes ({REDIS_DOWN:g} s down, appendfsync "
        f"always); {sizes.deaths} worker deaths on a {SHORT_CLAIM_IDLE:g} s claim idle and "
        f"{sizes.default_deaths} on the default {Settings().claim_idle:g} s"
    )
    with workdir("recovery") as directory:
        return await measure(directory, sizes)


def main() -> None:
    args = arguments("recovery from a Redis crash and from a worker's death")
    emit(run(main_async(args.quick)))


if __name__ == "__main__":
    main()
