"""Logs: one structured line per event of interest, never a secret or a payload."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import IO

import httpx
import orjson
import pytest

from receiver.logs import JsonFormatter, TextFormatter
from receiver.settings import Settings
from receiver.store import JobStatus, Store
from tests.receiver_app import SEED_CALLBACK, Receiver, make_job
from tests.servers import RedisProcess, free_port, wait_for_port


def formatted(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    """Every captured record as its JSON log line reads."""
    return [orjson.loads(JsonFormatter().format(record)) for record in caplog.records]


def test_json_formatter_keeps_the_fields() -> None:
    record = logging.makeLogRecord(
        {
            "name": "receiver.x",
            "levelname": "WARNING",
            "levelno": logging.WARNING,
            "msg": "callback rejected",
            "provider": "decodo",
            "reason": "bad_token",
            "job_id": "j1",
        }
    )
    line = orjson.loads(JsonFormatter().format(record))
    assert line["message"] == "callback rejected" and line["level"] == "warning"
    assert (line["provider"], line["reason"], line["job_id"]) == ("decodo", "bad_token", "j1")
    text = TextFormatter("%(message)s").format(record)
    assert text == "callback rejected provider=decodo reason=bad_token job_id=j1"


def test_rejected_callback_is_logged_once_without_token_or_body(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    make_job(receiver, "j1", ["1"])
    secret_marker = "do-not-log-this-payload"
    forged = "eyJmb3JnZWQiOnRydWV9.forged.signature"
    body = {**SEED_CALLBACK, "id": "1", "passthrough": forged, "url": secret_marker}
    with caplog.at_level(logging.INFO):
        response = receiver.post(body)
    assert response.status_code == 401
    rejected = [r for r in caplog.records if r.getMessage() == "callback rejected"]
    assert len(rejected) == 1
    line = JsonFormatter().format(rejected[0])
    assert orjson.loads(line)["reason"] == "bad_token"
    for record in caplog.records:
        formatted = JsonFormatter().format(record)
        assert forged not in formatted and secret_marker not in formatted


def test_settings_repr_hides_secrets() -> None:
    settings = Settings(
        secret_keys=("k-secret",),
        api_token="t-secret",
        decodo_auth="d-secret",
        firecrawl_api_key="f-secret",
        dify_api_key="y-secret",
        firecrawl_webhook_secret="w-secret",
    )
    shown = repr(settings)
    assert not any(
        s in shown for s in ("k-secret", "t-secret", "d-secret", "f-secret", "y-secret", "w-secret")
    )


@pytest.mark.anyio
async def test_job_created_and_ended_are_logged_once_without_the_providers_answer(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    answer = "decodo answered 400: <html>do-not-log-this-answer</html>"
    with caplog.at_level(logging.INFO, logger="receiver"):
        await store.create_job("j1", "decodo", total=1, params={"secret": "p-secret"}, work="")
        await store.create_job("j1", "decodo", total=1, params={}, work="")  # exists: no line
        await store.finish_job("j1", JobStatus.FAILED, f"rejected: {answer}")
        await store.finish_job("j1", JobStatus.CANCELLED, "too late")  # closed: no line
    lines = formatted(caplog)
    created = [line for line in lines if line["message"] == "job created"]
    ended = [line for line in lines if line["message"] == "job ended"]
    assert [(line["job_id"], line["provider"]) for line in created] == [("j1", "decodo")]
    assert [
        (line["job_id"], line["provider"], line["status"], line["reason"]) for line in ended
    ] == [("j1", "decodo", "failed", "rejected")]
    text = orjson.dumps(lines).decode()
    assert "do-not-log-this-answer" not in text and "p-secret" not in text


@pytest.mark.anyio
async def test_decodo_jobs_settled_by_their_tasks_log_their_end_once(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    for job_id in ("by-results", "by-callback"):
        await store.create_job(job_id, "decodo", total=2, params={}, work="")
        tasks = [("1", "u1"), ("2", "u2")]
        await store.record_submission(job_id, 0, tasks, last=True, reconcile_after=300)
    with caplog.at_level(logging.INFO, logger="receiver"):
        assert await store.apply_callbacks([("by-results", "1", "done")]) == ["accepted"]
        assert await store.store_results("by-results", "1", b"{}", 60) == "stored"
        assert await store.fail_task("by-results", "2", "unauthorized: no") == "failed"
        assert await store.fail_task("by-results", "2", "unauthorized: no") == "closed"
        callbacks = [("by-callback", "1", "faulted"), ("by-callback", "2", "faulted")]
        assert await store.apply_callbacks(callbacks) == ["accepted", "accepted"]
    ended = [line for line in formatted(caplog) if line["message"] == "job ended"]
    assert [(line["job_id"], line["status"]) for line in ended] == [
        ("by-results", "completed"),
        ("by-callback", "failed"),
    ]


def test_web_logs_every_line_as_json(redis_process: RedisProcess) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "RECEIVER_"))}
    env.update(
        PORT=str(port),
        REDIS_URL=redis_process.url,
        RECEIVER_SECRET_KEYS="log-key-6a1c8e3f",
        RECEIVER_API_TOKEN="log-token-9e4b2d7c",
        RECEIVER_LOG_FORMAT="json",
    )
    command = [sys.executable, "-m", "receiver", "web"]
    with tempfile.TemporaryFile() as errors:
        with subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=errors) as web:
            try:
                wait_for_port(port)
                assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
                with socket.create_connection(("127.0.0.1", port)) as sock:
                    sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")  # uvicorn logs a warning
                    sock.recv(1024)
                deadline = time.monotonic() + 10
                while b"uvicorn" not in _read(errors) and time.monotonic() < deadline:
                    time.sleep(0.05)
            finally:
                web.terminate()
                web.wait(20)
        lines = _read(errors).decode().splitlines()
    assert lines
    parsed = [orjson.loads(line) for line in lines]  # every line, uvicorn's included
    assert any(str(line["logger"]).startswith("uvicorn") for line in parsed), lines


def _read(file: IO[bytes]) -> bytes:
    file.seek(0)
    return file.read()
