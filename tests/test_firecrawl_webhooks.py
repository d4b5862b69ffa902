"""POST /callbacks/firecrawl on a real uvicorn and a real Redis: the deliveries of a real
self-hosted server (capture 053: unsigned, no webhookId), the cloud's signed ones, and every
bad input refused with nothing recorded."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
import redis as sync_redis
from redis.asyncio import Redis

from receiver.app import create_app
from receiver.settings import Settings
from receiver.store import Store, tracked_job_id
from receiver.store.keys import Keys
from receiver.tokens import PassthroughSigner, sign_webhook
from tests.data import DATA
from tests.servers import RedisProcess, serve_app

KEYS = ("new-key", "old-key")
REDIS_KEYS = Keys()
SECRET = "whsec-webhooks"
# The self-hosted build's 8 deliveries of one batch (capture 053).
CAPTURE = DATA / "captures" / "firecrawl-webhooks" / "053_webhook_deliveries_unsigned.json"
DELIVERIES: list[dict[str, Any]] = json.loads(CAPTURE.read_text())["deliveries"]
BATCH = DELIVERIES[0]["request"]["body"]["id"]  # the capture's batch
OTHER_BATCH = str(uuid.UUID(int=5))
# Headers of the connection, not of the delivery: httpx sets its own.
_HOP_HEADERS = {"host", "content-length", "connection"}


@dataclass
class Webhooks:
    url: str
    redis: sync_redis.Redis
    signer: PassthroughSigner  # the receiver's webhook-token signer, with its keys

    @property
    def job(self) -> str:
        return tracked_job_id("firecrawl", BATCH)

    @property
    def other_job(self) -> str:
        return tracked_job_id("firecrawl", OTHER_BATCH)

    def post(
        self,
        body: object,
        token: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        raw = body if isinstance(body, bytes) else orjson.dumps(body)
        params = {} if token is None else {"token": token}
        return httpx.post(
            f"{self.url}/callbacks/firecrawl",
            params=params,
            content=raw,
            headers=headers or {"Content-Type": "application/json"},
            timeout=10,
        )

    def snapshot(self) -> dict[Any, Any]:
        keys: Any = self.redis.keys("*")
        return {key: self.redis.dump(key) for key in sorted(keys)}

    def poll_due_at(self, job_id: str) -> float:
        return float(self.redis.zscore(REDIS_KEYS.due_of(job_id), f"poll:{job_id}") or 0)

    def schedule_poll_later(self, job_id: str) -> float:
        """The job's poll planned an hour ahead, as a poll leaves it (next_poll_at)."""
        later = time.time() + 3600
        self.redis.zadd(REDIS_KEYS.due_of(job_id), {f"poll:{job_id}": later})
        self.redis.hset(REDIS_KEYS.job(job_id), "next_poll_at", repr(later))
        return later


def _track(redis_url: str, *batches: str) -> None:
    async def write() -> None:
        client = Redis.from_url(redis_url)
        store = Store(client)
        for batch in batches:
            await store.track_job("firecrawl", batch, {"batch_id": batch})
        await client.aclose()

    asyncio.run(write())


@contextlib.contextmanager
def webhooks_receiver(redis_process: RedisProcess, secret: str = "") -> Iterator[Webhooks]:
    """The web app (no worker) with two tracked batches: capture 053's and another."""
    client = sync_redis.Redis.from_url(redis_process.url)
    client.flushall()
    settings = Settings(
        redis_url=redis_process.url,
        secret_keys=KEYS,
        api_token="t",
        max_body=4096,
        firecrawl_webhook_secret=secret,
    )
    _track(redis_process.url, BATCH, OTHER_BATCH)
    signer = PassthroughSigner(KEYS, settings.token_max_age).webhook_signer()
    with serve_app(create_app(settings)) as url:
        yield Webhooks(url, client, signer)
    client.close()


@pytest.fixture
def hooks(redis_process: RedisProcess) -> Iterator[Webhooks]:
    with webhooks_receiver(redis_process) as running:
        yield running


@pytest.fixture
def signed_hooks(redis_process: RedisProcess) -> Iterator[Webhooks]:
    with webhooks_receiver(redis_process, SECRET) as running:
        yield running


