"""Serve the provider simulators: one of them (`python -m receiver.sandbox.NAME`, through
`run_sandbox`) or several in one process on consecutive ports (`receiver sandbox`)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
from collections.abc import Sequence
from types import ModuleType
from typing import Any, NamedTuple

import uvicorn

from receiver.sandbox.common import add_config_arguments, config_from_arguments


class Entry(NamedTuple):
    config: str  # the name of the module's config dataclass
    port: int  # where `python -m receiver.sandbox.NAME` serves it by default


SANDBOXES = {
    "decodo": Entry("DecodoSandboxConfig", 9001),
    "firecrawl": Entry("FirecrawlSandboxConfig", 9002),
    "dify": Entry("DifySandboxConfig", 9003),
}


def build(name: str, argv: Sequence[str]) -> Any:
    """The ASGI app of one sandbox, with its knobs parsed from argv."""
    module, config_class = _load(name)
    parser = _parser(f"receiver sandbox {name}", module, config_class)
    values = vars(parser.parse_args(list(argv)))
    return module.create_app(_config(parser, config_class, values))


def parse_command(name: str, argv: Sequence[str] | None = None) -> tuple[str, int, Any]:
    """Host, port and config from the arguments of `python -m receiver.sandbox.NAME`."""
    module, config_class = _load(name)
    parser = _parser(f"python -m receiver.sandbox.{name}", module, config_class)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=SANDBOXES[name].port)
    values = vars(parser.parse_args(None if argv is None else list(argv)))
    host, port = values.pop("host"), values.pop("port")
    return host, port, _config(parser, config_class, values)


def run_sandbox(name: str, argv: Sequence[str] | None = None) -> None:
    """Serve one sandbox until stopped: the `main` of each sandbox module."""
    host, port, config = parse_command(name, argv)
    module, _ = _load(name)
    _announce([name], host, port)
    asyncio.run(_serve_all([module.create_app(config)], host, port))


def run_sandboxes(names: Sequence[str], host: str, port: int, argv: Sequence[str]) -> None:
    """Serve each named sandbox; knobs in argv go to all of them when only one is named."""
    apps = [build(name, argv if len(names) == 1 else []) for name in names]
    _announce(names, host, port)
    asyncio.run(_serve_all(apps, host, port))


def _load(name: str) -> tuple[ModuleType, type[Any]]:
    module = importlib.import_module(f"receiver.sandbox.{name}")
    return module, getattr(module, SANDBOXES[name].config)


def _parser(prog: str, module: ModuleType, config_class: type[Any]) -> argparse.ArgumentParser:
    """A parser with one `--knob-name` per knob, described by the module's first line."""
    summary = (module.__doc__ or "").strip().split("\n", 1)[0]
    parser = argparse.ArgumentParser(prog=prog, description=summary)
    add_config_arguments(parser, config_class)
    return parser


def _config(
    parser: argparse.ArgumentParser, config_class: type[Any], values: dict[str, Any]
) -> Any:
    """The config of the parsed knobs; a value it refuses ends the command, saying why."""
    try:
        return config_from_arguments(config_class, values)
    except ValueError as exc:
        parser.error(str(exc))


def _announce(names: Sequence[str], host: str, port: int) -> None:
    for offset, name in enumerate(names):
        print(f"{name} sandbox on http://{host}:{port + offset}", flush=True)


async def _serve_all(apps: Sequence[Any], host: str, port: int) -> None:
    # No access log (warning level): the drain benchmark sends thousands of requests a second.
    servers = [
        uvicorn.Server(uvicorn.Config(app, host=host, port=port + i, log_level="warning"))
        for i, app in enumerate(apps)
    ]
    await asyncio.gather(*(server.serve() for server in servers))
