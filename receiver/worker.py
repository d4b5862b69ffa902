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
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from redis.exceptions import RedisError

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
        self._entries: set[str] = set()  # ids of the stream entries at work here

    async def run(self) -> None:
        """Work until cancelled."""
        await self.store.ensure_group()
        log.info("worker started", extra={"worker": self.name})
        loops = [self._heartbeat(), self._consume(), self._reclaim(), self._due()]
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
            members = await self.store.claim_due(room, self.lease)
            for member in members:
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
        self._entries.add(key)
        try:
            async with self._holding(self._renew_entry, entry_id):
                retry_at = await self._step(member)
            redis, keys = self.store.redis, self.store.keys
            async with redis.pipeline(transaction=True) as pipe:
                if retry_at is not None:
                    pipe.zadd(self.store.due_key(member), {member: retry_at})
                pipe.xack(keys.work, WORK_GROUP, entry_id)
                pipe.xdel(keys.work, entry_id)
                await pipe.execute()
        except RedisError as exc:  # unacknowledged: another worker reclaims it
            log.warning("could not acknowledge work", extra={"work": member, "error": repr(exc)})
        finally:
            self._entries.discard(key)

    async def _run_due(self, member: str) -> None:
        try:
            async with self._holding(self._renew_lease, member):
                next_at = await self._step(member)
            if next_at is None:
                await self.store.unschedule(member)
            else:
                await self.store.schedule(member, next_at)
        except RedisError as exc:  # the lease runs out and the member comes due again
            log.warning("could not reschedule work", extra={"work": member, "error": repr(exc)})

    @contextlib.asynccontextmanager
    async def _holding(
        self, renew: Callable[[Any], Awaitable[None]], what: Any
    ) -> AsyncIterator[None]:
        """Keep our claim on `what` fresh while a long step runs, so nobody takes it over."""

        async def keep() -> None:
            while True:
                await asyncio.sleep(self._renew_every)
                with contextlib.suppress(RedisError):
                    await renew(what)

        keeper = asyncio.create_task(keep())
        try:
            yield
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper

    @property
    def _renew_every(self) -> float:
        return max(0.05, min(self.claim_idle, self.lease) / 3)

    async def _renew_entry(self, entry_id: Any) -> None:
        # XCLAIM to ourselves with no minimum idle time resets the entry's idle time.
        await self.store.redis.xclaim(
            self.store.keys.work, WORK_GROUP, self.name, 0, [entry_id], justid=True
        )

    async def _renew_lease(self, member: str) -> None:
        await self.store.schedule(member, time.time() + self.lease)

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


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
