"""`receiver web` stopped with SIGTERM under a callback storm: the requests it is in the middle
of are answered, nothing but 202 and 503 is answered, and a new process takes over."""

from __future__ import annotations

import signal

import httpx

from tests.chaos.harness import (
    Chaos,
    HeldRequest,
    assert_invariants,
    callback_body,
    job_urls,
    refuses,
    wait_until,
)

TASKS = 300
# What a client may meet instead of an answer while no process listens, or when a process
# closes an idle keep-alive connection: nothing was answered, and the sender retries.
NO_ANSWER = {"ConnectError", "RemoteProtocolError", "ReadError", "WriteError"}


def test_web_stopped_under_load_finishes_its_requests_and_is_replaced(chaos: Chaos) -> None:
    # The sandbox sends no callbacks: the storm does, each twice over five seconds, and
    # again 0.3 s after anything but a 202, as Decodo retries.
    stack = chaos.stack(
        sandbox={"completion_delay": 0.05, "drop_rate": 1.0, "results_latency": 0.02},
        settings={"RECEIVER_RECONCILE_AFTER": "300", "RECEIVER_SHUTDOWN_TIMEOUT": "30"},
    )
    job_id = stack.api.submit(job_urls(TASKS))
    task_ids = stack.wait_tasks(job_id, TASKS)
    storm = chaos.storm(stack.api.url, job_id, task_ids, copies=2, spread=5.0)
    wait_until(lambda: len(storm.accepted()) >= TASKS // 4, 30, "a quarter of the callbacks")
    # Three callbacks in the middle of their bodies when the signal comes.
    held_tasks = task_ids[:3]
    held = [HeldRequest(stack.api.port, callback_body(job_id, task)) for task in held_tasks]
    try:
        # An answer to a request sent after them: the old process has read their heads.
        assert httpx.get(f"{stack.api.url}/healthz", timeout=10).status_code == 200
        old = stack.web
        old.send(signal.SIGTERM)
        wait_until(lambda: refuses(stack.api.port), 30, "the old process to stop listening")
        new = chaos.receiver("web", stack.env, "web-2")  # the same port
        # The old one still waits for the requests it is in the middle of.
        old.assert_alive("with requests in flight")
        answers = [request.finish() for request in held]
    finally:
        for request in held:
            request.close()
    assert answers == [202, 202, 202]
    assert old.wait(30) == 0, old.tail()
    storm.wait(60)  # every callback answered 202 in the end, by the new process
    outcomes = storm.outcomes()
    assert set(outcomes) <= {"202", "503", *NO_ANSWER}, outcomes
    assert outcomes["202"] >= 2 * TASKS, outcomes
    with stack.client() as client:
        stack.wait_completed([job_id], timeout=60)
        assert_invariants(client, {job_id: TASKS}, stack.sandbox.stats())
    stack.web = new
    stack.assert_no_traceback()
    old.assert_no_traceback()
