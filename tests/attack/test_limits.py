"""The limits of `receiver web` against hostile senders, each on a real process: headers
bounded (431), slow senders cut off (408), open connections bounded (503), the connection
closed after an answer that did not read the body (413), callbacks answered while 1,000
slow connections and 200 event streams are open, streams bounded (429), and a Last-Event-ID
Redis cannot take refused (400)."""

from __future__ import annotations

import contextlib
import os
import resource
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis as sync_redis

from receiver.store.keys import Keys
from receiver.tokens import PassthroughSigner
from tests.attack.conftest import API_TOKEN, KEYS, Target, create_running_job
from tests.servers import RedisProcess, free_port, wait_for_port

AUTH = f"Authorization: Bearer {API_TOKEN}\r\n".encode()


@dataclass
class Web:
    """A `receiver web` process on loopback, logging to `log`."""

    port: int
    log: Path
    target: Target  # its Redis, and a client to post callbacks and call the API with

    def connect(self, timeout: float = 10.0) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout)

    def callback(self, job_id: str, task: str, timeout: float = 10.0) -> httpx.Response:
        """A valid Decodo callback for the job's task, on a kept-alive connection."""
        token = self.target.signer.sign(job_id)
        body = {"id": task, "status": "done", "passthrough": token}
        url = f"{self.target.url}/callbacks/decodo"
        return self.target.http.post(url, content=orjson.dumps(body), timeout=timeout)

    def callbacks_ms(self, job_id: str, tasks: list[str], timeout: float = 10.0) -> list[float]:
        """Each task's callback, one after the other, each answered 202; their latencies."""
        latencies = []
        for task in tasks:
            started = time.perf_counter()
            response = self.callback(job_id, task, timeout)
            latencies.append(1000 * (time.perf_counter() - started))
            assert response.status_code == 202, response.text
            assert response.json() == {"status": "accepted"}
        return latencies


def _file_limit(soft: int) -> None:
    """In the child: a soft file limit of `soft`, the hard one left as it is."""
    resource.setrlimit(
        resource.RLIMIT_NOFILE, (soft, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    )


@contextlib.contextmanager
def running_web(
    redis_process: RedisProcess,
    tmp_path: Path,
    settings: Mapping[str, str] | None = None,
    *,
    file_limit: int = 0,
) -> Iterator[Web]:
    """`receiver web` on the session's Redis (emptied first), with `settings` as RECEIVER_*
    variables (max_body: RECEIVER_MAX_BODY)."""
    client = sync_redis.Redis.from_url(redis_process.url)
    client.flushall()
    port = free_port()
    log = tmp_path / f"web-{port}.log"
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "RECEIVER_"))}
    environ.update(
        REDIS_URL=redis_process.url,
        RECEIVER_SECRET_KEYS=",".join(KEYS),
        RECEIVER_API_TOKEN=API_TOKEN,
        PORT=str(port),
        **{f"RECEIVER_{name.upper()}": value for name, value in (settings or {}).items()},
    )
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "receiver", "web"],
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=(lambda: _file_limit(file_limit)) if file_limit else None,
        )
    signer = PassthroughSigner(KEYS, 48 * 3600.0)
    try:
        wait_for_port(port)
        with httpx.Client(timeout=30) as http:
            url = f"http://127.0.0.1:{port}"
            yield Web(port, log, Target(url, client, redis_process.url, signer, http))
    finally:
        process.terminate()
        process.wait(30)
        client.close()


def job_with_tasks(web: Web, tasks: list[str]) -> str:
    job_id = "limits-job"
    web.target.write(lambda store: create_running_job(store, job_id, tasks))
    return job_id


