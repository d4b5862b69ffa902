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
from receiver.events import RETRY_BASE, RETRY_CAP, Event
from receiver.metrics import STREAMS_REFUSED
from receiver.outages import Outages, raise_if_cancelling
from receiver.store import EventLog, JobStatus, cursors
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
    partitions = list(range(services.store.keys.partitions))
    resume = _resume_from(request, len(partitions))

    async def opening() -> AsyncIterator[bytes]:
        positions = resume or [await services.events.last_id(p) for p in partitions]
        return _follow(services, partitions, positions, job_id=None)

    return await _opened(services, opening)


async def job_events(request: Request, services: Services) -> Response:
    job_id = request.path_params["job_id"]
    resume = _resume_from(request, 1)
    partition = services.store.keys.partition_of(job_id)

    async def opening() -> AsyncIterator[bytes]:
        # The cursor is taken before the state is read: nothing between them is missed.
        cursor = resume[0] if resume else await services.events.last_id(partition)
        job = await services.store.get_job(job_id)
        if job is None:
            raise UnknownJob(f"no job {job_id}")
        return _job_stream(services, job, partition, cursor, resumed=resume is not None)

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
    services: Services, job: dict[str, object], partition: int, cursor: str, *, resumed: bool
) -> AsyncIterator[bytes]:
    ended = JobStatus(str(job["status"])).terminal
    if not resumed:
        yield _frame(cursor, "job.state", orjson.dumps(public_job(job)))
        if ended:
            return
    # Resumed on an ended job (`drain`): what is left in the stream, then the end.
    follow = _follow(services, [partition], [cursor], job_id=str(job["id"]), drain=ended)
    async for chunk in follow:
        yield chunk


async def _follow(
    services: Services,
    partitions: list[int],
    positions: list[str],
    job_id: str | None,
    *,
    drain: bool = False,
) -> AsyncIterator[bytes]:
    """The events of the partitions after their positions (the job's, with `job_id`, until
    its final one), as they come; with `drain`, only those the streams hold now. Over
    several partitions, each event's id is the cursor of them all after it."""
    # A ping goes out whenever nothing was written for a heartbeat, however busy the stream
    # is with other jobs' events: proxies and clients time out on silence, not on the stream.
    heartbeat = services.settings.sse_heartbeat
    feeds = [services.feeds[p] for p in partitions]
    readers = [
        _Reader(services.events, p, services.outages, position)
        for p, position in zip(partitions, positions, strict=True)
    ]
    written = time.monotonic()
    with contextlib.ExitStack() as subscriptions:
        if not drain:
            for feed in feeds:
                subscriptions.enter_context(feed.subscribed())
        while True:
            items: list[tuple[int, Event, bytes | None]] = []
            for index, (feed, reader) in enumerate(zip(feeds, readers, strict=True)):
                kept = None if drain else feed.after(reader.cursor)
                if kept is None:  # not in the feed's memory: read from Redis, without waiting
                    events = await reader.read(written + heartbeat, block=False)
                    kept = [(event, None) for event in events or ()]
                elif kept:
                    reader.cursor = kept[-1][0].id
                items += [(index, event, body) for event, body in kept]
            if drain and not items:
                return
            if not items:
                await _wait_any(feeds, written + heartbeat)
            elif len(readers) > 1:
                items.sort(key=lambda item: cursors.order(item[1].id))
            chunk, ended = _frames(items, job_id, positions)
            if chunk:
                yield chunk
                written = time.monotonic()
            if ended:
                return
            if time.monotonic() - written >= heartbeat:
                yield b": ping\n\n"
                written = time.monotonic()


async def _wait_any(feeds: list[EventFeed], until: float) -> None:
    """Until events come to one of the feeds, or the monotonic time `until`."""
    if len(feeds) == 1:
        await feeds[0].wait(until)
        return
    waits = [asyncio.ensure_future(feed.wait(until)) for feed in feeds]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


def _frames(
    items: Iterable[tuple[int, Event, bytes | None]], job_id: str | None, positions: list[str]
) -> tuple[bytes, bool]:
    """The frames of the events a stream sends (all, or the job's up to its final one),
    joined; and whether the stream ends with them. `positions` (one per partition read)
    move past each event; over several partitions they are each event's id."""
    frames: list[bytes] = []
    for index, event, body in items:
        positions[index] = event.id
        if job_id is None or event.job_id == job_id:
            event_id = event.id if len(positions) == 1 else cursors.render(positions)
            frames.append(b"id: %s\n%s" % (event_id.encode(), body or _event_body(event)))
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
        partition: int,
        outages: Outages,
        block: float,
        window: int = 4096,
        window_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        self.events, self.partition, self.outages = events, partition, outages
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
        key = cursors.order(cursor)
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
                newest = await self.events.last_id(self.partition)
            except RedisError as exc:
                raise_if_cancelling()
                if not self.outages.failed(exc):
                    log.exception("the event feed could not start")
                await asyncio.sleep(backoff(failures, RETRY_BASE, RETRY_CAP))
                failures += 1
                continue
            self.outages.recovered()
            self._floor = cursors.order(newest)
            self._notify()
            return _Reader(self.events, self.partition, self.outages, newest)
        return None

    def _add(self, events: list[Event]) -> None:
        for event in events:
            frame = _event_body(event)
            self._ids.append(cursors.order(event.id))
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


@dataclass
class _Reader:
    """Reads the events after a cursor; while Redis is away, tries again, backing off.

    Failures are reported to the process's `Outages`, which logs an outage once however
    many streams see it.
    """

    events: EventLog
    partition: int
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
                events = await self.events.read(self.partition, self.cursor, block_ms)
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


def _resume_from(request: Request, partitions: int) -> list[str] | None:
    """The positions a Last-Event-ID resumes from: an event id, or over several partitions
    the cursor the stream gave; None without one."""
    last = request.headers.get("last-event-id")
    if last is None or last == "":
        return None
    try:
        return cursors.parse(last, partitions)
    except ValueError:
        example = ",".join(["1795383656390-0"] * partitions)
        raise InvalidRequest(f"Last-Event-ID must be an event id such as {example}") from None


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


def _event_body(event: Event) -> bytes:
    """An event's frame but for its id line, which depends on the stream it goes out on."""
    return b"event: %s\ndata: %s\n\n" % (event.type.encode(), orjson.dumps(event.to_dict()))


def _frame(event_id: str, kind: str, data: bytes) -> bytes:
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (event_id.encode(), kind.encode(), data)
