"""POST /jobs: every bad request is a clear 400 and writes nothing."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.e2e import Deployment, PolledDeployment, polled_deployment
from tests.e2e import deployment as decodo_deployment
from tests.servers import RedisProcess, free_port, run_cli, run_redis, wait_for_port

BATCH = str(uuid.UUID(int=1))
MANY = [f"https://site.example/{i}" for i in range(10_000)]

BAD_BODIES: dict[str, Any] = {
    "not_an_object": [1, 2],
    "unknown_provider": {"provider": "nope", "url": "https://a.example"},
    "provider_wrong_type": {"provider": 5, "url": "https://a.example"},
    "decodo_nothing_to_scrape": {"provider": "decodo"},
    "decodo_url_and_urls": {"provider": "decodo", "url": "https://a", "urls": ["https://b"]},
    "decodo_empty_urls": {"provider": "decodo", "urls": []},
    "decodo_urls_not_a_list": {"provider": "decodo", "urls": "https://a"},
    "decodo_urls_wrong_types": {"provider": "decodo", "urls": [1, 2]},
    "decodo_not_http": {"provider": "decodo", "url": "ftp://a"},
    "decodo_sets_callback_url": {"provider": "decodo", "url": "https://a", "callback_url": "x"},
    "decodo_target_wrong_type": {"provider": "decodo", "url": "https://a", "target": 5},
    "firecrawl_no_ids": {"provider": "firecrawl"},
    "firecrawl_both": {"provider": "firecrawl", "batch_id": BATCH, "urls": ["https://a"]},
    "firecrawl_batch_not_uuid": {"provider": "firecrawl", "batch_id": "../../etc"},
    "firecrawl_batch_wrong_type": {"provider": "firecrawl", "batch_id": 42},
    "firecrawl_urls_wrong_types": {"provider": "firecrawl", "urls": [None]},
    "firecrawl_10000_urls": {"provider": "firecrawl", "urls": MANY},
    "firecrawl_unknown_option": {"provider": "firecrawl", "urls": ["https://a"], "bogus": 1},
    "firecrawl_sets_webhook": {"provider": "firecrawl", "urls": ["https://a"], "webhook": "x"},
    "firecrawl_bad_stall_after": {"provider": "firecrawl", "batch_id": BATCH, "stall_after": -1},
    "dify_missing_batch": {"provider": "dify", "dataset_id": "d"},
    "dify_missing_dataset": {"provider": "dify", "batch": "20261122000000123456"},
    "dify_ids_wrong_type": {"provider": "dify", "dataset_id": 1, "batch": 2},
    "dify_path_in_id": {"provider": "dify", "dataset_id": "a/../b", "batch": "1"},
    "dify_unknown_field": {"provider": "dify", "dataset_id": "d", "batch": "1", "x": 1},
}


def wait_for_tasks(d: Deployment, job_id: str, count: int) -> list[dict[str, Any]]:
    """The job's tasks once the sandbox has answered for all of them."""
    deadline = time.monotonic() + 30
    while len(tasks := d.job(job_id)["tasks"]) < count:
        assert time.monotonic() < deadline, f"{len(tasks)} of {count} tasks submitted"
        time.sleep(0.1)
    submitted: list[dict[str, Any]] = tasks
    return submitted


@pytest.fixture(scope="module")
def deployment(redis_process: RedisProcess) -> Iterator[PolledDeployment]:
    with polled_deployment(redis_process, with_worker=False) as d:
        yield d


