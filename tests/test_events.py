"""Subscribers: the stream helper, consumer groups, SSE with resume, and the metrics."""

from __future__ import annotations

import asyncio
import itertools
import re
import threading
import time
from collections.abc import AsyncGenerator, Iterator
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Connection, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from receiver.events import (
    Event,
    consume,
    event_from_entry,
    last_event_id,
    subscribe,
    wait,
)
from receiver.store import JobStatus, Store
from receiver.store.events import longest_block_ms
from receiver.store.keys import Keys
from receiver.tokens import PassthroughSigner
from tests.e2e import TOKEN, Deployment, deployment
from tests.servers import RedisProcess, free_port


def sse_frames(lines: Iterator[str]) -> Iterator[dict[str, str]]:
    """(id, event, data) frames of an SSE body, skipping comments."""
    frame: dict[str, str] = {}
    for line in lines:
        if line == "":
            if frame:
                yield frame
            frame = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            frame[name] = value
    if frame:
        yield frame


async def others_events(redis: Redis, count: int) -> None:
    """`count` events of other jobs appended to the stream, as the scripts append them."""
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(count):
            event = {"type": "job.created", "job_id": f"other{i}", "provider": "decodo"}
            pipe.xadd(Keys().events(0), {"event": orjson.dumps({**event, "status": "submitted"})})
        await pipe.execute()


async def add_event(redis: Redis, job_id: str, kind: str) -> str:
    """An event of the job appended to the stream as the scripts append it; its id."""
    event = {"type": kind, "job_id": job_id, "provider": "decodo", "status": "running"}
    entry_id: Any = await redis.xadd(Keys().events(0), {"event": orjson.dumps(event)})
    return str(entry_id.decode())


async def next_event(events: AsyncGenerator[Event, None]) -> Event:
    return await anext(events)


async def calls(redis: Redis, command: str) -> int:
    """How many times Redis ran `command` since the last CONFIG RESETSTAT."""
    stats: Any = await redis.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def held_job(d: Deployment, count: int) -> tuple[str, list[str]]:
    """A job of `count` URLs whose tasks wait at the sandbox (its completion_delay is long)
    until finish_tasks: its id and its task ids."""
    job_id = d.submit({"urls": [f"https://example.com/{i}" for i in range(count)]})
    deadline = time.monotonic() + 10
    while len(tasks := d.job(job_id).get("tasks", [])) < count:
        assert time.monotonic() < deadline, d.job(job_id)
        time.sleep(0.05)
    return job_id, [task["id"] for task in tasks]


def finish_tasks(d: Deployment, task_ids: list[str], pause: float = 0.0) -> None:
    """The sandbox finishes these tasks now, `pause` seconds apart (and calls back)."""
    for task_id in task_ids:
        response = httpx.post(
            f"{d.sandbox}/_sandbox/tasks/{task_id}/complete", json={"status": "done"}, timeout=10
        )
        assert response.status_code == 200, response.text
        time.sleep(pause)


def until(deadline: float, lines: Iterator[str]) -> Iterator[str]:
    """The lines, failing the test once the wall clock passes `deadline` (monotonic)."""
    for line in lines:
        assert time.monotonic() < deadline, "the event stream did not end in time"
        yield line


def after(stream_id: str, base: str) -> bool:
    """Whether a stream id comes after another: compared as numbers, not as strings."""
    return parse_id(stream_id) > parse_id(base)


def parse_id(stream_id: str) -> tuple[int, int]:
    millis, _, seq = stream_id.partition("-")
    return int(millis), int(seq or 0)


def stream_events(d: Deployment, job_id: str) -> list[dict[str, Any]]:
    return d.events(job_id)


def stream_ids(d: Deployment, job_id: str) -> list[str]:
    entries: Any = d.redis.xrange(d.keys.events(0))
    return [
        entry_id.decode() for entry_id, fields in entries if fields[b"job_id"].decode() == job_id
    ]


# -- the Python helpers ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_offline_subscriber_catches_up_exactly_once(redis_process: RedisProcess) -> None:
    with deployment(redis_process) as d:
        client = Redis.from_url(redis_process.url)
        cursor = await last_event_id(client, Keys(), 0)  # the subscriber goes offline here
        job_id = d.submit({"urls": [f"https://example.com/{i}" for i in range(5)]})
        d.wait(job_id)
        seen: list[Event] = []
        async for event in subscribe(client, job_id=job_id, after=cursor, block_ms=200):
            seen.append(event)
            if event.final:
                break
        await client.aclose()
        assert [e.id for e in seen] == stream_ids(d, job_id)
        assert len({e.id for e in seen}) == len(seen)
        assert seen[0].type == "job.created" and seen[-1].type == "job.completed"
        assert sum(e.type == "task.completed" for e in seen) == 5


