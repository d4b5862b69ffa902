"""The poll schedule: the adaptive interval alone, then whole polls on a real Redis."""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from typing import Any, cast

import pytest
from redis.asyncio import Redis

from receiver.polling import BUSY_POLL_MAX, Observation, Poller
from receiver.settings import Settings
from receiver.store import Store
from receiver.store.keys import Keys

T0 = 1_800_000_000.0  # the injected clock starts here


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class ScriptedPoller(Poller):
    """A poller whose provider answers with the observations it is given, in order."""

    provider = "scripted"

    def __init__(self, store: Store, settings: Settings, clock: Clock, seen: list[Observation]):
        super().__init__(store, settings, clock)
        self.script: Iterator[Observation] = iter(seen)

    @property
    def rate(self) -> float:
        return 1000.0

    async def sync(self, job: Mapping[str, Any]) -> Observation:
        return next(self.script)


def interval_poller(poll_min: float = 1.0, poll_max: float = 60.0) -> Poller:
    """A poller for `_next_interval` alone, which reads the settings and nothing else."""
    return Poller(cast(Store, None), Settings(poll_min=poll_min, poll_max=poll_max))


def draws(poller: Poller, job: Mapping[str, Any], count: int = 2000) -> list[float]:
    random.seed(11)
    return [poller._next_interval(job, moved=False) for _ in range(count)]


# -- the interval ---------------------------------------------------------------------------


@pytest.mark.parametrize("previous", [None, 1.0, 7.5, 60.0])
def test_next_interval_resets_to_poll_min_when_progress_moved(previous: float | None) -> None:
    job = {} if previous is None else {"poll_interval": previous}
    assert interval_poller()._next_interval(job, moved=True) == 1.0


@pytest.mark.parametrize(
    ("previous", "low", "high"),
    [
        (None, 1.28, 1.6),  # no interval yet: grown from poll_min
        (1.0, 1.28, 1.6),
        (5.0, 6.4, 8.0),  # 1.6 times the last, jittered down to 0.8 of that
        (30.0, 38.4, 48.0),  # 1.6 × 30 = 48, under the 60 s cap
        (50.0, 48.0, 60.0),  # 80 capped to 60, then jittered
        (60.0, 48.0, 60.0),
    ],
)
def test_next_interval_grows_by_1_6_with_jitter_while_nothing_moves(
    previous: float | None, low: float, high: float
) -> None:
    job = {} if previous is None else {"poll_interval": previous}
    seen = draws(interval_poller(), job)
    assert all(low - 1e-9 <= interval <= high + 1e-9 for interval in seen)
    # Jittered over the whole of [0.8×, 1×], not a fixed factor.
    spread = high - low
    assert min(seen) < low + 0.02 * spread and max(seen) > high - 0.02 * spread


def test_next_interval_backs_off_geometrically_up_to_poll_max() -> None:
    poller = interval_poller(poll_min=1.0, poll_max=60.0)
    random.seed(5)
    job: dict[str, Any] = {}
    intervals = []
    for _ in range(30):
        job["poll_interval"] = poller._next_interval(job, moved=False)
        intervals.append(job["poll_interval"])
    for previous, current in zip([1.0, *intervals], intervals, strict=False):
        grown = min(60.0, previous * 1.6)
        assert 0.8 * grown - 1e-9 <= current <= grown + 1e-9
    assert intervals[0] < 2 and intervals[9] > 20  # at least 1.28 ** 10 ≈ 11.8 times longer
    assert all(48.0 <= interval <= 60.0 for interval in intervals[-10:])


def test_next_interval_never_drops_below_poll_min() -> None:
    # Jitter would take 0.8 × 1.6 × 0.5 = 0.64 s: the floor is poll_min, 0.75 s.
    seen = draws(interval_poller(poll_min=0.75, poll_max=10.0), {"poll_interval": 0.5})
    assert min(seen) >= 0.75 and max(seen) <= 0.8


def test_next_interval_with_poll_max_below_poll_min_stays_at_poll_min() -> None:
    poller = interval_poller(poll_min=5.0, poll_max=1.0)
    assert set(draws(poller, {"poll_interval": 5.0}, count=50)) == {5.0}
    assert poller._next_interval({"poll_interval": 5.0}, moved=True) == 5.0


