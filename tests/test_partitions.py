"""Partitions: a job's keys and its partition's streams share one slot; the partitions spread
over the slots; a deployment keeps its number; everything works across several of them."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from receiver.errors import ConfigError
from receiver.events import subscribe
from receiver.settings import Settings
from receiver.store import Store, new_job_id
from receiver.store.cursors import order
from receiver.store.keys import Keys
from receiver.store.server import settle_partitions
from tests.e2e import deployment
from tests.servers import RedisProcess, child_env, run_cli
from tests.test_events import sse_frames, until

# How `redis-cli --cluster create` splits the slots over three masters.
THREE_MASTERS = ((0, 5460), (5461, 10922), (10923, 16383))


def test_partitions_spread_evenly_over_masters_that_split_the_slots_evenly() -> None:
    for partitions in (3, 6, 12, 48):
        keys = Keys(partitions=partitions)
        slots = [key_slot(keys.base(p).encode()) for p in range(partitions)]
        per_master = Counter(
            next(m for m, (low, high) in enumerate(THREE_MASTERS) if low <= slot <= high)
            for slot in slots
        )
        assert sorted(per_master.values()) == [partitions // 3] * 3, (partitions, slots)
        assert len(set(slots)) == partitions  # no two partitions share a slot


def test_every_key_of_a_job_is_in_its_partitions_slot() -> None:
    keys = Keys(partitions=8)
    used: Counter[int] = Counter()
    for _ in range(400):
        job_id = new_job_id()
        partition = keys.partition_of(job_id)
        used[partition] += 1
        names = [*keys.job_keys(job_id), *keys.shared(partition)]
        assert len({key_slot(name.encode()) for name in names}) == 1, names
    assert set(used) == set(range(8)) and min(used.values()) > 20  # ids spread too


@pytest.mark.anyio
async def test_a_store_of_several_partitions_keeps_each_job_in_its_own(redis: Redis) -> None:
    store = Store(redis, Keys(partitions=4), events_maxlen=1000, strict_scripts=True)
    await store.ensure_group()
    jobs = [f"job{i:02}" for i in range(40)]
    for job_id in jobs:
        await store.create_job(job_id, "decodo", total=2, params={})
        tasks = [(f"{job_id}-t1", "a"), (f"{job_id}-t2", "b")]
        await store.record_submission(job_id, 0, tasks, last=True, reconcile_after=60)
    # One call for callbacks of every partition: each partition's script, one slot each.
    codes = await store.apply_callbacks([(job_id, f"{job_id}-t1", "done") for job_id in jobs])
    assert codes == ["accepted"] * 40
    for partition in range(4):
        mine = [j for j in jobs if store.keys.partition_of(j) == partition]
        assert mine, "40 ids leave no partition empty"
        entries: Any = await redis.xrange(store.keys.work(partition))
        queued = {fields[b"j"].decode() for _, fields in entries}
        assert queued == set(mine)
        events: Any = await redis.xrange(store.keys.events(partition))
        assert {fields[b"job_id"].decode() for _, fields in events} == set(mine)
    counts = await store.jobs_by_status()
    assert {status: n for status, n in counts.items() if n} == {"running": 40}
    # Listed newest first over every partition (to the millisecond: the jobs indexes'
    # entry ids), in pages, each job once.
    listed: list[tuple[str, float]] = []  # (id, created_at)
    cursor: str | None = None
    while True:
        page, cursor = await store.list_jobs(limit=7, cursor=cursor)
        listed += [(job["id"], job["created_at"]) for job in page]
        if cursor is None:
            break
    assert sorted(job_id for job_id, _ in listed) == jobs
    entry_of: dict[str, tuple[int, int]] = {}
    for partition in range(4):
        index: Any = await redis.xrange(store.keys.jobs(partition))
        entry_of.update({f[b"j"].decode(): order(i.decode()) for i, f in index})
    merged = [entry_of[job_id] for job_id, _ in listed]
    assert merged == sorted(merged, reverse=True)


def test_a_deployment_keeps_its_number_of_partitions(redis_process: RedisProcess) -> None:
    settings = Settings(redis_url=redis_process.url)
    import redis as sync_redis

    sync_redis.Redis.from_url(redis_process.url).flushall()
    assert settle_partitions(settings.with_changes(partitions=4)) == 4
    assert settle_partitions(settings) == 4  # unset: the one recorded
    with pytest.raises(ConfigError, match="RECEIVER_PARTITIONS is 2, but this deployment's"):
        settle_partitions(settings.with_changes(partitions=2))
    # A process started with another number refuses to start, and says why.
    env = child_env(
        REDIS_URL=redis_process.url,
        RECEIVER_PARTITIONS="2",
        RECEIVER_SECRET_KEYS="k9Xq2mT7vR4wZp8L",
        RECEIVER_API_TOKEN="e2e-api-token-7c1f9a",
    )
    done = run_cli(env, "worker", timeout=60)
    assert done.returncode != 0
    assert "RECEIVER_PARTITIONS is 2, but this deployment's Redis holds 4" in done.stderr
    assert settle_partitions(settings) == 4  # nothing changed


def test_decodo_jobs_across_four_partitions(redis_process: RedisProcess) -> None:
    """Jobs of every partition complete; each job's events are in order, once; the API lists
    them all, and the all-jobs stream resumes from its cursor with nothing twice."""
    with deployment(redis_process, settings={"partitions": 4, "sse_heartbeat": 0.2}) as d:
        jobs = [
            d.submit({"urls": [f"https://example.com/{n}/{i}" for i in range(3)]}) for n in range(8)
        ]
        assert len({d.keys.partition_of(job_id) for job_id in jobs}) > 1
        for job_id in jobs:
            assert d.wait(job_id)["status"] == "completed"
            assert len(d.results(job_id)["results"]) == 3
            events = d.events(job_id)
            finals = [e for e in events if e["type"] == "job.completed"]
            assert len(finals) == 1 and events[-1] == finals[0]
            assert [e["type"] for e in events].count("task.completed") == 3
        listed: list[str] = []
        cursor: str | None = None
        while True:
            params: dict[str, str | int] = {"limit": 3, **({"cursor": cursor} if cursor else {})}
            page = httpx.get(f"{d.api}/jobs", params=params, headers=d.headers(), timeout=10)
            assert page.status_code == 200, page.text
            listed += [job["id"] for job in page.json()["jobs"]]
            if (cursor := page.json()["next_cursor"]) is None:
                break
        assert sorted(listed) == sorted(jobs) and len(listed) == len(set(listed))
        # The all-jobs stream from the start: every event of every job, then resumed
        # halfway from the cursor it gave.
        start = ",".join(["0-0"] * 4)
        everything = _stream(d.api, d.headers(), start, count=_event_count(d, jobs))
        ids = [frame["id"] for frame in everything]
        assert all(len(i.split(",")) == 4 for i in ids)
        halfway = len(everything) // 2
        rest = _stream(d.api, d.headers(), ids[halfway - 1], count=len(everything) - halfway)
        assert [f["data"] for f in rest] == [f["data"] for f in everything[halfway:]]
        for job_id in jobs:  # per job, in the stream's order
            sent = [orjson.loads(f["data"]) for f in everything]
            assert [e["type"] for e in sent if e["job_id"] == job_id] == [
                e["type"] for e in d.events(job_id)
            ]
        # The Python helper reads every partition too.
        assert asyncio.run(_finals_by_helper(redis_process.url, jobs))


def _event_count(d: Any, jobs: list[str]) -> int:
    return sum(len(d.events(job_id)) for job_id in jobs)


def _stream(api: str, headers: dict[str, str], last: str, count: int) -> list[dict[str, str]]:
    frames: list[dict[str, str]] = []
    deadline = time.monotonic() + 30
    resume = {**headers, "Last-Event-ID": last}
    with httpx.stream("GET", f"{api}/events", headers=resume, timeout=30) as response:
        assert response.status_code == 200, response.read()
        for frame in sse_frames(until(deadline, response.iter_lines())):
            frames.append(frame)
            if len(frames) == count:
                break
    return frames


async def _finals_by_helper(url: str, jobs: list[str]) -> bool:
    client = Redis.from_url(url)
    finals: dict[str, str] = {}
    ids: list[str] = []
    async with asyncio.timeout(30):
        async for event in subscribe(client, after="0"):
            ids.append(event.id)
            if event.final:
                finals[event.job_id] = event.type
            if set(finals) == set(jobs):
                break
    await client.aclose()
    positions = [[order(part) for part in i.split(",")] for i in ids]
    moving = all(
        all(a <= b for a, b in zip(before, now, strict=True))
        for before, now in zip(positions, positions[1:], strict=False)
    )
    return moving and set(finals.values()) == {"job.completed"}
