"""Body and framing attacks on the three endpoints that read a body, against a real
`receiver web` process on loopback, in raw bytes: oversize bodies (with a Content-Length,
chunked, one chunk declared too big), Content-Length lies, framings no server may guess
at, deep nesting, huge arrays and bytes that are not UTF-8. Each is a clear 400 or 413
(or, for a body the sender cuts short with a FIN, the connection closed, as RFC 9112 §6.3
has it), Redis is unchanged, and the server answers as before afterwards.

Header-size, slow-sender and connection-count attacks are test_limits.py's.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import os
import select
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis as sync_redis

from receiver.api import MAX_JOB_BODY
from receiver.settings import Settings
from receiver.tokens import PassthroughSigner
from tests.attack.conftest import API_TOKEN, KEYS, Target, create_running_job
from tests.servers import RedisProcess, free_port, wait_for_port

JOB = "0123456789abcdef0123"  # a job id as store.new_job_id makes them
TASK = "7318426139586371585"
SIGNER = PassthroughSigner(KEYS, Settings().token_max_age)
# Bytes a 64 KiB chunk of a chunked body holds: JSON whitespace.
CHUNK = b" " * 65536


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Endpoint:
    """A route that reads a body, with what gets a request past its authentication to
    the body parser, and its body limit."""

    path: str
    headers: tuple[str, ...]
    limit: int  # bytes
    fields: dict[str, Any]  # of a body that would be taken, but for the field set aside
    field: str  # the field an attack fills

    def head(self, *headers: str) -> bytes:
        lines = [f"POST {self.path} HTTP/1.1", "Host: 127.0.0.1", *self.headers, *headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def sized(self, body: bytes) -> bytes:
        """A request with `body` and its true Content-Length."""
        return self.head(f"Content-Length: {len(body)}") + body

    def body(self, value: bytes) -> bytes:
        """A JSON object of the fields, `value` (raw JSON) as the attack's field."""
        fields = orjson.dumps({**self.fields, self.field: None})
        return fields.replace(f'"{self.field}":null'.encode(), f'"{self.field}":'.encode() + value)


ENDPOINTS = {
    "decodo": Endpoint(
        "/callbacks/decodo",
        (),
        Settings().max_body,  # `receiver web`'s, RECEIVER_MAX_BODY unset
        {"passthrough": SIGNER.sign(JOB), "id": TASK},
        "status",
    ),
    "firecrawl": Endpoint(
        f"/callbacks/firecrawl?token={SIGNER.webhook_signer().sign(JOB)}",
        (),
        Settings().max_body,
        {"type": "batch_scrape.completed"},
        "id",
    ),
    "jobs": Endpoint(
        "/jobs",
        (f"Authorization: Bearer {API_TOKEN}",),
        MAX_JOB_BODY,
        {"provider": "decodo"},
        "urls",
    ),
}


# -- the attacks: raw requests, and the statuses each may be answered with ------------------


