"""Run one or several provider simulators in one process, on consecutive ports."""

from __future__ import annotations

import argparse
import asyncio
import importlib
from collections.abc import Sequence
from typing import Any

import uvicorn

from receiver.sandbox.common import add_config_arguments, config_from_arguments

# Module name -> the name of its config dataclass.
CONFIGS = {
    "decodo": "DecodoSandboxConfig",
    "firecrawl": "FirecrawlSandboxConfig",
    "dify": "DifySandboxConfig",
}


def build(name: str, argv: Sequence[str]) -> Any:
    """The ASGI app of one sandbox, with its knobs parsed from argv."""
    module = importlib.import_module(f"receiver.sandbox.{name}")
    config_class = getattr(module, CONFIGS[name])
    parser = argparse.ArgumentParser(prog=f"receiver sandbox {name}")
    add_config_arguments(parser, config_class)
    values = vars(parser.parse_args(list(argv)))
    return module.create_app(config_from_arguments(config_class, values))


def run_sandboxes(names: Sequence[str], host: str, port: int, argv: Sequence[str]) -> None:
    """Serve each named sandbox; knobs in argv go to all of them when only one is named."""
    apps = [build(name, argv if len(names) == 1 else []) for name in names]
    for offset, name in enumerate(names):
        print(f"{name} sandbox on http://{host}:{port + offset}", flush=True)
    asyncio.run(_serve_all(apps, host, port))


async def _serve_all(apps: Sequence[Any], host: str, port: int) -> None:
    servers = [
        uvicorn.Server(uvicorn.Config(app, host=host, port=port + i, log_level="warning"))
        for i, app in enumerate(apps)
    ]
    await asyncio.gather(*(server.serve() for server in servers))
