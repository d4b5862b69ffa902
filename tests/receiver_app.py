"""A receiver web app under uvicorn on a real Redis, for tests of its endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import redis as sync_redis

from receiver.app import create_app
from receiver.settings import Settings
from receiver.tokens import PassthroughSigner
from tests.sandbox.openapi_seeds import SEEDS_DIR
from tests.servers import RedisProcess, serve_app

# The Decodo seed: its doc page on asynchronous requests, examples and all.
DECODO_SEED = "002_86429b235c9c91fd.txt"
KEYS = ("new-key", "old-key")


@functools.cache
def seed_example(after: str) -> dict[str, object]:
    """The first JSON example of the Decodo seed after the first `after` in its text.

    An example is a `{` at the start of a line, then its indented lines; the seed's callback
    example lacks its closing brace, which is put back.
    """
    text = (SEEDS_DIR / DECODO_SEED).read_text(encoding="utf-8")
    lines = text[text.index(after) :].splitlines()
    block = lines[lines.index("{") :]
    end = next((i for i, line in enumerate(block[1:], 1) if not line.startswith((" ", "}"))), None)
    source = "\n".join(block[:end])
    if not source.rstrip().endswith("}"):
        source += "\n}"
    example: dict[str, object] = orjson.loads(source)
    return example


def seed_callback_body() -> dict[str, object]:
    """The seed's example callback body, read from the seed text (not the sandbox's copy)."""
    return dict(seed_example('"callback_url"'))


def seed_status_body() -> dict[str, object]:
    """The seed's first example answer of GET /v3/task/{task_id}."""
    return dict(seed_example("/v3/task/{task_id}'"))


# The seed's example callback body; tests add the passthrough note and their own task id.
SEED_CALLBACK: dict[str, object] = dict(seed_callback_body())


@dataclass
class Receiver:
    url: str
    redis: sync_redis.Redis
    signer: PassthroughSigner

    def post(self, body: object, **kwargs: object) -> httpx.Response:
        content = body if isinstance(body, bytes) else orjson.dumps(body)
        return httpx.post(f"{self.url}/callbacks/decodo", content=content, timeout=10, **kwargs)  # type: ignore[arg-type]

    def snapshot(self) -> dict[Any, Any]:
        """Every key with its serialized value: equal snapshots mean nothing was written."""
        keys: Any = self.redis.keys("*")
        return {key: self.redis.dump(key) for key in sorted(keys)}


@contextlib.contextmanager
def running_receiver(redis_process: RedisProcess) -> Iterator[Receiver]:
    client = sync_redis.Redis.from_url(redis_process.url)
    client.flushall()
    settings = Settings(redis_url=redis_process.url, secret_keys=KEYS, api_token="t", max_body=4096)
    with serve_app(create_app(settings)) as url:
        yield Receiver(url, client, PassthroughSigner(KEYS, settings.token_max_age))
    client.close()


def make_job(receiver: Receiver, job_id: str, tasks: list[str]) -> None:
    """A running job with pending tasks, written as the submission step writes it."""

    from redis.asyncio import Redis

    from receiver.store import Store

    async def write() -> None:
        client = Redis(port=receiver.redis.connection_pool.connection_kwargs["port"])
        store = Store(client)
        await store.create_job(job_id, "decodo", total=len(tasks), params={}, work="")
        await store.record_submission(
            job_id, 0, [(t, "u") for t in tasks], last=True, reconcile_after=300
        )
        await client.aclose()

    asyncio.run(write())