def _chunked(endpoint: Endpoint, chunks: Iterator[bytes]) -> bytes:
    encoded = b"".join(b"%X\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks)
    return endpoint.head("Transfer-Encoding: chunked") + encoded + b"0\r\n\r\n"


def _chunks_over(limit: int) -> Iterator[bytes]:
    for _ in range(limit // len(CHUNK) + 1):
        yield CHUNK


def _one_chunk(endpoint: Endpoint) -> bytes:
    return b"%X\r\n%s\r\n0\r\n\r\n" % (endpoint.limit + 1, _spaces(endpoint))


def _spaces(endpoint: Endpoint) -> bytes:
    """One byte over the limit, of JSON whitespace."""
    return b" " * (endpoint.limit + 1)


def _array(endpoint: Endpoint) -> bytes:
    """A JSON array of zeros as long as the body limit leaves room for (4 M at most)."""
    count = min(endpoint.limit // 2 - 1024, 4_000_000)
    return b"[" + b"0," * (count - 1) + b"0]"


Attack = Callable[[Endpoint], bytes]
ATTACKS: dict[str, tuple[Attack, set[int]]] = {
    # Oversize: refused (413) on the Content-Length, before a byte of the body is sent.
    "content_length_over_the_limit": (
        lambda e: e.head(f"Content-Length: {e.limit + 1}"),
        {413},
    ),
    "chunked_over_the_limit": (lambda e: _chunked(e, _chunks_over(e.limit)), {413}),
    "one_chunk_over_the_limit": (
        lambda e: e.head("Transfer-Encoding: chunked") + _one_chunk(e),
        {413},
    ),
    "one_chunk_declared_a_terabyte": (
        lambda e: e.head("Transfer-Encoding: chunked") + b"%X\r\n" % (1 << 40) + _spaces(e),
        {413},
    ),
    # Content-Length lies and framings that leave a server to guess.
    "content_length_shorter_than_the_body": (
        lambda e: e.head("Content-Length: 5") + e.body(b'"done"'),
        {400},
    ),
    "content_length_not_a_number": (lambda e: e.head("Content-Length: abc") + b"{}", {400}),
    "content_length_negative": (lambda e: e.head("Content-Length: -1") + b"{}", {400}),
    "content_length_signed": (lambda e: e.head("Content-Length: +2") + b"{}", {400}),
    "content_length_hexadecimal": (lambda e: e.head("Content-Length: 0x2") + b"{}", {400}),
    "content_length_two_numbers": (lambda e: e.head("Content-Length: 2 2") + b"{}", {400}),
    "content_lengths_that_differ": (
        lambda e: e.head("Content-Length: 2", "Content-Length: 3") + b"{}x",
        {400},
    ),
    "content_length_and_chunked": (
        lambda e: (
            e.head("Content-Length: 2", "Transfer-Encoding: chunked") + b"2\r\n{}\r\n0\r\n\r\n"
        ),
        {400},
    ),
    "transfer_encoding_not_chunked": (
        lambda e: e.head("Transfer-Encoding: gzip") + b"{}",
        {400},
    ),
    "transfer_encoding_chunked_then_gzip": (
        lambda e: e.head("Transfer-Encoding: chunked, gzip") + b"2\r\n{}\r\n0\r\n\r\n",
        {400},
    ),
    "transfer_encoding_misspelt": (
        lambda e: e.head("Transfer-Encoding: xchunked") + b"2\r\n{}\r\n0\r\n\r\n",
        {400},
    ),
    "chunk_size_not_hexadecimal": (
        lambda e: e.head("Transfer-Encoding: chunked") + b"zz\r\n{}\r\n0\r\n\r\n",
        {400},
    ),
    # Bodies the JSON parser must refuse, or the endpoint once parsed.
    "empty_body": (lambda e: e.sized(b""), {400}),
    "deep_nesting_of_arrays": (lambda e: e.sized(b"[" * 100_000), {400}),
    "deep_nesting_of_objects": (lambda e: e.sized(b'{"a":' * 100_000), {400}),
    "deep_nesting_in_a_field": (lambda e: e.sized(e.body(b"[" * 1000 + b"]" * 1000)), {400}),
    "huge_array": (lambda e: e.sized(_array(e)), {400}),
    "huge_array_in_a_field": (lambda e: e.sized(e.body(_array(e))), {400}),
    "not_utf8": (lambda e: e.sized(e.body(b'"\xff\xfe"')), {400}),
    "not_utf8_overlong": (lambda e: e.sized(e.body(b'"\xc0\xaf"')), {400}),
    "not_utf8_encoded_surrogate": (lambda e: e.sized(e.body(b'"\xed\xa0\x80"')), {400}),
    "utf16": (lambda e: e.sized(e.body(b'"x"').decode().encode("utf-16")), {400}),
    "lone_surrogate_escape": (lambda e: e.sized(e.body(b'"\\ud800"')), {400}),
}


# -- a `receiver web` and raw exchanges with it ---------------------------------------------


@dataclass
class Web:
    """A `receiver web` process (no worker: nothing else writes to its Redis)."""

    port: int
    target: Target  # its Redis, and a client of its API
    log: Path

    def exchange(self, data: bytes) -> list[Answer]:
        """Send `data` on a new connection (stopping if an answer comes first), then a FIN;
        every answer read until the server closes."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            received = _send_reading(sock, data)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
            received += _read_to_end(sock)
        return parse_answers(received)

    def assert_serving(self) -> None:
        """It answers as before: health, and the job API on its Redis."""
        assert httpx.get(f"{self.target.url}/healthz", timeout=10).status_code == 200
        job = self.target.api("GET", f"/jobs/{JOB}")
        assert job.status_code == 200 and job.json()["status"] == "running", job.text


def _send_reading(sock: socket.socket, data: bytes) -> bytes:
    """Send `data` while reading what comes back, until all is sent or an answer begins:
    a server that refuses a body mid-way answers, and may close, before all of it is in."""
    sock.setblocking(False)
    received, view, deadline = b"", memoryview(data), time.monotonic() + 30
    while view and b"\r\n\r\n" not in received and time.monotonic() < deadline:
        readable, writable, _ = select.select([sock], [sock], [], 1)
        if readable:
            try:
                chunk = sock.recv(1 << 20)
            except ConnectionResetError:
                break
            received += chunk
            if not chunk:
                break
        if writable and b"\r\n\r\n" not in received:
            try:
                view = view[sock.send(view[:65536]) :]
            except BlockingIOError:
                continue
            except OSError:  # the server closed: what it answered is still to be read
                break
    sock.setblocking(True)
    return received


def _read_to_end(sock: socket.socket) -> bytes:
    received = b""
    sock.settimeout(15)
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(1 << 20):
            received += chunk
    return received


class _Stream(io.BytesIO):
    def close(self) -> None:  # http.client closes it after an answer that closes
        pass


class _Bytes:
    """What http.client.HTTPResponse reads responses from: one stream for them all."""

    def __init__(self, data: bytes) -> None:
        self.stream = _Stream(data)

    def makefile(self, mode: str) -> io.BytesIO:
        return self.stream


def parse_answers(data: bytes) -> list[Answer]:
    """Every HTTP response in `data`, in order."""
    source, answers = _Bytes(data), []
    while source.stream.tell() < len(data):
        response = http.client.HTTPResponse(source)  # type: ignore[arg-type]
        response.begin()
        headers = {name.lower(): value for name, value in response.getheaders()}
        answers.append(Answer(response.status, headers, response.read()))
    return answers


@contextlib.contextmanager
def running_web(redis_process: RedisProcess) -> Iterator[Web]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "RECEIVER_"))}
    env |= {
        "REDIS_URL": redis_process.url,
        "RECEIVER_SECRET_KEYS": ",".join(KEYS),
        "RECEIVER_API_TOKEN": API_TOKEN,
        "PORT": str(port),
        "DECODO_AUTH": "dXNlcjo0a1E5dlQybVhyN0xwVzNl",  # POST /jobs takes decodo jobs
    }
    client = sync_redis.Redis.from_url(redis_process.url)
    client.flushall()
    command = [sys.executable, "-m", "receiver", "web"]
    with (
        tempfile.TemporaryDirectory() as directory,
        httpx.Client(timeout=30) as http,
        contextlib.closing(client),
    ):
        log = Path(directory) / "web.log"
        with (
            log.open("wb") as stderr,
            subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr) as web,
        ):
            try:
                wait_for_port(port)
                target = Target(f"http://127.0.0.1:{port}", client, redis_process.url, SIGNER, http)
                yield Web(port, target, log)
            finally:
                web.terminate()
                web.wait(20)


@pytest.fixture(scope="module")
def web(redis_process: RedisProcess) -> Iterator[Web]:
    """One `receiver web` for the module, and a running job with a pending task: what
    every attack must leave as it is."""
    with running_web(redis_process) as running:
        running.target.write(lambda store: create_running_job(store, JOB, [TASK]))
        yield running


# -- the tests ------------------------------------------------------------------------------


@pytest.mark.parametrize("attack", ATTACKS)
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_body_attack_is_a_clear_4xx_that_writes_nothing(
    web: Web, endpoint: str, attack: str
) -> None:
    build, expected = ATTACKS[attack]
    before = web.target.snapshot()
    answers = web.exchange(build(ENDPOINTS[endpoint]))
    assert answers, "no answer"
    assert {answer.status for answer in answers} <= expected, answers
    assert web.target.snapshot() == before
    web.assert_serving()


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_body_cut_short_by_a_fin_closes_the_connection_and_writes_nothing(
    web: Web, endpoint: str
) -> None:
    """Fewer bytes than the Content-Length, then the sender's FIN: an incomplete message,
    which the server does not answer but closes (RFC 9112 §6.3)."""
    chosen = ENDPOINTS[endpoint]
    body = chosen.body(b'"done"')
    before = web.target.snapshot()
    assert web.exchange(chosen.head(f"Content-Length: {len(body) + 100}") + body) == []
    assert web.target.snapshot() == before
    web.assert_serving()


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_an_oversize_body_is_refused_before_it_is_sent(web: Web, endpoint: str) -> None:
    """The 413 of a Content-Length over the limit comes with nothing of the body sent, as
    a JSON error; then the same request within the limit reaches the parser (400)."""
    chosen = ENDPOINTS[endpoint]
    before = web.target.snapshot()
    (refused,) = web.exchange(chosen.head(f"Content-Length: {chosen.limit + 1}"))
    assert refused.status == 413
    assert orjson.loads(refused.body)["error"] == "payload_too_large"
    (parsed,) = web.exchange(chosen.sized(chosen.body(b"[" * 100)))
    assert parsed.status == 400 and orjson.loads(parsed.body)["error"] == "invalid_request"
    assert web.target.snapshot() == before
