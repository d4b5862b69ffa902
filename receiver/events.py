"""The event schema, and helpers for programs that subscribe to receiver's events.

Every state change is appended to the stream `receiver:stream:events` (durable, replayable)
and published on `receiver:events` and `receiver:events:<job_id>` (live, at most once).
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from receiver.keys import Keys

# Event types that end a job, and the job statuses they end it in.
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


async def subscribe(
    redis: Redis,
    job_id: str | None = None,
    after: str | None = None,
    *,
    keys: Keys | None = None,
    block_ms: int = 5000,
) -> AsyncGenerator[Event, None]:
    """Events from the stream, oldest first, starting after the event id `after`.

    `after=None` yields only events added from now on; `after="0"` replays what the stream
    still holds. Pass the id of the last event you handled to resume with nothing missed
    and nothing twice. With `job_id`, only that job's events are yielded.
    """
    keys = keys or Keys()
    cursor = after or await last_event_id(redis, keys)
    while True:
        events = await read_events(redis, keys, cursor, block_ms)
        for event in events:
            cursor = event.id
            if job_id is None or event.job_id == job_id:
                yield event


async def read_events(
    redis: Redis, keys: Keys, after: str, block_ms: int | None = None, count: int = 500
) -> list[Event]:
    """The events after the id `after`, waiting up to block_ms for one when there are none."""
    reply: Any = await redis.xread({keys.events: after}, count=count, block=block_ms)
    return [
        event_from_entry(entry_id, fields)
        for _stream, entries in reply or ()
        for entry_id, fields in entries
    ]


async def wait(redis: Redis, job_id: str, timeout: float, *, keys: Keys | None = None) -> Event:
    """The event that ended the job, waiting at most `timeout` seconds (TimeoutError).

    A job that already ended gives its final event at once: from the stream, or rebuilt from
    the job's record, with an empty `id`, when the stream no longer holds it.
    """
    keys = keys or Keys()
    deadline = time.monotonic() + timeout
    # The cursor is taken before the state is read: an end after the read is still seen.
    cursor = await last_event_id(redis, keys)
    values = await redis.hmget(keys.job(job_id), _RECORD_FIELDS)
    record = {name: _text(v) for name, v in zip(_RECORD_FIELDS, values, strict=True) if v}
    if record.get("status") in FINAL_STATUSES:
        return await _find_final(redis, keys, record) or _rebuild_final(job_id, record)
    while (left := deadline - time.monotonic()) > 0:
        for event in await read_events(redis, keys, cursor, max(1, int(min(left, 1) * 1000))):
            cursor = event.id
            if event.job_id == job_id and event.final:
                return event
    raise TimeoutError(f"job {job_id} did not end within {timeout} s")


async def _find_final(redis: Redis, keys: Keys, record: Mapping[str, str]) -> Event | None:
    """The job's final event, by the stream id its job record keeps; None once trimmed."""
    final_id = record.get("final_event")
    if not final_id:
        return None
    entries: Any = await redis.xrange(keys.events, final_id, final_id)
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


async def last_event_id(redis: Redis, keys: Keys) -> str:
    """The id of the newest event, or "0" when there is none yet."""
    last: Any = await redis.xrevrange(keys.events, count=1)
    if not last:
        return "0"
    return _text(last[0][0])


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def consume(
    redis: Redis,
    group: str,
    consumer: str,
    *,
    job_id: str | None = None,
    start: str = "$",
    keys: Keys | None = None,
    block_ms: int = 5000,
    claim_idle_ms: int = 60_000,
    prefetch: int = 1,
) -> AsyncGenerator[Event, None]:
    """Events shared by cooperating subscribers through a consumer group.

    Each event goes to one consumer of `group`; it is acknowledged once the consumer asks
    for the next one, so an event whose consumer died mid-way stays pending and is handed
    to another consumer after `claim_idle_ms`. `start` is where a new group begins: "$"
    (only new events) or "0" (everything the stream holds). `prefetch` is how many
    events a consumer takes at once: more is faster, fewer shares the work more evenly.
    """
    keys = keys or Keys()
    await _ensure_group(redis, keys.events, group, start)
    while True:
        claimed: Any = await redis.xautoclaim(
            keys.events, group, consumer, claim_idle_ms, "0-0", count=prefetch
        )
        reply: Any = claimed[1] if claimed[1] else None
        if not reply:
            read: Any = await redis.xreadgroup(
                group, consumer, {keys.events: ">"}, count=prefetch, block=block_ms
            )
            reply = [entry for _stream, entries in read or () for entry in entries]
        for entry_id, fields in reply:
            event = event_from_entry(entry_id, fields)
            if job_id is None or event.job_id == job_id:
                yield event
            await redis.xack(keys.events, group, entry_id)


async def _ensure_group(redis: Redis, stream: str, group: str, start: str) -> None:
    try:
        await redis.xgroup_create(stream, group, id=start, mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
