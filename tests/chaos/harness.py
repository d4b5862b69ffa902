"""The chaos suite's machinery: real processes, faults, and the invariants every fault keeps.

- `RedisServer`: a redis-server on a fixed port and directory, AOF fsynced on every write,
  that can be killed (SIGKILL), shut down (SHUTDOWN) and started again from its AOF.
- `ServiceProcess`: a `python -m ...` child in a process group of its own, its stdout and
  stderr in a log file per run; `DecodoSandbox` is one with the sandbox's controls.
- `Chaos`: starts them all for one test and kills whatever is left at its end; `Stack` is a
  Redis, a sandbox, one `receiver web` and some `receiver worker`s.
- `CallbackStorm`: Decodo's callbacks for a job, posted by threads at random moments,
  every answer recorded, so a test knows which callbacks got a 202.
- `assert_invariants`: every task stored once, one result each, one final event per job,
  the provider's results requests counted, nothing left unacknowledged.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import redis
import redis.cluster
from redis import Redis as SyncRedis

from receiver.embedded import redis_server_binary
from receiver.events import FINAL_TYPES, event_from_entry
from receiver.sandbox.decodo import DEFAULT_AUTH
from receiver.store.keys import WORK_GROUP, Keys
from receiver.tokens import PassthroughSigner
from tests.servers import consecutive_free_ports, free_port, wait_for_port

T = TypeVar("T")

SECRET_KEY = "chaos-key-4f9c2a7e1b"
API_TOKEN = "chaos-token-8d3e6b0a5c"
TOKEN_MAX_AGE = 48 * 3600.0  # seconds, as the receiver's default
KEYS = Keys()
# A client of one Redis, or of a Redis Cluster.
Client = redis.Redis | redis.cluster.RedisCluster
# Variables of the test run's own environment that must not reach a child.
_OWN_PREFIXES = ("REDIS_", "RECEIVER_", "DECODO_", "FIRECRAWL_", "DIFY_", "PROMETHEUS_")
_LOG_TAIL = 4000  # characters of a log shown when a process died


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float,
    what: str,
    *,
    interval: float = 0.05,
    watch: Iterable[ServiceProcess] = (),
) -> T:
    """The first truthy value of `predicate`, polled until `timeout` seconds; fails early
    when one of the `watch`ed processes has exited unasked."""
    deadline = time.monotonic() + timeout
    watched = list(watch)
    while True:
        value = predicate()
        if value:
            return value
        for process in watched:
            process.assert_running(f"while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def clean_env(**values: str) -> dict[str, str]:
    """This environment without the receiver's and providers' variables, plus `values`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_PREFIXES)}
    env.update(values)
    return env


# -- redis-server -----------------------------------------------------------------------------


class RedisServer:
    """A redis-server that keeps its port and directory across restarts, so a restart
    replays the AOF of the run before it."""

    def __init__(self, directory: Path, *extra: str) -> None:
        self.directory = directory
        # Below the ephemeral range: no client's outgoing connection takes the port while
        # the server is down, so it can always start again on it.
        self.port = consecutive_free_ports(1)
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=10, socket_connect_timeout=5)

    def start(self) -> RedisServer:
        assert not self.alive, "redis-server already runs"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        self.process = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--logfile",
                str(self.directory / "redis.log"),
                *self.extra,
            ],  # fmt: skip
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_until(self._answers, 30, f"redis-server on port {self.port} to load and answer")
        return self

    def _answers(self) -> bool:
        if not self.alive:
            raise AssertionError(f"redis-server exited: {self.log()[-_LOG_TAIL:]}")
        try:
            with self.client() as client:
                return bool(client.ping())
        except redis.RedisError:  # refused, or still loading its AOF
            return False

    def kill(self) -> None:
        """SIGKILL: no AOF rewrite, no goodbye; only what was fsynced survives."""
        assert self.process is not None and self.alive
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def shutdown(self) -> None:
        """SHUTDOWN, as an operator restarting Redis would."""
        with self.client() as client:
            client.shutdown()
        assert self.process is not None
        assert self.process.wait(30) == 0, self.log()[-_LOG_TAIL:]

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""


