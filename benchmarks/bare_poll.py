"""The poll baseline: the worker's GETs and nothing else, in a process of its own.

`python -m benchmarks.bare_poll SPEC.json` reads a `PollSpec` and, for at most
`seconds`, runs `concurrency` loops per provider on the worker's own HTTP client
(`receiver.providers.base.open_http`: the same transport, limits and timeout; or, for comparison,
one on httpx's default transport), each GETting the status of the next batch round-robin
and parsing the JSON answer. It runs on uvloop, as `receiver worker` does. The caller
counts the requests at the sandboxes; this prints how many it made when it stops.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import uvloop

from receiver.providers.base import CONNECT_TIMEOUT, open_http
from receiver.settings import Settings


@dataclass
class PollSpec:
    firecrawl: str  # base URL of the Firecrawl sandbox
    dify: str  # base URL of the Dify API, with its /v1
    batch_ids: list[str]  # Firecrawl batch scrapes
    dify_batches: list[tuple[str, str]]  # (dataset id, batch) pairs
    concurrency: int  # loops per provider
    pool: int  # connections the clients may hold in all (the worker's: fetch concurrency + 20)
    seconds: float
    transport: str = "worker"  # worker: the worker's own client; httpcore: httpx's default


async def poll_loop(
    http: httpx.AsyncClient, urls: Iterator[str], headers: dict[str, str], until: float
) -> int:
    polls = 0
    while time.monotonic() < until:
        response = await http.get(next(urls), headers=headers)
        orjson.loads(response.content)
        polls += 1
    return polls


async def poll(spec: PollSpec) -> int:
    firecrawl_urls = itertools.cycle(
        [f"{spec.firecrawl}/v2/batch/scrape/{batch}" for batch in spec.batch_ids]
    )
    dify_urls = itertools.cycle(
        [
            f"{spec.dify}/datasets/{dataset}/documents/{batch}/indexing-status"
            for dataset, batch in spec.dify_batches
        ]
    )
    accept = {"Accept": "application/json"}
    firecrawl_headers = {"Authorization": "Bearer fc-sandbox", **accept}
    dify_headers = {"Authorization": "Bearer dataset-sandbox", **accept}
    limits = httpx.Limits(max_connections=spec.pool, max_keepalive_connections=spec.pool)
    until = time.monotonic() + spec.seconds
    settings = Settings()
    if spec.transport == "worker":  # the baseline: exactly the worker's HTTP client
        client = open_http(settings)
    else:  # httpx's own transport, with the worker's timeouts
        timeout = httpx.Timeout(settings.provider_timeout, connect=CONNECT_TIMEOUT)
        client = httpx.AsyncClient(timeout=timeout, limits=limits)
    async with client as http:
        loops = []
        for _ in range(spec.concurrency):
            loops.append(poll_loop(http, firecrawl_urls, firecrawl_headers, until))
            loops.append(poll_loop(http, dify_urls, dify_headers, until))
        return sum(await asyncio.gather(*loops))


def main() -> None:
    raw = json.loads(Path(sys.argv[1]).read_text())
    raw["dify_batches"] = [tuple(pair) for pair in raw["dify_batches"]]
    spec = PollSpec(**raw)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    # The worker's event loop too: uvloop.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        polls = runner.run(poll(spec))
    print(json.dumps({"polls": polls}), flush=True)


if __name__ == "__main__":
    main()
