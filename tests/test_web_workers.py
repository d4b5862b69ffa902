"""`receiver web --workers N` as a user runs it: real processes on one port, their metrics
added up, a killed child replaced, SIGTERM ending them all. Children are told apart by
/proc (the parent's children) and by each child's own counter file in the metrics
directory, which prometheus_client names after the child's pid."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from receiver.processes import empty_unused
from tests.chaos.harness import HeldRequest, refuses
from tests.servers import RedisProcess, free_port
from tests.test_events import metric

T = TypeVar("T")
TOKEN = "workers-token-7f3a9c2e"
MALFORMED = b"{not json, and long enough to be held back"
COUNTED = {"provider": "decodo", "outcome": "malformed"}


def wait_until(predicate: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.02)
    return found


def children(pid: int) -> set[int]:
    """The processes whose parent is `pid`, from /proc."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(stat.parent.name))
    return found


def cmdline(pid: int) -> bytes:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    return b""


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for its parent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def holds_connection(pid: int, client_port: int) -> bool:
    """Whether process `pid` has the server's end of the connection from `client_port`."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[2].split(":")[1], 16) == client_port and fields[9] in inodes:
            return True
    return False


@dataclass
class Workers:
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    seen: set[int]  # every pid of a child or helper the parent had, for the end
    directory: Path = Path()  # PROMETHEUS_MULTIPROC_DIR of the children

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def workers(self) -> set[int]:
        """The web children now (multiprocessing's resource tracker is a child too)."""
        pids = {pid for pid in children(self.process.pid) if alive(pid)}
        self.seen |= pids
        return {pid for pid in pids if b"spawn_main" in cmdline(pid)}

    def replaced(self, old: set[int]) -> set[int] | None:
        """The children that are not in `old`, once there are as many as before."""
        now = self.workers()
        return now - old if len(now) == len(old) and now != old else None

    def stop(self) -> int:
        """SIGTERM to the parent; its exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)

    def tail(self) -> str:
        return self.log.read_text()[-3000:]


@contextlib.contextmanager
def web_workers(tmp_path: Path, count: int, **env: str) -> Iterator[Workers]:
    """`receiver web --workers COUNT` with its stderr in a file, until its children serve;
    killed with every process it had at the end, if the test did not stop it."""
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "RECEIVER_"))}
    environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    environ.update(PORT=str(port), **env)
    log = tmp_path / "web.log"
    command = [sys.executable, "-m", "receiver", "web", "--workers", str(count)]
    with (
        log.open("wb") as err,
        subprocess.Popen(command, env=environ, stdout=subprocess.DEVNULL, stderr=err) as process,
    ):
        running = Workers(process, port, log, set())
        try:
            wait_until(lambda: len(running.workers()) == count, 60, f"{count} children")
            wait_until(lambda: answers(running.url), 60, "an answer")
            running.directory = metrics_dir(min(running.workers()))
            yield running
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
                if running.directory.name.startswith("receiver-metrics-"):
                    shutil.rmtree(running.directory, ignore_errors=True)
            for pid in running.seen:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)


def metrics_dir(pid: int) -> Path:
    """The PROMETHEUS_MULTIPROC_DIR process `pid` was started with."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    found = [entry for entry in environ if entry.startswith(b"PROMETHEUS_MULTIPROC_DIR=")]
    return Path(found[0].partition(b"=")[2].decode())


def answers(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    return False


def send_malformed(url: str, count: int) -> list[int]:
    """`count` malformed callbacks (400, counted), each over a new connection, 8 at once.
    Each request has a client of its own: one httpx client shared by threads may close a
    connection under another thread's read (EBADF)."""

    def send(_: int) -> int:
        return httpx.post(f"{url}/callbacks/decodo", content=MALFORMED, timeout=30).status_code

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(send, range(count)))


def counted(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return metric(text, "receiver_callbacks_total", **COUNTED)


def counted_by(directory: Path, pid: int, scratch: Path) -> float:
    """What one child counted: its own counter file, read alone."""
    own = scratch / str(pid)
    own.mkdir(exist_ok=True)
    with contextlib.suppress(FileNotFoundError):  # no file before its first count
        shutil.copy(directory / f"counter_{pid}.db", own)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(own))  # type: ignore[no-untyped-call]
    text = generate_latest(registry).decode()
    shutil.rmtree(own)
    return metric(text, "receiver_callbacks_total", **COUNTED)


def external(redis: RedisProcess) -> dict[str, str]:
    return {
        "REDIS_URL": redis.url,
        "RECEIVER_SECRET_KEYS": "workers-key-9b4e2d7a1c",
        "RECEIVER_API_TOKEN": TOKEN,
    }


# -- the tests -------------------------------------------------------------------------------


def test_web_workers_all_serve_the_port_and_metrics_add_up(
    redis_process: RedisProcess, tmp_path: Path
) -> None:
    with web_workers(tmp_path, 2, **external(redis_process)) as web:
        pids, directory = web.workers(), web.directory
        assert directory.is_dir() and metrics_dir(max(pids)) == directory
        sent = 0
        # The kernel gives a connection to whichever child accepts first: mostly both.
        by_child = dict.fromkeys(pids, 0.0)
        while not all(by_child.values()):
            assert sent < 3000, f"a child never served: {by_child}"
            assert set(send_malformed(web.url, 300)) == {400}
            sent += 300
            by_child = {pid: counted_by(directory, pid, tmp_path) for pid in pids}
        assert sum(by_child.values()) == sent, by_child
        # Whichever child answers a scrape (each over a new connection) has every count.
        assert [counted(web.url) for _ in range(10)] == [sent] * 10
        headers = {"Authorization": f"Bearer {TOKEN}"}
        jobs = httpx.get(f"{web.url}/jobs", headers=headers, timeout=30)
        assert jobs.status_code == 200, jobs.text
        assert web.stop() == 0, web.tail()
    assert not directory.exists()  # the parent made it, and it removed it


def test_a_killed_web_worker_is_replaced_while_the_port_answers(
    redis_process: RedisProcess, tmp_path: Path
) -> None:
    with web_workers(tmp_path, 2, **external(redis_process)) as web:
        first, directory = web.workers(), web.directory
        assert set(send_malformed(web.url, 100)) == {400}
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        # Sent at once: the other child (or the backlog, while none accepts) takes them.
        assert set(send_malformed(web.url, 100)) == {400}
        replaced = wait_until(lambda: web.replaced(first), 60, "a new child")
        assert victim not in web.workers() and len(replaced) == 1
        newcomer = replaced.pop()
        sent = 200
        while not counted_by(directory, newcomer, tmp_path):
            assert sent < 2000, "the new child never served"
            sent += len(send_malformed(web.url, 20))
        # The dead child's counts stay in the sum; counters do not go back.
        assert counted(web.url) == sent
        assert web.stop() == 0, web.tail()


def test_sigterm_ends_every_web_worker_after_its_requests_in_flight(
    redis_process: RedisProcess, tmp_path: Path
) -> None:
    with web_workers(tmp_path, 2, **external(redis_process)) as web:
        pids, directory = web.workers(), web.directory
        held = HeldRequest(web.port, MALFORMED)
        try:
            client_port = held._socket.getsockname()[1]
            holder = wait_until(
                lambda: next((p for p in pids if holds_connection(p, client_port)), None),
                30,
                "a child holding the request",
            )
            web.process.send_signal(signal.SIGTERM)
            wait_until(lambda: refuses(web.port), 30, "the port to refuse")
            assert alive(holder), "the child stopped before its request was answered"
            assert held.finish() == 400
        finally:
            held.close()
        assert web.process.wait(30) == 0, web.tail()
        wait_until(lambda: not any(alive(pid) for pid in web.seen), 10, "every child gone")
        assert not directory.exists()
        assert "Traceback" not in web.tail(), web.tail()


def test_web_workers_share_one_embedded_redis(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with web_workers(tmp_path, 2, RECEIVER_DATA_DIR=str(data)) as web:
        token = orjson.loads((data / "secrets.json").read_bytes())["api_token"]
        headers = {"Authorization": f"Bearer {token}"}
        jobs = [httpx.get(f"{web.url}/jobs", headers=headers, timeout=30) for _ in range(20)]
        statuses = {answer.status_code for answer in jobs}
        assert statuses == {200}
        servers = [pid for pid in children(web.process.pid) if b"redis-server" in cmdline(pid)]
        assert len(servers) == 1  # the parent's
        for pid in web.workers():
            assert not any(b"redis-server" in cmdline(child) for child in children(pid))
        assert web.stop() == 0, web.tail()
    assert not alive(servers[0])


# -- a PROMETHEUS_MULTIPROC_DIR given --------------------------------------------------------


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.mark.parametrize("name", ["counter_{}.db", "gauge_livesum_{}.db", "histogram_{}.db"])
def test_a_metrics_dir_of_dead_processes_only_is_emptied(tmp_path: Path, name: str) -> None:
    stale = tmp_path / name.format(dead_pid())
    stale.write_bytes(b"x")
    other = tmp_path / "notes.db"  # not prometheus_client's
    other.write_bytes(b"x")
    empty_unused(tmp_path)
    assert not stale.exists() and other.exists()


def test_a_metrics_dir_a_live_process_uses_keeps_its_counters(tmp_path: Path) -> None:
    dead = dead_pid()
    live = tmp_path / f"counter_{os.getpid()}.db"
    counters = tmp_path / f"counter_{dead}.db"
    gauges = tmp_path / f"gauge_livesum_{dead}.db"
    for path in (live, counters, gauges):
        path.write_bytes(b"x")
    empty_unused(tmp_path)
    assert live.exists() and counters.exists()  # sums do not go back while it is shared
    assert not gauges.exists()  # a dead process has no open streams