# -- child processes --------------------------------------------------------------------------


class ServiceProcess:
    """`python ARGS` in a session of its own, its output in `<name>.<run>.log`; started
    again with `start()` after it ended."""

    def __init__(self, name: str, args: Sequence[str], env: Mapping[str, str], logs: Path) -> None:
        self.name = name
        self.args = [sys.executable, *args]
        self.env = dict(env)
        self.logs = logs
        self.process: subprocess.Popen[bytes] | None = None
        self.log_files: list[Path] = []
        self.stopped = False  # asked to stop (or killed): its end is no failure

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> ServiceProcess:
        assert not self.alive, f"{self.name} already runs"
        if self.process is not None:
            self.process.wait()
        self.stopped = False
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{self.name}.{len(self.log_files) + 1}.log"
        self.log_files.append(log)
        with log.open("wb") as output:
            self.process = subprocess.Popen(
                self.args,
                env=self.env,
                cwd=self.logs,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def send(self, signum: int) -> None:
        """A signal to the process itself (SIGTERM: a graceful stop)."""
        self.stopped = self.stopped or signum in (signal.SIGTERM, signal.SIGINT, signal.SIGKILL)
        os.kill(self.pid, signum)

    def kill(self) -> None:
        """SIGKILL to its whole process group."""
        assert self.process is not None
        self.stopped = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL to the group if it lingers."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.send(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(15)
        self.kill()

    def output(self) -> str:
        """Everything every run of it printed."""
        return "".join(path.read_text(errors="replace") for path in self.log_files)

    def tail(self) -> str:
        return self.output()[-_LOG_TAIL:]

    def wait_for_line(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """The first match of `pattern` in the current run's output."""

        def found() -> re.Match[str] | None:
            self.assert_alive(f"before printing {pattern!r}")
            return re.search(pattern, self.log_files[-1].read_text(errors="replace"))

        return wait_until(found, timeout, f"{self.name} to print {pattern!r}")

    def assert_running(self, when: str = "") -> None:
        """Alive, unless it was asked to stop."""
        if not self.stopped:
            self.assert_alive(when)

    def assert_alive(self, when: str = "") -> None:
        if not self.alive:
            code = None if self.process is None else self.process.returncode
            raise AssertionError(f"{self.name} exited ({code}) {when}:\n{self.tail()}")

    def assert_no_traceback(self) -> None:
        text = self.output()
        at = text.find("Traceback")
        assert at < 0, f"{self.name} logged a traceback:\n{text[max(0, at - 300) : at + 3000]}"


class DecodoSandbox(ServiceProcess):
    """`python -m receiver.sandbox.decodo` with knobs, and its /_sandbox controls."""

    def __init__(self, logs: Path, **knobs: object) -> None:
        self.port = free_port()
        flags = [f"--{name.replace('_', '-')}={value}" for name, value in knobs.items()]
        args = ["-m", "receiver.sandbox.decodo", "--port", str(self.port), "--seed=7", *flags]
        super().__init__("sandbox", args, clean_env(), logs)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> DecodoSandbox:
        super().start()
        wait_for_port(self.port)
        return self

    def stats(self) -> dict[str, int]:
        stats: dict[str, int] = httpx.get(f"{self.url}/_sandbox/stats", timeout=10).json()
        return stats

    def configure(self, **knobs: object) -> None:
        response = httpx.patch(f"{self.url}/_sandbox/config", json=knobs, timeout=10)
        assert response.status_code == 200, response.text


class ReceiverApi:
    """The receiver's HTTP API, as a user calls it."""

    def __init__(self, port: int, token: str = API_TOKEN) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.headers = {"Authorization": f"Bearer {token}"}

    def submit(self, urls: Sequence[str], retry_for: float = 0.0) -> str:
        """A Decodo job of these URLs; a 503 is tried again (after its Retry-After, as a
        client does) for `retry_for` seconds."""
        body = {"provider": "decodo", "urls": list(urls), "target": "universal"}
        deadline = time.monotonic() + retry_for
        while True:
            response = httpx.post(f"{self.url}/jobs", json=body, headers=self.headers, timeout=30)
            if response.status_code != 503 or time.monotonic() > deadline:
                break
            time.sleep(float(response.headers.get("retry-after", "1")))
        assert response.status_code in (201, 202), response.text
        job_id: str = response.json()["id"]
        return job_id

    def ready(self) -> tuple[int, dict[str, Any]]:
        """/readyz's status code and JSON body."""
        response = httpx.get(f"{self.url}/readyz", timeout=10)
        body: dict[str, Any] = response.json()
        return response.status_code, body

    def metrics(self) -> str:
        response = httpx.get(f"{self.url}/metrics", timeout=10)
        assert response.status_code == 200, response.text
        return response.text


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample `name{labels}` (labels exactly these) in a /metrics page."""
    wanted = {f'{key}="{value}"' for key, value in labels.items()}
    for line in text.splitlines():
        found = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if found and found[1] == name and set(filter(None, (found[2] or "").split(","))) == wanted:
            return float(found[3])
    return None


def receiver_env(
    port: int, sandbox: DecodoSandbox, redis_url: str | None, **settings: str
) -> dict[str, str]:
    """A receiver process's environment: the sandbox as Decodo, our secrets, `settings`
    (variable name -> value) on top. Without `redis_url`, the embedded Redis."""
    env = clean_env(
        PORT=str(port),
        RECEIVER_SECRET_KEYS=SECRET_KEY,
        RECEIVER_API_TOKEN=API_TOKEN,
        RECEIVER_PUBLIC_URL=f"http://127.0.0.1:{port}",
        DECODO_BASE_URL=sandbox.url,
        DECODO_AUTH=DEFAULT_AUTH,
    )
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    env.update(settings)
    return env


def job_urls(count: int, prefix: str = "a") -> list[str]:
    return [f"https://{prefix}.example/{index}" for index in range(count)]


# -- one test's processes ---------------------------------------------------------------------


@dataclass
class Stack:
    """A Redis, the Decodo sandbox, one `receiver web` and its workers."""

    redis: RedisServer
    sandbox: DecodoSandbox
    env: dict[str, str]
    web: ServiceProcess
    workers: list[ServiceProcess]
    api: ReceiverApi

    @property
    def services(self) -> list[ServiceProcess]:
        return [self.web, *self.workers]

    def client(self) -> SyncRedis:
        return self.redis.client()

    def wait_tasks(self, job_id: str, count: int, timeout: float = 30.0) -> list[str]:
        """The job's task ids, once its submission recorded all `count` of them."""
        with self.client() as client:

            def recorded() -> list[str]:
                tasks = task_statuses(client, job_id)
                return list(tasks) if len(tasks) >= count else []

            return wait_until(recorded, timeout, f"{count} tasks of {job_id}", watch=self.services)

    def wait_completed(self, job_ids: Sequence[str], timeout: float = 60.0) -> None:
        """Every job in a final status, failing early if a process dies unasked; then
        completed."""
        wait_for_jobs(self.redis.client, job_ids, timeout, watch=self.services)

    def assert_no_traceback(self) -> None:
        for process in (self.sandbox, *self.services):
            process.assert_no_traceback()


class Chaos:
    """Starts a test's processes under `root`; `close()` kills whatever is left."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.logs = root / "logs"
        self._redis: list[RedisServer] = []
        self._processes: list[ServiceProcess] = []
        self._pids: list[int] = []  # processes started by our children (embedded Redis)
        self._storms: list[CallbackStorm] = []

    def redis(self, *extra: str) -> RedisServer:
        server = RedisServer(self.root / f"redis-{len(self._redis) + 1}", *extra)
        self._redis.append(server)
        return server.start()

    def sandbox(self, **knobs: object) -> DecodoSandbox:
        sandbox = DecodoSandbox(self.logs, **knobs)
        self._processes.append(sandbox)
        return sandbox.start()

    def receiver(self, role: str, env: Mapping[str, str], name: str = "") -> ServiceProcess:
        """`python -m receiver ROLE`, started; web and run once they listen on PORT,
        a worker once it says it started."""
        process = ServiceProcess(name or role, ["-m", "receiver", role], env, self.logs)
        self._processes.append(process)
        process.start()
        self.wait_started(process, role)
        return process

    def wait_started(self, process: ServiceProcess, role: str) -> None:
        if role == "worker":
            process.wait_for_line(r"worker started")
        else:
            port = int(process.env["PORT"])
            wait_until(lambda: listens(port), 30, f"{process.name} on {port}", watch=[process])

    def stack(
        self,
        *,
        workers: int = 1,
        sandbox: Mapping[str, object] | None = None,
        settings: Mapping[str, str] | None = None,
        redis_args: Sequence[str] = (),
    ) -> Stack:
        server = self.redis(*redis_args)
        decodo = self.sandbox(**(sandbox or {}))
        port = consecutive_free_ports(1)  # a process that takes over binds it again
        env = receiver_env(port, decodo, server.url, **(settings or {}))
        web = self.receiver("web", env)
        started = [self.receiver("worker", env, f"worker-{i + 1}") for i in range(workers)]
        return Stack(server, decodo, env, web, started, ReceiverApi(port))

    def storm(
        self, url: str, job_id: str, task_ids: Sequence[str], **options: Any
    ) -> CallbackStorm:
        """A `CallbackStorm`, started; stopped at the end if it still runs."""
        storm = CallbackStorm(url, job_id, task_ids, **options)
        self._storms.append(storm)
        return storm.start()

    def adopt_pid(self, pid: int) -> None:
        """A process one of ours started (the embedded Redis): killed at the end if alive."""
        if pid not in self._pids:
            self._pids.append(pid)

    def kill_pid(self, pid: int) -> None:
        """SIGKILL a redis-server one of our processes started, and wait until it is gone."""
        self.adopt_pid(pid)
        _kill_redis_pid(pid)
        wait_until(lambda: _gone(pid), 10, f"pid {pid} to die")

    def close(self) -> None:
        for storm in self._storms:
            storm.stop(5)
        for process in reversed(self._processes):
            with contextlib.suppress(Exception):
                process.stop()
        for pid in self._pids:
            _kill_redis_pid(pid)
        for server in self._redis:
            server.stop()


def refuses(port: int) -> bool:
    """Whether a connection to the port is refused: nothing listens there any more (a
    full accept queue, which also fails to connect, is not that)."""
    try:
        with socket.create_connection(("127.0.0.1", port), 1):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def listens(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


def _gone(pid: int) -> bool:
    """No such process, or only its zombie (dead, its parent not told yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def _kill_redis_pid(pid: int) -> None:
    """SIGKILL a redis-server we were told of, if that pid is still a redis-server."""
    with contextlib.suppress(OSError):
        if b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes():
            os.kill(pid, signal.SIGKILL)


# -- reading Redis directly -------------------------------------------------------------------


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _hash(client: Client, key: str) -> dict[str, str]:
    raw: Any = client.hgetall(key)
    return {_text(k): _text(v) for k, v in raw.items()}


def job_record(client: Client, job_id: str, keys: Keys = KEYS) -> dict[str, str]:
    return _hash(client, keys.job(job_id))


def task_statuses(client: Client, job_id: str, keys: Keys = KEYS) -> dict[str, str]:
    """Task id -> its status, from the job's tasks hash."""
    return _hash(client, keys.tasks(job_id))


def fill_to_maxmemory(client: redis.Redis, headroom: int = 4 << 20) -> list[str]:
    """Sets maxmemory `headroom` bytes above what Redis uses and fills it with filler keys
    until a write is refused; then lowers maxmemory a megabyte under the memory in use,
    so that it stays full whatever small change follows. The filler keys, to delete."""
    used = int(_memory(client)["used_memory"])
    client.config_set("maxmemory", used + headroom)
    fillers: list[str] = []
    value = b"x" * (256 << 10)
    for index in range(4 * headroom // len(value)):
        try:
            client.set(f"chaos:filler:{index}", value)
        except redis.exceptions.OutOfMemoryError:
            client.config_set("maxmemory", int(_memory(client)["used_memory"]) - (1 << 20))
            return fillers
        fillers.append(f"chaos:filler:{index}")
    raise AssertionError("Redis never refused a write")


def _memory(client: redis.Redis) -> dict[str, Any]:
    info: Any = client.info("memory")
    return dict(info)


def stored_results(client: redis.Redis, job_ids: Iterable[str]) -> int:
    """Tasks of these jobs with their results stored, as their job records count them."""
    return sum(int(job_record(client, job_id).get("completed", 0)) for job_id in job_ids)


def events_by_job(client: Client, keys: Keys = KEYS) -> dict[str, list[dict[str, Any]]]:
    """Every event of the events streams, as the public JSON, grouped by job, in order."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for partition in range(keys.partitions):
        entries: Any = client.xrange(keys.events(partition))
        for entry_id, fields in entries:
            event = event_from_entry(entry_id, fields).to_dict()
            grouped.setdefault(event["job_id"], []).append(event)
    return grouped


def work_left(client: Client, keys: Keys = KEYS) -> tuple[int, int]:
    """Entries in the work streams, and those of them read but not acknowledged."""
    length = waiting = 0
    for partition in range(keys.partitions):
        length += int(client.xlen(keys.work(partition)))
        try:
            pending: Any = client.xpending(keys.work(partition), WORK_GROUP)
        except redis.ResponseError:  # no group yet
            continue
        waiting += int(pending["pending"])
    return length, waiting


def pending_of(client: redis.Redis, pid: int) -> int:
    """Work entries held by the worker process `pid` (its consumer is named after its pid)."""
    summary: Any = client.xpending(KEYS.work(0), WORK_GROUP)
    return sum(
        int(consumer["pending"])
        for consumer in summary.get("consumers") or ()
        if f"-{pid}-" in _text(consumer["name"])
    )


def wait_for_jobs(
    connect: Callable[[], Client],
    job_ids: Sequence[str],
    timeout: float,
    watch: Iterable[ServiceProcess] = (),
    keys: Keys = KEYS,
) -> None:
    """Waits until every job is in a final status (reconnecting: Redis may have restarted),
    then asserts each completed."""

    def statuses() -> dict[str, str]:
        try:
            with connect() as client:
                return {job: job_record(client, job, keys).get("status", "") for job in job_ids}
        except redis.RedisError:
            return {}

    def ended() -> bool:
        found = statuses()
        return bool(found) and all(s in _FINAL_STATUSES for s in found.values())

    try:
        wait_until(ended, timeout, f"jobs {list(job_ids)} to end", interval=0.1, watch=watch)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; statuses {_progress(connect, job_ids, keys)}") from None
    found = statuses()
    assert all(s == "completed" for s in found.values()), found


_FINAL_STATUSES = frozenset(t.removeprefix("job.") for t in FINAL_TYPES)


def _progress(
    connect: Callable[[], Client], job_ids: Sequence[str], keys: Keys = KEYS
) -> dict[str, Any]:
    """Each job's status and its tasks counted by status, for a failure message."""
    try:
        with connect() as client:
            return {
                job: (
                    job_record(client, job, keys).get("status"),
                    dict(Counter(task_statuses(client, job, keys).values())),
                )
                for job in job_ids
            }
    except redis.RedisError as exc:
        return {"redis": repr(exc)}


# -- the invariants ---------------------------------------------------------------------------


def assert_invariants(
    client: Client,
    jobs: Mapping[str, int],
    sandbox_stats: Mapping[str, int],
    *,
    extra_fetches: int = 0,
    keys: Keys = KEYS,
) -> None:
    """What every fault must leave intact, for `jobs` (job id -> its number of tasks):

    - every job completed, with completed == total == its tasks;
    - every task `stored`, one stored result per task, exactly one `task.completed` event
      per task and exactly one final event per job, the one the job record names;
    - the provider's results were requested once per task, plus at most `extra_fetches`
      (fetches in flight when a process died may be made again);
    - no work is left in the stream, acknowledged or not.
    """
    wait_until(lambda: work_left(client, keys) == (0, 0), 15, "the work stream to drain")
    events = events_by_job(client, keys)
    problems: list[str] = []
    for job_id, count in jobs.items():
        problems += _job_problems(client, job_id, count, events.get(job_id, []), keys)
    total = sum(jobs.values())
    fetched, stored = sandbox_stats.get("results", 0), sandbox_stats.get("results 200", 0)
    if not total <= stored <= fetched <= total + extra_fetches:
        problems.append(
            f"results requests: {fetched} ({stored} answered 200) for {total} tasks, "
            f"at most {extra_fetches} more allowed"
        )
    assert not problems, "\n".join(problems)


def _job_problems(
    client: Client, job_id: str, count: int, events: list[dict[str, Any]], keys: Keys
) -> list[str]:
    problems: list[str] = []
    record = job_record(client, job_id, keys)
    counts = (record.get("status"), record.get("completed"), record.get("total"))
    if counts != ("completed", str(count), str(count)):
        problems.append(f"{job_id}: status, completed, total are {counts}, expected {count}")
    tasks = task_statuses(client, job_id, keys)
    by_status = Counter(tasks.values())
    if len(tasks) != count or by_status["stored"] != count:
        problems.append(f"{job_id}: {len(tasks)} tasks of {count}, by status {dict(by_status)}")
    results: Any = client.hkeys(keys.results(job_id))
    if sorted(_text(r) for r in results) != sorted(tasks):
        problems.append(f"{job_id}: {len(results)} results stored for {len(tasks)} tasks")
    completed = Counter(e["detail"].get("task_id") for e in events if e["type"] == "task.completed")
    if set(completed) != set(tasks) or any(n != 1 for n in completed.values()):
        twice = [task for task, n in completed.items() if n != 1]
        problems.append(
            f"{job_id}: task.completed for {len(completed)} tasks of {len(tasks)}, "
            f"more than once for {twice[:5]}"
        )
    finals = [e for e in events if e["type"] in FINAL_TYPES]
    if [e["type"] for e in finals] != ["job.completed"]:
        problems.append(f"{job_id}: final events {[e['type'] for e in finals]}")
    elif record.get("final_event") != finals[0]["id"]:
        problems.append(f"{job_id}: the job names final event {record.get('final_event')}")
    return problems


def assert_recorded(
    client: Client, job_id: str, accepted: Iterable[str], keys: Keys = KEYS
) -> None:
    """Every task whose callback got a 202 is recorded: no longer `pending`."""
    tasks = task_statuses(client, job_id, keys)
    lost = sorted(task for task in accepted if tasks.get(task, "pending") == "pending")
    assert not lost, f"{len(lost)} callbacks answered 202 are not recorded: {lost[:10]}"


# -- callbacks --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    task_id: str
    status: int | None  # the HTTP status; None when no answer came
    error: str  # the transport error's name when no answer came
    sent: float  # monotonic seconds
    answered: float

    @property
    def outcome(self) -> str:
        return str(self.status) if self.status is not None else self.error


def callback_body(job_id: str, task_id: str) -> bytes:
    """Decodo's callback of a done task, with the job's passthrough token."""
    token = PassthroughSigner((SECRET_KEY,), TOKEN_MAX_AGE).sign(job_id)
    body = {"id": task_id, "status": "done", "target": "universal", "passthrough": token}
    return orjson.dumps(body)


@dataclass(order=True)
class _Due:
    at: float
    order: int
    task_id: str = field(compare=False)


class CallbackStorm:
    """Each task's callback `copies` times, at uniformly random moments over `spread`
    seconds, posted by `threads` threads; an answer other than 202 (or none) is posted
    again `retry_delay` seconds later while `retry` is set, as Decodo retries."""

    def __init__(
        self,
        url: str,
        job_id: str,
        task_ids: Sequence[str],
        *,
        copies: int = 2,
        spread: float = 3.0,
        threads: int = 8,
        retry: bool = True,
        retry_delay: float = 0.3,
        seed: int = 1,
    ) -> None:
        self.url = f"{url}/callbacks/decodo"
        self.retry = retry
        self.retry_delay = retry_delay
        self.answers: list[Answer] = []
        self._bodies = {task: callback_body(job_id, task) for task in task_ids}
        self._order = itertools.count()
        start, rng = time.monotonic(), random.Random(seed)
        self._due = [
            _Due(start + rng.uniform(0, spread), next(self._order), task)
            for task in task_ids
            for _ in range(copies)
        ]
        heapq.heapify(self._due)
        self._busy = 0
        self._stopping = False
        self._lock = threading.Condition()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def start(self) -> CallbackStorm:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Send nothing more; the requests in flight are answered first."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        self._join(timeout)

    def wait(self, timeout: float = 60.0) -> None:
        """Until every callback was sent (and, with `retry`, answered 202)."""
        self._join(timeout)
        assert not any(t.is_alive() for t in self._threads), f"storm not done: {self.outcomes()}"

    def _join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def accepted(self) -> set[str]:
        """Tasks of which a callback got a 202."""
        with self._lock:
            return {a.task_id for a in self.answers if a.status == 202}

    def outcomes(self) -> Counter[str]:
        """Answers by status code, and transport errors by name."""
        with self._lock:
            return Counter(a.outcome for a in self.answers)

    def _run(self) -> None:
        with httpx.Client(timeout=15) as http:
            while (due := self._next()) is not None:
                answer = self._post(http, due.task_id)
                with self._lock:
                    self.answers.append(answer)
                    self._busy -= 1
                    if answer.status != 202 and self.retry and not self._stopping:
                        at = time.monotonic() + self.retry_delay
                        heapq.heappush(self._due, _Due(at, next(self._order), due.task_id))
                    self._lock.notify_all()

    def _next(self) -> _Due | None:
        """The next callback once it is due; None when stopping or all are done."""
        with self._lock:
            while not self._stopping:
                if not self._due:
                    if not self._busy:
                        return None
                    self._lock.wait()
                    continue
                wait = self._due[0].at - time.monotonic()
                if wait <= 0:
                    self._busy += 1
                    return heapq.heappop(self._due)
                self._lock.wait(wait)
            return None

    def _post(self, http: httpx.Client, task_id: str) -> Answer:
        sent = time.monotonic()
        headers = {"content-type": "application/json"}
        try:
            response = http.post(self.url, content=self._bodies[task_id], headers=headers)
        except httpx.HTTPError as exc:
            return Answer(task_id, None, type(exc).__name__, sent, time.monotonic())
        return Answer(task_id, response.status_code, "", sent, time.monotonic())


class HeldRequest:
    """A callback POST whose headers and first bytes are sent and the rest held back: a
    request the server is in the middle of when a test stops it."""

    def __init__(self, port: int, body: bytes, sent: int = 16) -> None:
        self._rest = body[sent:]
        head = (
            f"POST /callbacks/decodo HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self._socket = socket.create_connection(("127.0.0.1", port), 10)
        self._socket.sendall(head.encode() + body[:sent])

    def finish(self, timeout: float = 30.0) -> int:
        """Send the rest; the status code of the answer."""
        with self._socket:
            self._socket.settimeout(timeout)
            self._socket.sendall(self._rest)
            answer = b""
            while b"\r\n" not in answer:
                chunk = self._socket.recv(4096)
                assert chunk, f"the connection closed without an answer: {answer!r}"
                answer += chunk
        return int(answer.split(b" ", 2)[1])

    def close(self) -> None:
        self._socket.close()


# -- the embedded Redis of `receiver run` -----------------------------------------------------


def embedded_redis(data_dir: Path) -> tuple[int, int] | None:
    """The (pid, port) the data dir's marker names, while it names a live redis-server."""
    try:
        marker = orjson.loads((data_dir / "redis.json").read_bytes())
        pid, port = int(marker["pid"]), int(marker["port"])
        alive = b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, KeyError):
        return None
    return (pid, port) if alive else None


def embedded_client(data_dir: Path, port: int) -> redis.Redis:
    """A client of the embedded Redis, with the password kept in the data dir."""
    password = orjson.loads((data_dir / "secrets.json").read_bytes())["redis_password"]
    return redis.Redis(port=port, password=password, socket_timeout=10, socket_connect_timeout=5)
