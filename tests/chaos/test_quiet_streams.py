"""Event streams through quiet and through Redis going away: SSE on the shipped defaults,
SSE and the Python helpers across a redis-server restart, with no traceback logged."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal
import subprocess
import threading
import time
from collections.abc import AsyncGenerator, Iterator
from typing import Any

import httpx
import orjson
import pytest
import redis as sync_redis
from redis.asyncio import Redis

from receiver.app import create_app
from receiver.embedded import redis_server_binary
from receiver.events import Event, consume, subscribe, wait
from receiver.settings import Settings
from receiver.store.keys import Keys
from tests.receiver_app import KEYS, running_receiver
from tests.servers import RedisProcess, run_redis, serve_app

AUTH = {"Authorization": "Bearer t"}  # the API token of tests.receiver_app
# redis-server arguments: every write in the AOF before it is answered.
AOF = ("--appendonly", "yes", "--appendfsync", "always")
NO_PERSISTENCE = ("--appendonly", "no")


class Records(logging.Handler):
    """Every record logged to the loggers it is attached to."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def troubles(self) -> list[str]:
        """The records at ERROR or above, or carrying a traceback."""
        return [
            f"{r.name}: {r.getMessage()}"
            for r in self.records
            if r.levelno >= logging.ERROR or r.exc_info
        ]

    def messages(self) -> list[str]:
        return [r.getMessage() for r in self.records]


