"""The Decodo path end to end: sandbox, receiver and worker as real servers, real callbacks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import httpx
import redis

from receiver.tokens import PassthroughSigner
from tests.e2e import Deployment, Target, deployment, e2e_settings
from tests.servers import RedisProcess


def final_events(events: list[dict[str, object]]) -> list[object]:
    return [
        e["type"]
        for e in events
        if str(e["type"]).startswith("job.") and e["type"] not in ("job.created", "job.progress")
    ]


def wait_for_tasks(d: Deployment, job_id: str, count: int) -> list[str]:
    """The job's task ids, once its submission has recorded `count` of them."""
    deadline = time.monotonic() + 10
    while len(tasks := d.job(job_id)["tasks"]) < count:
        assert time.monotonic() < deadline, f"the job has {len(tasks)} of {count} tasks"
        time.sleep(0.05)
    return [t["id"] for t in tasks]


def complete_in_sandbox(d: Deployment, task_id: str, status: str = "done") -> None:
    response = httpx.post(
        f"{d.sandbox}/_sandbox/tasks/{task_id}/complete", json={"status": status}, timeout=10
    )
    response.raise_for_status()


def test_single_task_completes_with_results(redis_target: Target) -> None:
    with deployment(redis_target) as d:
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


def test_batch_with_one_faulted_task(redis_target: Target) -> None:
    with deployment(redis_target, completion_delay=60.0) as d:
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


def test_duplicated_callbacks_complete_the_job_once(redis_target: Target) -> None:
    with deployment(redis_target, duplicate_rate=1.0, callback_delay=0.05) as d:
        job_id = d.submit({"urls": [f"https://example.com/{i}" for i in range(10)]})
        job = d.wait(job_id)
        assert job["status"] == "completed" and job["progress"]["completed"] == 10
        time.sleep(0.5)  # let every duplicate arrive
        assert final_events(d.events(job_id)) == ["job.completed"]
        assert sum(e["type"] == "task.completed" for e in d.events(job_id)) == 10
        assert d.redis.hget(d.keys.job(job_id), "received") == b"10"


def test_reordered_callbacks_complete_the_job(redis_process: RedisProcess) -> None:
    with deployment(redis_process, reorder_window=0.5, completion_jitter=0.3) as d:
        job = d.wait(d.submit({"urls": [f"https://example.com/{i}" for i in range(20)]}))
        assert job["status"] == "completed" and job["progress"]["completed"] == 20


def test_passtrough_spelling_and_short_body_variant(redis_process: RedisProcess) -> None:
    with deployment(redis_process, passthrough_key="passtrough", callback_variant="short") as d:
        job = d.wait(d.submit({"urls": ["https://a.example", "https://b.example"]}))
        assert job["status"] == "completed" and job["progress"]["completed"] == 2


def test_dropped_callbacks_are_recovered_by_reconciliation(redis_target: Target) -> None:
    with deployment(redis_target, drop_rate=1.0, settings={"reconcile_after": 0.5}) as d:
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
        return sum(
            int(d.redis.xpending(d.keys.work(p), "workers")["pending"])
            for p in range(d.keys.partitions)
        )
    except redis.exceptions.ResponseError:  # no worker has created the group yet
        return 0


