"""A receiver web app under uvicorn on a real Redis, for tests of its endpoints."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import redis as sync_redis

from receiver.app import create_app
from receiver.settings import Settings
from receiver.tokens import PassthroughSigner
from tests.data import DATA
from tests.servers import RedisProcess, serve_app

KEYS = ("new-key", "old-key")


def load_example(name: str) -> dict[str, object]:
    """An example body of the Decodo seed (its doc page on asynchronous requests), as kept in
    tests/data in the seed's key order."""
    example: dict[str, object] = orjson.loads((DATA / name).read_bytes())
    return example


def seed_callback_body() -> dict[str, object]:
    """The seed's example callback body, from its data file (not the sandbox's copy)."""
    return load_example("decodo_callback_example.json")


def seed_status_body() -> dict[str, object]:
    """The seed's first example answer of GET /v3/task/{task_id}."""
    return load_example("decodo_status_example.json")


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