@pytest.mark.anyio
async def test_wait_returns_the_final_event_or_times_out(redis: Redis, store: Store) -> None:
    await store.create_job("j1", "decodo", total=1, params={}, work="")
    with pytest.raises(TimeoutError):
        await wait(redis, "j1", timeout=0.3)
    await store.finish_job("j1", JobStatus.FAILED, "because")
    final = await wait(redis, "j1", timeout=5)
    assert final.type == "job.failed" and final.detail == {"reason": "because"}


@pytest.mark.anyio
async def test_wait_follows_from_the_newest_event_not_the_start(redis: Redis, store: Store) -> None:
    await others_events(redis, 20_000)
    await store.create_job("j1", "decodo", total=1, params={}, work="")
    await redis.config_resetstat()
    waiting = asyncio.create_task(wait(redis, "j1", timeout=10))
    await asyncio.sleep(0.3)
    await store.finish_job("j1", JobStatus.FAILED, "because")
    final = await waiting
    assert final.type == "job.failed" and final.detail == {"reason": "because"}
    assert final.id == (await last_event_id(redis, store.keys, 0))
    assert await calls(redis, "xread") <= 3  # from 0, reading 20 000 events takes 40 and more


@pytest.mark.anyio
async def test_wait_on_an_ended_job_finds_its_final_event_without_reading_the_stream(
    redis: Redis, store: Store
) -> None:
    await others_events(redis, 20_000)
    await store.create_job("j1", "dify", total=2, params={}, work="")
    await store.finish_job("j1", JobStatus.CANCELLED, "cancelled by a user")
    final_id = await last_event_id(redis, store.keys, 0)
    await others_events(redis, 5_000)
    await redis.config_resetstat()
    final = await wait(redis, "j1", timeout=0.1)
    assert (final.id, final.type, final.provider) == (final_id, "job.cancelled", "dify")
    assert final.detail == {"reason": "cancelled by a user"}
    assert await calls(redis, "xread") == 0


@pytest.mark.anyio
async def test_wait_on_an_ended_job_trimmed_from_the_stream_rebuilds_its_event(
    redis: Redis, store: Store
) -> None:
    await store.create_job("j1", "decodo", total=3, params={}, work="")
    await store.finish_job("j1", JobStatus.EXPIRED, "expired: gone")
    entries: Any = await redis.xrange(store.keys.events(0))
    kept = entries[-1]
    await redis.xtrim(store.keys.events(0), maxlen=0)  # MAXLEN trimmed it away
    final = await wait(redis, "j1", timeout=0.1)
    assert final.to_dict() == {**event_from_entry(*kept).to_dict(), "id": ""}
    assert final.type == "job.expired" and final.detail == {"reason": "expired: gone"}
    assert final.progress == {"completed": 0, "failed": 0, "total": 3}


@pytest.mark.anyio
async def test_consumer_group_shares_events_and_reclaims_a_dead_consumers(
    redis: Redis, store: Store
) -> None:
    for i in range(20):
        await store.create_job(f"j{i}", "decodo", total=1, params={}, work="")
    first = consume(redis, "billing", "a", start="0", block_ms=100, claim_idle_ms=200)
    second = consume(redis, "billing", "b", start="0", block_ms=100, claim_idle_ms=200)
    # "a" takes one event and dies before asking for the next: that one is not acknowledged.
    lost = await anext(first)
    await first.aclose()
    got: list[str] = []
    deadline = time.monotonic() + 10
    while len(got) < 20 and time.monotonic() < deadline:
        event = await asyncio.wait_for(anext(second), 5)
        got.append(event.job_id)
    await second.aclose()
    assert sorted(got) == sorted(f"j{i}" for i in range(20))  # every event, once
    assert lost.job_id in got  # reclaimed from the dead consumer


