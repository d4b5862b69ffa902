from __future__ import annotations

import secrets
import zlib
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from receiver.events import event_from_entry
from receiver.store import JobStatus, Store
from receiver.store.keys import WORK_GROUP, Keys

pytestmark = pytest.mark.anyio


async def events(redis: Redis, store: Store) -> list[dict[str, Any]]:
    entries: Any = await redis.xrange(store.keys.events(0))
    return [event_from_entry(entry_id, fields).to_dict() for entry_id, fields in entries]


async def work(redis: Redis, store: Store) -> list[dict[bytes, bytes]]:
    entries: Any = await redis.xrange(store.keys.work(0))
    return [fields for _, fields in entries]


async def running_job(store: Store, job_id: str = "j1", tasks: int = 2) -> None:
    await store.create_job(job_id, "decodo", total=tasks, params={"items": []}, work="submit")
    await store.record_submission(
        job_id,
        0,
        [(f"t{i}", f"https://e.com/{i}") for i in range(tasks)],
        last=True,
        reconcile_after=300,
    )


async def test_create_job_writes_record_index_event_and_work(redis: Redis, store: Store) -> None:
    await store.create_job("j1", "decodo", total=3, params={"a": 1}, work="submit")
    job = await redis.hgetall(store.keys.job("j1"))
    assert job[b"status"] == b"submitted" and job[b"total"] == b"3"
    assert job[b"submitting"] == b"1"
    indexed: Any = await redis.xrange(store.keys.jobs(0))
    assert [fields for _, fields in indexed] == [{b"j": b"j1"}]
    assert [e["type"] for e in await events(redis, store)] == ["job.created"]
    assert await work(redis, store) == [{b"k": b"submit", b"j": b"j1"}]


async def test_record_submission_makes_job_running_and_schedules_reconcile(
    redis: Redis, store: Store
) -> None:
    await running_job(store)
    assert await redis.hgetall(store.keys.tasks("j1")) == {b"t0": b"pending", b"t1": b"pending"}
    job = await store.get_job("j1")
    assert job is not None and job["status"] == "running" and not job["submitting"]
    assert await redis.zscore(store.keys.due(0), "reconcile:j1") is not None


async def test_callback_done_records_task_enqueues_fetch_and_emits(
    redis: Redis, store: Store
) -> None:
    await running_job(store)
    assert await store.apply_callbacks([("j1", "t0", "done")]) == ["accepted"]
    assert await redis.hget(store.keys.tasks("j1"), "t0") == b"done"
    assert await redis.hget(store.keys.job("j1"), "received") == b"1"
    assert {b"k": b"fetch", b"j": b"j1", b"t": b"t0"} in await work(redis, store)
    last = (await events(redis, store))[-1]
    assert last["type"] == "job.progress" and last["detail"]["task_id"] == "t0"


async def test_duplicate_callback_changes_nothing(redis: Redis, store: Store) -> None:
    await running_job(store)
    await store.apply_callbacks([("j1", "t0", "done")])
    before = (await events(redis, store), await work(redis, store))
    assert await store.apply_callbacks([("j1", "t0", "done"), ("j1", "t0", "faulted")]) == [
        "duplicate",
        "duplicate",
    ]
    assert (await events(redis, store), await work(redis, store)) == before


async def test_unknown_job_and_unknown_task_write_nothing(redis: Redis, store: Store) -> None:
    await running_job(store)
    before = await redis.dbsize(), await events(redis, store)
    codes = await store.apply_callbacks([("nope", "t0", "done"), ("j1", "t9", "done")])
    assert codes == ["unknown_job", "unknown_task"]
    assert (await redis.dbsize(), await events(redis, store)) == before


