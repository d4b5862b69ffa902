"""Server-Sent Events: GET /events and GET /jobs/{id}/events, read from the event stream.

Each event goes out as `id: <stream id>`, `event: <type>`, `data: <json>`; a client that
reconnects with `Last-Event-ID` gets every later event, none twice. A job's stream opens
with `job.state` (the job as GET /jobs/{id} shows it, with the stream id it was read at)
and closes after the job's final event. An open stream outlives Redis going away: it
keeps pinging while its reads are tried again, and goes on from its cursor.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from receiver.api import public_job
from receiver.backoff import backoff
from receiver.errors import InvalidRequest, UnknownJob
from receiver.events import RETRY_BASE, RETRY_CAP, STREAM_ID, Event, last_event_id, read_events
from receiver.outages import raise_if_cancelling
from receiver.store import JobStatus
from receiver.web import Services

_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# Seconds a read may run past the next heartbeat before it is given up as failed (Redis
# frozen or unreachable, a connection slow to open): however Redis fails, a ping is never
# later than that.
_OVERRUN = 1.0

log = logging.getLogger(__name__)


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
    # Resumed on an ended job (`drain`): what is left in the stream, then the end.
    async for chunk in _follow(services, cursor, job_id=str(job["id"]), drain=ended):
        yield chunk


async def _follow(
    services: Services, cursor: str, job_id: str | None, *, drain: bool = False
) -> AsyncIterator[bytes]:
    """The events after the cursor (the job's, with `job_id`, until its final one), as they
    come; with `drain`, only those the stream holds now."""
    # A ping goes out whenever nothing was written for a heartbeat, however busy the stream
    # is with other jobs' events: proxies and clients time out on silence, not on the stream.
    heartbeat = services.settings.sse_heartbeat
    reader = _Reader(services, cursor)
    written = time.monotonic()
    while True:
        events = await reader.read(written + heartbeat, block=not drain)
        for event in events or ():
            if job_id is None or event.job_id == job_id:
                yield _event_frame(event)
                written = time.monotonic()
                if job_id is not None and event.final:
                    return
        if drain and events == []:
            return
        if time.monotonic() - written >= heartbeat:
            yield b": ping\n\n"
            written = time.monotonic()


@dataclass
class _Reader:
    """Reads the events after a cursor; while Redis is away, tries again, backing off.

    Failures are reported to the process's `Outages`, which logs an outage once however
    many streams see it.
    """

    services: Services
    cursor: str
    failures: int = 0  # consecutive reads that failed
    retry_at: float = 0.0  # monotonic time of the next try after a failure

    async def read(self, until: float, *, block: bool) -> list[Event] | None:
        """The events after the cursor, waiting until `until` (monotonic) for one if `block`;
        None when Redis did not answer (or it is not yet time to ask it again)."""
        now = time.monotonic()
        if now < self.retry_at:
            await asyncio.sleep(min(self.retry_at, until) - now)
            return None
        block_ms = max(1, math.ceil((until - now) * 1000)) if block else None
        redis, keys = self.services.redis, self.services.store.keys
        try:
            async with asyncio.timeout(until - now + _OVERRUN):
                events = await read_events(redis, keys, self.cursor, block_ms)
        except TimeoutError:  # ours: Redis did not answer by the heartbeat
            raise_if_cancelling()
            self._failed(RedisTimeoutError("no answer by the heartbeat"))
            return None
        except RedisError as exc:
            raise_if_cancelling()
            self._failed(exc)
            return None
        self.failures = 0
        self.services.outages.recovered()
        if events:
            self.cursor = events[-1].id
        return events

    def _failed(self, exc: RedisError) -> None:
        if not self.services.outages.failed(exc):
            raise exc  # no outage: a bug, or Redis refusing us, that retrying does not mend
        self.retry_at = time.monotonic() + backoff(self.failures, RETRY_BASE, RETRY_CAP)
        self.failures += 1


def _resume_from(request: Request) -> str | None:
    last = request.headers.get("last-event-id")
    if last is None or last == "":
        return None
    if not STREAM_ID.fullmatch(last):
        raise InvalidRequest("Last-Event-ID must be an event id such as 1795383656390-0")
    return last


def _stream(chunks: AsyncIterator[bytes]) -> Response:
    return StreamingResponse(
        _ended_on_refusal(chunks), media_type="text/event-stream", headers=_HEADERS
    )


async def _ended_on_refusal(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The chunks, until a Redis error that is no outage: the stream then ends in good order
    (the client reconnects when it sees fit), and the error is logged with its trace."""
    try:
        async for chunk in chunks:
            yield chunk
    except RedisError:
        log.exception("event stream ended by a redis error")


def _event_frame(event: Event) -> bytes:
    return _frame(event.id, event.type, orjson.dumps(event.to_dict()))


def _frame(event_id: str, kind: str, data: bytes) -> bytes:
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (event_id.encode(), kind.encode(), data)
