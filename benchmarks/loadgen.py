"""A raw HTTP/1.1 keep-alive load generator, run in a process of its own.

`python -m benchmarks.loadgen` reads one JSON `Spec` on stdin and prints one JSON result.
Each of `connections` connections sends one request at a time (no pipelining), parsing only
the status line and the framing (Content-Length, or chunks) of each answer. Requests are
built before the clock starts: request i carries `body_head + str(first_id + i) + body_tail`.

Two modes:
- closed loop (`rate` is 0): every connection sends back-to-back until `duration` seconds
  pass or the requests run out; the figure is answers per second.
- open loop (`rate` > 0): request i is due at start + i / rate, whatever the answers do; its
  latency counts from that due time, so a slow server is not hidden by a waiting client.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import cast

from benchmarks.common import HOST, PYTHON, child_env, percentile

# Seconds the answers still in flight may take once no new request is sent.
_GRACE = 15.0


@dataclass
class Spec:
    port: int
    path: str
    body_head: str
    body_tail: str
    first_id: int
    count: int  # requests built, each with its own id; the run sends at most these
    connections: int = 64
    duration: float = 5.0  # seconds of sending
    rate: float = 0.0  # requests per second, open loop; 0 for closed loop


@dataclass
class LoadResult:
    sent: int
    answered: int
    statuses: dict[str, int]
    elapsed: float  # seconds from the first send to the last answer
    rps: float  # answers per second over `elapsed`
    latency_ms: dict[str, float]  # p50, p90, p99, max
    lag_ms: dict[str, float]  # open loop: how late the client itself sent (p50, p99, max)
    cpu_pct: float  # of one core, this process, while sending
    unanswered: list[int] = field(default_factory=list)  # ids of requests left unanswered
    refused: list[int] = field(default_factory=list)  # ids of requests answered non-2xx
    errors: list[str] = field(default_factory=list)  # answers that could not be parsed

    @property
    def accepted(self) -> int:
        return sum(n for status, n in self.statuses.items() if status.startswith("2"))


def build_requests(spec: Spec) -> list[bytes]:
    head = (
        f"POST {spec.path} HTTP/1.1\r\nHost: {HOST}:{spec.port}\r\n"
        "Content-Type: application/json\r\nUser-Agent: receiver-benchmark\r\n"
    )
    requests = []
    for i in range(spec.count):
        body = f"{spec.body_head}{spec.first_id + i}{spec.body_tail}".encode()
        requests.append(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return requests


def parse_answer(buffer: bytearray) -> tuple[int, int] | None:
    """(status, bytes used) of the first complete answer in `buffer`, or None if incomplete.

    The body is framed by Content-Length or by chunked transfer encoding."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buffer[:end]).lower()
    status = int(head[9:12])
    if b"\r\ntransfer-encoding: chunked" in head:
        used = _chunked_end(buffer, end + 4)
        return None if used is None else (status, used)
    at = head.find(b"\r\ncontent-length:")
    if at < 0:
        raise ValueError("an answer without a length: " + head[:200].decode(errors="replace"))
    line_end = head.find(b"\r\n", at + 2)
    length = int(head[at + 17 : line_end if line_end >= 0 else len(head)])
    used = end + 4 + length
    return (status, used) if len(buffer) >= used else None


def _chunked_end(buffer: bytearray, at: int) -> int | None:
    """Where a chunked body starting at `at` ends, or None while it is incomplete."""
    while True:
        line_end = buffer.find(b"\r\n", at)
        if line_end < 0:
            return None
        size = int(bytes(buffer[at:line_end]).split(b";")[0], 16)
        at = line_end + 2
        if size == 0:
            trailer_end = buffer.find(b"\r\n", at)  # no trailers: an empty line at once
            while trailer_end > at:
                at = trailer_end + 2
                trailer_end = buffer.find(b"\r\n", at)
            return None if trailer_end < 0 else trailer_end + 2
        if len(buffer) < at + size + 2:
            return None
        at += size + 2


class _Connection(asyncio.Protocol):
    def __init__(self, run: _Run) -> None:
        self.run = run
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.index = -1  # the request in flight, or -1
        self.due = 0.0  # when it was due (open loop) or sent (closed loop), perf_counter

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def send(self, index: int, due: float) -> None:
        assert self.transport is not None
        self.index, self.due = index, due
        self.transport.write(self.run.requests[index])

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            while (answer := parse_answer(self.buffer)) is not None:
                status, used = answer
                del self.buffer[:used]
                index, self.index = self.index, -1
                self.run.answered(self, index, status)
        except ValueError as exc:  # not HTTP we understand: say so, drop the connection
            self.run.errors.append(str(exc))
            if self.transport is not None:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.run.lost(self)