def test_next_interval_while_busy_backs_off_no_further_than_busy_poll_max() -> None:
    # The shipped intervals (1 s to 60 s): a busy job (a Dify document paused or moving)
    # still backs off from poll_min, but is polled at least every BUSY_POLL_MAX seconds.
    poller = interval_poller()
    random.seed(3)
    job: dict[str, Any] = {"poll_interval": 60.0}  # it was idle before
    intervals = []
    for _ in range(40):
        job["poll_interval"] = poller._next_interval(job, moved=False, busy=True)
        intervals.append(job["poll_interval"])
    assert max(intervals) <= BUSY_POLL_MAX
    assert min(intervals) >= 0.8 * BUSY_POLL_MAX
    assert poller._next_interval(job, moved=True, busy=True) == 1.0
    assert poller._next_interval(job, moved=False) > BUSY_POLL_MAX  # not busy: grows on


def test_next_interval_while_busy_never_drops_below_poll_min() -> None:
    poller = interval_poller(poll_min=5.0, poll_max=60.0)
    assert poller._next_interval({"poll_interval": 5.0}, moved=False, busy=True) == 5.0


# -- whole polls ----------------------------------------------------------------------------


async def hash_of(redis: Redis, store: Store, job_id: str) -> dict[str, str]:
    raw = await redis.hgetall(store.keys.job(job_id))
    return {_text(k): _text(v) for k, v in raw.items()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def seen(mark: str, completed: int) -> Observation:
    return Observation(fingerprint=mark, fields={"completed": completed}, detail={"mark": mark})


@pytest.mark.anyio
async def test_poll_schedules_by_progress_and_fails_a_stalled_job(redis: Redis) -> None:
    clock = Clock()
    store = Store(redis, Keys(), clock=clock)
    settings = Settings(poll_min=1.0, poll_max=8.0, stall_after=20.0)
    script = [seen("a", 1), seen("a", 1), seen("b", 2)] + [seen("b", 2)] * 20
    poller = ScriptedPoller(store, settings, clock, script)
    job_id, created = await store.track_job("scripted", "ext-1", {"id": "ext-1"})
    assert created

    async def poll_at(at: float) -> tuple[float | None, dict[str, str]]:
        clock.now = at
        job = await store.get_job(job_id)
        assert job is not None
        due = await poller.poll(job)
        return due, await hash_of(redis, store, job_id)

    # First poll: progress appears, so the next one is poll_min away.
    due, fields = await poll_at(T0)
    assert due == T0 + 1.0
    assert float(fields["poll_interval"]) == 1.0
    assert float(fields["moved_at"]) == T0
    assert float(fields["next_poll_at"]) == T0 + 1.0
    assert (fields["fingerprint"], fields["completed"]) == ("a", "1")

    # Nothing moved: 1.6 × 1 s, jittered into [1.28, 1.6]; moved_at and fingerprint stay.
    due, fields = await poll_at(T0 + 1.0)
    assert due is not None and 1.28 <= due - (T0 + 1.0) <= 1.6
    assert float(fields["poll_interval"]) == pytest.approx(due - (T0 + 1.0))
    assert float(fields["next_poll_at"]) == pytest.approx(due)
    assert float(fields["moved_at"]) == T0 and fields["fingerprint"] == "a"

    # Progress moves again: back to poll_min, moved_at now.
    moved = due
    due, fields = await poll_at(moved)
    assert due == moved + 1.0
    assert float(fields["poll_interval"]) == 1.0 and float(fields["moved_at"]) == moved
    assert (fields["fingerprint"], fields["completed"]) == ("b", "2")

    # Then no progress: each interval 1.6 times the last (jittered), capped at 8 s, polled
    # when due, until 20 s without progress fail the job `stalled`.
    last, intervals = moved, []
    while due is not None:
        assert due - moved <= 20.0 + 8.0, "polled past the stall timeout"
        intervals.append(due - last)
        last = due
        due, fields = await poll_at(last)
        if due is not None:
            assert float(fields["moved_at"]) == moved and fields["status"] == "running"
            assert float(fields["next_poll_at"]) == pytest.approx(due)
    assert last - moved > 20.0 and last - intervals[-1] - moved <= 20.0
    for previous, current in zip(intervals[1:], intervals[2:], strict=False):
        grown = min(8.0, previous * 1.6)
        assert 0.8 * grown - 1e-6 <= current <= grown + 1e-6
    assert max(intervals) <= 8.0 + 1e-6
    assert fields["status"] == "failed"
    job = await store.get_job(job_id)
    assert job is not None and job["error"] == "stalled: no progress for 20 s"
    assert await poller.poll(job) is None  # an ended job is not polled again
