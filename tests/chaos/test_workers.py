"""A worker killed with SIGKILL in the middle of a drain: its work is reclaimed by the other."""

from __future__ import annotations

from collections import Counter

from tests.chaos.harness import (
    Chaos,
    assert_invariants,
    job_urls,
    pending_of,
    task_statuses,
    wait_until,
)

TASKS = 2000
FETCH_CONCURRENCY = 20  # results requests in flight per worker


def test_worker_killed_mid_drain_leaves_every_result_stored_once(chaos: Chaos) -> None:
    # Every task is done a second after submission and called back; each results answer
    # takes 50 ms, so two workers of 20 concurrent fetches drain 2,000 in a few seconds.
    settings = {
        "RECEIVER_FETCH_CONCURRENCY": str(FETCH_CONCURRENCY),
        "RECEIVER_CLAIM_IDLE": "1",
        "RECEIVER_RECONCILE_AFTER": "120",
    }
    stack = chaos.stack(
        sandbox={"completion_delay": 1.0, "results_latency": 0.05, "callback_retries": 5},
        settings=settings,
    )
    job_id = stack.api.submit(job_urls(TASKS))
    stack.wait_tasks(job_id, TASKS)
    # The worker that submitted the batch stops; the drain starts once every callback is
    # in, with all 2,000 results to fetch, by two workers that take what they can hold.
    (submitter,) = stack.workers
    submitter.stop()
    assert submitter.wait(0) == 0, submitter.tail()
    with stack.client() as client:

        def count(status: str) -> int:
            return Counter(task_statuses(client, job_id).values())[status]

        wait_until(lambda: not count("pending"), 60, "every callback", watch=[stack.web])
        stack.workers = [chaos.receiver("worker", stack.env, f"worker-{i}") for i in (2, 3)]
        victim, survivor = stack.workers
        wait_until(lambda: count("stored") >= TASKS // 4, 60, "a quarter", watch=stack.services)
        victim.kill()
        held = pending_of(client, victim.pid)
        at_kill = count("stored")
        assert at_kill < TASKS, "the drain ended before the kill"
        # The victim held work when it died: the test is about that work.
        assert held > 0, "the killed worker held no work"
        stack.wait_completed([job_id], timeout=90)
        assert_invariants(client, {job_id: TASKS}, stack.sandbox.stats(), extra_fetches=held)
        assert pending_of(client, victim.pid) == 0
    # The entries the victim held can only have been taken over by the survivor.
    assert "reclaimed work" in survivor.output()
    assert survivor.alive and stack.web.alive
    for process in (stack.web, submitter, survivor, stack.sandbox):
        process.assert_no_traceback()
