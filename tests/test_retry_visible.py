"""A job with work in retry says why: its last error and its failures in a row, in the job
and in a `job.progress` event, for every kind of work; both go once the work succeeds."""

from __future__ import annotations

import time
from typing import Any

from tests.e2e import Deployment, deployment, polled_deployment
from tests.servers import RedisProcess, free_port


def wait_for_failures(d: Deployment, job_id: str, at_least: int) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        job = d.job(job_id)
        if job.get("consecutive_failures", 0) >= at_least:
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def retry_events(d: Deployment, job_id: str) -> list[dict[str, Any]]:
    return [e for e in d.events(job_id) if "last_error" in e["detail"]]


def test_a_decodo_submission_in_retry_shows_its_error_until_it_goes_through(
    redis_process: RedisProcess,
) -> None:
    # Every submission is refused with a 503 for the first 3 s, then accepted.
    knobs: dict[str, Any] = {
        "inject": "5xx",
        "inject_routes": "POST /v3/task",
        "inject_seconds": 3.0,
    }
    with deployment(redis_process, **knobs) as d:
        job_id = d.submit({"url": "https://ip.decodo.com"})
        job = wait_for_failures(d, job_id, 2)
        assert job["status"] == "submitted"
        assert "decodo answered 503" in job["last_error"]
        assert job["last_error_at"]
        events = retry_events(d, job_id)
        assert [e["detail"]["consecutive_failures"] for e in events[:2]] == [1, 2]
        assert events[0]["detail"]["work"] == "submit"
        ended = d.wait(job_id, timeout=30)
        assert ended["status"] == "completed", ended
        assert "last_error" not in ended and "consecutive_failures" not in ended


def test_a_decodo_results_fetch_in_retry_shows_its_error(redis_process: RedisProcess) -> None:
    knobs: dict[str, Any] = {
        "inject": "5xx",
        "inject_routes": "GET /v3/task/*/results",
        "inject_seconds": 3.0,
    }
    with deployment(redis_process, completion_delay=0.05, **knobs) as d:
        job_id = d.submit({"url": "https://ip.decodo.com"})
        job = wait_for_failures(d, job_id, 2)
        assert "decodo answered 503" in job["last_error"]
        assert retry_events(d, job_id)[0]["detail"]["work"].startswith("fetch:")
        ended = d.wait(job_id, timeout=30)
        assert ended["status"] == "completed"
        assert "consecutive_failures" not in ended


def test_a_decodo_job_with_no_route_to_decodo_says_so(redis_process: RedisProcess) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    with deployment(redis_process, settings={"decodo_base_url": closed}) as d:
        job_id = d.submit({"url": "https://ip.decodo.com"})
        job = wait_for_failures(d, job_id, 3)
        assert job["status"] == "submitted"
        assert job["last_error"] == "decodo unreachable: connection refused"


def test_a_dify_job_whose_polls_keep_failing_shows_the_last_error(
    redis_process: RedisProcess,
) -> None:
    closed = f"http://127.0.0.1:{free_port()}/v1"
    with polled_deployment(redis_process, settings={"dify_base_url": closed}) as d:
        job_id = d.create(
            {"provider": "dify", "dataset_id": "d-1", "batch": "20261122000000123456"}
        )
        job = wait_for_failures(d, job_id, 3)
        assert job["status"] == "running"
        assert job["last_error"] == "dify unreachable: connection refused"
        assert retry_events(d, job_id)[0]["detail"]["work"] == "poll"


def test_a_firecrawl_poll_in_retry_clears_once_a_poll_works(redis_process: RedisProcess) -> None:
    firecrawl = {"inject": "5xx", "inject_routes": "GET /v2/batch/scrape/*", "inject_seconds": 2.0}
    with polled_deployment(redis_process, firecrawl=firecrawl) as d:
        job_id = d.create({"provider": "firecrawl", "urls": ["https://a.example/1"]})
        job = wait_for_failures(d, job_id, 2)
        assert "firecrawl answered 503" in job["last_error"]
        ended = d.wait(job_id, timeout=30)
        assert ended["status"] == "completed", ended
        assert "last_error" not in ended
