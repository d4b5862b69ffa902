"""`receiver run --sandbox`: the whole path on one machine, without any provider account.

The three provider sandboxes start in a thread of the process, on their usual ports when
those are free (9001, 9002, 9003) or on any free ones, and the providers' settings point at
them: base URLs and the sandboxes' own credentials. Callbacks and webhooks then travel
between real servers on loopback, as they would between receiver and the providers.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import uvicorn

from receiver.settings import Settings

# Seconds the sandboxes get to start, and to stop.
_START_WAIT = 10.0
_STOP_WAIT = 5.0


@dataclass(frozen=True)
class Sandboxes:
    urls: dict[str, str]  # provider name -> the sandbox's base URL


def with_sandboxes(settings: Settings, sandboxes: Sandboxes) -> Settings:
    """The settings with every provider pointed at its sandbox."""
    from receiver.sandbox.decodo import DEFAULT_AUTH
    from receiver.sandbox.dify import DifySandboxConfig
    from receiver.sandbox.firecrawl import FirecrawlSandboxConfig

    urls = sandboxes.urls
    return settings.with_changes(
        decodo_base_url=urls["decodo"],
        decodo_auth=DEFAULT_AUTH,
        firecrawl_base_url=urls["firecrawl"],
        firecrawl_api_key=FirecrawlSandboxConfig().api_key,
        dify_base_url=urls["dify"] + "/v1",
        dify_api_key=DifySandboxConfig().api_key,
    )


@contextlib.contextmanager
def running_sandboxes(host: str = "127.0.0.1") -> Iterator[Sandboxes]:
    """The three sandboxes, served in a thread until the block ends."""
    from receiver.sandbox.runner import SANDBOXES, build

    servers: dict[str, uvicorn.Server] = {}
    for name, entry in SANDBOXES.items():
        port = entry.port if _free(host, entry.port) else _any_free_port(host)
        config = uvicorn.Config(build(name, []), host=host, port=port, log_level="warning")
        servers[name] = uvicorn.Server(config)
    thread = threading.Thread(target=_serve, args=(list(servers.values()),), daemon=True)
    thread.start()
    try:
        _wait_started(list(servers.values()), thread)
        yield Sandboxes({name: f"http://{host}:{s.config.port}" for name, s in servers.items()})
    finally:
        for server in servers.values():
            server.should_exit = True
        thread.join(_STOP_WAIT)


def _serve(servers: list[uvicorn.Server]) -> None:
    async def serve_all() -> None:
        await asyncio.gather(*(server.serve() for server in servers))

    asyncio.run(serve_all())


def _wait_started(servers: list[uvicorn.Server], thread: threading.Thread) -> None:
    deadline = time.monotonic() + _START_WAIT
    while not all(server.started for server in servers):
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the provider sandboxes did not start")
        time.sleep(0.02)


def _free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _any_free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port
