"""The Decodo path end to end: sandbox, receiver and worker as real servers, real callbacks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import redis

from tests.e2e import Deployment, deployment, e2e_settings
from tests.servers import RedisProcess


def final_events(events: list[dict[str, object]]) -> list[object]:
    return [
        e["type"]
        for e in events
        if str(e["type"]).startswith("job.") and e["type"] not in ("job.created", "job.progress")
    ]


def test_single_task_completes_with_results(redis_process: RedisProcess) -> None:
    with deployment(redis_process) as d:
        job_id = d.submit({"url": "https://ip.decodo.com", "target": "universal"})
        job = d.wait(job_id)
        assert job["status"] == "completed"
        assert job["progress"] == {"completed": 1, "failed": 0, "total": 1}
        (task,) = job["tasks"]
        assert task["status"] == "stored" and task["input"] == "https://ip.decodo.com"
        results = d.results(job_id)["results"][task["id"]]
        assert results["results"][0]["task_id"] == task["id"]
        types = [e["type"] for e in d.events(job_id)]
        assert types[0] == "job.created" and types[-1] == "job.completed"
        assert "task.completed" in types
        stats = d.sandbox_stats()
        assert stats["submit 200"] == 1


def test_batch_with_one_faulted_task(redis_process: RedisProcess) -> None:
    with deployment(redis_process, completion_delay=60.0) as d:
        urls = [f"https://example.com/{i}" for i in range(5)]
        job_id = d.submit({"urls": urls})
        deadline = time.monotonic() + 10
        while len(d.job(job_id)["tasks"]) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        tasks = [t["id"] for t in d.job(job_id)["tasks"]]
        for index, task_id in enumerate(tasks):
            status = "faulted" if index == 0 else "done"
            httpx.post(
                f"{d.sandbox}/_sandbox/tasks/{task_id}/complete",
                json={"status": status},
                timeout=10,
            ).raise_for_status()
        job = d.wait(job_id)
        assert job["status"] == "completed"
        assert job["progress"] == {"completed": 4, "failed": 1, "total": 5}
        faulted = next(t for t in job["tasks"] if t["id"] == tasks[0])
        assert faulted["status"] == "failed" and "faulted" in faulted["error"]
        assert len(d.results(job_id)["results"]) == 4


def test_every_task_faulted_fails_the_job(redis_process: RedisProcess) -> None:
    with deployment(redis_process, fault_rate=1.0) as d:
        job = d.wait(d.submit({"urls": ["https://a.example", "https://b.example"]}))
        assert job["status"] == "failed"
        assert final_events(d.events(job["id"])) == ["job.failed"]


def test_duplicated_callbacks_complete_the_job_once(redis_process: RedisProcess) -> None:
    with deployment(redis_process, duplicate_rate=1.0, callback_delay=0.05) as d:
        job_id = d.submit({"urls": [f"https://example.com/{i}" for i in range(10)]})
        job = d.wait(job_id)
        assert job["status"] == "completed" and job["progress"]["completed"] == 10
        time.sleep(0.5)  # let every duplicate arrive
        assert final_events(d.events(job_id)) == ["job.completed"]
        assert sum(e["type"] == "task.completed" for e in d.events(job_id)) == 10
        assert d.redis.hget(f"receiver:job:{{{job_id}}}", "received") == b"10"


def test_reordered_callbacks_complete_the_job(redis_process: RedisProcess) -> None:
    with deployment(redis_process, reorder_window=0.5, completion_jitter=0.3) as d:
        job = d.wait(d.submit({"urls": [f"https://example.com/{i}" for i in range(20)]}))
        assert job["status"] == "completed" and job["progress"]["completed"] == 20


def test_passtrough_spelling_and_short_body_variant(redis_process: RedisProcess) -> None:
    with deployment(redis_process, passthrough_key="passtrough", callback_variant="short") as d:
        job = d.wait(d.submit({"urls": ["https://a.example", "https://b.example"]}))
        assert job["status"] == "completed" and job["progress"]["completed"] == 2


def test_dropped_callbacks_are_recovered_by_reconciliation(redis_process: RedisProcess) -> None:
    with deployment(redis_process, drop_rate=1.0, settings={"reconcile_after": 0.5}) as d:
        job_id = d.submit({"urls": [f"https://example.com/{i}" for i in range(3)]})
        job = d.wait(job_id)
        assert job["status"] == "completed" and job["progress"]["completed"] == 3
        stats = d.sandbox_stats()
        assert stats.get("callbacks sent", 0) == 0
        assert stats["status 200"] >= 3  # GET /v3/task/{id} found them done
        sources = [
            e["detail"].get("source")
            for e in d.events(job_id)
            if e["type"] == "job.progress" and "task_id" in e["detail"]
        ]
        assert sources == ["reconcile"] * 3


def test_results_429_and_500_are_retried(redis_process: RedisProcess) -> None:
    with deployment(redis_process, results_429_rate=0.5, results_500_rate=0.3, retry_after=0) as d:
        job = d.wait(d.submit({"urls": [f"https://example.com/{i}" for i in range(10)]}))
        assert job["status"] == "completed" and job["progress"]["completed"] == 10
        stats = d.sandbox_stats()
        assert stats.get("results 429", 0) > 0 and stats.get("results 500", 0) > 0


def test_results_not_ready_204_is_retried(redis_process: RedisProcess) -> None:
    with deployment(redis_process, completion_delay=0.5, callback_delay=0.0) as d:
        job_id = d.submit({"url": "https://example.com"})
        job = d.wait(job_id)
        assert job["status"] == "completed"


def test_wrong_credentials_fail_the_job_with_a_reason(redis_process: RedisProcess) -> None:
    with deployment(redis_process, settings={"decodo_auth": "d3Jvbmc6d3Jvbmc="}) as d:
        job = d.wait(d.submit({"url": "https://example.com"}))
        assert job["status"] == "failed"
        assert job["error"].startswith("unauthorized")
        assert "d3Jvbmc6d3Jvbmc=" not in job["error"]


def test_expired_results_end_the_task_expired(redis_process: RedisProcess) -> None:
    with deployment(redis_process, completion_delay=60.0, settings={"reconcile_after": 1.0}) as d:
        job_id = d.submit({"url": "https://example.com"})
        deadline = time.monotonic() + 10
        while not d.job(job_id)["tasks"] and time.monotonic() < deadline:
            time.sleep(0.05)
        (task,) = d.job(job_id)["tasks"]
        httpx.post(f"{d.sandbox}/_sandbox/advance", json={"seconds": 25 * 3600}, timeout=10)
        job = d.wait(job_id)
        assert job["status"] == "expired", job
        assert job["tasks"][0]["status"] == "expired"
        assert "expired" in job["tasks"][0]["error"]


def test_batches_over_3000_items_are_chunked_one_per_second(redis_process: RedisProcess) -> None:
    with deployment(redis_process, completion_delay=0.2) as d:
        urls = [f"https://example.com/{i}" for i in range(3005)]
        started = time.monotonic()
        job = d.wait(d.submit({"urls": urls}), timeout=90)
        assert job["status"] == "completed" and job["progress"]["completed"] == 3005
        stats = d.sandbox_stats()
        assert stats["batch 200"] == 2 and stats.get("batch 429", 0) == 0
        assert time.monotonic() - started >= 1.0


def pending_work(d: Deployment) -> int:
    """Work entries read by a worker and not yet acknowledged."""
    try:
        return int(d.redis.xpending("receiver:stream:work", "workers")["pending"])
    except redis.exceptions.ResponseError:  # no worker has created the group yet
        return 0


def test_killed_worker_work_is_reclaimed_by_another(redis_process: RedisProcess) -> None:
    with deployment(redis_process, with_worker=False, results_latency=3.0) as d:
        settings = e2e_settings(redis_process, d.sandbox)
        env = {
            **os.environ,
            "REDIS_URL": redis_process.url,
            "RECEIVER_SECRET_KEYS": "e2e-key",
            "RECEIVER_API_TOKEN": settings.api_token,
            "DECODO_BASE_URL": d.sandbox,
            "DECODO_AUTH": settings.decodo_auth,
            "RECEIVER_CLAIM_IDLE": "1",
            "RECEIVER_PUBLIC_URL": d.api,
        }
        first = subprocess.Popen(
            [sys.executable, "-m", "receiver", "worker"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            job_id = d.submit({"url": "https://example.com"})
            deadline = time.monotonic() + 20
            # The first worker has read the fetch and is waiting on the slow results endpoint.
            while pending_work(d) == 0:
                assert time.monotonic() < deadline, "the first worker never took the fetch"
                time.sleep(0.02)
            time.sleep(0.5)
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            assert d.job(job_id)["status"] == "running"
            assert pending_work(d) == 1
            second = subprocess.Popen(
                [sys.executable, "-m", "receiver", "worker"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                job = d.wait(job_id, timeout=30)
            finally:
                second.terminate()
                second.wait(10)
            assert job["status"] == "completed"
            assert pending_work(d) == 0
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()


def test_jobs_api_needs_the_bearer_token(redis_process: RedisProcess) -> None:
    with deployment(redis_process, with_worker=False) as d:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
            response = httpx.get(f"{d.api}/jobs", headers=headers, timeout=10)
            assert response.status_code == 401
        assert httpx.get(f"{d.api}/jobs", headers=d.headers(), timeout=10).status_code == 200
