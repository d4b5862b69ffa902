"""Dify jobs' progress as a watcher sees it: each document's stage counted into `stages`, and
the segment counts, on the job and in every job.progress event; and the poll interval while
documents move or are paused. The captured timelines are replayed through whole polls
(DifyJobs on a real Redis, the client on the captured answers)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from receiver.events import event_from_entry
from receiver.jobs.dify import DifyJobs
from receiver.polling import BUSY_POLL_MAX
from receiver.providers.dify import DifyClient
from receiver.settings import Settings
from receiver.store import Store
from receiver.store.keys import Keys
from tests.providers.captures import CAPTURES, Record, Replay, load, load_path
from tests.providers.conftest import Handler, MockHttp
from tests.providers.test_dify_client import TIMELINES, saved_polls, where
from tests.test_polling import T0, Clock

pytestmark = pytest.mark.anyio

LOCAL = "http://127.0.0.1:5001/v1"  # the captured server's API base


PROGRESS = ("stages", "segments_completed", "segments_total", "paused")  # the detail's keys


@dataclass
class Polled:
    """A Dify job polled on a replay of captured answers, its clock moved to each due time."""

    store: Store
    redis: Redis
    jobs: DifyJobs
    clock: Clock
    job_id: str
    intervals: list[float] = field(default_factory=list)  # between one poll and the next due
    ended: bool = False

    async def poll(self) -> dict[str, Any]:
        """One poll; the job (as `Store.get_job` reads it) afterwards."""
        job = await self.store.get_job(self.job_id)
        assert job is not None and not self.ended
        due = await self.jobs.poll(job)
        if due is None:
            self.ended = True
        else:
            self.intervals.append(due - self.clock.now)
            self.clock.now = due
        after = await self.store.get_job(self.job_id)
        assert after is not None
        return after

    async def events(self, kind: str = "job.progress") -> list[dict[str, Any]]:
        entries: Any = await self.redis.xrange(self.store.keys.events(0))
        events = [event_from_entry(entry_id, fields).to_dict() for entry_id, fields in entries]
        return [e for e in events if e["job_id"] == self.job_id and e["type"] == kind]


async def polled(
    redis: Redis,
    mock_http: MockHttp,
    handler: Handler,
    place: tuple[str, str],
    settings: Settings | None = None,
) -> Polled:
    clock = Clock()
    store = Store(redis, Keys(), clock=clock)
    client = DifyClient(mock_http(handler), LOCAL, "dataset-test-key")
    jobs = DifyJobs(store, client, settings or Settings(), clock=clock)
    dataset_id, batch = place
    external = {"dataset_id": dataset_id, "batch": batch}
    job_id, _ = await store.track_job("dify", f"{dataset_id}:{batch}", external)
    return Polled(store, redis, jobs, clock, job_id)


async def replayed(
    redis: Redis, mock_http: MockHttp, records: Iterable[Record], settings: Settings | None = None
) -> Polled:
    """A job polled on these captured answers, in turn."""
    answers = list(records)
    return await polled(redis, mock_http, Replay(answers), where(answers[0]), settings)


def expected_progress(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """What a timeline entry's documents add up to, as the job and its events show it."""
    stages = Counter(d["status"] for d in docs)
    segments = [tuple(int(n) for n in d["seg"].split("/")) for d in docs]
    return {
        "stages": dict(stages),
        "segments_completed": sum(done for done, _ in segments),
        "segments_total": sum(total for _, total in segments),
        "paused": stages["paused"],
    }


@pytest.mark.parametrize("number", sorted(TIMELINES))
async def test_every_captured_poll_shows_stages_and_segments_on_the_job_and_its_events(
    redis: Redis, mock_http: MockHttp, number: str
) -> None:
    steps = saved_polls(number)
    job = await replayed(redis, mock_http, (record for _, record in steps))
    for poll, _ in steps:
        after = await job.poll()
        want = expected_progress(poll["docs"])
        assert {name: after[name] for name in PROGRESS} == want
        # The latest event says the same, under the job's own field names: a watcher that
        # merges each event's detail into the job sees the stages move.
        last = (await job.events())[-1]
        assert last["detail"] == want
        if not job.ended:  # a document is moving or paused: polled within a few seconds
            assert job.intervals[-1] <= BUSY_POLL_MAX
    assert job.ended == (TIMELINES[number][-1] != "running")


async def test_economy_indexing_moves_by_its_stage_while_completed_segments_stay_0(
    redis: Redis, mock_http: MockHttp
) -> None:
    # Capture 023, an economy dataset: total_segments grows while splitting, then the
    # indexing stage holds completed_segments at 0 until the document is completed.
    job = await replayed(redis, mock_http, (record for _, record in saved_polls("023")))
    while not job.ended:
        await job.poll()
    seen = [
        (next(iter(e["detail"]["stages"])), e["detail"]["segments_completed"])
        for e in await job.events()
    ]
    assert seen[-3:] == [("splitting", 0), ("indexing", 0), ("completed", 3000)]
    # Splitting 0/2985 -> indexing 0/3000 moved the total; the stage alone is progress too:
    # the same counts in the next stage are an event of their own.
    assert [e["detail"]["segments_total"] for e in await job.events()][-3:] == [2985, 3000, 3000]
    [completed] = await job.events("job.completed")
    assert completed["status"] == "completed"


async def test_a_stage_change_with_the_same_counts_is_progress(
    redis: Redis, mock_http: MockHttp
) -> None:
    # Capture 120 (indexing 0/0) then 121 (completed 0/0) of the empty text: no count moves.
    records = [load("dify", "119"), load("dify", "120"), load("dify", "121")]
    job = await replayed(redis, mock_http, records)
    for _ in records:
        await job.poll()
    stages = [e["detail"]["stages"] for e in await job.events()]
    assert stages == [{"splitting": 1}, {"indexing": 1}, {"completed": 1}]


async def test_a_long_pause_is_polled_within_a_few_seconds_with_the_shipped_intervals(
    redis: Redis, mock_http: MockHttp
) -> None:
    # The paused document of capture 050 answered for two simulated minutes, with the
    # default poll_min (1 s) and poll_max (60 s): a resume is noticed within 3 s, however
    # long the pause.
    settings = Settings()
    assert (settings.poll_min, settings.poll_max) == (1.0, 60.0)
    paused = load_path(CAPTURES / "dify" / "050_bigX_paused_poll0052_paused.json")
    job = await replayed(redis, mock_http, [paused] * 80, settings)
    while job.clock.now < T0 + 120:
        after = await job.poll()
        assert after["status"] == "running" and after["paused"] == 1
    assert max(job.intervals) <= BUSY_POLL_MAX
    assert min(job.intervals[5:]) >= 0.8 * 1.6 * 1.6  # still backing off under the cap
    assert len(await job.events()) == 1  # one pause, seen once


async def test_a_batch_where_nothing_is_expected_to_move_backs_off_to_poll_max(
    redis: Redis, mock_http: MockHttp
) -> None:
    # An empty batch: no document is moving nor paused, so nothing is due to change soon.
    place = ("96cc60c5-782e-419e-aa36-655f0742d733", "20261122142935277307")
    job = await polled(redis, mock_http, lambda r: httpx.Response(200, json={"data": []}), place)
    for _ in range(14):
        after = await job.poll()
    assert after["status"] == "running" and after["stages"] == {}
    assert max(job.intervals) > 20 and max(job.intervals) <= 60.0
