"""The event schema, and helpers for programs that subscribe to receiver's events.

Every state change is appended to the stream `receiver:stream:events` (durable, replayable)
and published on `receiver:events` and `receiver:events:<job_id>` (live, at most once).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis

from receiver.keys import Keys

# Event types that end a job.
FINAL_TYPES = frozenset({"job.completed", "job.failed", "job.cancelled", "job.expired"})


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
    event_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return Event.from_json(fields[b"event"], event_id)


async def subscribe(
    redis: Redis,
    job_id: str | None = None,
    after: str | None = None,
    *,
    keys: Keys | None = None,
    block_ms: int = 5000,
) -> AsyncIterator[Event]:
    """Events from the stream, oldest first, starting after the event id `after`.

    `after=None` yields only events added from now on; `after="0"` replays what the stream
    still holds. Pass the id of the last event you handled to resume with nothing missed
    and nothing twice. With `job_id`, only that job's events are yielded.
    """
    keys = keys or Keys()
    cursor = after or await _last_id(redis, keys)
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
    """The event that ended the job, waiting at most `timeout` seconds (TimeoutError)."""
    keys = keys or Keys()
    deadline = time.monotonic() + timeout
    # Read from the start of the stream so a job that ended before the call is found too.
    cursor = "0"
    while (left := deadline - time.monotonic()) > 0:
        for event in await read_events(redis, keys, cursor, max(1, int(min(left, 1) * 1000))):
            cursor = event.id
            if event.job_id == job_id and event.final:
                return event
    raise TimeoutError(f"job {job_id} did not end within {timeout} s")


async def _last_id(redis: Redis, keys: Keys) -> str:
    last = await redis.xrevrange(keys.events, count=1)
    if not last:
        return "0"
    entry_id = last[0][0]
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
