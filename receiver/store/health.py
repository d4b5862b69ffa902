"""What operators are told: worker heartbeats, Redis's memory, the queues' lengths."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from receiver.store.base import text
from receiver.store.keys import HEARTBEATS_KEPT, WORK_GROUP
from receiver.store.reads import Reads


@dataclass(frozen=True)
class Memory:
    used: int
    limit: int  # maxmemory; 0: none
    policy: str

    @property
    def full(self) -> str:
        """Why Redis cannot take writes for lack of memory, or ""."""
        if self.limit and self.policy == "noeviction" and self.used >= self.limit:
            return (
                f"redis out of memory: {self.used} of maxmemory {self.limit} bytes used"
                " (noeviction)"
            )
        return ""


@dataclass(frozen=True)
class Figures:
    """The gauges of /metrics."""

    memory: Memory
    work: int  # entries in the work stream
    pending: int  # read by a worker, not yet done
    oldest: float  # seconds since the oldest entry in the work stream was queued
    events: int  # entries in the events stream
    jobs: dict[str, int]  # jobs by status


class Health(Reads):
    async def beat(self, worker: str, interval: float) -> None:
        """A worker's heartbeat; those silent for HEARTBEATS_KEPT intervals are dropped."""
        now = time.time()
        async with self._for(self.keys.heartbeats).pipeline(transaction=False) as pipe:
            pipe.zadd(self.keys.heartbeats, {worker: now})
            pipe.zremrangebyscore(self.keys.heartbeats, "-inf", now - HEARTBEATS_KEPT * interval)
            await pipe.execute()

    async def withdraw(self, worker: str) -> None:
        """A stopping worker's heartbeat taken away, so /readyz knows at once."""
        await self._for(self.keys.heartbeats).zrem(self.keys.heartbeats, worker)

    async def live_workers(self, window: float) -> int:
        """Workers whose heartbeat is at most `window` seconds old."""
        return int(
            await self._for(self.keys.heartbeats).zcount(
                self.keys.heartbeats, time.time() - window, "+inf"
            )
        )

    async def memory(self) -> Memory:
        """The memory of the fullest master (the one Redis, or every master of a cluster)."""
        found: list[Memory] = []
        for client in self._router.masters():
            info: Any = await client.info("memory")
            used, limit = int(info.get("used_memory", 0) or 0), int(info.get("maxmemory", 0) or 0)
            found.append(Memory(used, limit, str(info.get("maxmemory_policy", ""))))
        return max(found, key=lambda m: (bool(m.full), m.used / m.limit if m.limit else 0.0))

    async def figures(self) -> Figures:
        """The gauges, summed over every partition (the oldest: the oldest of them)."""
        work = events = pending = 0
        oldest = 0.0
        for partition in range(self.keys.partitions):
            work += await self._at(partition).xlen(self.keys.work(partition))
            events += await self._at(partition).xlen(self.keys.events(partition))
            waiting, age = await self._pending(partition)
            pending, oldest = pending + waiting, max(oldest, age)
        jobs = await self.jobs_by_status()
        return Figures(await self.memory(), work, pending, oldest, events, jobs)

    async def _pending(self, partition: int) -> tuple[int, float]:
        """Pending entries of the partition's work group, and the age in seconds of the
        oldest entry of its stream."""
        stream = self.keys.work(partition)
        if not await self._at(partition).exists(stream):
            return 0, 0.0
        try:
            summary: Any = await self._at(partition).xpending(stream, WORK_GROUP)
        except ResponseError:  # no worker has created the group yet
            summary = {"pending": 0}
        oldest: Any = await self._at(partition).xrange(stream, count=1)
        age = 0.0
        if oldest:
            millis = int(text(oldest[0][0]).split("-")[0])
            age = max(0.0, time.time() - millis / 1000)
        return int(summary["pending"]), age