@pytest.mark.parametrize("name", sorted(BAD_BODIES))
def test_bad_job_request_is_refused_and_writes_nothing(
    deployment: PolledDeployment, name: str
) -> None:
    deployment.redis.flushall()
    response = httpx.post(
        f"{deployment.api}/jobs",
        content=orjson.dumps(BAD_BODIES[name]),
        headers=deployment.headers(),
        timeout=30,
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_request"
    assert response.json()["message"]
    assert deployment.redis.dbsize() == 0


# A job of each provider, and the credential variable it needs on the providers' own hosts.
NEEDS_CREDENTIAL = {
    "DECODO_AUTH": ({"decodo_auth": ""}, {"provider": "decodo", "url": "https://a.example"}),
    "FIRECRAWL_API_KEY": (
        {"firecrawl_api_key": "", "firecrawl_base_url": "https://api.firecrawl.dev"},
        {"provider": "firecrawl", "urls": ["https://a.example"]},
    ),
    "DIFY_API_KEY": (
        {"dify_api_key": ""},
        {"provider": "dify", "dataset_id": "d", "batch": "20261122000000123456"},
    ),
}


@pytest.mark.parametrize("variable", sorted(NEEDS_CREDENTIAL))
def test_a_job_whose_provider_has_no_credentials_is_refused_naming_the_variable(
    redis_process: RedisProcess, variable: str
) -> None:
    changes, body = NEEDS_CREDENTIAL[variable]
    with polled_deployment(redis_process, settings=changes, with_worker=False) as d:
        d.redis.flushall()
        response = httpx.post(
            f"{d.api}/jobs", content=orjson.dumps(body), headers=d.headers(), timeout=30
        )
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "invalid_request"
        assert variable in response.json()["message"]
        assert d.redis.dbsize() == 0


def test_a_self_hosted_firecrawl_needs_no_key(redis_process: RedisProcess) -> None:
    """USE_DB_AUTHENTICATION=false servers take no key: only the cloud's origin needs one."""
    with polled_deployment(redis_process, settings={"firecrawl_api_key": ""}) as d:
        job_id = d.create({"provider": "firecrawl", "urls": ["https://a.example/1"]})
        assert d.job(job_id)["status"] in ("submitted", "running", "completed", "failed")


def test_malformed_json_job_request(deployment: PolledDeployment) -> None:
    deployment.redis.flushall()
    response = httpx.post(
        f"{deployment.api}/jobs", content=b"{", headers=deployment.headers(), timeout=10
    )
    assert response.status_code == 400 and deployment.redis.dbsize() == 0


def test_decodo_10000_urls_are_accepted(deployment: PolledDeployment) -> None:
    job_id = deployment.create({"provider": "decodo", "urls": MANY})
    assert deployment.job(job_id)["request"]["items"] == 10_000


def test_decodo_batch_over_3000_items_is_submitted_in_chunks_of_at_most_3000() -> None:
    urls = MANY[:3001]
    # Its own Redis: the worker beside this receiver must not meet the module's jobs.
    with run_redis() as redis_server, decodo_deployment(redis_server, completion_delay=600) as d:
        job_id = d.submit({"urls": urls})
        tasks = wait_for_tasks(d, job_id, len(urls))
        stats = d.sandbox_stats()
    # The sandbox answers 400 to a batch of more than 3000 items, so two accepted batch
    # requests holding 3001 tasks between them were chunks of at most 3000.
    assert stats.get("batch 200") == 2, stats
    # A 429 may come and be retried (the sandbox times a batch by its arrival), a 400 never.
    assert "batch 400" not in stats and not any(key.startswith("submit") for key in stats), stats
    assert sorted(task["input"] for task in tasks) == sorted(urls)
    assert len({task["id"] for task in tasks}) == len(urls)


def test_cli_track_commands(deployment: PolledDeployment, redis_process: RedisProcess) -> None:
    port = free_port()
    env = {
        "REDIS_URL": redis_process.url,
        "RECEIVER_SECRET_KEYS": "k9Xq2mT7vR4wZp8L",
        "PATH": "/usr/bin",
        "RECEIVER_API_TOKEN": "cli-token-2b7e5d9a",
        "PORT": str(port),
        "FIRECRAWL_API_KEY": "fc-test",
        "DIFY_API_KEY": "dataset-test",
    }
    with subprocess.Popen(
        [sys.executable, "-m", "receiver", "web"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ) as web:
        try:
            wait_for_port(port)
            for args in (["firecrawl", BATCH], ["dify", "dataset-1", "20261122000000123456"]):
                result = run_cli(env, "track", *args, "--stall-after", "60", timeout=30)
                assert result.returncode == 0, result.stderr
                job = orjson.loads(result.stdout)
                assert job["provider"] == args[0] and job["status"] == "running"
                assert job["stall_after"] == 60
        finally:
            web.terminate()
            web.wait(20)


def test_list_jobs_filters_and_pages_with_a_cursor(deployment: PolledDeployment) -> None:
    deployment.redis.flushall()
    created = [
        deployment.create({"provider": "firecrawl", "batch_id": str(uuid.uuid4())})
        for _ in range(7)
    ]
    created += [
        deployment.create({"provider": "dify", "dataset_id": "d", "batch": f"b{i}"})
        for i in range(3)
    ]
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, str] = {"provider": "firecrawl", "limit": "3"}
        if cursor:
            params["cursor"] = cursor
        page = httpx.get(
            f"{deployment.api}/jobs", params=params, headers=deployment.headers(), timeout=10
        ).json()
        seen += [job["id"] for job in page["jobs"]]
        assert all(job["provider"] == "firecrawl" for job in page["jobs"])
        cursor = page["next_cursor"]
        if not page["jobs"] or cursor is None:
            break
    assert seen == list(reversed(created[:7]))  # newest first, each once
    running = httpx.get(
        f"{deployment.api}/jobs",
        params={"status": "running"},
        headers=deployment.headers(),
        timeout=10,
    ).json()
    assert len(running["jobs"]) == 10
    done = httpx.get(
        f"{deployment.api}/jobs",
        params={"status": "completed"},
        headers=deployment.headers(),
        timeout=10,
    ).json()
    assert done == {"jobs": [], "next_cursor": None}
    for bad in ({"status": "nope"}, {"provider": "x"}, {"limit": "0"}, {"cursor": "abc"}):
        response = httpx.get(
            f"{deployment.api}/jobs", params=bad, headers=deployment.headers(), timeout=10
        )
        assert response.status_code == 400, bad
