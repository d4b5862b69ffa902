"""DecodoJobs on a real Redis, against a MockTransport, with an injected clock."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from receiver.jobs.decodo import DecodoJobs
from receiver.providers.decodo import DecodoClient
from receiver.settings import Settings
from receiver.store import Store
from receiver.tokens import PassthroughSigner

RETENTION = 24 * 3600.0
T0 = 1_800_000_000.0  # seconds: the submission


def decodo_jobs(
    store: Store, clock: list[float], handler: Callable[[httpx.Request], Any]
) -> DecodoJobs:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    client = DecodoClient(http, "https://decodo.example", "dXNlcjpwYXNz")
    settings = Settings(provider_retention=RETENTION, token_max_age=2 * RETENTION)
    signer = PassthroughSigner(("k",), settings.token_max_age)
    return DecodoJobs(store, client, signer, settings, clock=lambda: clock[0])


async def one_task_job(store: Store, status: str = "done") -> None:
    await store.create_job("j1", "decodo", total=1, params={}, work="")
    await store.record_submission("j1", 0, [("101", "u")], last=True, reconcile_after=300)
    if status == "done":
        await store.apply_callbacks([("j1", "101", "done")])


def not_found_after(clock: list[float], elapsed: float) -> Callable[[httpx.Request], Any]:
    """Decodo's 404 without the word "expired", answered `elapsed` seconds later."""

    def answer(request: httpx.Request) -> httpx.Response:
        clock[0] += elapsed
        return httpx.Response(404, json={"status": "failed", "message": "Task not found"})

    return answer


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("age", "status", "reason"),
    [(RETENTION + 30, "expired", "expired"), (RETENTION - 90, "failed", "not_found")],
)
async def test_fetch_404_expires_the_task_only_past_the_retention(
    redis: Any, age: float, status: str, reason: str
) -> None:
    clock = [T0]
    store = Store(redis, clock=lambda: clock[0])
    await one_task_job(store)
    # The fetch starts within the window and Decodo's answer comes `age` after submission.
    jobs = decodo_jobs(store, clock, not_found_after(clock, 60.0))
    clock[0] = T0 + age - 60.0
    assert await jobs.fetch("j1", "101") is None
    (task,) = await store.get_task_details("j1")
    assert task["status"] == status and task["error"].startswith(reason), task
    job = await store.get_job("j1")
    assert job is not None and job["status"] == ("expired" if status == "expired" else "failed")
    await jobs.client.http.aclose()


@pytest.mark.anyio
async def test_reconcile_404_past_the_retention_expires_the_task(redis: Any) -> None:
    clock = [T0]
    store = Store(redis, clock=lambda: clock[0])
    await one_task_job(store, status="pending")
    jobs = decodo_jobs(store, clock, not_found_after(clock, RETENTION))
    clock[0] = T0 + 300
    assert await jobs.reconcile("j1") is None
    (task,) = await store.get_task_details("j1")
    assert task["status"] == "expired" and task["error"].startswith("expired"), task
    await jobs.client.http.aclose()


@pytest.mark.anyio
async def test_failed_fetches_log_their_reason_never_the_providers_answer(
    redis: Any, caplog: pytest.LogCaptureFixture
) -> None:
    clock = [T0]
    store = Store(redis, clock=lambda: clock[0])
    await one_task_job(store)

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, text="<html>do-not-log-this-answer</html>")

    jobs = decodo_jobs(store, clock, answer)
    with caplog.at_level(logging.INFO, logger="receiver"):
        retry_at = await jobs.fetch("j1", "101")
    assert retry_at is not None and retry_at > T0  # retried later, not failed
    (line,) = [r for r in caplog.records if r.getMessage() == "retrying later"]
    assert (line.job_id, line.reason, line.status) == ("j1", "unavailable", 503)  # type: ignore[attr-defined]
    assert all("do-not-log-this-answer" not in repr(vars(r)) for r in caplog.records)
    await jobs.client.http.aclose()
