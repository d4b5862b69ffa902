"""Nothing outlives its job: what a job holds while it runs ends with it, and a job ends
whatever a provider answers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from receiver.keys import Keys
from receiver.providers.decodo import DecodoClient
from receiver.settings import Settings
from receiver.store import Store
from receiver.tokens import PassthroughSigner
from tests.attack.conftest import KEYS, Target, running_target, snapshot_async
from tests.servers import RedisProcess

# The keys a job keeps once it ended: its record, as long as the job. Its results expire
# on their own TTL; nothing else may be left.
RECORD = {"", ":tasks", ":inputs", ":errors", ":attempts"}
EXPIRING = {":results"}


@pytest.fixture
def decodo_target(redis_process: RedisProcess) -> Iterator[Target]:
    """The web app (no worker: a job it creates stays submitting) with Decodo credentials."""
    with running_target(redis_process, decodo_auth="dXNlcjpwYXNz") as running:
        yield running


def leftovers(redis: Any, job_id: str) -> dict[str, int]:
    """The job's keys beyond its record, by suffix, with their TTL (-1: none)."""
    prefix = Keys().job(job_id)
    found = {}
    for key in redis.keys(prefix.replace("{", "[{]").replace("}", "[}]") + "*"):
        suffix = key.decode().removeprefix(prefix)
        if suffix not in RECORD and not (suffix in EXPIRING and redis.ttl(key) > 0):
            found[suffix] = redis.ttl(key)
    return found


def test_callbacks_held_aside_end_with_a_job_cancelled_while_submitting(
    decodo_target: Target,
) -> None:
    target = decodo_target
    urls = [f"https://example.com/{n}" for n in range(1000)]
    created = target.api("POST", "/jobs", json={"provider": "decodo", "urls": urls})
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    token = target.signer.sign(job_id)

    # A valid token with junk task ids, before the submission's answer: each held aside.
    for n in range(1000):
        answer = target.decodo({"passthrough": token, "id": f"junk-{n}", "status": "done"})
        assert answer.json() == {"status": "early"}, answer.text
    early = Keys().early(job_id)
    assert target.redis.hlen(early) == 1000

    cancelled = target.api("DELETE", f"/jobs/{job_id}")
    assert (cancelled.status_code, cancelled.json()["status"]) == (200, "cancelled")
    assert not target.redis.exists(early)
    assert leftovers(target.redis, job_id) == {}

    # The ended job takes nothing more: a callback of it is closed, and writes nothing.
    before = target.snapshot()
    for task in ("junk-0", "junk-1000"):
        answer = target.decodo({"passthrough": token, "id": task, "status": "done"})
        assert (answer.status_code, answer.json()) == (202, {"status": "closed"})
    assert target.snapshot() == before


@pytest.mark.anyio
async def test_callbacks_held_aside_end_with_a_job_whose_submission_is_refused(
    redis: Redis, store: Store
) -> None:
    from receiver.jobs.decodo import DecodoJobs

    await store.create_job(
        "j1",
        "decodo",
        total=3,
        params={"key": "url", "items": ["https://a/"] * 3, "batch": True, "params": {}},
        work="submit",
    )
    assert (
        await store.apply_callbacks([("j1", f"junk-{n}", "done") for n in range(3)])
        == ["early"] * 3
    )

    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"message": "Unauthorized"})

    settings = Settings(secret_keys=KEYS, decodo_batch_interval=0.0)
    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as http:
        client = DecodoClient(http, "https://scraper-api.decodo.com", "dXNlcjpwYXNz")
        jobs = DecodoJobs(store, client, PassthroughSigner(KEYS, 3600), settings)
        assert await jobs.submit("j1") is None

    job = await store.get_job("j1")
    assert job is not None and job["status"] == "failed", job
    assert not await redis.exists(store.keys.early("j1"))
    before = await snapshot_async(redis)
    assert await store.apply_callbacks([("j1", "junk-0", "done")]) == ["closed"]
    assert await snapshot_async(redis) == before
