"""What the benchmarks share: ports, child processes, redis-server, /proc readings, percentiles.

Every child runs on loopback, logs to a file in the benchmark's temporary directory and is
terminated (then killed) when its block ends, whatever happened inside.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

PYTHON = sys.executable
# The directory holding the `benchmarks` package, put on children's PYTHONPATH.
ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
# Where Decodo posts its callbacks, on the receiver and on the bare baseline.
CALLBACK_PATH = "/callbacks/decodo"
# Secrets of the benchmark's own deployments; nothing real is ever behind them.
SECRET_KEY = "benchmark-passthrough-key"
API_TOKEN = "benchmark-api-token"
# A loopback URL nothing answers on (the discard port).
_NOWHERE = f"http://{HOST}:9"
# Seconds a child has to open its port, and to exit after SIGTERM before it is killed.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
# The checkout a benchmark started on (see `revision`).
_started_on = ""
# Clock ticks per second of /proc/<pid>/stat's CPU times.
_TICKS = os.sysconf("SC_CLK_TCK")


def say(message: str) -> None:
    """A line of human-readable progress."""
    print(message, flush=True)


def emit(result: Mapping[str, Any]) -> None:
    """The benchmark's figures: its final line, one JSON object, with the machine's load
    averages (1, 5, 15 min) at the end, since the machine may be shared."""
    loads = [round(load, 2) for load in os.getloadavg()]
    context: dict[str, Any] = {"loadavg": loads, "revision": _started_on or revision()}
    if _started_on and revision() != _started_on:  # someone committed while it ran
        context["revision_at_end"] = revision()
    print(json.dumps({**result, **context}, separators=(", ", ": ")), flush=True)


def revision() -> str:
    """The checkout measured: its commit, `-dirty` when the work tree has changes."""
    try:
        described = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return described.stdout.strip()


def arguments(
    description: str,
    options: Callable[[argparse.ArgumentParser], None] | None = None,
    *,
    cluster: bool = False,
) -> argparse.Namespace:
    """The command line of a benchmark (`--quick`, `--cluster` if it has one, and what
    `options` adds); notes the revision it starts on."""
    global _started_on
    _started_on = revision()
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    if cluster:
        parser.add_argument(
            "--cluster",
            action="store_true",
            help="measure on one redis-server and on a Redis Cluster (benchmarks/cluster.py) "
            "in the same run: both figures, and cluster_ratio = cluster / one redis-server",
        )
    if options is not None:
        options(parser)
    return parser.parse_args()


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run the coroutine on uvloop when it is installed (faster set-up), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        return asyncio.run(main)
    return uvloop.run(main)


# -- ports and processes ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process {process.pid} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on port {port} after {timeout:g} s")


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


@contextlib.contextmanager
def child(
    name: str,
    argv: Sequence[str],
    workdir: Path,
    *,
    env: Mapping[str, str] | None = None,
    port: int | None = None,
) -> Iterator[Child]:
    """A process for the block's duration; with `port`, only once something listens on it."""
    log = workdir / f"{name}.log"
    with log.open("ab") as out:  # a child started again adds to its log
        process = subprocess.Popen(
            list(argv),
            env=child_env(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
    started = Child(name, process, log)
    try:
        if port is not None:
            try:
                wait_for_port(port, process, START_TIMEOUT)
            except (RuntimeError, TimeoutError):
                say(f"{name} did not start; its log ends with:\n{started.tail()}")
                raise
        yield started
    finally:
        stop(process)


def child_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`env` (else ours) with this checkout first on PYTHONPATH, for `python -m benchmarks.*`."""
    merged = dict(os.environ if env is None else env)
    paths = [str(ROOT), *filter(None, merged.get("PYTHONPATH", "").split(os.pathsep))]
    merged["PYTHONPATH"] = os.pathsep.join(paths)
    return merged


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after STOP_TIMEOUT: only this one process, by its id."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(STOP_TIMEOUT)


@contextlib.contextmanager
def workdir(name: str) -> Iterator[Path]:
    """A temporary directory for logs and Redis data, removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix=f"receiver-bench-{name}-"))
    try:
        yield directory
    finally:
        if os.environ.get("BENCHMARK_KEEP"):  # to read the children's logs afterwards
            say(f"kept {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)


# -- redis-server ---------------------------------------------------------------------


@dataclass
class RedisServer:
    port: int
    child: Child

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"


@contextlib.contextmanager
def redis_server(
    workdir: Path, *, aof: bool, fsync: str = "everysec", port: int | None = None
) -> Iterator[RedisServer]:
    """The embedded package's redis-server, its data under `workdir` (kept there, so a
    server started again on the same `port` loads what the last one wrote); with `aof`, an
    append-only file fsynced as `fsync` says (always, everysec)."""
    from receiver.embedded import redis_server_binary

    data = workdir / "redis"
    data.mkdir(exist_ok=True)
    port = port or free_port()
    durability = ["--appendonly", "yes", "--appendfsync", fsync] if aof else []
    argv = [
        redis_server_binary(),
        "--port",
        str(port),
        "--bind",
        HOST,
        "--dir",
        str(data),
        "--save",
        "",
        *(durability or ["--appendonly", "no"]),
    ]
    with child("redis", argv, workdir, port=port) as process:
        yield RedisServer(port, process)


def server_version(binary: str) -> str:
    """The version a redis-server binary says it is (`v=7.0.15` in `--version`), or '?'."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        said = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
        for word in said.stdout.split():
            if word.startswith("v="):
                return word[2:]
    return "?"


def filesystem(path: Path) -> str:
    """The type and device of the filesystem holding `path` (from /proc/mounts), since
    an fsync on tmpfs costs nothing."""
    resolved, best = str(path.resolve()), ("", "?", "?")
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            device, mount, kind = line.split()[:3]
            inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best[0]):
                best = (mount, kind, device)
    return f"{best[1]} ({best[2]} on {best[0]})"


# -- receiver and sandboxes -------------------------------------------------------------


def receiver_env(redis_url: str, port: int | None = None, **extra: str) -> dict[str, str]:
    """The environment of a `receiver web` or `receiver worker` child."""
    env = dict(os.environ)
    env.update(
        # Providers a benchmark does not use point at a closed loopback port, never outside.
        DECODO_BASE_URL=_NOWHERE,
        FIRECRAWL_BASE_URL=_NOWHERE,
        DIFY_BASE_URL=_NOWHERE,
        REDIS_URL=redis_url,
        RECEIVER_SECRET_KEYS=SECRET_KEY,
        RECEIVER_API_TOKEN=API_TOKEN,
        RECEIVER_LOG_FORMAT="text",
    )
    if port is not None:
        env.update(PORT=str(port), RECEIVER_PUBLIC_URL=f"http://{HOST}:{port}")
    env.update(extra)
    return env


@contextlib.contextmanager
def sandbox(name: str, workdir: Path, **knobs: object) -> Iterator[str]:
    """A provider simulator in its own process (`receiver sandbox NAME`, no access log);
    yields its base URL."""
    port = free_port()
    argv = [PYTHON, "-m", "receiver", "sandbox", name, "--port", str(port)]
    for knob, value in knobs.items():
        argv += ["--" + knob.replace("_", "-"), str(value)]
    with child(f"sandbox-{name}", argv, workdir, port=port):
        yield f"http://{HOST}:{port}"


# -- /proc ------------------------------------------------------------------------------


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(f"{field} not in /proc/{pid}/status")


def rss_mb(pid: int) -> float:
    """Resident set size now, in MiB."""
    return _status_kb(pid, "VmRSS") / 1024


def peak_rss_mb(pid: int) -> float:
    """The highest resident set size the process ever had (VmHWM), in MiB."""
    return _status_kb(pid, "VmHWM") / 1024


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds the process has used so far."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / _TICKS


class CpuMeter:
    """Share of one core each process used between `start()` and `read()`, in percent."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self._start: dict[str, float] = {}
        self._at = 0.0

    def start(self) -> None:
        self._at = time.monotonic()
        self._start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def read(self) -> dict[str, float]:
        elapsed = max(time.monotonic() - self._at, 1e-9)
        return {
            name: round(100 * (cpu_seconds(pid) - self._start[name]) / elapsed, 1)
            for name, pid in self.pids.items()
        }


# -- statistics -------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100) by linear interpolation between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)