def read_answer(sock: socket.socket, *, whole: bool = True) -> bytes:
    """An answer's head and its whole body (by its Content-Length, or to its last chunk);
    not `whole`, its head and what came with it (an event stream's body has no end)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not whole:
        return data
    lines = head.lower().split(b"\r\n")
    length = next((int(line[15:]) for line in lines if line.startswith(b"content-length:")), 0)
    chunked = b"transfer-encoding: chunked" in lines
    while (len(body) < length or (chunked and not body.endswith(b"0\r\n\r\n"))) and (
        chunk := sock.recv(65536)
    ):
        body += chunk
    return head + b"\r\n\r\n" + body


def closed_within(sock: socket.socket, seconds: float, *, sending: bool = False) -> bool:
    """Whether the server closes the connection within `seconds` (EOF, or a reset; with
    `sending`, bytes written all the while, as a sender of a huge body goes on)."""
    deadline = time.monotonic() + seconds
    sock.setblocking(False)
    try:
        while (left := deadline - time.monotonic()) > 0:
            if readable([sock], min(left, 0.05)):
                try:
                    if sock.recv(65536) == b"":
                        return True
                except (BlockingIOError, InterruptedError):
                    pass
            if sending:
                with contextlib.suppress(BlockingIOError):
                    sock.send(b"x" * 65536)
    except (ConnectionResetError, BrokenPipeError):
        return True
    finally:
        sock.setblocking(True)
    return False


def readable(socks: list[socket.socket], seconds: float = 0.0) -> list[socket.socket]:
    """The sockets with something to read (bytes, an EOF or a reset) within `seconds`; by
    poll, since a test holding 1,000 sockets has descriptors past select's 1,024."""
    poller = select.poll()
    by_fd = {sock.fileno(): sock for sock in socks}
    for fd in by_fd:
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    return [by_fd[fd] for fd, _ in poller.poll(seconds * 1000)]


def summary(latencies: list[float]) -> str:
    ordered = sorted(latencies)
    return f"median {ordered[len(ordered) // 2]:.1f} ms, max {ordered[-1]:.1f} ms"


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


# -- headers ----------------------------------------------------------------------------


def test_headers_over_the_limit_are_431_and_the_connection_closed(
    redis_process: RedisProcess, tmp_path: Path
) -> None:
    with running_web(redis_process, tmp_path) as web:
        for pad in (15_000, 16_000):  # under 16 KiB with the rest of the head: answered
            with web.connect() as sock:
                sock.sendall(
                    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: %s\r\n\r\n" % (b"a" * pad)
                )
                assert status_of(read_answer(sock)) == 200
        for head in (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 20_000 + b"\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\n" + b"X-Many: 1\r\n" * 2_000 + b"\r\n",
            b"GET /healthz?" + b"q" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        ):
            with web.connect() as sock:
                sock.sendall(head)
                answer = read_answer(sock)
                assert status_of(answer) == 431, answer[:200]
                assert b"connection: close" in answer.lower()
                assert closed_within(sock, 2)
        # An unfinished header line is cut once it passes the limit, not held in memory: 64
        # MiB of it are refused after the first 16 KiB (the rest is not even read).
        with web.connect() as sock:
            sock.sendall(b"POST /callbacks/decodo HTTP/1.1\r\nHost: x\r\nX-Pad: ")
            sent, answer = 0, b""
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                while sent < 64 * 1024 * 1024 and not answer:
                    sock.sendall(b"a" * 65536)
                    sent += 65536
                    if readable([sock]):
                        answer = read_answer(sock)
            assert status_of(answer) == 431
            assert sent < 8 * 1024 * 1024


# -- slow senders -----------------------------------------------------------------------


def test_slow_senders_are_cut_off(redis_process: RedisProcess, tmp_path: Path) -> None:
    settings = {"header_timeout": "1", "body_timeout": "1"}
    with running_web(redis_process, tmp_path, settings) as web:
        silent, unfinished, trickling = web.connect(), web.connect(), web.connect()
        started = time.monotonic()
        unfinished.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow:")
        trickling.sendall(
            b"POST /callbacks/decodo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"
        )
        # a byte every 0.2 s keeps neither alive: the timeouts run from the start
        for _ in range(5):
            time.sleep(0.2)
            unfinished.sendall(b"a")
            trickling.sendall(b" ")
        assert status_of(read_answer(unfinished)) == 408
        assert status_of(read_answer(trickling)) == 408
        for sock in (silent, unfinished, trickling):
            assert closed_within(sock, 3)
            sock.close()
        assert time.monotonic() - started < 5
        # a request sent in time, even in pieces, is answered
        with web.connect() as sock:
            for piece in (b"GET /heal", b"thz HTTP/1.1\r\nHo", b"st: x\r\n\r\n"):
                sock.sendall(piece)
                time.sleep(0.1)
            assert status_of(read_answer(sock)) == 200
            # and its connection kept for the next one
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert status_of(read_answer(sock)) == 200


