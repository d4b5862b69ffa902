"""POST /callbacks/decodo against a real uvicorn and a real Redis: good and bad input."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest
from prometheus_client import REGISTRY

from receiver import callbacks
from receiver.app import create_app
from receiver.settings import Settings
from receiver.store.keys import Keys
from receiver.tokens import PassthroughSigner
from tests.receiver_app import KEYS, SEED_CALLBACK, Receiver, make_job
from tests.servers import RedisProcess, serve_app

REDIS_KEYS = Keys()


def callback(receiver: Receiver, job_id: str, task_id: str, **changes: object) -> dict[str, object]:
    return {**SEED_CALLBACK, "id": task_id, "passthrough": receiver.signer.sign(job_id), **changes}


def test_seed_callback_body_is_accepted_and_recorded(receiver: Receiver) -> None:
    make_job(receiver, "j1", ["7039164056019693569"])
    body = {**SEED_CALLBACK, "passthrough": receiver.signer.sign("j1")}
    response = receiver.post(body)
    assert response.status_code == 202, response.text
    assert response.json() == {"status": "accepted"}
    assert receiver.redis.hget(REDIS_KEYS.tasks("j1"), "7039164056019693569") == b"done"


def test_misspelled_passtrough_and_task_id_variant_are_accepted(receiver: Receiver) -> None:
    make_job(receiver, "j1", ["1", "2"])
    token = receiver.signer.sign("j1")
    assert receiver.post({**SEED_CALLBACK, "id": "1", "passtrough": token}).status_code == 202
    short = {"task_id": "2", "status_code": 200, "passthrough": token}
    assert receiver.post(short).status_code == 202
    assert receiver.redis.hgetall(REDIS_KEYS.tasks("j1")) == {b"1": b"done", b"2": b"done"}


def test_numeric_id_is_read_as_the_task_id(receiver: Receiver) -> None:
    make_job(receiver, "j1", ["123"])
    assert receiver.post(callback(receiver, "j1", "x", id=123)).status_code == 202


def test_duplicate_callback_is_acknowledged_and_recorded_once(receiver: Receiver) -> None:
    make_job(receiver, "j1", ["1"])
    first = receiver.post(callback(receiver, "j1", "1"))
    before = receiver.snapshot()
    again = receiver.post(callback(receiver, "j1", "1"))
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json() == {"status": "duplicate"}
    assert receiver.snapshot() == before


def test_old_key_token_still_accepted_after_rotation(receiver: Receiver) -> None:
    make_job(receiver, "j1", ["1"])
    old = PassthroughSigner(["old-key"], 3600).sign("j1")
    assert receiver.post(callback(receiver, "j1", "1", passthrough=old)).status_code == 202


@pytest.mark.parametrize(
    ("name", "status", "error"),
    [
        ("oversize", 413, "payload_too_large"),
        ("malformed_json", 400, "invalid_request"),
        ("json_array", 400, "invalid_request"),
        ("missing_id", 400, "invalid_request"),
        ("id_wrong_type", 400, "invalid_request"),
        ("id_bool", 400, "invalid_request"),
        ("status_wrong_type", 400, "invalid_request"),
        ("status_unknown", 400, "invalid_request"),
        ("missing_token", 401, "invalid_token"),
        ("token_wrong_type", 401, "invalid_token"),
        ("forged_token", 401, "invalid_token"),
        ("tampered_token", 401, "invalid_token"),
        ("expired_token", 401, "expired_token"),
        ("other_jobs_token", 404, "unknown_task"),
        ("unknown_job", 404, "unknown_job"),
        ("unknown_task", 404, "unknown_task"),
    ],
)
def test_bad_callback_is_refused_and_changes_nothing(
    receiver: Receiver, name: str, status: int, error: str
) -> None:
    make_job(receiver, "j1", ["1"])
    make_job(receiver, "j2", ["2"])
    before = receiver.snapshot()
    response = receiver.post(bad_body(receiver, name))
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"] == error
    assert response.json()["message"]
    assert receiver.snapshot() == before


def bad_body(receiver: Receiver, name: str) -> object:
    good = callback(receiver, "j1", "1")
    token = str(good["passthrough"])
    expired = PassthroughSigner(KEYS, 10, clock=lambda: 1_000_000.0).sign("j1")
    bodies: dict[str, object] = {
        "oversize": {**good, "padding": "x" * 5000},
        "malformed_json": b'{"id": "1", "passthrough": ',
        "json_array": [good],
        "missing_id": {k: v for k, v in good.items() if k != "id"},
        "id_wrong_type": {**good, "id": {"nested": 1}},
        "id_bool": {**good, "id": True},
        "status_wrong_type": {**good, "status": 1},
        "status_unknown": {**good, "status": "exploded"},
        "missing_token": {k: v for k, v in good.items() if k != "passthrough"},
        "token_wrong_type": {**good, "passthrough": 12345},
        "forged_token": {**good, "passthrough": PassthroughSigner(["x"], 60).sign("j1")},
        "tampered_token": {**good, "passthrough": token[:-3] + "abc"},
        "expired_token": {**good, "passthrough": expired},
        # A valid token of job j2 does not complete task 1 of job j1.
        "other_jobs_token": {**good, "passthrough": receiver.signer.sign("j2")},
        "unknown_job": {**good, "passthrough": receiver.signer.sign("nope")},
        "unknown_task": {**good, "id": "999"},
    }
    return bodies[name]


def test_oversize_body_without_content_length_is_refused(receiver: Receiver) -> None:
    make_job(receiver, "j1", ["1"])
    before = receiver.snapshot()

    def chunks() -> Iterator[bytes]:
        yield b'{"id": "1", "padding": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    response = httpx.post(f"{receiver.url}/callbacks/decodo", content=chunks(), timeout=10)
    assert response.status_code == 413
    assert receiver.snapshot() == before


def test_redis_down_answers_503_so_the_sender_retries(redis_process: RedisProcess) -> None:
    from tests.servers import free_port

    settings = Settings(
        redis_url=f"redis://127.0.0.1:{free_port()}/0", secret_keys=KEYS, api_token="t"
    )
    signer = PassthroughSigner(KEYS, 3600)
    with serve_app(create_app(settings)) as url:
        body = {**SEED_CALLBACK, "passthrough": signer.sign("j1")}
        response = httpx.post(f"{url}/callbacks/decodo", content=orjson.dumps(body), timeout=10)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"


def test_healthz_lives_and_readyz_wants_a_worker_heartbeat(receiver: Receiver) -> None:
    assert httpx.get(f"{receiver.url}/healthz", timeout=10).json() == {"status": "ok"}
    not_ready = httpx.get(f"{receiver.url}/readyz", timeout=10)
    assert not_ready.status_code == 503
    assert not_ready.json() == {
        "ready": False,
        "missing": "worker",
        "reason": "no worker heartbeat in the last 15 s",
        "durability": "none",  # Settings built directly: nothing resolved a level
    }
    receiver.redis.zadd("receiver:workers", {"w1": time.time()})
    ready = httpx.get(f"{receiver.url}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["workers"] == 1
    receiver.redis.zadd("receiver:workers", {"w1": time.time() - 3600})
    assert httpx.get(f"{receiver.url}/readyz", timeout=10).status_code == 503


def test_readyz_without_redis_is_503_with_a_reason() -> None:
    from tests.servers import free_port

    settings = Settings(
        redis_url=f"redis://127.0.0.1:{free_port()}/0", secret_keys=KEYS, api_token="t"
    )
    with serve_app(create_app(settings)) as url:
        response = httpx.get(f"{url}/readyz", timeout=30)
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
    assert response.status_code == 503
    assert response.json()["ready"] is False and response.json()["reason"].startswith("redis")


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _refused(outcome: str, provider: str = "decodo") -> float:
    value = REGISTRY.get_sample_value(
        "receiver_callbacks_total", {"provider": provider, "outcome": outcome}
    )
    return value or 0.0


def _refusal_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.name == "receiver.callbacks" and "rejected" in record.getMessage()
    ]


def test_repeated_refusals_are_logged_first_then_counted_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = _Clock()
    refusals = callbacks.RefusalLog(60.0, clock)
    reasons = ("bad_token", "malformed", "unknown_task")
    before = {reason: _refused(reason) for reason in reasons}
    with caplog.at_level(logging.INFO, logger="receiver.callbacks"):
        for n in range(3000):  # 1,000 a minute over three minutes, with accepted ones between
            callbacks.count("decodo", reasons[n % 3] if n % 4 else "accepted", refusals)
            clock.now += 0.06
        clock.now += 60.0
        callbacks.count("decodo", "accepted", refusals)  # ends the last interval

    lines = _refusal_lines(caplog)
    firsts = [r for r in lines if r.getMessage() == "callback rejected"]
    summaries = [r for r in lines if r.getMessage() == "callbacks rejected"]
    assert (len(firsts), len(summaries)) == (3 * 3, 3)  # per minute: each reason once, a sum
    assert sorted(vars(r)["reason"] for r in firsts[:3]) == list(reasons)
    counted: dict[str, int] = {}
    for summary in summaries:
        for reason, refused in vars(summary)["rejected"]["decodo"].items():
            counted[reason] = counted.get(reason, 0) + refused
    assert counted == {"bad_token": 750, "malformed": 750, "unknown_task": 750}
    assert {reason: _refused(reason) - before[reason] for reason in reasons} == counted


def test_a_thousand_refused_callbacks_log_a_few_lines_and_count_exactly(
    redis_process: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(redis_url=redis_process.url, secret_keys=KEYS, api_token="t")
    app = create_app(settings)
    clock = _Clock()
    setattr(app.state, callbacks.REFUSALS_STATE, callbacks.RefusalLog(60.0, clock))
    forged = PassthroughSigner(["attacker-key"], 3600).sign("j1")
    before = {reason: _refused(reason) for reason in ("bad_token", "malformed")}
    with serve_app(app) as url, httpx.Client(timeout=10) as http:
        with caplog.at_level(logging.INFO, logger="receiver.callbacks"):
            for n in range(1000):
                body = {"id": "1", "passthrough": forged} if n % 2 else b"{not json"
                content = body if isinstance(body, bytes) else orjson.dumps(body)
                assert http.post(f"{url}/callbacks/decodo", content=content).status_code in (
                    400,
                    401,
                )
                if n == 499:
                    clock.now += 61.0  # a minute later
            clock.now += 61.0
            assert http.post(f"{url}/callbacks/decodo", content=b"[]").status_code == 400
        lines = _refusal_lines(caplog)
    assert len(lines) <= 7, [r.getMessage() for r in lines]  # 2 reasons, 2 minutes, 2 sums
    summaries = [
        vars(r)["rejected"]["decodo"] for r in lines if r.getMessage() == "callbacks rejected"
    ]
    assert summaries == [
        {"malformed": 250, "bad_token": 250},
        {"malformed": 250, "bad_token": 250},
    ]
    assert _refused("bad_token") - before["bad_token"] == 500
    assert _refused("malformed") - before["malformed"] == 501
