"""Stopping and refusing: SIGTERM with Redis gone, readiness the moment a worker stops, a
password Redis no longer takes, and one embedded Redis per data dir."""

from __future__ import annotations

import shutil
import signal
import stat
from pathlib import Path

import redis

from receiver.store.keys import Keys
from tests.chaos.harness import (
    Chaos,
    ReceiverApi,
    embedded_redis,
    receiver_env,
    wait_until,
)
from tests.servers import free_port, run_cli

KEYS = Keys()


def test_worker_and_web_end_cleanly_on_sigterm_while_redis_is_gone(chaos: Chaos) -> None:
    stack = chaos.stack(workers=1)
    stack.redis.kill()
    api = stack.api
    # The outage is seen (and said once) before the stop.
    wait_until(lambda: api.ready()[0] == 503, 15, "/readyz to say Redis is gone")
    stack.workers[0].wait_for_line(r"redis unavailable", timeout=15)
    for process in stack.services:
        process.send(signal.SIGTERM)
    for process in stack.services:
        assert process.wait(30) == 0, process.tail()
        output = process.output()
        assert "Traceback" not in output, output[-3000:]
        assert "Application shutdown failed" not in output
        assert output.count("redis unavailable") == 1, output[-3000:]


def test_readyz_says_at_once_that_the_last_worker_stopped(chaos: Chaos) -> None:
    stack = chaos.stack(workers=1)
    api = stack.api
    wait_until(lambda: api.ready()[0] == 200, 30, "/readyz 200")
    stack.workers[0].send(signal.SIGTERM)
    assert stack.workers[0].wait(30) == 0
    # No wait for the heartbeat window: the worker withdrew its heartbeat on the way out.
    status, body = api.ready()
    assert status == 503, body
    assert body["missing"] == "worker" and "no worker heartbeat" in body["reason"]


def test_worker_exits_non_zero_when_redis_refuses_its_password(chaos: Chaos) -> None:
    server = chaos.redis()
    with server.client() as client:
        client.config_set("requirepass", "first-password")
    sandbox = chaos.sandbox()
    url = f"redis://:first-password@127.0.0.1:{server.port}/0"
    worker = chaos.receiver("worker", receiver_env(free_port(), sandbox, url))
    with redis.Redis(port=server.port, password="first-password") as client:
        client.config_set("requirepass", "second-password")
        client.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    assert worker.wait(60) == 1, worker.tail()
    output = worker.output()
    assert "worker stopped" in output and "credentials" in output
    assert "first-password" not in output and "second-password" not in output


def test_a_second_run_on_a_data_dir_is_refused(chaos: Chaos, tmp_path: Path) -> None:
    sandbox = chaos.sandbox()
    data_dir = tmp_path / "data"
    port = free_port()
    env = receiver_env(port, sandbox, None, RECEIVER_DATA_DIR=str(data_dir))
    chaos.receiver("run", env)
    pid, _port = wait_until(lambda: embedded_redis(data_dir), 30, "the embedded redis-server")
    second = run_cli({**env, "PORT": str(free_port())}, "run", timeout=60)
    assert second.returncode == 1
    assert "is in use by another receiver process" in second.stderr
    assert "Traceback" not in second.stderr
    # The first one's Redis is untouched, and still the only one.
    assert embedded_redis(data_dir) == (pid, _port)
    assert ReceiverApi(port).ready()[0] in (200, 503)
    # What a local user could read: nothing of the data dir, no password on a command line.
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((data_dir / "redis").stat().st_mode) == 0o700
    for path in (data_dir / "redis").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    secrets = (data_dir / "secrets.json").read_text()
    password = secrets.split('"redis_password": "')[1].split('"')[0]
    assert password.encode() not in cmdline


def test_workers_carry_on_when_redis_comes_back_empty(chaos: Chaos) -> None:
    """A Redis restarted without its data has neither our consumer group nor our scripts:
    workers create the group again, scripts are loaded again, and new jobs complete."""
    # A callback refused while the processes notice Redis is back is sent again, as
    # Decodo retries; one lost all the same is reconciled within seconds.
    stack = chaos.stack(
        workers=2,
        sandbox={"callback_retries": 30, "callback_retry_delay": 0.3},
        settings={"RECEIVER_CLAIM_IDLE": "2", "RECEIVER_RECONCILE_AFTER": "3"},
    )
    first = stack.api.submit(["https://a.example/1", "https://a.example/2"])
    stack.wait_completed([first])
    stack.redis.kill()
    shutil.rmtree(stack.redis.directory)
    stack.redis.start()
    # It came back empty: the first job is gone. (Its stream and scripts may be back already:
    # the workers recreate the group, and a script is loaded again at its first call.)
    with stack.client() as client:
        assert not client.exists(KEYS.job(first))
    api = stack.api
    second = wait_until(lambda: _submitted(api), 30, "POST /jobs once Redis is back")
    stack.wait_completed([second], timeout=60)
    # The group lost while Redis stays up: the workers' reads fail NOGROUP and recreate it.
    with stack.client() as client:
        client.delete(KEYS.work(0))
    third = stack.api.submit(["https://c.example/1"])
    stack.wait_completed([third], timeout=60)
    for worker in stack.workers:
        worker.assert_alive("after Redis came back empty")
    assert "work group missing; creating it again" in "".join(w.output() for w in stack.workers)
    stack.assert_no_traceback()


def _submitted(api: ReceiverApi) -> str | None:
    try:
        return api.submit(["https://b.example/1", "https://b.example/2"])
    except AssertionError:  # 503 while the processes notice Redis is back
        return None