def test_connections_beyond_the_limit_are_refused(
    redis_process: RedisProcess, tmp_path: Path
) -> None:
    limits = {"max_connections": "20", "header_timeout": "60"}
    with running_web(redis_process, tmp_path, limits) as web:
        held = [web.connect() for _ in range(20)]
        for sock in held:
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        time.sleep(0.2)  # every one of them accepted
        with web.connect() as sock:
            answer = read_answer(sock)
            assert status_of(answer) == 503 and b"retry-after: 1" in answer.lower()
            assert closed_within(sock, 1)
        for sock in held[:5]:
            sock.close()
        time.sleep(0.2)
        with web.connect() as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert status_of(read_answer(sock)) == 200
        for sock in held[5:]:
            sock.close()


def test_callbacks_are_answered_with_1000_slow_connections_open(
    redis_process: RedisProcess, tmp_path: Path
) -> None:
    """Started with a soft limit of 256 open files (the hard one higher), as a web once
    failed at 300 idle connections: the receiver raises its soft limit itself."""
    with running_web(redis_process, tmp_path, {"header_timeout": "60"}, file_limit=256) as web:
        tasks = [f"slow-{number}" for number in range(41)]
        job_id = job_with_tasks(web, tasks)
        alone = web.callbacks_ms(job_id, tasks[:20])
        slow: list[socket.socket] = []
        try:
            for number in range(1000):
                sock = web.connect()
                slow.append(sock)
                sock.sendall(
                    b"POST /callbacks/decodo HTTP/1.1\r\nHost: x\r\n" if number % 2 else b""
                )
            time.sleep(0.5)
            beside = web.callbacks_ms(job_id, tasks[20:40])
            print(f"\ncallbacks alone: {summary(alone)}; beside 1000 slow ones: {summary(beside)}")
            # every slow one is still open (none refused): they are cut by time, not number
            assert readable(slow) == []
        finally:
            for sock in slow:
                sock.close()
        assert web.callback(job_id, tasks[40]).status_code == 202


# -- an answer that did not read the body -----------------------------------------------


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_the_connection_is_closed_after_a_413(
    redis_process: RedisProcess, tmp_path: Path, framing: str
) -> None:
    with running_web(redis_process, tmp_path, {"max_body": "4096"}) as web, web.connect() as sock:
        length = (
            b"Content-Length: 2000000000"
            if framing == "content-length"
            else (b"Transfer-Encoding: chunked")
        )
        sock.sendall(b"POST /callbacks/decodo HTTP/1.1\r\nHost: x\r\n%s\r\n\r\n" % length)
        chunk = b"x" * 8192
        sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) if framing == "chunked" else chunk)
        answer = read_answer(sock)
        assert status_of(answer) == 413, answer
        assert b"connection: close" in answer.lower()
        # The sender goes on sending: the server closes within a second all the same.
        assert closed_within(sock, 1, sending=True)


def test_a_request_answered_after_its_body_keeps_its_connection(
    redis_process: RedisProcess, tmp_path: Path
) -> None:
    with running_web(redis_process, tmp_path, {"max_body": "4096"}) as web, web.connect() as sock:
        job_id = job_with_tasks(web, ["kept-1"])
        body = orjson.dumps(
            {"id": "kept-1", "status": "done", "passthrough": web.target.signer.sign(job_id)}
        )
        for expected in (202, 202):  # the second is a duplicate, on the same connection
            sock.sendall(
                b"POST /callbacks/decodo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body)
            )
            answer = read_answer(sock)
            assert status_of(answer) == expected and b"connection: close" not in answer.lower()


# -- event streams ----------------------------------------------------------------------


