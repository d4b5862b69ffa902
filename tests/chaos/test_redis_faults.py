"""Redis killed, and Redis restarted, under a running receiver: nothing acknowledged is lost,
and web and workers carry on without being restarted themselves."""

from __future__ import annotations

import time

import httpx

from tests.chaos.harness import (
    API_TOKEN,
    Chaos,
    assert_invariants,
    assert_recorded,
    job_urls,
    stored_results,
    task_statuses,
    wait_until,
)

FETCH_CONCURRENCY = 10  # results requests in flight per worker
# Each worker holds at most twice its fetch concurrency of work; a fetch in flight when
# Redis went away may be made again.
IN_FLIGHT = 2 * FETCH_CONCURRENCY


def test_redis_killed_mid_storm_keeps_every_acknowledged_callback(chaos: Chaos) -> None:
    # The sandbox sends no callbacks: the storm does, each twice, over four seconds. No
    # task is reconciled within the test (300 s), so only a callback can record one.
    # Results take 0.3 s: fetches fall behind the callbacks, and some wait in the queue.
    stack = chaos.stack(
        workers=2,
        sandbox={"completion_delay": 0.05, "drop_rate": 1.0, "results_latency": 0.3},
        settings={
            "RECEIVER_DURABILITY": "fsync",
            "RECEIVER_FETCH_CONCURRENCY": str(FETCH_CONCURRENCY),
            "RECEIVER_RECONCILE_AFTER": "300",
            "RECEIVER_CLAIM_IDLE": "2",
        },
    )
    tasks = 300
    job_id = stack.api.submit(job_urls(tasks))
    task_ids = stack.wait_tasks(job_id, tasks)
    storm = chaos.storm(stack.api.url, job_id, task_ids, copies=2, spread=4.0)
    wait_until(lambda: len(storm.accepted()) >= tasks // 4, 30, "a quarter of the callbacks")
    stack.redis.kill()
    crashed = time.monotonic()
    # Callbacks keep coming while Redis is down; none of them may be acknowledged.
    wait_until(lambda: storm.outcomes()["503"] >= 20, 30, "callbacks refused while down")
    storm.stop()
    late = [a for a in storm.answers if a.status == 202 and a.sent > crashed]
    assert not late, f"acknowledged with Redis dead: {late[:5]}"
    assert set(storm.outcomes()) <= {"202", "503"}, storm.outcomes()
    accepted = storm.accepted()

    stack.redis.start()  # the same port and directory: the AOF is replayed
    with stack.client() as client:
        # Checked at once: nothing but the storm could have recorded a task.
        assert_recorded(client, job_id, accepted)
        queued = [t for t, status in task_statuses(client, job_id).items() if status == "done"]
        assert queued, "no acknowledged callback was still waiting for its fetch"
        assert stack.sandbox.stats().get("status", 0) == 0, "a task was reconciled"
        # The rest of the callbacks, as Decodo would retry them; the job then completes.
        rest = chaos.storm(stack.api.url, job_id, task_ids, copies=1, spread=1.0)
        rest.wait(60)
        stack.wait_completed([job_id], timeout=60)
        assert_invariants(
            client, {job_id: tasks}, stack.sandbox.stats(), extra_fetches=2 * IN_FLIGHT
        )
    for process in stack.services:
        process.assert_alive("after Redis came back")
    status, ready = stack.api.ready()
    assert status == 200 and ready.get("durability") == "fsync", ready
    stack.assert_no_traceback()


def test_redis_restarted_under_web_and_workers_they_recover_without_restart(
    chaos: Chaos,
) -> None:
    # Tasks finish over three seconds; a callback refused (503) is sent again every 0.3 s
    # for nine seconds, as Decodo retries.
    stack = chaos.stack(
        workers=2,
        sandbox={
            "completion_delay": 0.5,
            "completion_jitter": 3.0,
            "callback_retries": 30,
            "callback_retry_delay": 0.3,
            "results_latency": 0.02,
        },
        settings={
            "RECEIVER_FETCH_CONCURRENCY": str(FETCH_CONCURRENCY),
            "RECEIVER_RECONCILE_AFTER": "300",
            "RECEIVER_CLAIM_IDLE": "2",
        },
    )
    pids = [process.pid for process in stack.services]
    jobs = {stack.api.submit(job_urls(100, prefix)): 100 for prefix in "abc"}
    for job_id in jobs:
        stack.wait_tasks(job_id, 100)
    with stack.client() as client:
        wait_until(lambda: stored_results(client, jobs) >= 30, 30, "some results stored")
    stack.redis.shutdown()
    # Down for two seconds: web answers, but not ready, and creates nothing.
    down_until = time.monotonic() + 2.0
    status, ready = stack.api.ready()
    assert status == 503 and ready.get("ready") is False, ready
    assert httpx.get(f"{stack.api.url}/healthz", timeout=10).status_code == 200
    refused = httpx.post(
        f"{stack.api.url}/jobs",
        json={"provider": "decodo", "url": "https://down.example"},
        headers={"Authorization": f"Bearer {API_TOKEN}"},
        timeout=30,
    )
    assert refused.status_code == 503, refused.text
    time.sleep(max(0.0, down_until - time.monotonic()))  # the length of the outage
    stack.redis.start()

    after = stack.api.submit(job_urls(50, "after"))  # work created after the restart
    jobs[after] = 50
    stack.wait_completed(list(jobs), timeout=90)
    wait_until(lambda: stack.api.ready()[0] == 200, 30, "/readyz to answer 200")
    with stack.client() as client:
        assert_invariants(client, jobs, stack.sandbox.stats(), extra_fetches=2 * IN_FLIGHT)
    assert [process.pid for process in stack.services if process.alive] == pids
    stack.assert_no_traceback()
