"""The work streams: work to do now (fetch, submit), one stream per partition, shared by
the workers through one consumer group (WORK_GROUP) on each. Each entry is read by one
worker; a worker that dies leaves its entries pending, and another reclaims them once
idle; an entry is acknowledged (and deleted) once its work is done, with its retry
scheduled in the same MULTI (the retry goes to the schedule of the same partition)."""

from __future__ import annotations

from collections.abc import Container, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from receiver.store.base import StoreBase, text
from receiver.store.batching import Batcher
from receiver.store.codes import WorkItem
from receiver.store.keys import WORK_GROUP


@dataclass(frozen=True, slots=True)
class Entry:
    """A piece of work read from a partition's stream."""

    partition: int
    id: Any  # the entry id, as Redis gave it
    item: WorkItem

    @property
    def key(self) -> str:
        """Unique over every partition (entry ids are unique within one stream only)."""
        return f"{self.partition}/{text(self.id)}"


# A finished entry, and when to retry its work (None: never).
Done = tuple[Entry, float | None]


def _entries(partition: int, raw: Any) -> list[Entry]:
    return [Entry(partition, entry_id, WorkItem.from_fields(f)) for entry_id, f in raw if f]


class Queue(StoreBase):
    def _setup_queue(self) -> None:
        self._acks: Batcher[Done, None] = Batcher(self._acknowledge)

    async def ensure_group(self, only: int | None = None) -> None:
        """The workers' group on a partition's stream (None: on every partition's)."""
        for partition in range(self.keys.partitions) if only is None else [only]:
            try:
                await self._at(partition).xgroup_create(
                    self.keys.work(partition), WORK_GROUP, id="0", mkstream=True
                )
            except ResponseError as exc:  # the group exists already
                if "BUSYGROUP" not in str(exc):
                    raise

    async def read_work(
        self, partition: int, consumer: str, count: int, block_ms: int
    ) -> list[Entry]:
        """New entries of the partition for `consumer`, waiting up to block_ms for some."""
        stream = self.keys.work(partition)
        reply: Any = await self._at(partition).xreadgroup(
            WORK_GROUP, consumer, {stream: ">"}, count=count, block=block_ms
        )
        return [entry for _stream, raw in reply or () for entry in _entries(partition, raw)]

    async def reclaim_work(
        self, partition: int, consumer: str, idle_ms: int, count: int
    ) -> list[Entry]:
        """Entries of the partition another consumer read and left idle for idle_ms, now
        `consumer`'s."""
        reply: Any = await self._at(partition).xautoclaim(
            self.keys.work(partition), WORK_GROUP, consumer, idle_ms, "0-0", count=count
        )
        return _entries(partition, reply[1])

    async def own_unfinished(
        self, partition: int, consumer: str, idle_ms: int, count: int, at_work: Container[str]
    ) -> list[Entry]:
        """Entries of the partition `consumer` read and left idle for idle_ms (it could not
        acknowledge them), but for those it has at work (by `Entry.key`)."""
        stream = self.keys.work(partition)
        pending: Any = await self._at(partition).xpending_range(
            stream, WORK_GROUP, "-", "+", count, consumername=consumer, idle=idle_ms
        )
        ids = [
            p["message_id"]
            for p in pending
            if f"{partition}/{text(p['message_id'])}" not in at_work
        ]
        if not ids:
            return []
        claimed: Any = await self._at(partition).xclaim(stream, WORK_GROUP, consumer, 0, ids)
        return _entries(partition, claimed)

    async def renew_claims(self, consumer: str, entries: Sequence[Entry]) -> None:
        """Reset the idle time of entries `consumer` has at work, so nobody reclaims them
        (XCLAIM to itself with no minimum idle time; an entry acknowledged meanwhile is no
        longer pending and is skipped)."""
        by_partition: dict[int, list[Any]] = {}
        for entry in entries:
            by_partition.setdefault(entry.partition, []).append(entry.id)
        for partition, ids in by_partition.items():
            await self._at(partition).xclaim(
                self.keys.work(partition), WORK_GROUP, consumer, 0, ids, justid=True
            )

    async def acknowledge(self, entry: Entry, retry_at: float | None) -> None:
        """The entry's work is done; retried at `retry_at` if not None. Acknowledgements
        within one event-loop turn share one MULTI per partition."""
        await self._acks.submit((entry, retry_at))

    async def _acknowledge(self, batch: Sequence[Done]) -> list[None]:
        by_partition: dict[int, list[Done]] = {}
        for done in batch:
            by_partition.setdefault(done[0].partition, []).append(done)
        for partition, dones in by_partition.items():
            ids = [entry.id for entry, _ in dones]
            async with self._at(partition).pipeline(transaction=True) as pipe:
                for entry, retry_at in dones:
                    if retry_at is not None:
                        pipe.zadd(self.keys.due(partition), {entry.item.member: retry_at})
                pipe.xack(self.keys.work(partition), WORK_GROUP, *ids)
                pipe.xdel(self.keys.work(partition), *ids)
                await pipe.execute()
        return [None] * len(batch)