@pytest.mark.anyio
async def test_consumers_of_one_group_split_the_events(redis: Redis, store: Store) -> None:
    for i in range(30):
        await store.create_job(f"j{i}", "decodo", total=1, params={}, work="")
    a = consume(redis, "g", "a", start="0", block_ms=50)
    b = consume(redis, "g", "b", start="0", block_ms=50)
    seen: dict[str, list[str]] = {"a": [], "b": []}

    async def take(name: str, source: Any, count: int) -> None:
        for _ in range(count):
            seen[name].append((await anext(source)).job_id)

    await take("a", a, 10)
    await take("b", b, 10)
    await take("a", a, 10)
    await a.aclose()
    await b.aclose()
    assert not set(seen["a"]) & set(seen["b"])
    assert sorted(seen["a"] + seen["b"]) == sorted(f"j{i}" for i in range(30))


def test_reads_block_for_at_most_half_the_clients_socket_timeout() -> None:
    url = "redis://127.0.0.1:1/0"  # never connected to
    # A client made without one has the socket timeout redis-py gives (5 s since its 8.0).
    default = Connection().socket_timeout
    assert longest_block_ms(Redis.from_url(url)) == (None if default is None else default * 500)
    assert longest_block_ms(Redis.from_url(url, socket_timeout=10)) == 5000
    assert longest_block_ms(Redis.from_url(f"{url}?socket_timeout=0.5")) == 250
    assert longest_block_ms(Redis.from_url(url, socket_timeout=None)) is None


@pytest.mark.anyio
async def test_helpers_outwait_a_quiet_longer_than_their_clients_socket_timeout(
    redis: Redis, redis_process: RedisProcess
) -> None:
    # A plain client (5 s socket timeout in redis-py 8), a shorter one and none, every
    # helper with its default BLOCK of 5 s, and 7 s of quiet.
    clients = [
        Redis.from_url(redis_process.url),
        Redis.from_url(redis_process.url, socket_timeout=1),
        Redis.from_url(redis_process.url, socket_timeout=None),
    ]
    streams = [subscribe(client, job_id="j1") for client in clients]
    streams += [consume(client, f"g{i}", "c", job_id="j1") for i, client in enumerate(clients)]
    waiting = [asyncio.create_task(next_event(events)) for events in streams]
    waiting += [asyncio.create_task(wait(client, "j1", timeout=30)) for client in clients]
    await asyncio.sleep(7)
    gave_up = [task.exception() for task in waiting if task.done()]
    assert not gave_up
    created = await add_event(redis, "j1", "job.created")
    failed = await add_event(redis, "j1", "job.failed")
    got = await asyncio.wait_for(asyncio.gather(*waiting), 10)
    assert [event.id for event in got] == [created] * 6 + [failed] * 3
    for events in streams:
        await events.aclose()
    for client in clients:
        await client.aclose()


@pytest.mark.anyio
async def test_helpers_raise_what_waiting_does_not_mend(redis: Redis) -> None:
    # Nothing listens there; the client does not retry by itself (redis-py 8's default
    # Retry would take some 5 s a command).
    nowhere = Redis(port=free_port(), retry=Retry(NoBackoff(), 0))
    started = time.monotonic()
    with pytest.raises(RedisConnectionError):
        await anext(subscribe(nowhere, after="0", retry_for=0.5))
    assert time.monotonic() - started >= 0.5  # it kept trying meanwhile
    with pytest.raises(RedisConnectionError):  # still away at the timeout
        await wait(nowhere, "j1", timeout=0.3)
    await nowhere.aclose()
    await redis.set(Keys().events(0), "not a stream")
    with pytest.raises(ResponseError, match="WRONGTYPE"):  # at once: no retry mends it
        await asyncio.wait_for(anext(consume(redis, "g", "c")), 5)
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await asyncio.wait_for(anext(subscribe(redis, after="0")), 5)


# -- SSE ------------------------------------------------------------------------------------


def test_sse_job_stream_resumes_with_no_gap_and_no_repeat(redis_process: RedisProcess) -> None:
    knobs: dict[str, Any] = {"completion_delay": 0.3, "completion_jitter": 0.5}
    with deployment(redis_process, settings={"sse_heartbeat": 0.2}, **knobs) as d:
        deadline = time.monotonic() + 30  # pings every 0.2 s let a stuck stream fail in time
        job_id = d.submit({"urls": [f"https://example.com/{i}" for i in range(6)]})
        url = f"{d.api}/jobs/{job_id}/events"
        first: list[dict[str, str]] = []
        with httpx.stream("GET", url, headers=d.headers(), timeout=30) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            for frame in sse_frames(until(deadline, response.iter_lines())):
                first.append(frame)
                if len(first) == 4:
                    break  # the client drops the connection mid-job
        assert first[0]["event"] == "job.state"
        state = orjson.loads(first[0]["data"])
        assert state["id"] == job_id
        headers = {**d.headers(), "Last-Event-ID": first[-1]["id"]}
        rest: list[dict[str, str]] = []
        with httpx.stream("GET", url, headers=headers, timeout=30) as response:
            # ends after the final event
            rest = list(sse_frames(until(deadline, response.iter_lines())))
        ids = [f["id"] for f in first[1:] + rest]
        assert len(ids) == len(set(ids))
        assert ids == [i for i in stream_ids(d, job_id) if after(i, first[0]["id"])]
        assert rest[-1]["event"] == "job.completed"
        assert orjson.loads(rest[-1]["data"])["progress"]["completed"] == 6


