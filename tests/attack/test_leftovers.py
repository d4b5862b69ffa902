"""Nothing outlives its job: what a job holds while it runs ends with it, and a job ends
whatever a provider answers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from receiver.jobs.decodo import DecodoJobs
from receiver.jobs.firecrawl import FirecrawlJobs
from receiver.providers.base import open_http
from receiver.providers.decodo import DecodoClient
from receiver.providers.firecrawl import FirecrawlClient
from receiver.settings import Settings
from receiver.store import Store
from receiver.store.keys import Keys
from receiver.tokens import PassthroughSigner
from tests.attack.conftest import KEYS, Target, running_target, snapshot_async
from tests.providers.test_unusable_answers import NOT_HTTP, raw_server
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


# -- every job ends, whatever its provider answers ------------------------------------------

BATCH = "0198f6f5-4a1e-7000-8000-000000000006"
STALL_AFTER = 5.0


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _settings(**changes: Any) -> Settings:
    return Settings(
        secret_keys=KEYS,
        firecrawl_rps=1000.0,
        firecrawl_stall_after=STALL_AFTER,
        public_url="https://receiver.example",
        **changes,
    )


async def _poll_until_ended(
    store: Store, jobs: FirecrawlJobs, job_id: str, clock: Clock, polls: int = 5
) -> dict[str, Any]:
    """Poll the job as the worker would, the clock moving 2 s a poll; the job once ended."""
    for _ in range(polls):
        job = await store.get_job(job_id)
        assert job is not None
        if job["status"] not in ("submitted", "running"):
            return job
        await jobs.poll(job)
        clock.now += 2.0
    job = await store.get_job(job_id)
    assert job is not None
    return job


@pytest.mark.anyio
@pytest.mark.parametrize("name", ["status_line", "content_length", "chunk_size"])
async def test_a_polled_job_answered_something_not_http_fails_at_its_stall_timeout(
    store: Store, name: str
) -> None:
    clock = Clock()
    job_id, _ = await store.track_job("firecrawl", BATCH, {"batch_id": BATCH})
    async with raw_server(NOT_HTTP[name]) as url, open_http(_settings()) as http:
        client = FirecrawlClient(http, url, "fc-test")
        signer = PassthroughSigner(KEYS, 3600).webhook_signer()
        jobs = FirecrawlJobs(store, client, _settings(), signer, clock=clock)
        job = await _poll_until_ended(store, jobs, job_id, clock)
    assert job["status"] == "failed", job
    assert job["error"] == "stalled: no progress for 5 s (polls failing: bad_answer)"
    assert "not HTTP" in job["last_error"]


@pytest.mark.anyio
async def test_a_polled_job_whose_url_cannot_be_requested_fails_at_once(store: Store) -> None:
    clock = Clock()
    job_id, _ = await store.track_job("firecrawl", BATCH, {"batch_id": BATCH})
    async with open_http(_settings()) as http:
        client = FirecrawlClient(http, "http://user:pw@127.0.0.1:9", "fc-test")
        signer = PassthroughSigner(KEYS, 3600).webhook_signer()
        jobs = FirecrawlJobs(store, client, _settings(), signer, clock=clock)
        job = await _poll_until_ended(store, jobs, job_id, clock)
    assert job["status"] == "failed", job
    assert job["error"].startswith("bad_url: firecrawl URL cannot be requested: Cannot combine")


@pytest.mark.anyio
async def test_a_batch_whose_next_is_not_a_url_fails_saying_so(store: Store) -> None:
    clock = Clock()
    job_id, _ = await store.track_job("firecrawl", BATCH, {"batch_id": BATCH})
    page = {"success": True, "status": "completed", "completed": 2, "total": 2}
    data = [{"markdown": "a", "metadata": {"sourceURL": "https://a.example/"}}]
    answer = {**page, "data": data, "next": "http://127.0.0.1:9002:99999/v2/batch/scrape/x"}

    def firecrawl(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=answer)

    async with httpx.AsyncClient(transport=httpx.MockTransport(firecrawl)) as http:
        client = FirecrawlClient(http, "http://127.0.0.1:9002", "fc-test")
        signer = PassthroughSigner(KEYS, 3600).webhook_signer()
        jobs = FirecrawlJobs(store, client, _settings(), signer, clock=clock)
        job = await _poll_until_ended(store, jobs, job_id, clock)
    assert job["status"] == "failed", job
    assert job["error"] == (
        "foreign_next_url: firecrawl next URL is not a URL: Invalid port: '9002:99999'"
    )


@pytest.mark.anyio
async def test_a_decodo_job_whose_results_cannot_be_requested_ends_failed(store: Store) -> None:
    await store.create_job("j1", "decodo", total=1, params={}, work="")
    await store.record_submission("j1", 0, [("t1", "https://a/")], last=True, reconcile_after=300)
    assert await store.apply_callbacks([("j1", "t1", "done")]) == ["accepted"]
    async with open_http(_settings()) as http:
        client = DecodoClient(http, "http://user:pw@127.0.0.1:9", "dXNlcjpwYXNz")
        jobs = DecodoJobs(store, client, PassthroughSigner(KEYS, 3600), _settings())
        assert await jobs.fetch("j1", "t1") is None
    job = await store.get_job("j1")
    assert job is not None and job["status"] == "failed", job
    tasks = await store.get_task_details("j1")
    assert tasks[0]["status"] == "failed"
    assert tasks[0]["error"].startswith("bad_url: decodo URL cannot be requested: Cannot combine")


@pytest.mark.anyio
async def test_a_decodo_job_answered_something_not_http_expires_with_its_results(
    store: Store,
) -> None:
    clock = Clock()
    await store.create_job("j1", "decodo", total=1, params={}, work="")
    await store.record_submission("j1", 0, [("t1", "https://a/")], last=True, reconcile_after=300)
    await store.apply_callbacks([("j1", "t1", "done")])
    settings = _settings(provider_retention=60.0)
    async with raw_server(NOT_HTTP["status_line"]) as url, open_http(settings) as http:
        client = DecodoClient(http, url, "dXNlcjpwYXNz")
        jobs = DecodoJobs(store, client, PassthroughSigner(KEYS, 3600), settings, clock=clock)
        retry = await jobs.fetch("j1", "t1")  # worth another try: a proxy's hiccup, maybe
        assert retry is not None
        job = await store.get_job("j1")
        assert job is not None and "not HTTP" in job["last_error"]
        clock.now += 61.0  # Decodo no longer keeps the results: the task expires
        await asyncio.sleep(1.1)  # past the job state cached for a second
        assert await jobs.fetch("j1", "t1") is None
    job = await store.get_job("j1")
    assert job is not None and job["status"] == "expired", job
