"""The event schema as the stream stores it, and the reads of it: the helpers for programs
that subscribe to receiver's events (re-exported by `receiver.events`), and the web's.

Every state change is appended to the stream `receiver:stream:events` (durable, replayable)
and published on `receiver:events` and `receiver:events:<job_id>` (live, at most once).

The helpers take any `redis.asyncio.Redis` client, whatever its socket timeout: no read
blocks in Redis for longer than half of it (a longer wait is several reads), and Redis
going away (restarted, loading, unreachable) is ridden out, backing off, from the cursor.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.crc import key_slot
from redis.exceptions import RedisError, ResponseError

from receiver.backoff import backoff
from receiver.outages import outage_reason, raise_if_cancelling
from receiver.store import cursors
from receiver.store.keys import Keys
from receiver.store.routing import Router

log = logging.getLogger(__name__)
# The helpers' clients: one Redis's, or redis-py's cluster client.
Client = Redis | RedisCluster
T = TypeVar("T")

# Event types that end a job, and the job statuses they end it in.
# An entry id of a Redis stream (two numbers below 2**64): an event's id, as SSE's `id:` and
# `Last-Event-ID` carry it, and the cursor of GET /jobs.
STREAM_ID = cursors.STREAM_ID
FINAL_TYPES = frozenset({"job.completed", "job.failed", "job.cancelled", "job.expired"})
FINAL_STATUSES = frozenset(t.removeprefix("job.") for t in FINAL_TYPES)
# The counts of an event's `progress`.
_PROGRESS = ("completed", "failed", "total")
# The job hash fields a final event is made of.
_RECORD_FIELDS = (
    "status",
    "provider",
    "completed",
    "failed",
    "total",
    "finished_at",
    "error",
    "final_event",
)
# Seconds: the socket timeout of a client made without one (5 since redis-py 8, none before).
_DEFAULT_SOCKET_TIMEOUT: float | None = (
    inspect.signature(AbstractConnection.__init__).parameters["socket_timeout"].default
)
# Seconds between a reader's tries while Redis is away: doubling from the first, jittered, up
# to the second, so that a reader goes on within a couple of seconds of Redis's return.
RETRY_BASE = 0.05
RETRY_CAP = 2.0


@dataclass(frozen=True)
class Event:
    id: str  # the stream entry id: orders events and resumes a subscription
    type: str  # job.created, job.progress, task.completed, task.failed, job.<final status>
    job_id: str
    provider: str
    status: str  # the job's status after this event
    progress: dict[str, int]  # completed, failed, total
    at: str  # ISO 8601 time of the change
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        return self.type in FINAL_TYPES

    @classmethod
    def from_json(cls, data: bytes | str, event_id: str | None = None) -> Event:
        body = orjson.loads(data)
        return cls.from_dict(body, event_id)

    @classmethod
    def from_dict(cls, body: Mapping[str, Any], event_id: str | None = None) -> Event:
        detail = body.get("detail") or {}
        return cls(
            id=event_id or str(body.get("id", "")),
            type=str(body["type"]),
            job_id=str(body["job_id"]),
            provider=str(body.get("provider") or ""),
            status=str(body.get("status") or ""),
            progress={k: int(v) for k, v in (body.get("progress") or {}).items()},
            at=str(body.get("at", "")),
            detail=detail if isinstance(detail, dict) else {},
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "job_id": self.job_id,
            "provider": self.provider,
            "status": self.status,
            "progress": self.progress,
            "at": self.at,
            "detail": self.detail,
        }


def event_from_entry(entry_id: bytes | str, fields: Mapping[bytes, bytes]) -> Event:
    """The event a stream entry holds: its fields flat (`at` in unix milliseconds, `detail`
    as JSON), or, as earlier versions wrote it, the whole event as JSON in `event`."""
    event_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    if b"event" in fields:
        return Event.from_json(fields[b"event"], event_id)
    detail = orjson.loads(fields[b"detail"])
    return Event(
        id=event_id,
        type=fields[b"type"].decode(),
        job_id=fields[b"job_id"].decode(),
        provider=fields[b"provider"].decode(),
        status=fields[b"status"].decode(),
        progress={name: int(fields[name.encode()]) for name in _PROGRESS},
        at=iso_ms(int(fields[b"at"])),
        detail=detail if isinstance(detail, dict) else {},
    )


def at_ms(timestamp: float) -> int:
    """An event's time in unix milliseconds, rounded as the scripts round it (AT_MS)."""
    return math.floor(timestamp * 1000 + 0.5)


