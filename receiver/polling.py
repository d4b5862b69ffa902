"""Polling a provider job: one observation per due time, and the schedule of the next one.

Each poll is a step of the worker: it reads the job, waits its turn under the provider's
request rate (shared through Redis: a poll that must wait is rescheduled, never slept on),
syncs with the provider (reads the job there and stores what it hands over: documents,
their statuses), records what moved, and says when to poll again. The interval is
short while progress moves and backs off with jitter while it does not; a job with no
progress for the stall timeout fails `stalled`, and one past the provider's own expiry
ends `expired`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from receiver.errors import Permanent, Transient
from receiver.jobs.base import UnknownWork, retry_at
from receiver.metrics import POLLS
from receiver.settings import Settings
from receiver.store import JobStatus, Store, Work
from receiver.store.rates import SharedRate

log = logging.getLogger(__name__)

# Each interval without progress is this much longer than the last, up to Settings.poll_max.
_SLOWDOWN = 1.6
# Seconds the interval grows to at most while progress is expected at any moment (a Dify
# document paused, or moving through its stages): a resume is noticed within a few seconds.
BUSY_POLL_MAX = 3.0


@dataclass
class Observation:
    """What one poll saw."""

    fingerprint: str  # of the progress seen: changes exactly when progress moved
    fields: dict[str, Any] = field(default_factory=dict)  # stored on the job hash (JSON: dicts)
    detail: dict[str, Any] = field(default_factory=dict)  # of the job.progress event
    final: JobStatus | None = None  # the job ends with this status
    reason: str = ""  # why it ended, when not completed
    paused: bool = False  # progress is held on purpose: the stall timeout waits
    busy: bool = False  # progress may move at any moment: the interval stays short
    expires_at: float | None = None  # unix time the provider drops the job


class Poller:
    """The provider-independent half of polling; subclasses sync with one provider."""

    provider = "provider"
    direct: frozenset[str] = frozenset()  # every poll reads its job first

    def __init__(self, store: Store, settings: Settings, clock: Callable[[], float] = time.time):
        self.store = store
        self.settings = settings
        self.clock = clock
        # Polls of this provider in flight in this process.
        self._polling = asyncio.Semaphore(settings.poll_concurrency)
        # The provider's requests a second, shared by every process.
        self._rate = SharedRate.per_second(store, f"poll:{self.provider}", self.rate)

    @property
    def rate(self) -> float:
        return 10.0

    async def sync(self, job: Mapping[str, Any]) -> Observation:
        """Read the job at the provider, store what it hands over (documents and their
        statuses: the writes are the provider's, so they are made here), and say what was
        seen; the job's own fields are written by `_record`."""
        raise NotImplementedError

    async def submit(self, job_id: str) -> float | None:
        """Submit a new job to the provider; providers that only get tracked have none."""
        return None

    async def run(
        self, kind: str, job_id: str, task_id: str, job: Mapping[str, Any] | None
    ) -> float | None:
        if kind == Work.SUBMIT:
            return await self.submit(job_id)
        if kind == Work.POLL:
            if job is None:
                return None
            async with self._polling:
                return await self.poll(job)
        raise UnknownWork(f"{self.provider} jobs have no {kind!r} work")

    async def poll(self, job: Mapping[str, Any]) -> float | None:
        """One poll of the job (as `Store.get_job` read it); when to poll it again, or None
        once it ended."""
        job_id = job["id"]
        if JobStatus(job["status"]).terminal:
            return None
        wait = await self._take_turn()
        if wait > 0:
            return self.clock() + wait
        try:
            seen = await self.sync(job)
        except Transient as exc:
            POLLS.labels(self.provider, exc.reason).inc()
            return await self._retry(job_id, exc)
        except Permanent as exc:
            POLLS.labels(self.provider, exc.reason).inc()
            await self._fail(job_id, exc)
            return None
        POLLS.labels(self.provider, "ok").inc()
        return await self._record(job, seen)

    async def _take_turn(self) -> float:
        """0 when this poll may go now, else seconds to wait (the shared rate limit)."""
        return await self._rate.take()

    async def _wait_turn(self) -> None:
        """Wait for a turn under the shared rate: for the requests a poll, a submission or a
        cancel makes beside its first (a batch's `next` pages), which cannot be rescheduled."""
        await self._rate.wait()

    async def _record(self, job: Mapping[str, Any], seen: Observation) -> float | None:
        job_id, now = job["id"], self.clock()
        moved = seen.fingerprint != job.get("fingerprint")
        last_moved = now if moved else last_moved_at(job)
        interval = self._next_interval(job, moved, seen.busy)
        # `next_poll_at` tells a scheduled poll from a leased one (scripts.HINT_POLL); the
        # update also clears the retry count, and answers poll_now when a webhook came.
        fields: dict[str, Any] = {
            "poll_interval": interval,
            "polled_at": now,
            "next_poll_at": now + interval,
        }
        if moved:
            fields |= {"fingerprint": seen.fingerprint, "moved_at": last_moved}
        # Only what changed: most polls see what the last one saw. A mapping or a list is
        # stored as JSON, which the store decodes back (store._JSON_FIELDS).
        fields |= {k: _stored(v) for k, v in seen.fields.items() if job.get(k) != v}
        recorded = await self.store.update_job(
            job_id, fields, event="job.progress" if moved else "", detail=seen.detail
        )
        if seen.final is not None:
            await self.store.finish_job(job_id, seen.final, seen.reason)
            return None
        if await self._end_overdue(job, now, last_moved, seen.paused, seen.expires_at):
            return None
        return now if recorded == "poll_now" else now + interval

    def stall_after(self, job: Mapping[str, Any]) -> float:
        """Seconds without progress before the job fails `stalled`: its own, else the
        provider's, else the default."""
        return float(job.get("stall_after") or self.settings.stall_after_for(self.provider))

    def _next_interval(self, job: Mapping[str, Any], moved: bool, busy: bool = False) -> float:
        low, high = self.settings.poll_min, max(self.settings.poll_min, self.settings.poll_max)
        if busy:
            high = min(high, max(low, BUSY_POLL_MAX))
        if moved:
            return low
        previous = float(job.get("poll_interval") or low)
        grown = min(high, previous * _SLOWDOWN)
        return random.uniform(max(low, grown * 0.8), grown)

    async def _retry(self, job_id: str, exc: Transient) -> float | None:
        """When to try again after a failed poll or submission; None once the job ended
        because it failed for longer than its stall timeout, or outlived its expiry."""
        job = await self.store.get_job(job_id)
        if job is None:
            return None
        last_moved = last_moved_at(job)
        paused = bool(job.get("paused"))
        expires_at = parse_time(job.get("expires_at"))
        failing = f" (polls failing: {exc.reason})"
        if await self._end_overdue(job, self.clock(), last_moved, paused, expires_at, failing):
            return None
        work = Work.POLL if job.get("external") else Work.SUBMIT
        return await retry_at(
            self.store,
            self.settings,
            self.clock,
            provider=self.provider,
            job_id=job_id,
            work=work,
            exc=exc,
        )

    async def _end_overdue(
        self,
        job: Mapping[str, Any],
        now: float,
        last_moved: float,
        paused: bool,
        expires_at: float | None,
        why: str = "",
    ) -> bool:
        """End the job `stalled` when it made no progress for its stall timeout (unless
        paused, by default), or `expired` past the provider's expiry; whether it ended."""
        stall_after = self.stall_after(job)
        holding = paused and not self.settings.stall_while_paused
        if not holding and now - last_moved > stall_after:
            reason = f"stalled: no progress for {stall_after:g} s{why}"
            await self.store.finish_job(job["id"], JobStatus.FAILED, reason)
            return True
        if expires_at is not None and now > expires_at:
            reason = f"expired: {self.provider} dropped the job at its expiry"
            await self.store.finish_job(job["id"], JobStatus.EXPIRED, reason)
            return True
        return False

    async def _fail(self, job_id: str, exc: Permanent) -> None:
        status = JobStatus.EXPIRED if exc.reason == "expired" else JobStatus.FAILED
        log.warning(
            "poll refused; the job ends",
            extra={"job_id": job_id, "provider": self.provider, "reason": exc.reason},
        )
        await self.store.finish_job(job_id, status, f"{exc.reason}: {exc}")


def last_moved_at(job: Mapping[str, Any]) -> float:
    """Unix time the job's progress last moved (its creation, before any)."""
    return float(job.get("moved_at") or job["created_at"])


def parse_time(value: object) -> float | None:
    """Unix seconds from an ISO 8601 string (Firecrawl's `expiresAt`), or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _stored(value: Any) -> Any:
    return orjson.dumps(value) if isinstance(value, dict | list) else value


def fingerprint(*parts: object) -> str:
    """What progress a poll saw, as a string that changes exactly when it moved (kept on the
    job as `fingerprint`; not a signature: nothing is signed)."""
    return orjson.dumps(parts).decode()
