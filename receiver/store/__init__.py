"""The one door to Redis: job records, scheduled and queued work, rate limits, events.

Only this package holds a Redis client (a test walks the others): `keys` names every key,
`codes` every word the scripts answer, `lua/` holds the scripts; `jobs`, `reads`,
`schedule`, `queue`, `rates`, `health` and `events` are its rooms, `server` opens the
clients, and `Store` (`store.py`) puts the rooms behind one object.
"""

from __future__ import annotations

from receiver.store.codes import Code, JobStatus, TaskStatus, Work, WorkItem
from receiver.store.events import EventLog
from receiver.store.jobs import (
    Callback,
    Outcome,
    compress,
    decompress,
    iso,
    new_job_id,
    one_line,
    tracked_job_id,
)
from receiver.store.keys import Keys
from receiver.store.reads import decode_job
from receiver.store.server import (
    REDIS_CONNECT_TIMEOUT,
    REDIS_TIMEOUT,
    STREAM_POOL_SIZE,
    open_redis,
    open_stream_redis,
    pool_size,
)
from receiver.store.store import (
    COMMITS_IN_FLIGHT,
    Store,
    callback_committer,
    connect_store,
    open_store,
)

__all__ = [
    "COMMITS_IN_FLIGHT",
    "REDIS_CONNECT_TIMEOUT",
    "REDIS_TIMEOUT",
    "STREAM_POOL_SIZE",
    "Callback",
    "Code",
    "EventLog",
    "JobStatus",
    "Keys",
    "Outcome",
    "Store",
    "TaskStatus",
    "Work",
    "WorkItem",
    "callback_committer",
    "compress",
    "connect_store",
    "decode_job",
    "decompress",
    "iso",
    "new_job_id",
    "one_line",
    "open_redis",
    "open_store",
    "open_stream_redis",
    "pool_size",
    "tracked_job_id",
]
