"""What the attack tests share: a receiver under uvicorn on the session's real Redis, and a
snapshot of every key in it, to show that a refused request wrote nothing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
import redis as sync_redis
from redis.asyncio import Redis

from receiver.app import create_app
from receiver.settings import Settings
from receiver.store import Store
from receiver.tokens import PassthroughSigner
from tests.servers import RedisProcess, serve_app

# The receiver's keys (the first signs) and its API token: strong, as a deployment's are.
KEYS = ("4aK9vQ2mXr7LtP0sWc3eHy8uJd1fZb6n", "Tq5Vw8Rz2Kx7Mp4Ls9Nc1Hd6Gf3Jb0Ya")
API_TOKEN = "Xe7Kp2Qw9Lr4Tz6Mv1Nb8Hc3Jd5Fs0Ga"
# A body limit above the attacks' padded tokens (1 MB of junk, 6 MB once JSON-escaped), so
# their refusal is the token check's, not the body limit's.
MAX_BODY = 8 * 1024 * 1024

Snapshot = dict[bytes, tuple[bytes, bytes | None]]


def snapshot(redis: sync_redis.Redis) -> Snapshot:
    """Every key with its type and DUMP: equal snapshots mean nothing was written."""
    keys: Any = redis.keys("*")
    taken: Snapshot = {}
    for key in sorted(keys):
        kind: Any = redis.type(key)
        dump: Any = redis.dump(key)
        taken[key] = (kind, dump)
    return taken


async def snapshot_async(redis: Redis) -> Snapshot:
    """`snapshot` through an asyncio client."""
    keys: Any = await redis.keys("*")
    taken: Snapshot = {}
    for key in sorted(keys):
        kind: Any = await redis.type(key)
        dump: Any = await redis.dump(key)
        taken[key] = (kind, dump)
    return taken


@dataclass
class Target:
    """A running receiver (web only, no worker) and a client of its Redis."""

    url: str
    redis: sync_redis.Redis
    redis_url: str
    signer: PassthroughSigner  # with the receiver's keys: signs tokens it takes
    http: httpx.Client  # kept alive: an attack is many requests

    def snapshot(self) -> Snapshot:
        return snapshot(self.redis)

    def decodo(self, body: object) -> httpx.Response:
        """POST /callbacks/decodo with `body` (bytes as they are, anything else as JSON)."""
        content = body if isinstance(body, bytes) else orjson.dumps(body)
        return self.http.post(f"{self.url}/callbacks/decodo", content=content)

    def firecrawl(self, body: Mapping[str, Any], token: str | None) -> httpx.Response:
        """POST /callbacks/firecrawl?token=... with a JSON body."""
        params = {} if token is None else {"token": token}
        url = f"{self.url}/callbacks/firecrawl"
        return self.http.post(url, params=params, content=orjson.dumps(body))

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {API_TOKEN}"}
        return self.http.request(method, f"{self.url}{path}", headers=headers, **kwargs)

    def write(self, step: Any) -> None:
        """Run `step(store)` on a Store of the receiver's Redis (to set up jobs)."""

        async def run() -> None:
            client = Redis.from_url(self.redis_url)
            try:
                await step(Store(client))
            finally:
                await client.aclose()

        asyncio.run(run())


async def create_running_job(store: Store, job_id: str, tasks: list[str]) -> None:
    """A Decodo job with its tasks pending, as its submission leaves it."""
    await store.create_job(job_id, "decodo", total=len(tasks), params={}, work="")
    pairs = [(task, f"https://example.com/{task}") for task in tasks]
    await store.record_submission(job_id, 0, pairs, last=True, reconcile_after=300)


@contextlib.contextmanager
def running_target(redis_process: RedisProcess, **changes: Any) -> Iterator[Target]:
    client = sync_redis.Redis.from_url(redis_process.url)
    client.flushall()
    settings = Settings(
        redis_url=redis_process.url,
        secret_keys=KEYS,
        api_token=API_TOKEN,
        max_body=MAX_BODY,
        **changes,
    )
    signer = PassthroughSigner(KEYS, settings.token_max_age)
    try:
        with serve_app(create_app(settings)) as url, httpx.Client(timeout=30) as http:
            yield Target(url, client, redis_process.url, signer, http)
    finally:
        client.close()


@pytest.fixture
def target(redis_process: RedisProcess) -> Iterator[Target]:
    """The web app on the session's Redis, emptied first."""
    with running_target(redis_process) as running:
        yield running
