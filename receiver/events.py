"""Helpers for programs that subscribe to receiver's events, and the event schema.

Every state change is appended to the stream `receiver:stream:events` (durable, replayable)
and published on `receiver:events` and `receiver:events:<job_id>` (live, at most once).

The helpers take any `redis.asyncio.Redis` client, whatever its socket timeout: no read
blocks in Redis for longer than half of it (a longer wait is several reads), and Redis
going away (restarted, loading, unreachable) is ridden out, backing off, from the cursor.
They live in the store package (`receiver.store.events`), the one that talks to Redis.
"""

from __future__ import annotations

from receiver.store.events import (
    FINAL_STATUSES,
    FINAL_TYPES,
    RETRY_BASE,
    RETRY_CAP,
    STREAM_ID,
    Event,
    at_ms,
    consume,
    event_from_entry,
    iso_ms,
    last_event_id,
    read_events,
    subscribe,
    wait,
)

__all__ = [
    "FINAL_STATUSES",
    "FINAL_TYPES",
    "RETRY_BASE",
    "RETRY_CAP",
    "STREAM_ID",
    "Event",
    "at_ms",
    "consume",
    "event_from_entry",
    "iso_ms",
    "last_event_id",
    "read_events",
    "subscribe",
    "wait",
]