async def test_early_callback_is_applied_when_the_submission_is_recorded(
    redis: Redis, store: Store
) -> None:
    await store.create_job("j1", "decodo", total=1, params={}, work="submit")
    assert await store.apply_callbacks([("j1", "t0", "done")]) == ["early"]
    assert await redis.hget(store.keys.tasks("j1"), "t0") is None
    await store.record_submission("j1", 0, [("t0", "u")], last=True, reconcile_after=300)
    assert await redis.hget(store.keys.tasks("j1"), "t0") == b"done"
    assert not await redis.exists(store.keys.early("j1"))


async def test_stored_results_complete_the_job_once(redis: Redis, store: Store) -> None:
    await running_job(store)
    await store.apply_callbacks([("j1", "t0", "done")])
    assert await store.store_results("j1", "t0", b'{"results":[1]}', 60) == "stored"
    assert await store.store_results("j1", "t0", b'{"results":[2]}', 60) == "duplicate"
    await store.apply_callbacks([("j1", "t1", "faulted")])
    blob: Any = await redis.hget(store.keys.results("j1"), "t0")
    assert blob is not None and zlib.decompress(blob) == b'{"results":[1]}'
    assert 0 < await redis.ttl(store.keys.results("j1")) <= 60
    job = await store.get_job("j1")
    assert job is not None and job["status"] == "completed"
    assert job["progress"] == {"completed": 1, "failed": 1, "total": 2}
    types = [e["type"] for e in await events(redis, store)]
    assert types.count("job.completed") == 1


async def test_all_tasks_failed_fails_the_job(store: Store) -> None:
    await running_job(store)
    await store.apply_callbacks([("j1", "t0", "faulted"), ("j1", "t1", "faulted")])
    job = await store.get_job("j1")
    assert job is not None and job["status"] == "failed"


async def test_all_tasks_expired_expires_the_job(store: Store) -> None:
    await running_job(store)
    await store.fail_task("j1", "t0", "expired: too late", expired=True)
    await store.fail_task("j1", "t1", "expired: too late", expired=True)
    job = await store.get_job("j1")
    assert job is not None and job["status"] == "expired"


async def test_terminal_job_never_regresses(redis: Redis, store: Store) -> None:
    await running_job(store)
    assert await store.finish_job("j1", JobStatus.CANCELLED, "by a user") == "finished"
    assert await store.apply_callbacks([("j1", "t0", "done")]) == ["closed"]
    assert await store.store_results("j1", "t0", b"{}", 60) == "closed"
    assert await store.finish_job("j1", JobStatus.COMPLETED) == "closed"
    job = await store.get_job("j1")
    assert job is not None and job["status"] == "cancelled"
    assert await redis.hget(store.keys.tasks("j1"), "t0") == b"pending"


async def test_event_published_carries_the_stream_id(redis: Redis, store: Store) -> None:
    await store.create_job("j1", "decodo", total=1, params={}, work="")
    pubsub = redis.pubsub()
    await pubsub.subscribe(store.keys.channel, store.keys.channel_of("j1"))
    await pubsub.get_message(timeout=1)
    await pubsub.get_message(timeout=1)
    await store.finish_job("j1", JobStatus.CANCELLED, "stop")
    messages = [await pubsub.get_message(timeout=1) for _ in range(2)]
    await pubsub.aclose()  # type: ignore[no-untyped-call]
    newest: Any = await redis.xrevrange(store.keys.events(0), count=1)
    stream_id = newest[0][0].decode()
    for message in messages:
        assert message is not None
        body = orjson.loads(message["data"])
        assert body["id"] == stream_id and body["type"] == "job.cancelled"
        assert set(body) == {
            "id",
            "type",
            "job_id",
            "provider",
            "status",
            "progress",
            "at",
            "detail",
        }


async def test_claim_due_leases_members(store: Store) -> None:
    now = store.clock()
    await store.schedule("a", now - 1)
    await store.schedule("b", now + 100)
    assert await store.claim_due(10, lease=30) == ["a"]
    assert await store.claim_due(10, lease=30) == []  # leased: no other worker gets it
    score = await store.redis.zscore(store.keys.due(0), "a")
    assert score is not None and score > now + 20