@contextlib.contextmanager
def logged() -> Iterator[Records]:
    """Records of the root logger and of uvicorn's (which keeps its own to itself), where
    "Exception in ASGI application" goes; attach it once uvicorn configured its logging."""
    handler = Records()
    loggers = [logging.getLogger(), logging.getLogger("uvicorn.error")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def start_again(server: RedisProcess, *args: str) -> None:
    """A redis-server on the stopped one's port and directory (its AOF, if it kept one)."""
    server.process = subprocess.Popen(
        [
            redis_server_binary(),
            "--port",
            str(server.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            server.directory,
            "--save",
            "",
            *args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not answers(server):
        assert time.monotonic() < deadline, "redis-server did not come back"
        time.sleep(0.02)


def answers(server: RedisProcess) -> bool:
    try:
        with sync_redis.Redis(port=server.port, socket_timeout=1) as client:
            return bool(client.ping())
    except sync_redis.RedisError:  # not listening yet, or loading its AOF
        return False


def add_event(server: RedisProcess, job_id: str, kind: str) -> str:
    """An event of the job appended to the stream as the scripts append it; its id."""
    event = {"type": kind, "job_id": job_id, "provider": "decodo", "status": "running"}
    with sync_redis.Redis(port=server.port, socket_timeout=5) as client:
        entry_id: Any = client.xadd(Keys().events(0), {"event": orjson.dumps(event)})
    return str(entry_id.decode())


def until(deadline: float, lines: Iterator[str]) -> Iterator[str]:
    for line in lines:
        assert time.monotonic() < deadline, "the event stream did not get there in time"
        yield line


def pings(lines: Iterator[str]) -> Iterator[str]:
    """The heartbeat comments of an event stream; it fails on any event."""
    for line in lines:
        assert not line.startswith("id: "), line
        if line == ": ping":
            yield line


async def next_event(events: AsyncGenerator[Event, None]) -> Event:
    return await anext(events)


def test_an_idle_event_stream_on_the_shipped_defaults_pings_and_stays_open(
    redis_process: RedisProcess,
) -> None:
    assert Settings().sse_heartbeat == 15  # the shipped default, untouched below
    with running_receiver(redis_process) as receiver, logged() as log:
        # 20 s of quiet: past redis-py's default socket timeout (5 s), the one the server's
        # pool is given, and the heartbeat.
        later = threading.Timer(20, add_event, (redis_process, "j1", "job.created"))
        lines: list[str] = []
        try:
            with httpx.stream("GET", f"{receiver.url}/events", headers=AUTH, timeout=30) as r:
                assert r.status_code == 200
                later.start()
                for line in r.iter_lines():
                    lines.append(line)
                    if line.startswith("data: "):
                        break
        finally:
            later.cancel()
    assert ": ping" in lines, lines
    assert lines[-3].startswith("id: ") and lines[-2] == "event: job.created", lines
    assert orjson.loads(lines[-1].removeprefix("data: "))["job_id"] == "j1"
    assert not log.troubles()


def test_an_event_stream_rides_out_a_redis_restart() -> None:
    with run_redis(*AOF) as server:
        settings = Settings(
            redis_url=server.url, secret_keys=KEYS, api_token="t", sse_heartbeat=0.3
        )
        add_event(server, "j1", "job.created")
        with serve_app(create_app(settings)) as url, logged() as log:
            deadline = time.monotonic() + 60
            seen: list[str] = []
            pings_while_away, completed = 0, ""
            with httpx.stream("GET", f"{url}/events", headers=AUTH, timeout=10) as response:
                progress = add_event(server, "j1", "job.progress")
                for line in until(deadline, response.iter_lines()):
                    if line.startswith("id: "):
                        seen.append(line.removeprefix("id: "))
                        if len(seen) == 2:
                            break
                        server.stop()  # Redis goes away with the stream open
                    elif line == ": ping" and seen:
                        pings_while_away += 1
                        if pings_while_away == 3:
                            start_again(server, *AOF)
                            completed = add_event(server, "j1", "job.completed")
            # The stream went on from its cursor: nothing missed, nothing twice.
            assert seen == [progress, completed]
            headers = {**AUTH, "Last-Event-ID": progress}
            with httpx.stream("GET", f"{url}/events", headers=headers, timeout=10) as response:
                resumed = next(line for line in response.iter_lines() if line.startswith("id: "))
            assert resumed == f"id: {completed}"
    assert not log.troubles()
    assert "redis unavailable" in log.messages()  # the stream did see Redis go away


def test_an_event_stream_pings_while_redis_is_frozen() -> None:
    # A stopped process: connections open and commands go out, but no answer comes, as
    # with a host gone from the network; the pool's socket timeout is far past a heartbeat.
    with run_redis() as server:
        settings = Settings(
            redis_url=server.url, secret_keys=KEYS, api_token="t", sse_heartbeat=0.3
        )
        with serve_app(create_app(settings)) as url, logged() as log:
            with httpx.stream("GET", f"{url}/events", headers=AUTH, timeout=10) as response:
                lines = until(time.monotonic() + 60, response.iter_lines())
                assert next(line for line in lines if line == ": ping")
                server.process.send_signal(signal.SIGSTOP)
                try:
                    frozen = list(itertools.islice(pings(lines), 6))
                finally:
                    server.process.send_signal(signal.SIGCONT)
                added = add_event(server, "j1", "job.created")
                first = next(line for line in lines if line.startswith("id: "))
    assert frozen == [": ping"] * 6
    assert first == f"id: {added}"
    assert not log.troubles()
    assert "redis unavailable" in log.messages()


@pytest.mark.anyio
@pytest.mark.parametrize("persistence", [AOF, NO_PERSISTENCE], ids=["aof", "no-persistence"])
async def test_helpers_ride_out_a_redis_restart(persistence: tuple[str, ...]) -> None:
    with run_redis(*persistence) as server, logged() as log:
        client = Redis.from_url(server.url)
        subscriber = subscribe(client, job_id="j1", after="0")
        consumer = consume(client, "g", "c", job_id="j1", start="0")
        final = asyncio.create_task(wait(client, "j1", timeout=60))
        created = add_event(server, "j1", "job.created")
        assert (await next_event(subscriber)).id == (await next_event(consumer)).id == created
        following = [asyncio.create_task(next_event(events)) for events in (subscriber, consumer)]
        await asyncio.sleep(0.3)  # all three are reading when Redis goes away
        server.stop()
        await asyncio.sleep(1)
        gave_up = [task.exception() for task in [*following, final] if task.done()]
        assert not gave_up
        start_again(server, *persistence)
        progress = add_event(server, "j1", "job.progress")
        failed = add_event(server, "j1", "job.failed")
        got = await asyncio.wait_for(asyncio.gather(*following, final), 30)
        assert [event.id for event in got] == [progress, progress, failed]
        # Nothing twice: the consumer goes on with the next event, not one it had.
        assert (await asyncio.wait_for(next_event(consumer), 10)).id == failed
        for events in (subscriber, consumer):
            await events.aclose()
        await client.aclose()
    assert not log.troubles()
    assert "redis unavailable; retrying" in log.messages()
