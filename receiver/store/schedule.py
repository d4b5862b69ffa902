"""Scheduled work: members (`WorkItem.member`) due at a unix time, claimed under a lease.

A job's scheduled work lives in its partition's schedule (`Keys.due_of`). A worker
claims due members and holds them under a lease it renews while it works; a crashed
worker's members come due again when their lease ends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from receiver.store.base import StoreBase, text
from receiver.store.batching import Batcher
from receiver.store.codes import Work, WorkItem
from receiver.store.keys import DUE_LEASE


class Schedule(StoreBase):
    def _setup_schedule(self) -> None:
        # Schedule changes of concurrent steps share one pipelined round trip per turn.
        self._moves: Batcher[tuple[str, float | None], None] = Batcher(self._apply_moves)
        self._next_partition = 0

    def due_key(self, member: str) -> str:
        """The schedule a member lives in: its job's."""
        return self.keys.due_of(WorkItem.parse(member).job_id)

    async def schedule(self, member: str, at: float) -> None:
        await self._moves.submit((member, at))

    async def unschedule(self, member: str) -> None:
        await self._moves.submit((member, None))

    async def _apply_moves(self, batch: Sequence[tuple[str, float | None]]) -> list[None]:
        keys = [self.due_key(member) for member, _ in batch]
        for client, positions in self._by_node(keys):
            async with client.pipeline(transaction=False) as pipe:
                for index in positions:
                    member, at = batch[index]
                    if at is None:
                        pipe.zrem(keys[index], member)
                    else:
                        pipe.zadd(keys[index], {member: at})
                await pipe.execute()
        return [None] * len(batch)

    async def due_at(self, member: str) -> float | None:
        key = self.due_key(member)
        score = await self._for(key).zscore(key, member)
        return None if score is None else float(score)

    async def claim_due(self, limit: int, lease: float = DUE_LEASE) -> list[str]:
        """Up to `limit` due members, each leased to the caller for `lease` seconds."""
        members, _ = await self.claim_due_leased(limit, lease)
        return members

    async def claim_due_leased(
        self, limit: int, lease: float = DUE_LEASE
    ) -> tuple[list[str], float]:
        """The claimed members, and the lease end they were given (to renew them by)."""
        now = self.clock()
        lease_end = now + lease
        claimed: list[str] = []
        partitions = self.keys.partitions
        first = self._next_partition
        self._next_partition = (first + 1) % partitions  # none waits behind another
        for offset in range(partitions):
            if len(claimed) >= limit:
                break
            key = self.keys.due((first + offset) % partitions)
            args: list[Any] = [repr(now), limit - len(claimed), repr(lease_end)]
            found = await self.scripts.claim_due([key], args, self._for(key))
            claimed += [text(m) for m in found]
        return claimed, lease_end

    async def renew_leases(self, leases: Mapping[str, float], lease: float) -> dict[str, float]:
        """Extend the leases still held (due time unchanged since we set it): member -> new
        lease end. A member rescheduled meanwhile is left alone."""
        new_end = self.clock() + lease
        by_schedule: dict[str, list[tuple[str, float]]] = {}
        for member, held in leases.items():
            by_schedule.setdefault(self.due_key(member), []).append((member, held))
        renewed: dict[str, float] = {}
        for key, held_here in by_schedule.items():  # one call per partition: one slot each
            args: list[Any] = [repr(new_end)]
            for member, held in held_here:
                args += [member, repr(held)]
            answers = await self.scripts.renew_leases([key] * len(held_here), args, self._for(key))
            pairs = zip(held_here, answers, strict=True)
            renewed.update((member, new_end) for (member, _), ok in pairs if int(ok))
        return renewed

    async def hint_poll(self, job_id: str) -> str:
        """Make a job's poll due now, unless a worker holds it: then its holder polls again
        at once (see lua/hint_poll.lua). 'due', 'flagged', 'already_due' or 'not_scheduled'."""
        member = WorkItem(Work.POLL, job_id).member
        keys = [self.due_key(member), self.keys.job(job_id)]
        args = [member, repr(self.clock())]
        return text(await self.scripts.hint_poll(keys, args, self._of(job_id)))
