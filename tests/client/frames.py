"""Server-Sent Event frames of a job's stream, as the receiver sends them."""

from __future__ import annotations

from typing import Any

import orjson

PING = b": ping\n\n"  # a heartbeat comment: the stream is open, nothing new


def sse_frame(event_id: str, kind: str, body: dict[str, Any]) -> bytes:
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (
        event_id.encode(),
        kind.encode(),
        orjson.dumps(body),
    )


def scripted_event(event_id: str, kind: str, status: str, completed: int) -> bytes:
    body = {
        "type": kind,
        "job_id": "j1",
        "provider": "decodo",
        "status": status,
        "progress": {"completed": completed, "failed": 0, "total": 4},
        "at": f"2026-11-22T22:30:0{completed}.000+00:00",
        "detail": {},
    }
    return sse_frame(event_id, kind, body)


SCRIPTED_STATE = sse_frame(
    "1-0",
    "job.state",
    {
        "id": "j1",
        "provider": "decodo",
        "status": "running",
        "progress": {"completed": 1, "failed": 0, "total": 4},
        "created_at": "2026-11-22T22:30:00.000+00:00",
        "updated_at": "2026-11-22T22:30:01.000+00:00",
    },
)
