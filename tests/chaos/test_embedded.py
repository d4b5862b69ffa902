"""`receiver run`'s own Redis killed under it: started again, and the job in flight completes."""

from __future__ import annotations

import signal
from pathlib import Path

import redis

from tests.chaos.harness import (
    Chaos,
    ReceiverApi,
    assert_invariants,
    embedded_client,
    embedded_redis,
    job_urls,
    receiver_env,
    stored_results,
    wait_for_jobs,
    wait_until,
)
from tests.servers import free_port

TASKS = 200
FETCH_CONCURRENCY = 10


def _answers(data_dir: Path, port: int) -> bool:
    try:
        with embedded_client(data_dir, port) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


def test_run_restarts_its_killed_redis_and_finishes_the_job(chaos: Chaos, tmp_path: Path) -> None:
    # Tasks finish over three seconds; a refused callback is sent again every 0.3 s.
    sandbox = chaos.sandbox(
        completion_delay=0.5,
        completion_jitter=3.0,
        callback_retries=30,
        callback_retry_delay=0.3,
        results_latency=0.02,
    )
    data_dir = tmp_path / "data"
    port = free_port()
    env = receiver_env(
        port,
        sandbox,
        None,  # no REDIS_URL: the embedded Redis, at its default durability
        RECEIVER_DATA_DIR=str(data_dir),
        RECEIVER_FETCH_CONCURRENCY=str(FETCH_CONCURRENCY),
        RECEIVER_RECONCILE_AFTER="300",
        RECEIVER_CLAIM_IDLE="2",
    )
    run = chaos.receiver("run", env)
    api = ReceiverApi(port)
    first = wait_until(lambda: embedded_redis(data_dir), 30, "the embedded redis-server")
    chaos.adopt_pid(first[0])
    job_id = api.submit(job_urls(TASKS))
    with embedded_client(data_dir, first[1]) as client:
        wait_until(lambda: stored_results(client, [job_id]) >= 20, 30, "some results stored")
    chaos.kill_pid(first[0])

    def restarted() -> tuple[int, int] | None:
        found = embedded_redis(data_dir)
        return found if found and found[0] != first[0] and _answers(data_dir, found[1]) else None

    second = wait_until(restarted, 30, "the embedded redis-server to be started again", watch=[run])
    chaos.adopt_pid(second[0])
    wait_for_jobs(lambda: embedded_client(data_dir, second[1]), [job_id], 90, watch=[run])
    with embedded_client(data_dir, second[1]) as client:
        assert_invariants(
            client, {job_id: TASKS}, sandbox.stats(), extra_fetches=2 * FETCH_CONCURRENCY
        )
    status, ready = api.ready()
    assert status == 200 and ready.get("durability") == "fsync", ready
    run.assert_no_traceback()
    # Stopped, it stops the redis-server it started again: nothing is left running.
    run.send(signal.SIGTERM)
    assert run.wait(30) == 0, run.tail()
    wait_until(lambda: embedded_redis(data_dir) is None, 15, "the embedded redis-server to stop")
