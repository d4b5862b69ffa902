"""Server-Sent Events: GET /events and GET /jobs/{id}/events, read from the event stream.

Each event goes out as `id: <stream id>`, `event: <type>`, `data: <json>`; a client that
reconnects with `Last-Event-ID` gets every later event, none twice. A job's stream opens
with `job.state` (the job as GET /jobs/{id} shows it, with the stream id it was read at)
and closes after the job's final event.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from receiver.api import public_job
from receiver.errors import InvalidRequest, UnknownJob
from receiver.events import Event, last_event_id, read_events
from receiver.store import JobStatus
from receiver.web import Services

_STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def all_events(request: Request, services: Services) -> Response:
    cursor = _resume_from(request) or await last_event_id(services.redis, services.store.keys)
    return _stream(_follow(services, cursor, job_id=None))


async def job_events(request: Request, services: Services) -> Response:
    job_id = request.path_params["job_id"]
    resume = _resume_from(request)
    # The cursor is taken before the state is read: nothing between them is missed.
    cursor = resume or await last_event_id(services.redis, services.store.keys)
    job = await services.store.get_job(job_id)
    if job is None:
        raise UnknownJob(f"no job {job_id}")
    return _stream(_job_stream(services, job, cursor, resumed=resume is not None))


async def _job_stream(
    services: Services, job: dict[str, object], cursor: str, *, resumed: bool
) -> AsyncIterator[bytes]:
    ended = JobStatus(str(job["status"])).terminal
    if not resumed:
        yield _frame(cursor, "job.state", orjson.dumps(public_job(job)))
        if ended:
            return
    if ended:  # resumed on an ended job: what is left in the stream, then the end
        async for chunk in _drain(services, cursor, str(job["id"])):
            yield chunk
        return
    async for chunk in _follow(services, cursor, job_id=str(job["id"])):
        yield chunk


async def _follow(services: Services, cursor: str, job_id: str | None) -> AsyncIterator[bytes]:
    # A ping goes out whenever nothing was written for a heartbeat, however busy the stream
    # is with other jobs' events: proxies and clients time out on silence, not on the stream.
    heartbeat = services.settings.sse_heartbeat
    written = time.monotonic()
    while True:
        block_ms = max(1, int((written + heartbeat - time.monotonic()) * 1000))
        for event in await read_events(services.redis, services.store.keys, cursor, block_ms):
            cursor = event.id
            if job_id is None or event.job_id == job_id:
                yield _event_frame(event)
                written = time.monotonic()
                if job_id is not None and event.final:
                    return
        if time.monotonic() - written >= heartbeat:
            yield b": ping\n\n"
            written = time.monotonic()


async def _drain(services: Services, cursor: str, job_id: str) -> AsyncIterator[bytes]:
    while events := await read_events(services.redis, services.store.keys, cursor, None):
        for event in events:
            cursor = event.id
            if event.job_id == job_id:
                yield _event_frame(event)
                if event.final:
                    return


def _resume_from(request: Request) -> str | None:
    last = request.headers.get("last-event-id")
    if last is None or last == "":
        return None
    if not _STREAM_ID.fullmatch(last):
        raise InvalidRequest("Last-Event-ID must be an event id such as 1795383656390-0")
    return last


def _stream(chunks: AsyncIterator[bytes]) -> Response:
    return StreamingResponse(chunks, media_type="text/event-stream", headers=_HEADERS)


def _event_frame(event: Event) -> bytes:
    return _frame(event.id, event.type, orjson.dumps(event.to_dict()))


def _frame(event_id: str, kind: str, data: bytes) -> bytes:
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (event_id.encode(), kind.encode(), data)