class _Run:
    """The shared state of one run: which request is next, and what came back."""

    def __init__(self, spec: Spec, requests: list[bytes]) -> None:
        self.spec = spec
        self.requests = requests
        self.loop = asyncio.get_running_loop()
        self.next = 0
        self.start = 0.0  # perf_counter: uvloop's own clock ticks in whole milliseconds
        self.loop_start = 0.0  # the same instant on the loop's clock, for call_at
        self.last_answer = 0.0
        self.statuses: Counter[int] = Counter()
        self.latencies: list[float] = []
        self.lags: list[float] = []
        self.refused: list[int] = []
        self.errors: list[str] = []
        self.busy: set[_Connection] = set()
        self.finished: asyncio.Future[None] = self.loop.create_future()

    def begin(self, connections: list[_Connection]) -> None:
        self.loop_start, self.start = self.loop.time(), time.perf_counter()
        for connection in connections:
            self.dispatch(connection)
        self._check_finished()

    def dispatch(self, connection: _Connection) -> None:
        """Give the connection its next request, now or at the request's due time."""
        index = self.next
        if index >= len(self.requests):
            return
        now = time.perf_counter()
        if self.spec.rate > 0:
            offset = index / self.spec.rate
            if offset >= self.spec.duration:
                return
            self.next += 1
            self.busy.add(connection)
            due = self.start + offset
            if due > now:
                self.loop.call_at(self.loop_start + offset, self._send_due, connection, index, due)
            else:
                self._send_due(connection, index, due)
            return
        if now - self.start >= self.spec.duration:
            return
        self.next += 1
        self.busy.add(connection)
        connection.send(index, now)

    def _send_due(self, connection: _Connection, index: int, due: float) -> None:
        now = time.perf_counter()
        self.lags.append(now - due)
        # Late: latency counts from the due time. Early (uvloop's timers tick in whole
        # milliseconds): from the actual send, so no latency is hidden either way.
        connection.send(index, max(due, now))

    def answered(self, connection: _Connection, index: int, status: int) -> None:
        now = time.perf_counter()
        self.last_answer = now
        self.statuses[status] += 1
        self.latencies.append(now - connection.due)
        if not 200 <= status < 300:
            self.refused.append(self.spec.first_id + index)
        self.busy.discard(connection)
        self.dispatch(connection)
        self._check_finished()

    def lost(self, connection: _Connection) -> None:
        self.busy.discard(connection)
        self._check_finished()

    def _check_finished(self) -> None:
        if not self.busy and not self.finished.done():
            self.finished.set_result(None)


async def drive(spec: Spec) -> LoadResult:
    requests = build_requests(spec)
    loop = asyncio.get_running_loop()
    run = _Run(spec, requests)
    connections: list[_Connection] = []
    for _ in range(spec.connections):
        _, protocol = await loop.create_connection(lambda: _Connection(run), HOST, spec.port)
        connections.append(protocol)
    cpu_before = time.process_time()
    run.begin(connections)
    try:
        await asyncio.wait_for(asyncio.shield(run.finished), spec.duration + _GRACE)
    except TimeoutError:
        pass
    cpu = time.process_time() - cpu_before
    unanswered = sorted(spec.first_id + c.index for c in connections if c.index >= 0)
    for connection in connections:
        if connection.transport is not None:
            connection.transport.close()
    return _result(run, cpu, unanswered)


def _result(run: _Run, cpu: float, unanswered: list[int]) -> LoadResult:
    elapsed = max(run.last_answer - run.start, 1e-9)
    answered = sum(run.statuses.values())
    return LoadResult(
        sent=run.next,
        answered=answered,
        statuses={str(k): v for k, v in sorted(run.statuses.items())},
        elapsed=round(elapsed, 4),
        rps=round(answered / elapsed, 1),
        latency_ms=_summary(run.latencies, (50, 90, 99)),
        lag_ms=_summary(run.lags, (50, 99)),
        cpu_pct=round(100 * cpu / elapsed, 1),
        unanswered=unanswered,
        refused=run.refused,
        errors=run.errors[:5],
    )


def _summary(seconds: list[float], points: tuple[int, ...]) -> dict[str, float]:
    if not seconds:
        return {}
    summary = {f"p{p}": round(1000 * percentile(seconds, p), 3) for p in points}
    summary["max"] = round(1000 * max(seconds), 3)
    return summary


def run_load(spec: Spec) -> LoadResult:
    """Drive `spec` from a separate process, so the load has a core of its own."""
    completed = subprocess.run(
        [PYTHON, "-m", "benchmarks.loadgen"],
        input=json.dumps(asdict(spec)).encode(),
        capture_output=True,
        env=child_env(),
        timeout=spec.duration + _GRACE + 60,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError("load generator failed:\n" + completed.stderr.decode()[-2000:])
    fields = json.loads(completed.stdout.decode().strip().splitlines()[-1])
    return LoadResult(**fields)


def main() -> None:
    spec = Spec(**json.loads(sys.stdin.read()))
    try:
        import uvloop

        result = uvloop.run(drive(spec))
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        result = asyncio.run(drive(spec))
    print(json.dumps(asdict(result)), flush=True)


if __name__ == "__main__":
    main()