def captured(delivery: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """A delivery's body and headers as the self-hosted server sent them."""
    request = delivery["request"]
    headers = {k: v for k, v in request["headers"].items() if k.lower() not in _HOP_HEADERS}
    return orjson.dumps(request["body"]), headers


# -- the real self-hosted deliveries ---------------------------------------------------------


@pytest.mark.parametrize("secret", ["", SECRET])
def test_capture_053_deliveries_with_the_token_are_taken_and_completed_makes_a_poll_due(
    redis_process: RedisProcess, secret: str
) -> None:
    with webhooks_receiver(redis_process, secret) as hooks:
        assert [d["request"]["body"]["type"] for d in DELIVERIES] == [
            "batch_scrape.started",
            *["batch_scrape.page"] * 6,
            "batch_scrape.completed",
        ]
        assert all("webhookId" not in d["request"]["body"] for d in DELIVERIES)
        planned = hooks.schedule_poll_later(hooks.job)
        token = hooks.signer.sign(hooks.job)
        for delivery in DELIVERIES[:-1]:
            raw, headers = captured(delivery)
            assert "X-Firecrawl-Signature" not in headers
            response = hooks.post(raw, token, headers)
            assert response.status_code == 200, response.text
            assert response.json() == {"status": "accepted"}
        assert hooks.poll_due_at(hooks.job) == pytest.approx(planned)  # pages: no hint
        raw, headers = captured(DELIVERIES[-1])
        assert hooks.post(raw, token, headers).json() == {"status": "accepted"}
        assert hooks.poll_due_at(hooks.job) <= time.time()  # completed: the poll is due now
        assert hooks.poll_due_at(hooks.other_job) > 0  # another job's poll left alone


def test_capture_053_deliveries_without_a_token_are_refused_and_record_nothing(
    signed_hooks: Webhooks,
) -> None:
    before = signed_hooks.snapshot()
    for delivery in DELIVERIES:
        raw, headers = captured(delivery)
        response = signed_hooks.post(raw, None, headers)
        assert response.status_code == 401
        assert response.json()["error"] == "invalid_token"
    assert signed_hooks.snapshot() == before


def test_a_repeated_unsigned_delivery_is_a_duplicate(hooks: Webhooks) -> None:
    token = hooks.signer.sign(hooks.job)
    first_page, second_page, completed = (captured(DELIVERIES[i]) for i in (1, 2, -1))
    statuses = [
        hooks.post(raw, token, headers).json()["status"]
        for raw, headers in (first_page, first_page, second_page)
    ]
    # Without webhookId only an identical body is a repeat: another page is news.
    assert statuses == ["accepted", "duplicate", "accepted"]
    planned = hooks.schedule_poll_later(hooks.job)
    assert hooks.post(completed[0], token, completed[1]).json()["status"] == "accepted"
    assert hooks.poll_due_at(hooks.job) < planned
    hooks.schedule_poll_later(hooks.job)
    assert hooks.post(completed[0], token, completed[1]).json()["status"] == "duplicate"


def test_a_token_of_a_job_with_no_batch_of_that_id_is_ignored(hooks: Webhooks) -> None:
    # A started event can come before the submission's answer names the batch to us.
    body = {**DELIVERIES[0]["request"]["body"], "id": str(uuid.UUID(int=9))}
    response = hooks.post(body, hooks.signer.sign("job-not-submitted-yet"))
    assert response.status_code == 200 and response.json() == {"status": "ignored"}


# -- the cloud's signed deliveries -----------------------------------------------------------


def cloud_body(batch: str = BATCH, kind: str = "batch_scrape.completed") -> bytes:
    return orjson.dumps(
        {"success": True, "type": kind, "id": batch, "webhookId": str(uuid.uuid4()), "data": []}
    )


def signed(raw: bytes, secret: str = SECRET) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-Firecrawl-Signature": sign_webhook(secret, raw)}


def test_a_signed_delivery_is_taken_with_or_without_the_token(signed_hooks: Webhooks) -> None:
    token = signed_hooks.signer.sign(signed_hooks.job)
    for with_token in (None, token):
        planned = signed_hooks.schedule_poll_later(signed_hooks.job)
        raw = cloud_body()
        response = signed_hooks.post(raw, with_token, signed(raw))
        assert response.status_code == 200 and response.json() == {"status": "accepted"}
        assert signed_hooks.poll_due_at(signed_hooks.job) < planned


def test_cloud_retries_of_one_delivery_are_duplicates(signed_hooks: Webhooks) -> None:
    raw = cloud_body()
    first = signed_hooks.post(raw, None, signed(raw)).json()
    again = signed_hooks.post(raw, None, signed(raw)).json()
    assert (first["status"], again["status"]) == ("accepted", "duplicate")


# -- bad input: a clear 4xx and nothing recorded ---------------------------------------------


def _bad(hooks: Webhooks, case: str) -> tuple[bytes, str | None, dict[str, str]]:
    """(body, token, headers) of a bad delivery about capture 053's batch."""
    job = hooks.job
    raw, headers = captured(DELIVERIES[-1])
    token = hooks.signer.sign(job)
    forged = PassthroughSigner(["attacker"], 3600).webhook_signer().sign(job)
    expired = PassthroughSigner(KEYS, 10, clock=lambda: 1_000_000.0).webhook_signer()
    passthrough = PassthroughSigner(KEYS, 3600).sign(job)  # Decodo's kind of token
    body = orjson.loads(raw)
    cases: dict[str, tuple[bytes, str | None, dict[str, str]]] = {
        "missing_token": (raw, None, headers),
        "empty_token": (raw, "", headers),
        "forged_token": (raw, forged, headers),
        "tampered_token": (raw, token[:-3] + "abc", headers),
        "expired_token": (raw, expired.sign(job), headers),
        "passthrough_token": (raw, passthrough, headers),
        "other_jobs_token": (raw, hooks.signer.sign(hooks.other_job), headers),
        "wrong_signature": (raw, token, signed(raw, "another-secret")),
        "signature_of_another_body": (raw, token, signed(raw + b" ")),
        "malformed_json": (b'{"type": "batch_scrape.completed", "id": ', token, headers),
        "json_array": (orjson.dumps([body]), token, headers),
        "missing_id": (orjson.dumps({**body, "id": None}), token, headers),
        "id_not_a_string": (orjson.dumps({**body, "id": 7}), token, headers),
        "missing_type": (
            orjson.dumps({k: v for k, v in body.items() if k != "type"}),
            token,
            headers,
        ),
        "oversize": (orjson.dumps({**body, "padding": "x" * 5000}), token, headers),
    }
    return cases[case]


_BAD_CASES = [
    ("missing_token", 401, "invalid_token"),
    ("empty_token", 401, "invalid_token"),
    ("forged_token", 401, "invalid_token"),
    ("tampered_token", 401, "invalid_token"),
    ("expired_token", 401, "expired_token"),
    ("passthrough_token", 401, "invalid_token"),
    ("other_jobs_token", 401, "invalid_token"),
    ("wrong_signature", 401, "invalid_token"),
    ("signature_of_another_body", 401, "invalid_token"),
    ("malformed_json", 400, "invalid_request"),
    ("json_array", 400, "invalid_request"),
    ("missing_id", 400, "invalid_request"),
    ("id_not_a_string", 400, "invalid_request"),
    ("missing_type", 400, "invalid_request"),
    ("oversize", 413, "payload_too_large"),
]


@pytest.mark.parametrize(("case", "status", "error"), _BAD_CASES)
def test_a_bad_delivery_is_refused_and_records_nothing(
    signed_hooks: Webhooks, case: str, status: int, error: str
) -> None:
    signed_hooks.schedule_poll_later(signed_hooks.job)
    before = signed_hooks.snapshot()
    raw, token, headers = _bad(signed_hooks, case)
    response = signed_hooks.post(raw, token, headers)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"] == error and response.json()["message"]
    assert signed_hooks.snapshot() == before


def test_the_refusals_say_why(signed_hooks: Webhooks) -> None:
    said = {
        case: signed_hooks.post(*_bad(signed_hooks, case)).json()["message"]
        for case in ("missing_token", "expired_token", "other_jobs_token", "wrong_signature")
    }
    assert said == {
        "missing_token": "missing webhook token (and no signature to check)",
        "expired_token": "webhook token expired",
        "other_jobs_token": "the webhook token is for another job than the batch's",
        "wrong_signature": "webhook signature does not match",
    }


def test_a_signature_without_a_secret_to_check_it_is_no_authentication(hooks: Webhooks) -> None:
    before = hooks.snapshot()
    raw = cloud_body()
    response = hooks.post(raw, None, signed(raw))
    assert response.status_code == 401 and response.json()["error"] == "invalid_token"
    assert hooks.snapshot() == before