def test_killed_worker_work_is_reclaimed_by_another(redis_process: RedisProcess) -> None:
    with deployment(redis_process, with_worker=False, results_latency=3.0) as d:
        settings = e2e_settings(redis_process, d.sandbox)
        env = {
            **os.environ,
            "REDIS_URL": redis_process.url,
            "RECEIVER_SECRET_KEYS": "e2e-key-5b8d2f0c4a",
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


def test_short_callback_with_an_error_status_code_faults_the_task(
    redis_process: RedisProcess,
) -> None:
    # /results answers 204 for a faulted task: a task recorded `done` would wait 24 h.
    knobs: dict[str, Any] = {
        "callback_variant": "short",
        "fault_rate": 1.0,
        "faulted_results": "204",
    }
    with deployment(redis_process, **knobs) as d:
        job = d.wait(d.submit({"urls": ["https://a.example", "https://b.example"]}), timeout=15)
        assert job["status"] == "failed" and job["progress"]["failed"] == 2
        for task in job["tasks"]:
            assert task["status"] == "failed" and task["error"].startswith("faulted"), task
        stats = d.sandbox_stats()
        assert stats["callback 202"] == 2
        assert not [name for name in stats if name.startswith("results ")]  # never fetched
        assert final_events(d.events(job["id"])) == ["job.failed"]


def test_results_204_until_the_task_is_done_is_retried(redis_process: RedisProcess) -> None:
    # Still pending at Decodo for a minute; the sandbox sends no callback of its own.
    with deployment(redis_process, completion_delay=60.0, drop_rate=1.0) as d:
        job_id = d.submit({"url": "https://example.com/slow"})
        (task_id,) = wait_for_tasks(d, job_id, 1)
        token = PassthroughSigner(("e2e-key-5b8d2f0c4a",), 48 * 3600.0).sign(job_id)
        early = {"id": task_id, "status": "done", "passthrough": token}
        answer = httpx.post(f"{d.api}/callbacks/decodo", json=early, timeout=10)
        assert answer.status_code == 202 and answer.json() == {"status": "accepted"}
        deadline = time.monotonic() + 10
        while d.sandbox_stats().get("results 204", 0) < 3:
            assert time.monotonic() < deadline, d.sandbox_stats()
            time.sleep(0.05)
        assert d.job(job_id)["status"] == "running"
        complete_in_sandbox(d, task_id)
        job = d.wait(job_id)
        assert job["status"] == "completed" and job["tasks"][0]["status"] == "stored"
        assert d.results(job_id)["results"][task_id]["results"][0]["task_id"] == task_id
        stats = d.sandbox_stats()
        assert stats["results 200"] == 1 and stats.get("callbacks sent", 0) == 0


def test_results_401_fails_the_task_as_unauthorized(redis_process: RedisProcess) -> None:
    with deployment(redis_process, completion_delay=60.0) as d:
        job_id = d.submit({"url": "https://example.com"})
        (task_id,) = wait_for_tasks(d, job_id, 1)
        d.configure_sandbox(auth="cm90YXRlZDpjcmVkZW50aWFscw==")  # credentials rotated
        complete_in_sandbox(d, task_id)  # the callback comes; the results fetch is refused
        job = d.wait(job_id)
        assert job["status"] == "failed"
        (task,) = job["tasks"]
        assert task["status"] == "failed" and task["error"].startswith("unauthorized"), task
        assert d.sandbox_stats()["results 401"] == 1


def test_reconciliation_polls_again_with_backoff(redis_process: RedisProcess) -> None:
    # Every callback is lost, and the first reconciliation finds the tasks still pending.
    settings = {"reconcile_after": 0.3}
    with deployment(redis_process, completion_delay=1.5, drop_rate=1.0, settings=settings) as d:
        started = time.monotonic()
        job_id = d.submit({"urls": ["https://example.com/1", "https://example.com/2"]})
        job = d.wait(job_id, timeout=30)
        assert job["status"] == "completed" and job["progress"]["completed"] == 2
        polls = d.sandbox_stats()["status 200"]
        assert polls >= 2 * 2  # at least two GET /v3/task/{id} per task
        # Backoff, not a tight loop: from 1 s, doubling, over a few seconds.
        assert polls <= 2 * 5, polls
        assert time.monotonic() - started >= 1.5
        sources = {
            e["detail"].get("source")
            for e in d.events(job_id)
            if e["type"] == "job.progress" and "task_id" in e["detail"]
        }
        assert sources == {"reconcile"}


def test_query_task_and_queries_batch_complete(redis_process: RedisProcess) -> None:
    with deployment(redis_process) as d:
        single = d.submit({"query": "best health trackers", "target": "google_search"})
        queries = ["decodo scraper", "async callbacks", "redis streams"]
        batch = d.submit({"queries": queries, "target": "google_search", "parse": True})
        for job_id, expected in ((single, ["best health trackers"]), (batch, queries)):
            job = d.wait(job_id)
            assert job["status"] == "completed"
            assert job["progress"] == {
                "completed": len(expected),
                "failed": 0,
                "total": len(expected),
            }
            assert sorted(t["input"] for t in job["tasks"]) == sorted(expected)
            results = d.results(job_id)["results"]
            assert set(results) == {t["id"] for t in job["tasks"]}
        (task,) = d.job(single)["tasks"]
        entry = d.results(single)["results"][task["id"]]["results"][0]
        assert "best health trackers" in entry["content"]
        for task in d.job(batch)["tasks"]:
            entry = d.results(batch)["results"][task["id"]]["results"][0]
            assert task["input"].replace(" ", "+") in entry["url"]  # parsed: JSON content
            assert entry["content"]["results"]["organic"][0]["url"] == entry["url"]
        stats = d.sandbox_stats()
        assert stats["submit 200"] == 1 and stats["batch 200"] == 1
