"""Retrying a Decodo job whose results fetches failed or expired: the re-driven fetches store
the results and the job completes (POST /jobs/{id}/retry, and `receiver retry JOB`)."""

from __future__ import annotations

import base64

import httpx
import orjson

from receiver.sandbox.decodo import DEFAULT_AUTH
from tests.e2e import Deployment, deployment
from tests.servers import RedisProcess, run_cli
from tests.test_events import finish_tasks, held_job
from tests.test_watch import cli_env

WRONG_AUTH = base64.b64encode(b"reject:reject").decode()
DAY = 86400.0


def advance_sandbox_clock(d: Deployment, seconds: float) -> None:
    response = httpx.post(f"{d.sandbox}/_sandbox/advance", json={"seconds": seconds}, timeout=10)
    assert response.status_code == 200, response.text


def task_statuses(job: dict[str, object]) -> dict[str, str]:
    tasks = job["tasks"]
    assert isinstance(tasks, list)
    return {task["id"]: task["status"] for task in tasks}


def test_retry_refetches_results_refused_with_401_and_completes(
    redis_process: RedisProcess,
) -> None:
    with deployment(redis_process, completion_delay=60) as d:
        job_id, task_ids = held_job(d, 2)
        d.configure_sandbox(auth=WRONG_AUTH)  # the results fetches are refused: 401
        finish_tasks(d, task_ids)
        failed = d.wait(job_id)
        assert failed["status"] == "failed", failed
        assert set(task_statuses(failed).values()) == {"failed"}
        assert all(task["error"].startswith("unauthorized") for task in failed["tasks"])
        assert d.results(job_id)["results"] == {}
        d.configure_sandbox(auth=DEFAULT_AUTH)
        response = httpx.post(f"{d.api}/jobs/{job_id}/retry", headers=d.headers(), timeout=10)
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "running" and "error" not in response.json()
        job = d.wait(job_id)
        results = d.results(job_id)["results"]
        events = [event["type"] for event in d.events(job_id)]
    assert job["status"] == "completed", job
    assert job["progress"] == {"completed": 2, "failed": 0, "total": 2}
    assert task_statuses(job) == dict.fromkeys(task_ids, "stored")
    assert not any("error" in task for task in job["tasks"])
    assert sorted(results) == sorted(task_ids)
    for task_id in task_ids:  # the sandbox's own results, as fetched again
        assert results[task_id]["results"][0]["task_id"] == task_id
    assert events.count("job.failed") == 1 and events[-1] == "job.completed"


def test_retry_command_refetches_an_expired_jobs_results(redis_process: RedisProcess) -> None:
    # The results answer waits 0.5 s: the sandbox clock jumps past its retention meanwhile,
    # so the fetch finds the results expired.
    with deployment(redis_process, completion_delay=60, results_latency=0.5) as d:
        job_id, (task_id,) = held_job(d, 1)
        finish_tasks(d, [task_id])
        advance_sandbox_clock(d, 2 * DAY)
        expired = d.wait(job_id)
        assert expired["status"] == "expired", expired
        assert task_statuses(expired) == {task_id: "expired"}
        advance_sandbox_clock(d, -2 * DAY)  # the sandbox keeps the results again
        retried = run_cli(cli_env(d.api), "retry", job_id, "--json")
        assert retried.returncode == 0, retried.stderr
        assert orjson.loads(retried.stdout)["status"] == "running"
        job = d.wait(job_id)
        results = d.results(job_id)["results"]
    assert job["status"] == "completed", job
    assert job["progress"] == {"completed": 1, "failed": 0, "total": 1}
    assert task_statuses(job) == {task_id: "stored"}
    assert list(results) == [task_id]
    assert results[task_id]["results"][0]["task_id"] == task_id