def open_stream(web: Web, last_event_id: str | None = None) -> tuple[socket.socket, bytes]:
    sock = web.connect()
    resume = b"Last-Event-ID: %s\r\n" % last_event_id.encode() if last_event_id else b""
    sock.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n%s%s\r\n" % (AUTH, resume))
    answer = read_answer(sock, whole=False)
    if status_of(answer) != 200:  # a refusal: its whole JSON body
        length = int(answer.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        while len(answer.partition(b"\r\n\r\n")[2]) < length and (chunk := sock.recv(65536)):
            answer += chunk
    return sock, answer


def test_callbacks_do_not_wait_behind_200_event_streams(
    redis_process: RedisProcess, tmp_path: Path
) -> None:
    """On a Redis pool of 68 (2 x 1 fetch + 2 x 1 poll + 64) for callbacks, 210 streams each
    blocked in a read of their own: a callback still has a connection to record with."""
    settings = {
        "fetch_concurrency": "1",
        "poll_concurrency": "1",
        "sse_heartbeat": "30",  # each stream's read blocks ~10 s, the client's socket timeout
        "max_streams": "210",
    }
    with running_web(redis_process, tmp_path, settings) as web:
        tasks = [f"streamed-{number}" for number in range(40)]
        job_id = job_with_tasks(web, tasks)
        alone = web.callbacks_ms(job_id, tasks[:20])
        streams: list[socket.socket] = []
        try:
            for _ in range(210):
                sock, answer = open_stream(web)
                streams.append(sock)
                assert status_of(answer) == 200, answer
            time.sleep(1.0)  # every stream in its blocking read
            # 5 s: a callback that waited for a stream to let a connection go would be late
            beside = web.callbacks_ms(job_id, tasks[20:], timeout=5)
            print(f"\ncallbacks alone: {summary(alone)}; beside 210 streams: {summary(beside)}")
            # One more stream is over the limit: 429, until a stream ends.
            sock, answer = open_stream(web)
            sock.close()
            assert status_of(answer) == 429 and b"retry-after: 5" in answer.lower(), answer
            assert b'"too_many_streams"' in answer
            streams.pop().close()
            deadline = time.monotonic() + 5
            while True:  # the server sees the client go at its next write or read
                sock, answer = open_stream(web)
                streams.append(sock)
                if status_of(answer) == 200 or time.monotonic() > deadline:
                    break
                streams.pop().close()
                time.sleep(0.1)
            assert status_of(answer) == 200, answer
        finally:
            for sock in streams:
                sock.close()


def test_a_last_event_id_redis_cannot_take_is_400(
    redis_process: RedisProcess, tmp_path: Path
) -> None:
    with running_web(redis_process, tmp_path) as web:
        for last in ("99999999999999999999-0", "18446744073709551616-0", "0-18446744073709551616"):
            sock, answer = open_stream(web, last)
            sock.close()
            assert status_of(answer) == 400, (last, answer)
        # the largest id Redis takes opens a stream (which has nothing after it)
        sock, answer = open_stream(web, "18446744073709551615-18446744073709551615")
        sock.close()
        assert status_of(answer) == 200, answer
        job_id = job_with_tasks(web, ["t"])
        response = httpx.get(
            f"{web.target.url}/jobs/{job_id}/events",
            headers={
                "Authorization": f"Bearer {API_TOKEN}",
                "Last-Event-ID": "1-99999999999999999999",
            },
            timeout=10,
        )
        assert response.status_code == 400, response.text
    assert "Exception in ASGI application" not in web.log.read_text()
    assert "Traceback" not in web.log.read_text()


def add_events(redis: sync_redis.Redis, count: int, pad: int = 0) -> list[str]:
    """`count` events of a job appended to the stream as the scripts append them (with a
    detail of `pad` bytes); their ids."""
    event = orjson.dumps(
        {
            "type": "job.progress",
            "job_id": "j1",
            "provider": "decodo",
            "status": "running",
            "detail": {"pad": "x" * pad},
        }
    )
    with redis.pipeline(transaction=False) as pipe:
        for _ in range(count):
            pipe.xadd(Keys().events(0), {"event": event})
        ids: Any = pipe.execute()
    return [entry_id.decode() for entry_id in ids]


def stream_ids(url: str, count: int, last_event_id: str | None = None) -> Iterator[str]:
    """The ids of the first `count` events of GET /events; the stream opened before the
    first is asked for (the generator is primed)."""
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    with httpx.stream("GET", f"{url}/events", headers=headers, timeout=30) as response:
        assert response.status_code == 200
        yield ""
        seen = 0
        for line in response.iter_lines():
            if line.startswith("id: "):
                yield line.removeprefix("id: ")
                seen += 1
                if seen == count:
                    return


def test_streams_behind_the_feed_get_every_event_once(target: Target) -> None:
    """More events than the feed keeps (4,096, or 8 MiB): a stream resumed from before
    5,000 of them reads them from Redis, then follows the feed; one left unread while 5,000
    more of 4 KB come (20 MB: past the socket's buffers, so that its writes wait while the
    feed drops what it is past) catches up the same way."""
    first = add_events(target.redis, 1)
    added = add_events(target.redis, 4_999)
    resumed = stream_ids(target.url, 9_999, last_event_id=first[0])
    next(resumed)  # open: the feed starts at the newest event, past the 4,999
    behind = stream_ids(target.url, 5_000)
    next(behind)  # open at the newest event, and not read
    more = add_events(target.redis, 5_000, pad=4_000)
    assert list(behind) == more
    assert list(resumed) == [*added, *more]