def test_sse_on_an_ended_job_sends_its_state_and_ends(redis_process: RedisProcess) -> None:
    with deployment(redis_process) as d:
        job_id = d.submit({"url": "https://example.com"})
        d.wait(job_id)
        response = httpx.get(f"{d.api}/jobs/{job_id}/events", headers=d.headers(), timeout=10)
        frames = list(sse_frames(iter(response.text.split("\n"))))
        assert [f["event"] for f in frames] == ["job.state"]
        assert orjson.loads(frames[0]["data"])["status"] == "completed"


def test_sse_all_events_resume_and_heartbeat(redis_process: RedisProcess) -> None:
    with deployment(redis_process, settings={"sse_heartbeat": 0.2}) as d:
        before: Any = d.redis.xrevrange(d.keys.events(0), count=1)
        job_id = d.submit({"url": "https://example.com"})
        d.wait(job_id)
        start = before[0][0].decode() if before else "0-0"
        headers = {**d.headers(), "Last-Event-ID": start}
        got: list[str] = []
        pinged = False
        with httpx.stream("GET", f"{d.api}/events", headers=headers, timeout=30) as response:
            for line in response.iter_lines():
                if line.startswith("id: "):
                    got.append(line[4:])
                if line == ": ping":
                    pinged = True
                    break
        assert got == stream_ids(d, job_id) and pinged


AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/jobs/nope/events", AUTH, 404),
        ("/events", {**AUTH, "Last-Event-ID": "yesterday"}, 400),
        ("/events", {"Authorization": "Bearer wrong"}, 401),
        ("/jobs/{job}/events", {}, 401),
        ("/jobs/{job}/events", {"Authorization": "Bearer wrong"}, 401),
    ],
)
def test_sse_refusals(
    redis_process: RedisProcess, path: str, headers: dict[str, str], status: int
) -> None:
    with deployment(redis_process, with_worker=False) as d:
        job_id = d.submit({"url": "https://example.com"})  # a job that exists
        url = f"{d.api}{path.format(job=job_id)}"
        response = httpx.get(url, headers=headers, timeout=10)
        assert response.status_code == status
        assert response.json()["error"]


def test_sse_job_stream_pings_while_other_jobs_send_events(redis_process: RedisProcess) -> None:
    heartbeat = 0.3
    with deployment(redis_process, settings={"sse_heartbeat": heartbeat}, completion_delay=60) as d:
        quiet, _ = held_job(d, 1)
        busy, busy_tasks = held_job(d, 40)
        driver = threading.Thread(target=finish_tasks, args=(d, busy_tasks, 0.05))
        url = f"{d.api}/jobs/{quiet}/events"
        pings: list[float] = []
        with httpx.stream("GET", url, headers=d.headers(), timeout=10) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("id: ")  # the job.state frame
            driver.start()
            started = time.monotonic()
            for line in until(started + 30, lines):
                if line == ": ping":
                    pings.append(time.monotonic())
                if not driver.is_alive():
                    break
            flowed = time.monotonic() - started
        driver.join()
        busy_events = len(stream_events(d, busy))
    assert busy_events > 40  # the other job's events flowed all along
    assert len(pings) >= flowed / heartbeat / 2, (flowed, pings)
    gaps = [b - a for a, b in itertools.pairwise([started, *pings])]
    assert max(gaps) < heartbeat * 3, gaps


# -- metrics --------------------------------------------------------------------------------


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        found = re.match(r"^([a-z_]+)(?:\{(.*)\})? (\S+)$", line)
        if found and found.group(1) == name:
            have = ",".join(sorted((found.group(2) or "").split(","))) if found.group(2) else ""
            if have == wanted:
                return float(found.group(3))
    return 0.0


