"""Server-Sent Events: GET /events and GET /jobs/{id}/events, read from the event stream.

Each event goes out as `id: <stream id>`, `event: <type>`, `data: <json>`; a client that
reconnects with `Last-Event-ID` gets every later event, none twice. A job's stream opens
with `job.state` (the job as GET /jobs/{id} shows it, with the stream id it was read at)
and closes after the job's final event. An open stream outlives Redis going away: it
keeps pinging while its reads are tried again, and goes on from its cursor.

One reader per process (EventFeed) reads the stream for every open stream: an event is
read and rendered once, however many follow it, and a waiting stream holds no Redis
connection. A stream resumed from further back than the feed remembers reads Redis itself
until it has caught up.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass

import orjson
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from receiver.api import public_job
from receiver.backoff import backoff
from receiver.errors import InvalidRequest, UnknownJob
from receiver.events import RETRY_BASE, RETRY_CAP, STREAM_ID, Event
from receiver.metrics import STREAMS_REFUSED
from receiver.outages import Outages, raise_if_cancelling
from receiver.store import EventLog, JobStatus
from receiver.web import Services, json_response

_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# Seconds a read may run past the next heartbeat before it is given up as failed (Redis
# frozen or unreachable, a connection slow to open): however Redis fails, a ping is never
# later than that.
_OVERRUN = 1.0
# Seconds a client refused a stream (429, every slot taken) is asked to wait.
_RETRY_STREAM = 5

log = logging.getLogger(__name__)


async def all_events(request: Request, services: Services) -> Response:
    resume = _resume_from(request)

    async def opening() -> AsyncIterator[bytes]:
        cursor = resume or await services.events.last_id()
        return _follow(services, cursor, job_id=None)

    return await _opened(services, opening)


async def job_events(request: Request, services: Services) -> Response:
    job_id = request.path_params["job_id"]
    resume = _resume_from(request)

    async def opening() -> AsyncIterator[bytes]:
        # The cursor is taken before the state is read: nothing between them is missed.
        cursor = resume or await services.events.last_id()
        job = await services.store.get_job(job_id)
        if job is None:
            raise UnknownJob(f"no job {job_id}")
        return _job_stream(services, job, cursor, resumed=resume is not None)

    return await _opened(services, opening)


async def _opened(
    services: Services, opening: Callable[[], Awaitable[AsyncIterator[bytes]]]
) -> Response:
    """The stream `opening` opens, in one of the process's stream slots; 429 when every
    slot is taken."""
    if not services.streams.take():
        return _too_many(services)
    try:
        chunks = await opening()
    except BaseException:
        services.streams.give()
        raise
    return _EventStream(chunks, services)


def _too_many(services: Services) -> Response:
    STREAMS_REFUSED.inc()
    limit = services.streams.limit
    return json_response(
        {"error": "too_many_streams", "message": f"{limit} event streams are open; retry later"},
        429,
        {"Retry-After": str(_RETRY_STREAM)},
    )


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
    feed = services.feed
    reader = _Reader(services.events, services.outages, cursor)
    written = time.monotonic()
    with contextlib.nullcontext() if drain else feed.subscribed():
        while True:
            items = None if drain else feed.after(reader.cursor)
            if items is None:  # not in the feed's memory: read from Redis, without waiting
                events = await reader.read(written + heartbeat, block=False)
                if drain and events == []:
                    return
                if events == []:
                    await feed.wait(written + heartbeat)
                items = [(event, None) for event in events or ()]
            elif items:
                reader.cursor = items[-1][0].id
            else:
                await feed.wait(written + heartbeat)
            chunk, ended = _frames(items, job_id)
            if chunk:
                yield chunk
                written = time.monotonic()
            if ended:
                return
            if time.monotonic() - written >= heartbeat:
                yield b": ping\n\n"
                written = time.monotonic()


def _frames(items: Iterable[tuple[Event, bytes | None]], job_id: str | None) -> tuple[bytes, bool]:
    """The frames of the events a stream sends (all, or the job's up to its final one),
    joined; and whether the stream ends with them."""
    frames: list[bytes] = []
    for event, frame in items:
        if job_id is None or event.job_id == job_id:
            frames.append(frame or _event_frame(event))
            if job_id is not None and event.final:
                return b"".join(frames), True
    return b"".join(frames), False


class EventFeed:
    """The process's one reader of the event stream, for its open streams: each event is
    read and rendered once, however many streams follow it, and a stream waiting for the
    next one holds no Redis connection. (Each stream used to block in a read of its own: an
    event cost a round trip per open stream, and callbacks waited behind them.)

    It runs while it has subscribers, from the newest event at its start (its floor), and
    keeps the last `window` events in memory: a stream whose cursor is at or after the
    floor is served from there; one further back (resumed, or too slow to keep up) reads
    from Redis until it has caught up.
    """

    def __init__(
        self,
        events: EventLog,
        outages: Outages,
        block: float,
        window: int = 4096,
        window_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        self.events, self.outages = events, outages
        # Seconds one read blocks at most: a Redis that does not answer is an outage once
        # it is past (and _OVERRUN), as it was for a stream's own reads; and how late the
        # feed sees its last stream gone.
        self.block = block
        # Events, and bytes of their frames, kept at most; over either, the older half goes.
        self.window, self.window_bytes = window, window_bytes
        self.subscribers = 0
        self._floor: tuple[int, int] | None = None  # None: it covers nothing (not started)
        self._ids: list[tuple[int, int]] = []  # of the events kept, in order
        self._items: list[tuple[Event, bytes | None]] = []  # each with its frame
        self._bytes = 0  # of the frames kept
        self._arrived = asyncio.Event()  # set, and replaced, when events come
        self._task: asyncio.Task[None] | None = None

    def after(self, cursor: str) -> list[tuple[Event, bytes | None]] | None:
        """The events after the cursor, with their frames; None when it is before the floor."""
        key = _stream_key(cursor)
        if self._floor is None or key < self._floor:
            return None
        return self._items[bisect.bisect_right(self._ids, key) :]

    async def wait(self, until: float) -> None:
        """Until events come (or the floor is set), or the monotonic time `until`."""
        self._keep_running()
        arrived = self._arrived
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, until - time.monotonic())):
                await arrived.wait()

    @contextlib.contextmanager
    def subscribed(self) -> Iterator[None]:
        """A stream following the feed, for the block; the feed runs while one does."""
        self.subscribers += 1
        self._keep_running()
        try:
            yield
        finally:
            self.subscribers -= 1

    def _keep_running(self) -> None:
        """Start the feed when it has subscribers and does not run (it ended, or has not
        started yet)."""
        if self._task is None and self.subscribers:
            self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        try:
            reader = await self._start()
            while reader is not None and self.subscribers:
                try:
                    events = await reader.read(time.monotonic() + self.block, block=True)
                except RedisError:  # no outage: logged, and tried again later
                    log.exception("the event feed's read was refused")
                    reader.back_off()
                    continue
                if events:
                    self._add(events)
        finally:  # no await since the last look at `subscribers`: none is left out
            self._task, self._floor, self._ids, self._items, self._bytes = None, None, [], [], 0

    async def _start(self) -> _Reader | None:
        """A reader from the newest event (the floor) on, once Redis answers; None when no
        subscriber is left meanwhile."""
        failures = 0
        while self.subscribers:
            try:
                newest = await self.events.last_id()
            except RedisError as exc:
                raise_if_cancelling()
                if not self.outages.failed(exc):
                    log.exception("the event feed could not start")
                await asyncio.sleep(backoff(failures, RETRY_BASE, RETRY_CAP))
                failures += 1
                continue
            self.outages.recovered()
            self._floor = _stream_key(newest)
            self._notify()
            return _Reader(self.events, self.outages, newest)
        return None

    def _add(self, events: list[Event]) -> None:
        for event in events:
            frame = _event_frame(event)
            self._ids.append(_stream_key(event.id))
            self._items.append((event, frame))
            self._bytes += len(frame)
        if len(self._ids) > self.window or self._bytes > self.window_bytes:
            self._drop_older_half()
        self._notify()

    def _drop_older_half(self) -> None:
        """Keep the newest events that fit in half the window; the floor moves up to the
        last one dropped."""
        kept, kept_bytes = 0, 0
        for _, frame in reversed(self._items):
            size = len(frame or b"")
            if kept >= self.window // 2 or kept_bytes + size > self.window_bytes // 2:
                break
            kept, kept_bytes = kept + 1, kept_bytes + size
        dropped = len(self._items) - kept
        self._floor = self._ids[dropped - 1]
        del self._ids[:dropped], self._items[:dropped]
        self._bytes = kept_bytes

    def _notify(self) -> None:
        self._arrived.set()
        self._arrived = asyncio.Event()


def _stream_key(event_id: str) -> tuple[int, int]:
    """A stream id as the numbers Redis orders it by."""
    millis, _, sequence = event_id.partition("-")
    return int(millis), int(sequence or 0)


@dataclass
class _Reader:
    """Reads the events after a cursor; while Redis is away, tries again, backing off.

    Failures are reported to the process's `Outages`, which logs an outage once however
    many streams see it.
    """

    events: EventLog
    outages: Outages
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
        try:
            async with asyncio.timeout(until - now + _OVERRUN):
                events = await self.events.read(self.cursor, block_ms)
        except TimeoutError:  # ours: Redis did not answer by the heartbeat
            raise_if_cancelling()
            self._failed(RedisTimeoutError("no answer by the heartbeat"))
            return None
        except RedisError as exc:
            raise_if_cancelling()
            self._failed(exc)
            return None
        self.failures = 0
        self.outages.recovered()
        if events:
            self.cursor = events[-1].id
        return events

    def back_off(self) -> None:
        """Wait longer before each try after a failure."""
        self.retry_at = time.monotonic() + backoff(self.failures, RETRY_BASE, RETRY_CAP)
        self.failures += 1

    def _failed(self, exc: RedisError) -> None:
        if not self.outages.failed(exc):
            raise exc  # no outage: a bug, or Redis refusing us, that retrying does not mend
        self.back_off()


def _resume_from(request: Request) -> str | None:
    last = request.headers.get("last-event-id")
    if last is None or last == "":
        return None
    # Redis takes each part of a stream id as a 64-bit unsigned number.
    if not STREAM_ID.fullmatch(last) or any(int(part) >= 2**64 for part in last.split("-")):
        raise InvalidRequest("Last-Event-ID must be an event id such as 1795383656390-0")
    return last


class _EventStream(StreamingResponse):
    """An event stream holding one of the process's stream slots until it ends, however it
    ends (the client gone, the server stopping)."""

    def __init__(self, chunks: AsyncIterator[bytes], services: Services) -> None:
        super().__init__(
            _ended_on_refusal(chunks), media_type="text/event-stream", headers=_HEADERS
        )
        self._slots = services.streams

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._slots.give()


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
