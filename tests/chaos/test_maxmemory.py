"""Redis full (maxmemory, noeviction): callbacks are refused with 503, never dropped in
silence, /readyz and the metrics say why, and everything completes once there is room."""

from __future__ import annotations

from collections import Counter

from tests.chaos.harness import (
    Chaos,
    assert_invariants,
    fill_to_maxmemory,
    job_urls,
    sample,
    task_statuses,
    wait_until,
)

TASKS = 100


def test_redis_at_maxmemory_refuses_callbacks_and_says_why(chaos: Chaos) -> None:
    # The sandbox sends no callbacks: the storm does. No task is reconciled within the
    # test (300 s), so only an acknowledged callback can record one.
    stack = chaos.stack(
        sandbox={"completion_delay": 0.05, "drop_rate": 1.0, "results_latency": 0.02},
        settings={"RECEIVER_RECONCILE_AFTER": "300", "RECEIVER_CLAIM_IDLE": "2"},
        redis_args=("--maxmemory-policy", "noeviction"),
    )
    job_id = stack.api.submit(job_urls(TASKS))
    task_ids = stack.wait_tasks(job_id, TASKS)
    with stack.client() as client:
        fillers = fill_to_maxmemory(client)
        # Every callback once, not retried: each answer is a 503, and nothing is recorded.
        full = chaos.storm(stack.api.url, job_id, task_ids, copies=1, spread=1.0, retry=False)
        full.wait(60)
        assert full.outcomes() == Counter({"503": TASKS}), full.outcomes()
        assert Counter(task_statuses(client, job_id).values()) == {"pending": TASKS}
        status, ready = stack.api.ready()
        assert status == 503 and "memory" in str(ready.get("reason")), ready
        text = stack.api.metrics()
        limit = sample(text, "receiver_redis_maxmemory_bytes") or 0
        assert 0 < limit <= (sample(text, "receiver_redis_used_memory_bytes") or 0), text
        refused = sample(text, "receiver_callbacks_total", provider="decodo", outcome="unavailable")
        assert (refused or 0) >= TASKS, text

        client.delete(*fillers)  # room again
        wait_until(lambda: stack.api.ready()[0] == 200, 30, "/readyz to answer 200")
        rest = chaos.storm(stack.api.url, job_id, task_ids, copies=1, spread=1.0)
        rest.wait(60)
        stack.wait_completed([job_id], timeout=60)
        assert_invariants(client, {job_id: TASKS}, stack.sandbox.stats())
    for process in stack.services:
        process.assert_alive("after Redis was full")
    stack.assert_no_traceback()
