"""Batches and their progress, computed from the clock when asked.

Each batch stores the finish time of every page, so a poll is a bisect and a slice, however
many batches are tracked.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from array import array
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field

from receiver.sandbox.common import Clock
from receiver.sandbox.firecrawl.config import FirecrawlSandboxConfig
from receiver.sandbox.firecrawl.validation import Submission, Webhook

# Page outcomes, one byte per page.
OK, NOT_FOUND, FAILED = 0, 1, 2


@dataclass
class Batch:
    id: str
    created: float
    delay: float  # seconds per page, kept to know which pages were in flight at a cancel
    formats: frozenset[str]
    webhook: Webhook | None
    urls: list[str] = field(default_factory=list)
    finish: array[float] = field(default_factory=lambda: array("d"))  # sorted, absolute
    outcomes: bytearray | None = None  # None when every page succeeds
    saved_at: float = 0.0
    cancelled_at: float | None = None
    cutoff: int | None = None  # pages kept by a cancel; the rest were dropped
    forced_at: float | None = None  # when /_sandbox/batches/{id}/finish ended every page
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def pages(self) -> int:
        """Pages that will run: all of them, or those already started when it was cancelled."""
        return len(self.urls) if self.cutoff is None else self.cutoff

    @property
    def credits_per_page(self) -> int:
        return 5 if "json" in self.formats else 1

    def last_finish(self) -> float:
        """When the last page that will run finishes by itself (its scheduled time)."""
        return self.finish[self.pages - 1] if self.pages else self.created

    def outcome(self, index: int) -> int:
        return OK if self.outcomes is None else self.outcomes[index]

    def page_time(self, index: int) -> float:
        natural = self.finish[index]
        return natural if self.forced_at is None else min(natural, self.forced_at)

    def ok_pages(self, finished: int) -> Sequence[int]:
        if self.outcomes is None:
            return range(finished)
        return [i for i in range(finished) if self.outcomes[i] != FAILED]

    def failed_pages(self, finished: int) -> int:
        return 0 if self.outcomes is None else self.outcomes[:finished].count(FAILED)


@dataclass
class View:
    """A batch as seen at one instant."""

    finished: int  # pages done, failed or not, in page order
    completed: int  # pages done and not failed
    total: int  # pages that will run, less the failed ones
    status: str
    expires_at: float


def chance(rng: random.Random, rate: float) -> bool:
    """A seeded draw; no draw at all when the rate is zero, so other draws stay put."""
    return rate > 0 and rng.random() < rate


class Batches:
    """Every batch in memory, and what the clock makes of each."""

    def __init__(self, config: FirecrawlSandboxConfig, clock: Clock, rng: random.Random) -> None:
        self.config = config
        self.clock = clock
        self.rng = rng
        self.by_id: dict[str, Batch] = {}

    def get(self, batch_id: str) -> Batch | None:
        return self.by_id.get(batch_id)

    def create(self, submission: Submission) -> Batch:
        now = self.clock()
        batch = Batch(
            id=str(uuid.uuid4()),
            created=now,
            delay=self.config.scrape_delay,
            formats=submission.formats,
            webhook=submission.webhook,
            saved_at=now,
        )
        self.by_id[batch.id] = batch
        return batch

    def add_pages(self, batch: Batch, submission: Submission) -> None:
        now = self.clock()
        batch.urls.extend(submission.urls)
        self._schedule(batch, len(submission.urls), submission.concurrency, now)
        batch.saved_at = now
        batch.changed.set()

    def cancel(self, batch: Batch, view: View) -> None:
        """Pages already started still finish; the queued ones are dropped."""
        now = self.clock()
        if batch.cancelled_at is None:
            batch.cancelled_at = now
            started = bisect_right(batch.finish, now + batch.delay, 0, batch.pages)
            batch.cutoff = max(started, view.finished)
        batch.saved_at = now
        batch.changed.set()

    def finish_now(self, batch: Batch) -> None:
        """Every page of the batch is done now, stall and linger aside."""
        batch.forced_at = self.clock()
        batch.changed.set()

    def view(self, batch: Batch, now: float) -> View:
        finished = self._finished(batch, now)
        failed = batch.failed_pages(finished)
        last = batch.page_time(finished - 1) if finished else batch.created
        return View(
            finished=finished,
            completed=finished - failed,
            total=batch.pages - failed,
            status=self._status(batch, finished, now),
            expires_at=max(batch.saved_at, last) + self.config.expiry,
        )

    def _finished(self, batch: Batch, now: float) -> int:
        pages = batch.pages
        if batch.forced_at is not None and now >= batch.forced_at:
            return pages
        done = bisect_right(batch.finish, now, 0, pages)
        if self.config.stall and pages:
            return min(done, pages - 1)  # the last page hangs
        return done

    def _status(self, batch: Batch, finished: int, now: float) -> str:
        if batch.cancelled_at is not None:
            return "cancelled"
        if finished < batch.pages:
            return "scraping"
        if batch.forced_at is not None and now >= batch.forced_at:
            return "completed"
        if self.config.stall or now < batch.last_finish() + self.config.linger:
            return "scraping"
        return "failed" if self.config.batch_fails else "completed"

    def find_next_change(self, batch: Batch, now: float) -> float | None:
        """When the batch next changes by itself; None when only an outside event can change it."""
        view = self.view(batch, now)
        if view.finished < batch.pages:
            stalled = self.config.stall and view.finished == batch.pages - 1
            return None if stalled and batch.forced_at is None else batch.finish[view.finished]
        if view.status == "scraping" and not self.config.stall:
            return batch.last_finish() + self.config.linger
        return None

    def _schedule(self, batch: Batch, count: int, concurrency: int | None, now: float) -> None:
        """Append `count` pages: with c at once, page i ends (i+1)·delay/c after `now`."""
        lanes = max(1, min(concurrency or self.config.concurrency, self.config.concurrency))
        step = batch.delay / lanes
        previous = batch.finish[-1] if batch.finish else now
        for i in range(count):
            jitter = self.rng.uniform(0, self.config.jitter) if self.config.jitter > 0 else 0.0
            previous = max(previous, now + (i + 1) * step + jitter)
            batch.finish.append(previous)
        self._draw_outcomes(batch, count)

    def _draw_outcomes(self, batch: Batch, count: int) -> None:
        fail, missing = self.config.fail_rate, self.config.not_found_rate
        if fail <= 0 and missing <= 0 and batch.outcomes is None:
            return
        if batch.outcomes is None:
            batch.outcomes = bytearray(len(batch.finish) - count)
        for _ in range(count):
            draw = self.rng.random()
            batch.outcomes.append(
                FAILED if draw < fail else NOT_FOUND if draw < fail + missing else OK
            )
