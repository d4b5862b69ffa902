"""A job's stream as the receiver sends it: SSE frames, job snapshots as `GET /jobs/{id}`
shows them, and events (whose `detail` keys are job field names)."""

from __future__ import annotations

from typing import Any

import orjson

from receiver.client.sse import ServerSentEvent

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


AT = "2026-12-01T12:50:4{}.000+00:00"
DATASET = "795b929e-9a9a-40fd-aa7b-5bf55eb561a4"
# A job's status after each final event; "running" after the others.
FINAL_STATUSES = {"job.completed": "completed", "job.failed": "failed"}
DIFY_DOCS = ("268ecc45-dc6b-41e1-a399-f82a65aa9c82", "78633074-b797-4386-bee2-947631162427")


def dify_snapshot(**fields: Any) -> dict[str, Any]:
    """A Dify job in flight as `GET /jobs/{id}` shows it: 2 documents, 4000 segments."""
    return {
        "id": "8255c2a182567b34e65f",
        "provider": "dify",
        "status": "running",
        "progress": {"completed": 0, "failed": 0, "total": 2},
        "external": {"dataset_id": DATASET, "batch": "20261201125041756115"},
        "segments_completed": 120,
        "segments_total": 4000,
        "paused": 0,
        "created_at": AT.format(1),
        "updated_at": AT.format(2),
        "tasks": [{"id": doc, "status": "indexing"} for doc in DIFY_DOCS],
        **fields,
    }


def event(
    kind: str, job: dict[str, Any], at: int, progress: tuple[int, int, int], **detail: Any
) -> dict[str, Any]:
    """An event of the job's stream: (completed, failed, total), and its detail."""
    completed, failed, total = progress
    return {
        "type": kind,
        "job_id": job["id"],
        "provider": job["provider"],
        "status": FINAL_STATUSES.get(kind, "running"),
        "progress": {"completed": completed, "failed": failed, "total": total},
        "at": AT.format(at),
        "detail": detail,
    }


def messages(snapshot: dict[str, Any], *events: dict[str, Any]) -> list[ServerSentEvent]:
    """The stream of a job: its snapshot, then its events."""
    first = ServerSentEvent("1-0", "job.state", orjson.dumps(snapshot).decode())
    rest = [
        ServerSentEvent(f"{i}-0", body["type"], orjson.dumps(body).decode())
        for i, body in enumerate(events, 2)
    ]
    return [first, *rest]


def dify_stream() -> list[ServerSentEvent]:
    """A Dify job from 120 segments of 4000 to one document failed and one indexed."""
    job = dify_snapshot()
    return messages(
        job,
        event("job.progress", job, 3, (0, 1, 2), segments_completed=1200, stages={"indexing": 1}),
        event("job.progress", job, 4, (1, 1, 2), segments_completed=4000, stages={}),
        event("job.failed", job, 5, (1, 1, 2), reason=f"{DIFY_DOCS[0]}: Failed to load"),
    )


def as_frames(stream: list[ServerSentEvent]) -> list[bytes]:
    """The bytes a receiver sends for these messages."""
    return [sse_frame(m.id or "", m.event, orjson.loads(m.data)) for m in stream]
