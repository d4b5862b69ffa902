"""The work stream: work to do now (fetch, submit), shared by the workers through one
consumer group (WORK_GROUP). Each entry is read by one worker; a worker that dies leaves
its entries pending, and another reclaims them once idle; an entry is acknowledged (and
deleted) once its work is done, with its retry scheduled in the same MULTI."""

from __future__ import annotations

from collections.abc import Container, Sequence
from typing import Any

from redis.exceptions import ResponseError

from receiver.store.base import StoreBase, text
from receiver.store.batching import Batcher
from receiver.store.codes import WorkItem
from receiver.store.keys import WORK_GROUP

# A piece of work read from the stream: its entry id, and what it is.
Entry = tuple[Any, WorkItem]
# A finished entry: its id, its member, and when to retry it (None: never).
Done = tuple[Any, str, float | None]


def _entries(raw: Any) -> list[Entry]:
    return [(entry_id, WorkItem.from_fields(fields)) for entry_id, fields in raw if fields]


class Queue(StoreBase):
    def _setup_queue(self) -> None:
        self._acks: Batcher[Done, None] = Batcher(self._acknowledge)

    async def ensure_group(self) -> None:
        try:
            await self._redis.xgroup_create(self.keys.work, WORK_GROUP, id="0", mkstream=True)
        except ResponseError as exc:  # the group exists already
            if "BUSYGROUP" not in str(exc):
                raise

    async def enqueue(self, item: WorkItem) -> None:
        """Queue work for the workers now."""
        await self._redis.xadd(self.keys.work, item.fields)  # type: ignore[arg-type]

    async def read_work(self, consumer: str, count: int, block_ms: int) -> list[Entry]:
        """New entries for `consumer`, waiting up to block_ms for some."""
        reply: Any = await self._redis.xreadgroup(
            WORK_GROUP, consumer, {self.keys.work: ">"}, count=count, block=block_ms
        )
        return [entry for _stream, raw in reply or () for entry in _entries(raw)]

    async def reclaim_work(self, consumer: str, idle_ms: int, count: int) -> list[Entry]:
        """Entries another consumer read and left idle for idle_ms, now `consumer`'s."""
        reply: Any = await self._redis.xautoclaim(
            self.keys.work, WORK_GROUP, consumer, idle_ms, "0-0", count=count
        )
        return _entries(reply[1])

    async def own_unfinished(
        self, consumer: str, idle_ms: int, count: int, at_work: Container[str]
    ) -> list[Entry]:
        """Entries `consumer` read and left idle for idle_ms (it could not acknowledge
        them), but for those it has at work."""
        pending: Any = await self._redis.xpending_range(
            self.keys.work, WORK_GROUP, "-", "+", count, consumername=consumer, idle=idle_ms
        )
        ids = [p["message_id"] for p in pending if text(p["message_id"]) not in at_work]
        if not ids:
            return []
        claimed: Any = await self._redis.xclaim(self.keys.work, WORK_GROUP, consumer, 0, ids)
        return _entries(claimed)

    async def renew_claims(self, consumer: str, entry_ids: Sequence[Any]) -> None:
        """Reset the idle time of entries `consumer` has at work, so nobody reclaims them
        (XCLAIM to itself with no minimum idle time; an entry acknowledged meanwhile is no
        longer pending and is skipped)."""
        if entry_ids:
            await self._redis.xclaim(
                self.keys.work, WORK_GROUP, consumer, 0, list(entry_ids), justid=True
            )

    async def acknowledge(self, entry_id: Any, member: str, retry_at: float | None) -> None:
        """The entry's work is done; retried at `retry_at` if not None. Acknowledgements
        within one event-loop turn share one MULTI."""
        await self._acks.submit((entry_id, member, retry_at))

    async def _acknowledge(self, batch: Sequence[Done]) -> list[None]:
        ids = [entry_id for entry_id, _, _ in batch]
        async with self._redis.pipeline(transaction=True) as pipe:
            for _, member, retry_at in batch:
                if retry_at is not None:
                    due = self.keys.due_of(WorkItem.parse(member).job_id)
                    pipe.zadd(due, {member: retry_at})
            pipe.xack(self.keys.work, WORK_GROUP, *ids)
            pipe.xdel(self.keys.work, *ids)
            await pipe.execute()
        return [None] * len(batch)
