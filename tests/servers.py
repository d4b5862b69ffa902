"""Real servers for tests: redis-server processes and uvicorn on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import io
import os
import pty
import random
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn

from receiver.embedded import redis_server_binary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RedisProcess:
    port: int
    process: subprocess.Popen[bytes]
    directory: str

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@contextlib.contextmanager
def run_redis(*extra: str) -> Iterator[RedisProcess]:
    directory = tempfile.mkdtemp(prefix="receiver-redis-")
    port = free_port()
    process = subprocess.Popen(
        [
            redis_server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            directory,
            "--save",
            "",
            "--appendonly",
            "no",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = RedisProcess(port, process, directory)
    try:
        wait_for_port(port)
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def consecutive_free_ports(count: int) -> int:
    """The first of `count` consecutive free ports, below the ephemeral range so that no
    outgoing connection of another test takes one of them meanwhile."""
    for base in random.sample(range(20_000, 32_000 - count), 200):
        with contextlib.ExitStack() as stack:
            try:
                for port in range(base, base + count):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return base
    raise RuntimeError(f"no {count} consecutive free ports")


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on port {port}")


class ThreadedServer(uvicorn.Server):
    loop: asyncio.AbstractEventLoop | None = None

    def install_signal_handlers(self) -> None:  # the test thread is not the main thread
        pass

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def pending(self) -> str:
        """The tasks still running on its loop, with their stacks: why it did not stop."""
        if self.loop is None:
            return ""
        out = io.StringIO()
        for task in asyncio.all_tasks(self.loop):
            task.print_stack(file=out)
        return out.getvalue()


@contextlib.contextmanager
def serve_app(app: Any, port: int | None = None) -> Iterator[str]:
    """Run an ASGI app under a real uvicorn on loopback; yield its base URL."""
    port = port or free_port()
    # The asyncio loop: uvloop's close() can fail with EBUSY in a thread at test teardown.
    # A bound on the graceful shutdown, as `receiver web` has: an open event stream never
    # ends by itself, and would keep the server (and a worker beside it) running.
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        loop="asyncio",
        timeout_graceful_shutdown=2,
    )
    server = ThreadedServer(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        # A server left running would serve (and its worker write) into later tests.
        assert not thread.is_alive(), f"uvicorn did not shut down:\n{server.pending()}"


def child_env(**overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(overrides)
    return env


def run_cli(
    env: dict[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`receiver ARGS` run to its end, stdout and stderr piped."""
    return subprocess.run(
        [sys.executable, "-m", "receiver", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@contextlib.contextmanager
def under_terminal(
    env: dict[str, str], *args: str, columns: int
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`receiver ARGS` under a pseudo-terminal of 30 lines and `columns` columns (stdout and
    stderr): the process, and the terminal's end to read its output from. The process is
    killed if it still runs when the block ends."""
    main, tty = pty.openpty()
    fcntl.ioctl(tty, termios.TIOCSWINSZ, struct.pack("HHHH", 30, columns, 0, 0))
    command = [sys.executable, "-m", "receiver", *args]
    with subprocess.Popen(command, env=env, stdin=tty, stdout=tty, stderr=tty) as process:
        os.close(tty)
        try:
            yield process, main
        finally:
            if process.poll() is None:
                process.kill()
            os.close(main)
