"""The worker: takes work from the Redis stream and due work from the schedule.

Work to do now (fetch results, submit) is an entry on `receiver:stream:work`, read through
a consumer group: several workers share it, and a crashed worker's unacknowledged entries
are reclaimed with XAUTOCLAIM. Work for later (retries, reconciliation, polls) is a member
of the sorted set `receiver:due`, claimed with a lease. Nothing waits in memory: a
restarted worker carries on from what Redis holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any

from redis.exceptions import RedisError

from receiver.batching import Batcher
from receiver.dispatch import Dispatcher, UnknownWork
from receiver.keys import DUE_LEASE, WORK_GROUP
from receiver.store import Store

log = logging.getLogger(__name__)


class Worker:
    def __init__(
        self,
        store: Store,
        dispatcher: Dispatcher,
        *,
        concurrency: int = 100,
        claim_idle: float = 60.0,
        heartbeat_interval: float = 5.0,
        due_interval: float = 0.2,
        lease: float = DUE_LEASE,
        name: str | None = None,
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.concurrency = concurrency
        self.claim_idle = claim_idle
        self.heartbeat_interval = heartbeat_interval
        self.due_interval = due_interval
        self.lease = lease
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._inflight: set[asyncio.Task[None]] = set()
        self._room = asyncio.Event()
        self._room.set()
        self._entries: dict[str, Any] = {}  # stream entries at work here, by id
        self._leases: dict[str, float] = {}  # due members at work here -> their lease end
        self._acks = Acknowledger(store)

    async def run(self) -> None:
        """Work until cancelled."""
        await self.store.ensure_group()
        log.info("worker started", extra={"worker": self.name})
        loops = [self._heartbeat(), self._consume(), self._reclaim(), self._due(), self._renew()]
        try:
            await asyncio.gather(*loops)
        finally:
            for task in list(self._inflight):
                task.cancel()
            await asyncio.gather(*self._inflight, return_exceptions=True)

    # -- capacity -----------------------------------------------------------------------

    @property
    def free(self) -> int:
        return max(0, self.concurrency - len(self._inflight))

    async def _wait_for_room(self) -> int:
        while not self.free:
            self._room.clear()
            await self._room.wait()
        return self.free

    def _spawn(self, job: Awaitable[None]) -> None:
        task = asyncio.ensure_future(job)
        self._inflight.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._room.set()

    # -- loops --------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        redis, keys = self.store.redis, self.store.keys
        while True:
            now = time.time()
            async with redis.pipeline(transaction=False) as pipe:
                pipe.zadd(keys.heartbeats, {self.name: now})
                pipe.zremrangebyscore(keys.heartbeats, "-inf", now - 10 * self.heartbeat_interval)
                await pipe.execute()
            await asyncio.sleep(self.heartbeat_interval)

    async def _consume(self) -> None:
        redis, keys = self.store.redis, self.store.keys
        while True:
            room = await self._wait_for_room()
            reply: Any = await redis.xreadgroup(
                WORK_GROUP, self.name, {keys.work: ">"}, count=room, block=1000
            )
            for _stream, entries in reply or ():
                for entry_id, fields in entries:
                    self._spawn(self._run_entry(entry_id, fields))

    async def _reclaim(self) -> None:
        """Take over entries another worker read but never acknowledged (it died)."""
        redis, keys = self.store.redis, self.store.keys
        while True:
            await asyncio.sleep(max(self.claim_idle / 2, 0.05))
            room = await self._wait_for_room()
            reply: Any = await redis.xautoclaim(
                keys.work, WORK_GROUP, self.name, int(self.claim_idle * 1000), "0-0", count=room
            )
            for entry_id, fields in reply[1]:
                log.info("reclaimed work", extra={"entry": _text(entry_id)})
                self._spawn(self._run_entry(entry_id, fields))

    async def _due(self) -> None:
        while True:
            room = await self._wait_for_room()
            members, lease_end = await self.store.claim_due_leased(room, self.lease)
            for member in members:
                self._leases[member] = lease_end
                self._spawn(self._run_due(member))
            if len(members) < room:
                await asyncio.sleep(self.due_interval)

    # -- one piece of work --------------------------------------------------------------

    async def _run_entry(self, entry_id: Any, fields: Mapping[bytes, bytes]) -> None:
        key = _text(entry_id)
        if key in self._entries:  # reclaimed from ourselves while still at work on it
            return
        kind = _text(fields.get(b"k", b""))
        job_id = _text(fields.get(b"j", b""))
        task_id = _text(fields.get(b"t", b""))
        member = f"{kind}:{job_id}:{task_id}" if task_id else f"{kind}:{job_id}"
        self._entries[key] = entry_id
        try:
            retry_at = await self._step(member)
            await self._acks.done(entry_id, member, retry_at)
        except RedisError as exc:  # unacknowledged: another worker reclaims it
            log.warning("could not acknowledge work", extra={"work": member, "error": repr(exc)})
        finally:
            del self._entries[key]

    async def _run_due(self, member: str) -> None:
        try:
            next_at = await self._step(member)
            # No longer renewed; a renewal already on its way sees the new due time and
            # leaves it alone (it only extends a lease still at the end we gave it).
            self._leases.pop(member, None)
            if next_at is None:
                await self.store.unschedule(member)
            else:
                await self.store.schedule(member, next_at)
        except RedisError as exc:  # the lease runs out and the member comes due again
            log.warning("could not reschedule work", extra={"work": member, "error": repr(exc)})
        finally:
            self._leases.pop(member, None)

    async def _renew(self) -> None:
        """Keep this worker's claims fresh while its steps run, so nobody takes them over:
        one XCLAIM for every stream entry at work, one lease bump for every due member."""
        redis, keys = self.store.redis, self.store.keys
        while True:
            await asyncio.sleep(self._renew_every)
            entries = list(self._entries.values())
            with contextlib.suppress(RedisError):
                if entries:
                    # XCLAIM to ourselves with no minimum idle time resets the idle time;
                    # an entry acknowledged meanwhile is no longer pending and is skipped.
                    await redis.xclaim(keys.work, WORK_GROUP, self.name, 0, entries, justid=True)
                renewed = await self.store.renew_leases(dict(self._leases), self.lease)
                for member, lease_end in renewed.items():
                    if member in self._leases:  # still at work
                        self._leases[member] = lease_end

    @property
    def _renew_every(self) -> float:
        return max(0.05, min(self.claim_idle, self.lease) / 3)

    async def _step(self, member: str) -> float | None:
        """Run the work a member names; when to run it again, or None."""
        kind, _, rest = member.partition(":")
        job_id, _, task_id = rest.partition(":")
        try:
            return await self.dispatcher.run(kind, job_id, task_id)
        except asyncio.CancelledError:
            raise
        except UnknownWork:
            log.error("unknown work dropped", extra={"work": member})
            return None
        except Exception:
            # A bug or an outage of Redis: try again later rather than lose the work.
            log.exception("work failed; retrying in 30 s", extra={"work": member})
            return time.time() + 30.0


# A finished stream entry: its id, and the member and time to retry it at, if any.
Done = tuple[Any, str, float | None]


class Acknowledger(Batcher[Done, None]):
    """Acknowledges finished stream entries in batches, their retries scheduled in the
    same MULTI."""

    def __init__(self, store: Store) -> None:
        super().__init__(self._acknowledge)
        self.store = store

    async def done(self, entry_id: Any, member: str, retry_at: float | None) -> None:
        await self.submit((entry_id, member, retry_at))

    async def _acknowledge(self, batch: Sequence[Done]) -> list[None]:
        redis, keys = self.store.redis, self.store.keys
        ids = [entry_id for entry_id, _, _ in batch]
        async with redis.pipeline(transaction=True) as pipe:
            for _, member, retry_at in batch:
                if retry_at is not None:
                    pipe.zadd(self.store.due_key(member), {member: retry_at})
            pipe.xack(keys.work, WORK_GROUP, *ids)
            pipe.xdel(keys.work, *ids)
            await pipe.execute()
        return [None] * len(batch)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