def test_metrics_count_each_rejection_reason_and_the_queues(redis_process: RedisProcess) -> None:
    with deployment(redis_process) as d:
        job_id = d.submit({"url": "https://example.com"})
        d.wait(job_id)
        d.configure_sandbox(completion_delay=60.0)
        running = d.submit({"url": "https://example.com/slow"})
        while d.job(running)["status"] != "running":
            time.sleep(0.02)
        before = httpx.get(f"{d.api}/metrics", timeout=10).text
        signer = PassthroughSigner(("e2e-key-5b8d2f0c4a",), 3600)
        good = {"id": "1", "status": "done", "passthrough": signer.sign(job_id)}
        expired = PassthroughSigner(("e2e-key-5b8d2f0c4a",), 10, clock=lambda: 1_000_000.0).sign(
            job_id
        )
        bodies: dict[str, bytes] = {
            "bad_token": orjson.dumps({**good, "passthrough": "forged.token.here"}),
            "expired_token": orjson.dumps({**good, "passthrough": expired}),
            "unknown_job": orjson.dumps({**good, "passthrough": signer.sign("nope")}),
            "unknown_task": orjson.dumps({**good, "passthrough": signer.sign(running)}),
            "too_large": orjson.dumps({**good, "pad": "x" * 2_000_000}),
            "malformed": b"{not json",
        }
        for body in bodies.values():
            response = httpx.post(f"{d.api}/callbacks/decodo", content=body, timeout=10)
            assert 400 <= response.status_code < 500
        after = httpx.get(f"{d.api}/metrics", timeout=10).text
        for reason in bodies:
            labels = {"provider": "decodo", "outcome": reason}
            counted = metric(after, "receiver_callbacks_total", **labels)
            assert counted - metric(before, "receiver_callbacks_total", **labels) == 1, reason
        assert metric(after, "receiver_callbacks_total", provider="decodo", outcome="accepted") >= 1
        assert metric(after, "receiver_jobs", status="completed") == 1
        assert metric(after, "receiver_jobs", status="running") == 1
        assert metric(after, "receiver_fetches_total", provider="decodo", outcome="stored") >= 1
        assert metric(after, "receiver_event_stream_length") >= 4
        assert "receiver_work_pending" in after and "receiver_work_oldest_pending_seconds" in after


def test_metrics_count_a_duplicate_callback_once(redis_process: RedisProcess) -> None:
    with deployment(redis_process, completion_delay=60) as d:
        job_id, (task_id,) = held_job(d, 1)
        signer = PassthroughSigner(("e2e-key-5b8d2f0c4a",), 3600)
        body = {"id": task_id, "status": "done", "passthrough": signer.sign(job_id)}
        counted: list[dict[str, float]] = []
        answers: list[str] = []
        for _ in range(3):
            text = httpx.get(f"{d.api}/metrics", timeout=10).text
            counted.append(
                {
                    outcome: metric(
                        text, "receiver_callbacks_total", provider="decodo", outcome=outcome
                    )
                    for outcome in ("accepted", "duplicate")
                }
            )
            if len(counted) < 3:
                response = httpx.post(f"{d.api}/callbacks/decodo", json=body, timeout=10)
                assert response.status_code == 202, response.text
                answers.append(response.json()["status"])
    assert answers == ["accepted", "duplicate"]
    first, second, third = counted
    assert second["accepted"] - first["accepted"] == 1
    assert second["duplicate"] - first["duplicate"] == 0
    assert third["duplicate"] - second["duplicate"] == 1
    assert third["accepted"] - second["accepted"] == 0


@pytest.mark.anyio
async def test_a_rebuilt_final_event_has_the_time_the_stream_entry_had(redis: Redis) -> None:
    # 0.0127 s past the second: the event says .013 (rounded), not .012 (truncated).
    store = Store(redis, clock=lambda: 1_800_000_000.0127)
    await store.create_job("j1", "decodo", total=1, params={}, work="")
    await store.finish_job("j1", JobStatus.FAILED, "rejected: no")
    entries: Any = await redis.xrange(store.keys.events(0))
    kept = event_from_entry(*entries[-1])
    await redis.xtrim(store.keys.events(0), maxlen=0)
    rebuilt = await wait(redis, "j1", timeout=0.1)
    assert kept.at == rebuilt.at == "2027-01-15T08:00:00.013+00:00"