async def test_acquire_rate_spaces_calls(store: Store) -> None:
    assert await store.acquire_rate("x", 1.0) == 0
    wait = await store.acquire_rate("x", 1.0)
    assert 0 < wait <= 1.0


async def test_acquire_rate_allows_a_burst_then_spaces(store: Store) -> None:
    allowed = [await store.acquire_rate("y", 0.5, burst=3) == 0 for _ in range(4)]
    assert allowed == [True, True, True, False]


async def test_partitions_spread_scheduled_work_and_claim_from_all(redis: Redis) -> None:
    partitioned = Store(redis, Keys(partitions=4), strict_scripts=True)
    now = partitioned.clock()
    members = [f"poll:job{i}" for i in range(40)]
    for member in members:
        await partitioned.schedule(member, now - 1)
    used = {partitioned.due_key(m) for m in members}
    assert used == {partitioned.keys.due(p) for p in range(4)}
    claimed = await partitioned.claim_due(100)
    assert sorted(claimed) == sorted(members)
    assert await partitioned.claim_due(100) == []


async def test_ensure_group_is_idempotent(redis: Redis, store: Store) -> None:
    await store.ensure_group()
    await store.ensure_group()
    groups = await redis.xinfo_groups(store.keys.work(0))
    assert [g["name"] for g in groups] == [WORK_GROUP.encode()]


async def test_acquire_rate_takes_several_turns_at_once(store: Store) -> None:
    assert await store.acquire_rate("z", 0.5, burst=4, take=4) == 0
    wait = await store.acquire_rate("z", 0.5, burst=4, take=1)
    assert 0 < wait <= 0.5  # the four turns used the whole burst


async def test_renew_leases_extends_held_leases_and_spares_rescheduled_ones(
    store: Store,
) -> None:
    now = store.clock()
    await store.schedule("poll:a", now - 1)
    await store.schedule("poll:b", now - 1)
    members, lease_end = await store.claim_due_leased(10, lease=30)
    assert sorted(members) == ["poll:a", "poll:b"]
    await store.schedule("poll:b", now + 5)  # b's step finished and rescheduled it
    renewed = await store.renew_leases({m: lease_end for m in members}, lease=60)
    assert list(renewed) == ["poll:a"]
    assert await store.due_at("poll:a") == pytest.approx(renewed["poll:a"])
    assert await store.due_at("poll:b") == pytest.approx(now + 5)


async def test_events_stream_is_trimmed_near_its_maxlen(redis: Redis) -> None:
    store = Store(redis, events_maxlen=200)
    await running_job(store, tasks=3000)
    await store.apply_callbacks([("j1", f"t{i}", "done") for i in range(3000)])
    length = await redis.xlen(store.keys.events(0))
    # MAXLEN ~ trims whole stream nodes (100 entries each by default): near 200, not 3000.
    assert 200 <= length <= 400, length
    newest = (await events(redis, store))[-1]
    assert newest["detail"]["task_id"] == "t2999"  # the newest are the ones kept


async def test_results_pages_give_every_result_once(store: Store) -> None:
    # Bodies the size of real results (a few hundred bytes compressed at least): Redis keeps
    # a hash of a few hundred tiny values in one listpack, which HSCAN returns whole.
    documents = {
        f"doc{i}": orjson.dumps({"n": i, "html": secrets.token_hex(100)}) for i in range(250)
    }
    await store.store_documents("j1", documents, ttl=60)
    seen: list[str] = []
    pages, cursor = 0, 0
    while True:
        page, cursor = await store.results_page("j1", cursor, count=50)
        pages += 1
        seen += page
        assert all(orjson.dumps(body) == documents[key] for key, body in page.items())
        if cursor == 0:
            break
        assert pages < 100, "the cursor never came back to 0"
    assert pages >= 3
    assert sorted(seen) == sorted(documents)  # each once
