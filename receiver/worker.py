"""The worker: takes work from the Redis stream and due work from the schedule.

Work to do now (fetch results, submit) is an entry of the work stream, read through a
consumer group: several workers share it, and a crashed worker's unacknowledged entries
are reclaimed (`store.queue`). Work for later (retries, reconciliation, polls) is a member
of the schedule, claimed with a lease (`store.schedule`). Nothing waits in memory: a
restarted worker carries on from what Redis holds.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import httpx
from redis.exceptions import RedisError, ResponseError

from receiver.backoff import backoff
from receiver.dispatch import Dispatcher, UnknownWork
from receiver.jobs.base import Context
from receiver.outages import Fatal, Outages, raise_if_cancelling, supervise
from receiver.registry import workflows
from receiver.settings import Settings
from receiver.store import Store, WorkItem
from receiver.store.keys import DUE_LEASE
from receiver.store.queue import Entry
from receiver.tokens import PassthroughSigner

log = logging.getLogger(__name__)

# Seconds (at most) before work interrupted by a Redis outage is tried again.
RETRY_AFTER_OUTAGE = 5.0
# Seconds a stopping worker waits for its loops and steps to end.
STOP_WAIT = 5.0
# Seconds an entry of our own must have been idle before _reclaim takes it up again: its
# step ended and its acknowledgement failed (entries at work are renewed, and known).
OWN_UNFINISHED_IDLE = 5.0
# Milliseconds one read of the work stream waits for new entries.
READ_BLOCK_MS = 1000


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
        outages: Outages | None = None,
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
        self._entries: dict[str, Entry] = {}  # stream entries at work here, by Entry.key
        self._leases: dict[str, float] = {}  # due members at work here -> their lease end
        self.outages = outages or Outages()

    async def run(self) -> None:
        """Work until cancelled, riding out Redis going away and coming back.

        Each loop runs under `supervise`: an outage or a crash restarts it after a backoff;
        only a fatal fault (`outages.Fatal`) ends the worker, and with it the process.
        """
        log.info("worker started", extra={"worker": self.name})
        # Each partition's stream is read by a loop of its own (a cluster refuses one read of
        # several streams on different slots), restarted on its own.
        consume = [
            ("consume", functools.partial(self._consume, partition))
            for partition in range(self.store.keys.partitions)
        ]
        loops: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("heartbeat", self._heartbeat),
            *consume,
            ("reclaim", self._reclaim),
            ("due", self._due),
            ("renew", self._renew),
        ]
        tasks = [
            asyncio.create_task(supervise(name, loop, self.outages, repair=self._repair))
            for name, loop in loops
        ]
        try:
            # Loops end only by a fatal fault (or cancellation): then they all stop. One
            # that ended any other way stops the worker too, rather than leave it idle.
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
            raise Fatal("a worker loop ended")
        finally:
            await _stop(tasks)
            await _stop(list(self._inflight))
            await self._withdraw()

    async def _repair(self, exc: BaseException) -> bool:
        """Recreate the consumer group when Redis lost it (a restart without its data)."""
        if isinstance(exc, ResponseError) and str(exc).startswith("NOGROUP"):
            log.warning("work group missing; creating it again", extra={"worker": self.name})
            await self.store.ensure_group()
            return True
        return False

    async def _withdraw(self) -> None:
        """Take this worker's heartbeat away on the way out, so /readyz knows at once."""
        try:
            await asyncio.wait_for(self.store.withdraw(self.name), 2)
        except (RedisError, TimeoutError):
            log.warning("could not withdraw the heartbeat", extra={"worker": self.name})

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
        while True:
            await self.store.beat(self.name, self.heartbeat_interval)
            self.outages.recovered()
            await asyncio.sleep(self.heartbeat_interval)

    async def _consume(self, partition: int) -> None:
        """Read the partition's stream."""
        await self.store.ensure_group(partition)
        share = self.store.keys.partitions
        while True:
            room = await self._wait_for_room()
            count = max(1, -(-room // share))  # the room, shared by the partitions' reads
            entries = await self.store.read_work(partition, self.name, count, READ_BLOCK_MS)
            self.outages.recovered()
            for entry in entries:
                self._start_entry(entry)

    async def _reclaim(self) -> None:
        """Take over entries another worker read but never acknowledged (it died), and
        our own whose acknowledgement failed: every claim_idle / 2, and soon after an
        outage ends (once those have been idle OWN_UNFINISHED_IDLE)."""
        while True:
            if await self.outages.wait_for_end(max(self.claim_idle / 2, 0.05)):
                await asyncio.sleep(OWN_UNFINISHED_IDLE)
            for partition in range(self.store.keys.partitions):
                room = await self._wait_for_room()
                entries = await self.store.reclaim_work(
                    partition, self.name, int(self.claim_idle * 1000), room
                )
                # And our own that we could not acknowledge (Redis was away): taken up
                # again now rather than after claim_idle.
                idle = int(OWN_UNFINISHED_IDLE * 1000)
                entries += await self.store.own_unfinished(
                    partition, self.name, idle, self.free or 1, self._entries
                )
                if entries:
                    extra = {"entries": len(entries), "worker": self.name}
                    log.info("reclaimed work", extra=extra)
                for entry in entries:
                    self._start_entry(entry)

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

    def _start_entry(self, entry: Entry) -> None:
        """Start a stream entry's work, unless it is at work here already (an entry
        reclaimed from ourselves). Registered before the task runs, so no other loop can
        take it up meanwhile."""
        if entry.key in self._entries:
            return
        self._entries[entry.key] = entry
        self._spawn(self._run_entry(entry))

    async def _run_entry(self, entry: Entry) -> None:
        member = entry.item.member
        try:
            retry_at = await self._step(entry.item)
            await self.store.acknowledge(entry, retry_at)
        except RedisError as exc:  # unacknowledged: taken up again by _reclaim
            if not self.outages.failed(exc):
                extra = {"work": member, "error": repr(exc)}
                log.warning("could not acknowledge work", extra=extra)
        finally:
            del self._entries[entry.key]

    async def _run_due(self, member: str) -> None:
        try:
            next_at = await self._step(WorkItem.parse(member))
            # No longer renewed; a renewal already on its way sees the new due time and
            # leaves it alone (it only extends a lease still at the end we gave it).
            self._leases.pop(member, None)
            if next_at is None:
                await self.store.unschedule(member)
            else:
                await self.store.schedule(member, next_at)
        except RedisError as exc:  # the lease runs out and the member comes due again
            if not self.outages.failed(exc):
                log.warning("could not reschedule work", extra={"work": member, "error": repr(exc)})
        finally:
            self._leases.pop(member, None)

    async def _renew(self) -> None:
        """Keep this worker's claims fresh while its steps run, so nobody takes them over:
        one XCLAIM for every stream entry at work, one lease bump for every due member."""
        while True:
            await asyncio.sleep(self._renew_every)
            try:
                await self.store.renew_claims(self.name, list(self._entries.values()))
                renewed = await self.store.renew_leases(dict(self._leases), self.lease)
            except RedisError as exc:  # renewed at the next turn, if Redis is back by then
                if not self.outages.failed(exc):
                    raise
                continue
            for member, lease_end in renewed.items():
                if member in self._leases:  # still at work
                    self._leases[member] = lease_end

    @property
    def _renew_every(self) -> float:
        return max(0.05, min(self.claim_idle, self.lease) / 3)

    async def _step(self, item: WorkItem) -> float | None:
        """Run the work; when to run it again, or None."""
        member = item.member
        try:
            return await self.dispatcher.run(item.kind, item.job_id, item.task_id)
        except asyncio.CancelledError:
            raise
        except UnknownWork:
            log.error("unknown work dropped", extra={"work": member})
            return None
        except Exception as exc:
            raise_if_cancelling()
            if self.outages.failed(exc):  # counted and logged once for the whole outage
                return time.time() + backoff(2, 1.0, RETRY_AFTER_OUTAGE)
            # A bug: try again later rather than lose the work.
            log.exception("work failed; retrying in 30 s", extra={"work": member})
            return time.time() + 30.0


async def _stop(tasks: Sequence[asyncio.Task[Any]]) -> None:
    """Cancel tasks and wait for them, but never longer than STOP_WAIT seconds: a stop
    must end even if a library swallowed a cancellation (the rest is left to the loop's
    end); whatever they held unfinished is reclaimed or comes due again in Redis."""
    for task in tasks:
        task.cancel()
    if tasks:
        _, left = await asyncio.wait(tasks, timeout=STOP_WAIT)
        if left:
            log.warning("tasks did not stop in time", extra={"tasks": len(left)})


def build_worker(
    settings: Settings, store: Store, http: httpx.AsyncClient, outages: Outages | None = None
) -> Worker:
    """A worker running every provider's workflow, as the settings ask."""
    signer = PassthroughSigner(settings.secret_keys, settings.token_max_age)
    context = Context(settings, store, http, signer)
    return Worker(
        store,
        Dispatcher(store, workflows(context)),
        # Room for a second step while each fetch stores its results and is acknowledged.
        concurrency=2 * settings.fetch_concurrency,
        claim_idle=settings.claim_idle,
        lease=settings.lease,
        heartbeat_interval=settings.heartbeat_interval,
        outages=outages or _told(Outages(), store),
    )


def _told(outages: Outages, store: Store) -> Outages:
    """Outages whose failures the store's router hears of (a cluster's slot map moved)."""
    outages.listeners.append(store.router.noticed)
    return outages