def iso_ms(milliseconds: int) -> str:
    """ISO 8601 of a unix time in whole milliseconds, exactly (no float in between)."""
    seconds, millis = divmod(milliseconds, 1000)
    moment = datetime.fromtimestamp(seconds, UTC) + timedelta(milliseconds=millis)
    return moment.isoformat(timespec="milliseconds")


@dataclass
class _Retries:
    """A subscriber's consecutive failures to reach Redis, and its pause before the next try.

    The error is raised once failures have lasted `retry_for` seconds or the `deadline`
    (monotonic) has passed (None: never), and at once when it is no outage (a refused
    password, a wrong key type).
    """

    retry_for: float | None = None
    deadline: float | None = None
    failures: int = field(default=0, init=False)
    since: float = field(default=0.0, init=False)  # monotonic time of the first failure

    def failed(self, exc: RedisError) -> float:
        """Seconds to pause before the next try; `exc` raised again when it is time to."""
        now = time.monotonic()
        if not self.failures:
            self.since = now
        reason = outage_reason(exc)
        if reason is None or now >= self._give_up_at():
            raise exc
        if not self.failures:
            log.warning("redis unavailable; retrying", extra={"reason": reason})
        self.failures += 1
        return min(backoff(self.failures - 1, RETRY_BASE, RETRY_CAP), self._give_up_at() - now)

    def recovered(self) -> None:
        if self.failures:
            seconds = round(time.monotonic() - self.since, 1)
            log.info("redis is back", extra={"outage_seconds": seconds})
        self.failures = 0

    async def call(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """What `attempt()` gives, tried again after a pause while Redis is away."""
        while True:
            try:
                result = await attempt()
            except RedisError as exc:
                raise_if_cancelling()
                await asyncio.sleep(self.failed(exc))
            else:
                self.recovered()
                return result

    def _give_up_at(self) -> float:
        """The monotonic time from which failures are no longer ridden out."""
        limit = math.inf if self.retry_for is None else self.since + self.retry_for
        return limit if self.deadline is None else min(limit, self.deadline)


def longest_block_ms(redis: Client) -> int | None:
    """The longest BLOCK a read sends on this client: half its socket timeout, so that the
    answer is in well before the client gives up on it; None when it has no socket timeout."""
    if isinstance(redis, RedisCluster):  # redis-py's cluster client: its nodes' options
        kwargs = redis.connection_kwargs
    else:
        kwargs = redis.connection_pool.connection_kwargs
    timeout = kwargs.get("socket_timeout", _DEFAULT_SOCKET_TIMEOUT)
    return None if timeout is None else max(1, int(timeout * 500))


async def deployment_keys(redis: Client, keys: Keys | None = None) -> Keys:
    """The keys of the deployment in this Redis: `keys`' prefix (receiver's own by default)
    and the number of partitions the deployment recorded (one if it recorded none)."""
    keys = keys or Keys()
    recorded = await redis.hget(keys.meta, "partitions")
    partitions = int(recorded) if recorded else 1
    return keys if partitions == keys.partitions else replace(keys, partitions=partitions)


async def subscribe(
    redis: Client,
    job_id: str | None = None,
    after: str | None = None,
    *,
    keys: Keys | None = None,
    block_ms: int = 5000,
    retry_for: float | None = None,
) -> AsyncGenerator[Event, None]:
    """Events from the stream, oldest first, starting after the event id `after`.

    `after=None` yields only events added from now on; `after="0"` replays what the stream
    still holds. Pass the id of the last event you handled to resume with nothing missed
    and nothing twice. With `job_id`, only that job's events are yielded.

    With several partitions, every partition's stream is read at once (each job's events
    in their order) and an event's `id` is a cursor over all of them (an entry id per
    partition, comma-separated); a job's events carry their entry id in the job's
    partition. Either is what `after` takes to resume.

    It waits as long as the stream is quiet, on any client. While Redis is away it tries
    again, backing off (up to 2 s apart), and goes on from the last event yielded; after
    `retry_for` seconds of failures (None: never) the Redis error is raised, as is at once
    an error that time does not cure (a refused password, a wrong key type).
    """
    retries = _Retries(retry_for)
    keys = await retries.call(partial(deployment_keys, redis, keys))
    partitions = [keys.partition_of(job_id)] if job_id else list(range(keys.partitions))
    if not after:  # from now on: after the newest event
        positions = [await retries.call(partial(last_event_id, redis, keys, p)) for p in partitions]
    elif after == "0":
        positions = ["0-0"] * len(partitions)
    else:
        positions = cursors.parse(after, len(partitions))
    merged = _Merged(redis, keys, dict(zip(partitions, positions, strict=True)), block_ms)
    try:
        while True:
            for partition, event in await retries.call(merged.read):
                if job_id is None or event.job_id == job_id:
                    yield merged.with_cursor(partition, event)
    finally:
        merged.close()


class _Merged:
    """Reads several partitions' streams at once: one blocking read each in flight (a
    cluster refuses one read of streams on different slots), their events merged by time
    as they come; a read that answers is followed by the next one of its partition while
    the others wait on."""

    def __init__(self, redis: Client, keys: Keys, positions: dict[int, str], block_ms: int) -> None:
        self.redis, self.keys, self.block_ms = redis, keys, block_ms
        self.positions = positions
        self._reads: dict[int, asyncio.Task[list[Event]]] = {}

    async def read(self) -> list[tuple[int, Event]]:
        """The next events of whichever partitions answer first (none: block_ms passed)."""
        for partition, position in self.positions.items():
            if partition not in self._reads:
                read = read_events(self.redis, self.keys, partition, position, self.block_ms)
                self._reads[partition] = asyncio.ensure_future(read)
        done, _ = await asyncio.wait(self._reads.values(), return_when=asyncio.FIRST_COMPLETED)
        found: list[tuple[int, Event]] = []
        failed: BaseException | None = None
        for partition, task in list(self._reads.items()):
            if task not in done:
                continue
            del self._reads[partition]
            if task.exception() is not None:
                failed = task.exception()
                continue
            found += [(partition, event) for event in task.result()]
        if failed is not None and not found:
            raise failed
        found.sort(key=lambda pair: cursors.order(pair[1].id))
        return found

    def with_cursor(self, partition: int, event: Event) -> Event:
        """The event, past which the positions now are; its id the cursor of them all when
        it reads several partitions."""
        self.positions[partition] = event.id
        if len(self.positions) == 1:
            return event
        return replace(event, id=cursors.render(list(self.positions.values())))

    def close(self) -> None:
        for task in self._reads.values():
            task.cancel()
        self._reads.clear()


async def read_events(
    redis: Client,
    keys: Keys,
    partition: int,
    after: str,
    block_ms: int | None = None,
    count: int = 500,
) -> list[Event]:
    """The events of a partition after the id `after`, waiting up to block_ms for one when
    there are none (None: not waiting; 0: as long as it takes). Safe on any client: see
    `read_blocking`."""
    stream = keys.events(partition)

    async def xread(block: int | None) -> Any:
        return await redis.xread({stream: after}, count=count, block=block)

    reply: Any = await read_blocking(redis, block_ms, xread)
    return [
        event_from_entry(entry_id, fields)
        for _stream, entries in reply or ()
        for entry_id, fields in entries
    ]


async def read_blocking(
    redis: Client, block_ms: int | None, read: Callable[[int | None], Awaitable[Any]]
) -> Any:
    """The first answer of `read(block)` with entries in it, or the last empty one once
    `block_ms` passed (None: one read that does not block; 0: as long as it takes).

    Each read blocks for at most `longest_block_ms(redis)`: a BLOCK as long as the socket
    timeout would end in a TimeoutError, not in an empty answer.
    """
    if block_ms is None:
        return await read(None)
    longest = longest_block_ms(redis)
    deadline = time.monotonic() + block_ms / 1000
    while True:
        left = max(1, math.ceil((deadline - time.monotonic()) * 1000)) if block_ms else 0
        reply = await read(_capped(left, longest))
        if reply or (block_ms and time.monotonic() >= deadline):
            return reply


def _capped(block_ms: int, longest: int | None) -> int:
    """A BLOCK of block_ms (0: no end) made no longer than `longest` (None: no limit)."""
    if longest is None:
        return block_ms
    return min(block_ms, longest) if block_ms else longest


async def wait(redis: Client, job_id: str, timeout: float, *, keys: Keys | None = None) -> Event:
    """The event that ended the job, waiting at most `timeout` seconds (TimeoutError).

    A job that already ended gives its final event at once: from the stream, or rebuilt from
    the job's record, with an empty `id`, when the stream no longer holds it. Redis going
    away meanwhile is ridden out; if it is still away at the timeout, its error is raised.
    """
    deadline = time.monotonic() + timeout
    retries = _Retries(deadline=deadline)
    keys = await retries.call(partial(deployment_keys, redis, keys))
    partition = keys.partition_of(job_id)
    # The cursor is taken before the state is read: an end after the read is still seen.
    cursor = await retries.call(partial(last_event_id, redis, keys, partition))
    record = await retries.call(partial(_job_record, redis, keys, job_id))
    if record.get("status") in FINAL_STATUSES:
        found = await retries.call(partial(_find_final, redis, keys, job_id, record))
        return found or _rebuild_final(job_id, record)

    async def read() -> list[Event]:  # until the deadline, whenever it is tried
        left_ms = math.ceil((deadline - time.monotonic()) * 1000)
        return await read_events(redis, keys, partition, cursor, max(1, left_ms))

    while deadline > time.monotonic():
        for event in await retries.call(read):
            cursor = event.id
            if event.job_id == job_id and event.final:
                return event
    raise TimeoutError(f"job {job_id} did not end within {timeout} s")


async def _job_record(redis: Client, keys: Keys, job_id: str) -> dict[str, str]:
    """The fields of the job's hash that a final event is made of, those it has."""
    values = await redis.hmget(keys.job(job_id), _RECORD_FIELDS)
    return {name: _text(v) for name, v in zip(_RECORD_FIELDS, values, strict=True) if v}


async def _find_final(
    redis: Client, keys: Keys, job_id: str, record: Mapping[str, str]
) -> Event | None:
    """The job's final event, by the stream id its job record keeps; None once trimmed."""
    final_id = record.get("final_event")
    if not final_id:
        return None
    stream = keys.events(keys.partition_of(job_id))
    entries: Any = await redis.xrange(stream, final_id, final_id)
    return event_from_entry(*entries[0]) if entries else None


def _rebuild_final(job_id: str, record: Mapping[str, str]) -> Event:
    """The final event as the stream held it before MAXLEN trimmed it, but for its id."""
    status = record["status"]
    return Event(
        id="",
        type=f"job.{status}",
        job_id=job_id,
        provider=record.get("provider", ""),
        status=status,
        progress={name: int(record.get(name) or 0) for name in ("completed", "failed", "total")},
        at=iso_ms(at_ms(float(record.get("finished_at") or 0))),
        detail={"reason": record["error"]} if record.get("error") else {},
    )


async def last_event_id(redis: Client, keys: Keys, partition: int) -> str:
    """The id of the partition's newest event, or "0-0" when there is none yet."""
    last: Any = await redis.xrevrange(keys.events(partition), count=1)
    if not last:
        return "0-0"
    return _text(last[0][0])


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def consume(
    redis: Client,
    group: str,
    consumer: str,
    *,
    job_id: str | None = None,
    start: str = "$",
    keys: Keys | None = None,
    block_ms: int = 5000,
    claim_idle_ms: int = 60_000,
    prefetch: int = 1,
    retry_for: float | None = None,
) -> AsyncGenerator[Event, None]:
    """Events shared by cooperating subscribers through a consumer group.

    Each event goes to one consumer of `group`; it is acknowledged once the consumer asks
    for the next one, so an event whose consumer died mid-way stays pending and is handed
    to another consumer after `claim_idle_ms`. `start` is where a new group begins: "$"
    (only new events) or "0" (everything the stream holds). `prefetch` is how many
    events a consumer takes at once: more is faster, fewer shares the work more evenly.
    With several partitions the group is one per partition's stream, read all at once.

    Like `subscribe`, it waits as long as the stream is quiet, on any client, and rides
    out Redis going away (`retry_for`). A Redis that came back without its data has lost
    the group too: it is made again after the last event this consumer took.
    """
    retries = _Retries(retry_for)
    keys = await retries.call(partial(deployment_keys, redis, keys))
    members = {
        partition: _Member(
            redis, keys.events(partition), group, consumer, start, block_ms, claim_idle_ms
        )
        for partition in range(keys.partitions)
    }
    for member in members.values():
        await retries.call(member.join)
    takes: dict[int, asyncio.Task[list[Any]]] = {}
    try:
        while True:
            for partition, member in members.items():
                if partition not in takes:
                    takes[partition] = asyncio.ensure_future(member.take(prefetch))
            done, _ = await asyncio.wait(takes.values(), return_when=asyncio.FIRST_COMPLETED)
            for partition, task in list(takes.items()):
                if task not in done:
                    continue
                del takes[partition]
                entries = await retries.call(_outcome(task, members[partition], prefetch))
                for entry_id, fields in entries:
                    event = event_from_entry(entry_id, fields)
                    if job_id is None or event.job_id == job_id:
                        yield event
                    await retries.call(partial(members[partition].ack, entry_id))
    finally:
        for task in takes.values():
            task.cancel()


def _outcome(
    task: asyncio.Task[list[Any]], member: _Member, count: int
) -> Callable[[], Awaitable[list[Any]]]:
    """What a take gave, as an attempt `_Retries.call` can make again: the first attempt
    gives the take's answer (or raises its error), each later one takes anew."""
    first = True

    async def attempt() -> list[Any]:
        nonlocal first
        if first:
            first = False
            return task.result()
        return await member.take(count)

    return attempt


@dataclass
class _Member:
    """One consumer of a consumer group of one partition's events stream."""

    redis: Client
    stream: str
    group: str
    name: str
    start: str  # where the group begins if it has to be made (again): after this entry id
    block_ms: int
    claim_idle_ms: int

    async def join(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, self.group, id=self.start, mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def take(self, count: int) -> list[Any]:
        """Entries left idle too long by another consumer, or else new ones: (id, fields)."""
        try:
            return await self._claim(count) or await self._read(count)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
        await self.join()  # Redis lost the group (restarted without its data): made again
        return []

    async def ack(self, entry_id: bytes) -> None:
        await self.redis.xack(self.stream, self.group, entry_id)

    async def _claim(self, count: int) -> list[Any]:
        claimed: Any = await self.redis.xautoclaim(
            self.stream, self.group, self.name, self.claim_idle_ms, "0-0", count=count
        )
        return list(claimed[1])

    async def _read(self, count: int) -> list[Any]:
        async def xreadgroup(block: int | None) -> Any:
            return await self.redis.xreadgroup(
                self.group, self.name, {self.stream: ">"}, count=count, block=block
            )

        reply: Any = await read_blocking(self.redis, self.block_ms, xreadgroup)
        entries = [entry for _stream, entries in reply or () for entry in entries]
        if entries:  # new entries are the newest the group handed out
            self.start = _text(entries[-1][0])
        return entries


class EventLog:
    """The events streams on clients of their own (the web's event feeds and readers)."""

    def __init__(self, router: Router, keys: Keys) -> None:
        self.router, self.keys = router, keys
        self._slots = [key_slot(keys.base(p).encode()) for p in range(keys.partitions)]

    def _at(self, partition: int) -> Redis:
        return self.router.at_slot(self._slots[partition])

    async def read(
        self, partition: int, after: str, block_ms: int | None = None, count: int = 500
    ) -> list[Event]:
        """The events of a partition after `after` (see read_events)."""
        return await read_events(self._at(partition), self.keys, partition, after, block_ms, count)

    async def last_id(self, partition: int) -> str:
        """The id of the partition's newest event, "0-0" when there is none."""
        return await last_event_id(self._at(partition), self.keys, partition)

    async def close(self) -> None:
        await self.router.aclose()
