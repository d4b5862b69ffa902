"""Subscribers: the stream helper, consumer groups, SSE with resume, and the metrics."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from receiver.events import Event, consume, last_event_id, subscribe, wait
from receiver.keys import Keys
from receiver.store import JobStatus, Store
from receiver.tokens import PassthroughSigner
from tests.e2e import Deployment, deployment
from tests.servers import RedisProcess


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


def stream_events(d: Deployment, job_id: str) -> list[dict[str, Any]]:
    return d.events(job_id)


def stream_ids(d: Deployment, job_id: str) -> list[str]:
    entries: Any = d.redis.xrange("receiver:stream:events")
    return [
        entry_id.decode()
        for entry_id, fields in entries
        if orjson.loads(fields[b"event"])["job_id"] == job_id
    ]


# -- the Python helpers ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_offline_subscriber_catches_up_exactly_once(redis_process: RedisProcess) -> None:
    with deployment(redis_process) as d:
        client = Redis.from_url(redis_process.url)
        cursor = await last_event_id(client, Keys())  # the subscriber goes offline here
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


# -- SSE ------------------------------------------------------------------------------------


def test_sse_job_stream_resumes_with_no_gap_and_no_repeat(redis_process: RedisProcess) -> None:
    with deployment(redis_process, completion_delay=0.3, completion_jitter=0.5) as d:
        job_id = d.submit({"urls": [f"https://example.com/{i}" for i in range(6)]})
        url = f"{d.api}/jobs/{job_id}/events"
        first: list[dict[str, str]] = []
        with httpx.stream("GET", url, headers=d.headers(), timeout=30) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            for frame in sse_frames(response.iter_lines()):
                first.append(frame)
                if len(first) == 4:
                    break  # the client drops the connection mid-job
        assert first[0]["event"] == "job.state"
        state = orjson.loads(first[0]["data"])
        assert state["id"] == job_id
        headers = {**d.headers(), "Last-Event-ID": first[-1]["id"]}
        rest: list[dict[str, str]] = []
        with httpx.stream("GET", url, headers=headers, timeout=30) as response:
            rest = list(sse_frames(response.iter_lines()))  # ends after the final event
        ids = [f["id"] for f in first[1:] + rest]
        assert len(ids) == len(set(ids))
        expected = [i for i in stream_ids(d, job_id) if i > first[0]["id"] or _after(i, first)]
        assert ids == expected
        assert rest[-1]["event"] == "job.completed"
        assert orjson.loads(rest[-1]["data"])["progress"]["completed"] == 6


def _after(stream_id: str, first: list[dict[str, str]]) -> bool:
    millis, seq = (int(p) for p in stream_id.split("-"))
    base_millis, base_seq = (int(p) for p in first[0]["id"].split("-"))
    return (millis, seq) > (base_millis, base_seq)


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
        before: Any = d.redis.xrevrange("receiver:stream:events", count=1)
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


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/jobs/nope/events", {}, 404),
        ("/events", {"Last-Event-ID": "yesterday"}, 400),
        ("/events", {"Authorization": "Bearer wrong"}, 401),
    ],
)
def test_sse_refusals(
    redis_process: RedisProcess, path: str, headers: dict[str, str], status: int
) -> None:
    with deployment(redis_process, with_worker=False) as d:
        response = httpx.get(f"{d.api}{path}", headers={**d.headers(), **headers}, timeout=10)
        assert response.status_code == status
        assert response.json()["error"]


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
        signer = PassthroughSigner(("e2e-key",), 3600)
        good = {"id": "1", "status": "done", "passthrough": signer.sign(job_id)}
        expired = PassthroughSigner(("e2e-key",), 10, clock=lambda: 1_000_000.0).sign(job_id)
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
