"""Polled providers end to end: Firecrawl and Dify sandboxes, receiver and worker, for real."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

import httpx
import orjson
import pytest

from receiver.tokens import sign_webhook
from tests.e2e import PolledDeployment, polled_deployment
from tests.servers import RedisProcess, free_port


def urls(count: int) -> list[str]:
    return [f"https://site.example/page/{i}" for i in range(count)]


def events_of(d: PolledDeployment, job_id: str) -> list[dict[str, Any]]:
    return d.events(job_id)


def wait_for_stat(d: PolledDeployment, sandbox: str, name: str, timeout: float = 10) -> int:
    """The sandbox's count of `name` once it is not 0 (a webhook's answer is counted after
    the receiver gave it), or 0 at the timeout."""
    deadline = time.monotonic() + timeout
    while (count := d.stats(sandbox).get(name, 0)) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    return count


def webhook_body(batch_id: str, kind: str = "batch_scrape.completed") -> bytes:
    return orjson.dumps(
        {"success": True, "type": kind, "id": batch_id, "webhookId": str(uuid.uuid4()), "data": []}
    )


def leased_until(d: PolledDeployment, job_id: str, timeout: float = 20) -> float:
    """The poll's lease end once a worker holds it (due far past the poll interval)."""
    deadline = time.monotonic() + timeout
    while (
        score := d.redis.zscore(d.keys.due_of(job_id), f"poll:{job_id}") or 0
    ) < time.time() + 30:
        assert time.monotonic() < deadline, "no worker took the poll"
        time.sleep(0.02)
    return score


# -- Firecrawl ------------------------------------------------------------------------------


def test_firecrawl_submitted_batch_collects_every_next_page(redis_process: RedisProcess) -> None:
    with polled_deployment(
        redis_process, firecrawl={"scrape_delay": 0.002, "concurrency": 50, "page_size": 100}
    ) as d:
        job_id = d.create({"provider": "firecrawl", "urls": urls(250), "formats": ["markdown"]})
        job = d.wait(job_id)
        assert job["status"] == "completed", job
        assert job["progress"]["completed"] == job["progress"]["total"] == 250
        assert job["documents"] == 250 and job["credits_used"] == 250
        assert job["external"]["batch_id"] and job["expires_at"]
        results = d.results(job_id)["results"]
        assert len(results) == 250
        sources = {doc["metadata"]["sourceURL"] for doc in results.values()}
        assert sources == set(urls(250))
        stats = d.stats(d.firecrawl)
        assert stats["GET /v2/batch/scrape/{id} 200"] >= 3  # the first page, then two `next`
        progress = [e for e in events_of(d, job_id) if e["type"] == "job.progress"]
        counts = [e["progress"]["completed"] for e in progress if "provider_status" in e["detail"]]
        assert counts == sorted(set(counts)), "one progress event per change, not per poll"


def test_firecrawl_tracked_selfhosted_batch_dedupes_repeated_pages(
    redis_process: RedisProcess,
) -> None:
    firecrawl = {"paging": "selfhosted", "scrape_delay": 0.01, "not_found_rate": 0.3}
    with polled_deployment(redis_process, firecrawl=firecrawl) as d:
        batch_id = d.firecrawl_batch(urls(12))
        job_id = d.create({"provider": "firecrawl", "batch_id": batch_id})
        again = d.create({"provider": "firecrawl", "batch_id": batch_id}, expect=200)
        assert again == job_id  # tracking the same batch twice gives the same job
        job = d.wait(job_id)
        assert job["status"] == "completed"
        results = d.results(job_id)["results"]
        assert len(results) == 12
        codes = {doc["metadata"]["statusCode"] for doc in results.values()}
        assert 404 in codes  # a target 404 is a successful document


def test_firecrawl_cancel_mid_scrape(redis_process: RedisProcess) -> None:
    with polled_deployment(redis_process, firecrawl={"scrape_delay": 5.0}) as d:
        batch_id = d.firecrawl_batch(urls(20))
        job_id = d.create({"provider": "firecrawl", "batch_id": batch_id})
        response = httpx.delete(f"{d.api}/jobs/{job_id}", headers=d.headers(), timeout=10)
        assert response.status_code == 202, response.text
        assert response.json()["provider_status"] == "cancelled"
        assert d.wait(job_id, timeout=20)["status"] == "cancelled"
        status = httpx.get(
            f"{d.firecrawl}/v2/batch/scrape/{batch_id}",
            timeout=10,
            headers={"Authorization": "Bearer fc-sandbox"},
        ).json()
        assert status["status"] == "cancelled"
        again = httpx.delete(f"{d.api}/jobs/{job_id}", headers=d.headers(), timeout=10)
        assert again.status_code == 409


def test_firecrawl_cancel_reports_provider_404_and_409(redis_process: RedisProcess) -> None:
    # No worker: a poll would end both jobs before the DELETE (404 fails the first, the
    # second completes), and the answer would be our own 409, not the provider's.
    firecrawl = {"scrape_delay": 5.0, "conflict_on_completed_cancel": True}
    with polled_deployment(redis_process, firecrawl=firecrawl, with_worker=False) as d:
        unknown = d.create({"provider": "firecrawl", "batch_id": str(uuid.uuid4())})
        response = httpx.delete(f"{d.api}/jobs/{unknown}", headers=d.headers(), timeout=10)
        assert response.status_code == 404
        assert response.json()["error"] == "provider_not_found"
        batch_id = d.firecrawl_batch(urls(1))
        httpx.post(f"{d.firecrawl}/_sandbox/batches/{batch_id}/finish", timeout=10)
        finished = d.create({"provider": "firecrawl", "batch_id": batch_id})
        response = httpx.delete(f"{d.api}/jobs/{finished}", headers=d.headers(), timeout=10)
        assert response.status_code == 409
        assert response.json()["error"] == "provider_conflict"


def test_firecrawl_unknown_batch_fails_not_found(redis_process: RedisProcess) -> None:
    with polled_deployment(redis_process) as d:
        job = d.wait(d.create({"provider": "firecrawl", "batch_id": str(uuid.uuid4())}))
        assert job["status"] == "failed" and job["error"].startswith("not_found")


def test_firecrawl_402_fails_with_payment_required(redis_process: RedisProcess) -> None:
    with polled_deployment(redis_process, firecrawl={"credits": 1}) as d:
        job = d.wait(d.create({"provider": "firecrawl", "urls": urls(5)}))
        assert job["status"] == "failed"
        assert job["error"].startswith("payment_required") and "credits" in job["error"]


def test_firecrawl_expired_batch_ends_expired(redis_process: RedisProcess) -> None:
    with polled_deployment(redis_process, firecrawl={"scrape_delay": 5.0}) as d:
        batch_id = d.firecrawl_batch(urls(3))
        job_id = d.create({"provider": "firecrawl", "batch_id": batch_id})
        httpx.post(f"{d.firecrawl}/_sandbox/advance", json={"seconds": 90_000}, timeout=10)
        job = d.wait(job_id)
        assert job["status"] == "expired" and "expired" in job["error"]


@pytest.mark.parametrize("header", [False, True])
def test_firecrawl_429_is_retried(redis_process: RedisProcess, header: bool) -> None:
    firecrawl = {
        "get_429_rate": 0.5,
        "retry_after": 2,
        "retry_after_header": header,
        "scrape_delay": 0.01,
    }
    with polled_deployment(redis_process, firecrawl=firecrawl) as d:
        job = d.wait(d.create({"provider": "firecrawl", "batch_id": d.firecrawl_batch(urls(5))}))
        assert job["status"] == "completed"
        stats = d.stats(d.firecrawl)
        assert stats.get("GET /v2/batch/scrape/{id} 429", 0) > 0
        # The sandbox times each request repeated after a 429 against the 2 s it asked for.
        assert stats.get("retries in time", 0) > 0
        assert stats.get("retries too early", 0) == 0


def test_firecrawl_5xx_is_retried(redis_process: RedisProcess) -> None:
    firecrawl = {"get_500_rate": 0.5, "post_500_rate": 0.5, "scrape_delay": 0.01}
    with polled_deployment(redis_process, firecrawl=firecrawl) as d:
        job = d.wait(d.create({"provider": "firecrawl", "urls": urls(5)}))
        assert job["status"] == "completed"
        assert d.stats(d.firecrawl).get("GET /v2/batch/scrape/{id} 500", 0) > 0


@pytest.mark.parametrize("next_base", ["http://127.0.0.2:9", "https://{host}"])
def test_firecrawl_next_naming_another_origin_is_read_from_ours(
    redis_process: RedisProcess, next_base: str
) -> None:
    """A `next` on another host, or with `https://` on the server's own plain-HTTP port (a
    self-hosted server run without ENV=local), is read from the configured origin."""
    firecrawl = {"next_base_url": next_base, "page_size": 2, "scrape_delay": 0.01}
    with polled_deployment(redis_process, firecrawl=firecrawl) as d:
        if "{host}" in next_base:
            host = d.firecrawl.removeprefix("http://")
            d.configure_firecrawl(next_base_url=next_base.format(host=host))
        job = d.wait(d.create({"provider": "firecrawl", "urls": urls(5)}))
        assert job["status"] == "completed", job
        assert job["documents"] == 5
        pages = d.stats(d.firecrawl).get("GET /v2/batch/scrape/{id} 200", 0)
        assert pages >= 3  # the first answer, then the next pages (2 documents each)


def test_firecrawl_stalled_batch_fails_stalled(redis_process: RedisProcess) -> None:
    with polled_deployment(redis_process, firecrawl={"stall": True, "scrape_delay": 0.01}) as d:
        batch_id = d.firecrawl_batch(urls(3))
        job = d.wait(d.create({"provider": "firecrawl", "batch_id": batch_id, "stall_after": 1}))
        assert job["status"] == "failed" and job["error"].startswith("stalled")
        assert job["progress"]["completed"] == 2  # the last page never came


def test_firecrawl_webhooks_speed_up_the_poll(redis_process: RedisProcess) -> None:
    secret = "whsec-e2e"
    settings = {"firecrawl_webhook_secret": secret, "poll_min": 20.0, "poll_max": 20.0}
    # One page at a time, 2 s each: the first poll sees it scraping, the next is 20 s away.
    firecrawl = {"webhook_secret": secret, "scrape_delay": 2.0, "concurrency": 1}
    with polled_deployment(redis_process, firecrawl=firecrawl, settings=settings) as d:
        started = time.monotonic()
        job = d.wait(d.create({"provider": "firecrawl", "urls": urls(2)}), timeout=15)
        assert job["status"] == "completed"
        assert time.monotonic() - started < 10  # well before the 20 s poll interval
        assert d.stats(d.firecrawl)["GET /v2/batch/scrape/{id} 200"] == 2
        assert wait_for_stat(d, d.firecrawl, "webhook batch_scrape.completed 200") == 1


def test_firecrawl_webhook_bad_signature_and_duplicates(redis_process: RedisProcess) -> None:
    secret = "whsec-e2e"
    settings = {"firecrawl_webhook_secret": secret}
    with polled_deployment(redis_process, settings=settings, with_worker=False) as d:
        body = orjson.dumps(
            {
                "success": True,
                "type": "batch_scrape.completed",
                "id": str(uuid.uuid4()),
                "webhookId": str(uuid.uuid4()),
                "data": [],
            }
        )
        url = f"{d.api}/callbacks/firecrawl"
        before = d.redis.dbsize()
        for header in (None, "sha256=00", sign_webhook("other", body)):
            headers = {"X-Firecrawl-Signature": header} if header else {}
            response = httpx.post(url, content=body, headers=headers, timeout=10)
            assert response.status_code == 401
            assert d.redis.dbsize() == before
        signed = {"X-Firecrawl-Signature": sign_webhook(secret, body)}
        first = httpx.post(url, content=body, headers=signed, timeout=10)
        second = httpx.post(url, content=body, headers=signed, timeout=10)
        assert first.status_code == second.status_code == 200
        assert (first.json()["status"], second.json()["status"]) == ("ignored", "duplicate")


def test_firecrawl_webhook_leaves_a_leased_poll_to_its_holder(redis_process: RedisProcess) -> None:
    secret = "whsec-e2e"
    settings = {"firecrawl_webhook_secret": secret, "poll_min": 20.0, "poll_max": 20.0}
    # Each poll takes 2 s at the sandbox: the webhook lands while the worker holds the poll.
    firecrawl = {"scrape_delay": 60.0, "get_latency": 2.0}
    with polled_deployment(redis_process, firecrawl=firecrawl, settings=settings) as d:
        batch_id = d.firecrawl_batch(urls(1))
        job_id = d.create({"provider": "firecrawl", "batch_id": batch_id})
        leased_until(d, job_id)
        body = webhook_body(batch_id)
        signed = {"X-Firecrawl-Signature": sign_webhook(secret, body)}
        response = httpx.post(f"{d.api}/callbacks/firecrawl", content=body, headers=signed)
        assert response.json()["status"] == "accepted"
        # The lease stands (not made due now for a second worker); its holder is told.
        assert (d.redis.zscore(d.keys.due_of(job_id), f"poll:{job_id}") or 0) > time.time() + 30
        assert d.redis.hget(d.keys.job(job_id), "poll_now") == b"1"
        # The holder polls again at once, not at the 20 s interval, and never two at once.
        deadline = time.monotonic() + 10
        while d.stats(d.firecrawl).get("GET /v2/batch/scrape/{id} 200", 0) < 2:
            assert time.monotonic() < deadline, "the holder did not poll again at once"
            time.sleep(0.05)
        assert d.stats(d.firecrawl).get("overlapping polls", 0) == 0
        assert d.redis.hget(d.keys.job(job_id), "poll_now") is None


def test_firecrawl_webhook_makes_a_scheduled_poll_due_now(redis_process: RedisProcess) -> None:
    secret = "whsec-e2e"
    settings = {"firecrawl_webhook_secret": secret, "poll_min": 20.0, "poll_max": 20.0}
    with polled_deployment(redis_process, firecrawl={"scrape_delay": 60.0}, settings=settings) as d:
        batch_id = d.firecrawl_batch(urls(1))
        job_id = d.create({"provider": "firecrawl", "batch_id": batch_id})
        d.wait_for_field(job_id, "next_poll_at")  # the first poll ended
        body = webhook_body(batch_id)
        signed = {"X-Firecrawl-Signature": sign_webhook(secret, body)}
        httpx.post(f"{d.api}/callbacks/firecrawl", content=body, headers=signed, timeout=10)
        deadline = time.monotonic() + 10
        while d.stats(d.firecrawl).get("GET /v2/batch/scrape/{id} 200", 0) < 2:
            assert time.monotonic() < deadline, "the webhook did not make the poll due"
            time.sleep(0.05)


def test_firecrawl_polls_failing_past_the_stall_timeout_fail_stalled(
    redis_process: RedisProcess,
) -> None:
    with polled_deployment(redis_process, firecrawl={"get_500_rate": 1.0}) as d:
        batch_id = d.firecrawl_batch(urls(3))
        job = d.wait(
            d.create({"provider": "firecrawl", "batch_id": batch_id, "stall_after": 1}), timeout=15
        )
        assert job["status"] == "failed" and job["error"].startswith("stalled"), job
        assert d.stats(d.firecrawl)["GET /v2/batch/scrape/{id} 500"] > 0


def test_firecrawl_polls_failing_past_expires_at_end_expired(redis_process: RedisProcess) -> None:
    # The batch expires 3 s after it started; the first poll records that, then every poll fails.
    firecrawl = {"stall": True, "scrape_delay": 0.01, "expiry": 3.0}
    with polled_deployment(redis_process, firecrawl=firecrawl) as d:
        batch_id = d.firecrawl_batch(urls(3))
        job_id = d.create({"provider": "firecrawl", "batch_id": batch_id})
        d.wait_for_field(job_id, "expires_at")  # the first poll recorded expiresAt
        d.configure_firecrawl(get_500_rate=1.0)
        job = d.wait(job_id, timeout=15)
        assert job["status"] == "expired" and job["error"].startswith("expired"), job
        assert d.stats(d.firecrawl).get("GET /v2/batch/scrape/{id} 404", 0) == 0
        assert d.stats(d.firecrawl)["GET /v2/batch/scrape/{id} 500"] > 0


def test_firecrawl_batch_cancelled_elsewhere_keeps_pages_landing_after(
    redis_process: RedisProcess,
) -> None:
    # Two pages at once, 2 s each: a cancel right away keeps the two started, landing at 1-2 s.
    with polled_deployment(redis_process, firecrawl={"scrape_delay": 2.0, "concurrency": 2}) as d:
        batch_id = d.firecrawl_batch(urls(20))
        job_id = d.create({"provider": "firecrawl", "batch_id": batch_id})
        cancelled = httpx.delete(
            f"{d.firecrawl}/v2/batch/scrape/{batch_id}",
            headers={"Authorization": "Bearer fc-sandbox"},
            timeout=10,
        )
        assert cancelled.json() == {"status": "cancelled"}
        job = d.wait(job_id, timeout=15)
        assert job["status"] == "cancelled", job
        assert job["progress"] == {"completed": 2, "failed": 18, "total": 20}
        assert job["documents"] == 2
        assert len(d.results(job_id)["results"]) == 2


@pytest.mark.parametrize(
    "options",
    [
        {"formats": 5},
        {"formats": ["markdown", 5]},
        {"onlyMainContent": "yes"},
        {"timeout": 1.5},
        {"waitFor": "1000"},
        {"headers": {"X-Test": 1}},
        {"includeTags": "article"},
        {"location": ["US"]},
        {"proxy": "fastest"},
        {"maxConcurrency": 0},
        {"appendToId": "not-a-uuid"},
    ],
)
def test_firecrawl_options_of_the_wrong_type_are_400(
    redis_process: RedisProcess, options: dict[str, Any]
) -> None:
    with polled_deployment(redis_process, with_worker=False) as d:
        before = sorted(d.redis.keys())
        response = httpx.post(
            f"{d.api}/jobs",
            json={"provider": "firecrawl", "urls": urls(2), **options},
            headers=d.headers(),
            timeout=10,
        )
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "invalid_request"
        assert next(iter(options)) in response.json()["message"]
        assert sorted(d.redis.keys()) == before


def test_firecrawl_failed_batch_fails_the_job(redis_process: RedisProcess) -> None:
    firecrawl = {"batch_fails": True, "scrape_delay": 0.01}
    with polled_deployment(redis_process, firecrawl=firecrawl) as d:
        job = d.wait(d.create({"provider": "firecrawl", "batch_id": d.firecrawl_batch(urls(3))}))
        assert job["status"] == "failed"
        assert job["error"] == "firecrawl reported the batch failed"
        assert len(d.results(job_id := job["id"])["results"]) == 3, job_id


def test_firecrawl_402_while_polling_fails_payment_required(redis_process: RedisProcess) -> None:
    with polled_deployment(redis_process, firecrawl={"get_402_rate": 1.0}) as d:
        job = d.wait(d.create({"provider": "firecrawl", "batch_id": d.firecrawl_batch(urls(2))}))
        assert job["status"] == "failed"
        assert job["error"].startswith("payment_required")
        assert "Payment required to access this resource." in job["error"]
        assert d.stats(d.firecrawl)["GET /v2/batch/scrape/{id} 402"] == 1


# -- Dify -----------------------------------------------------------------------------------


def test_dify_batch_with_one_document_in_error(redis_process: RedisProcess) -> None:
    with polled_deployment(redis_process) as d:
        dataset, batch, docs = d.dify_batch(
            [
                {"name": "a.txt", "segments": 4},
                {"name": "b.pdf", "fail": True},
                {"name": "c.txt", "segments": 2},
            ]
        )
        job = d.wait(d.create({"provider": "dify", "dataset_id": dataset, "batch": batch}))
        assert job["status"] == "failed"
        assert docs[1] in job["error"] and "PDFium" in job["error"]
        statuses = {t["id"]: t["status"] for t in job["tasks"]}
        assert statuses == {docs[0]: "completed", docs[1]: "error", docs[2]: "completed"}
        assert job["progress"] == {"completed": 2, "failed": 1, "total": 3}
        assert job["segments_total"] == 6


def test_dify_batch_completes_with_segments(redis_process: RedisProcess) -> None:
    with polled_deployment(redis_process) as d:
        dataset, batch, _ = d.dify_batch(
            [{"name": "a.txt", "segments": 5}, {"name": "b.txt", "segments": 3}]
        )
        job = d.wait(d.create({"provider": "dify", "dataset_id": dataset, "batch": batch}))
        assert job["status"] == "completed"
        assert (job["segments_completed"], job["segments_total"]) == (8, 8)


def test_dify_paused_does_not_stall_then_resumes(redis_process: RedisProcess) -> None:
    with polled_deployment(redis_process, dify={"step_seconds": 0.3}) as d:
        dataset, batch, (doc,) = d.dify_batch([{"name": "a.txt", "segments": 3}])
        console = f"{d.dify}/console/api/datasets/{dataset}/documents/{doc}/processing"
        assert httpx.patch(f"{console}/pause", timeout=10).status_code == 204
        job_id = d.create(
            {"provider": "dify", "dataset_id": dataset, "batch": batch, "stall_after": 1}
        )
        time.sleep(2.5)  # well past the stall timeout, but paused
        job = d.job(job_id)
        assert job["status"] == "running" and job["paused"] == 1
        assert httpx.patch(f"{console}/resume", timeout=10).status_code == 204
        assert d.wait(job_id)["status"] == "completed"


@pytest.mark.parametrize(
    ("settings", "batch", "reason"),
    [
        ({"dify_api_key": "wrong"}, None, "unauthorized"),
        ({}, "20261122000000123456", "documents_not_found"),
    ],
)
def test_dify_errors_fail_with_a_reason(
    redis_process: RedisProcess, settings: dict[str, Any], batch: str | None, reason: str
) -> None:
    with polled_deployment(redis_process, settings=settings) as d:
        dataset, real_batch, _ = d.dify_batch([{"name": "a.txt"}])
        job = d.wait(
            d.create({"provider": "dify", "dataset_id": dataset, "batch": batch or real_batch})
        )
        assert job["status"] == "failed" and job["error"].startswith(reason)


def test_dify_rate_limit_403_is_retried(redis_process: RedisProcess) -> None:
    with polled_deployment(redis_process, dify={"rate_limit_403_rate": 0.5}) as d:
        dataset, batch, _ = d.dify_batch([{"name": "a.txt"}])
        job = d.wait(d.create({"provider": "dify", "dataset_id": dataset, "batch": batch}))
        assert job["status"] == "completed"
        refused = {k: v for k, v in d.stats(d.dify).items() if k.endswith("indexing-status 403")}
        assert sum(refused.values()) > 0, d.stats(d.dify)


# -- several workers ------------------------------------------------------------------------


def worker_env(d: PolledDeployment, redis_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "REDIS_URL": redis_url,
        "RECEIVER_SECRET_KEYS": "e2e-key-5b8d2f0c4a",
        "RECEIVER_API_TOKEN": "t3Fh8Jk1Nq6Ws0Yb",
        "FIRECRAWL_BASE_URL": d.firecrawl,
        "FIRECRAWL_API_KEY": "fc-sandbox",
        "RECEIVER_POLL_MIN": "0.05",
        "RECEIVER_POLL_MAX": "0.3",
        "RECEIVER_FIRECRAWL_RPS": "2000",
        "RECEIVER_CLAIM_IDLE": "1",
        "RECEIVER_LEASE": "2",
    }


def worker_polls(port: int) -> float:
    """Successful Firecrawl polls a worker process made, from its own /metrics."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    pattern = (
        r'^receiver_polls_total\{(?=[^}]*outcome="ok")(?=[^}]*provider="firecrawl")[^}]*\} (\S+)$'
    )
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_two_workers_poll_200_jobs_never_the_same_one_at_once(
    redis_process: RedisProcess,
) -> None:
    # Polls slow enough (0.3 s) that two at once of one batch would overlap in the sandbox.
    firecrawl = {"scrape_delay": 1.5, "get_latency": 0.3, "concurrency": 2}
    with polled_deployment(redis_process, firecrawl=firecrawl, with_worker=False) as d:
        env = worker_env(d, redis_process.url)
        ports = [free_port(), free_port()]
        workers = [
            subprocess.Popen(
                [sys.executable, "-m", "receiver", "worker"],
                env={**env, "RECEIVER_METRICS_PORT": str(port)},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for port in ports
        ]
        try:
            jobs = [
                d.create({"provider": "firecrawl", "batch_id": d.firecrawl_batch(urls(2))})
                for _ in range(200)
            ]
            for job_id in jobs:
                assert d.wait(job_id, timeout=60)["status"] == "completed"
            polls = [worker_polls(port) for port in ports]
            assert all(count > 0 for count in polls), f"polls by worker: {polls}"
        finally:
            for worker in workers:
                worker.terminate()
                worker.wait(20)
        stats = d.stats(d.firecrawl)
        assert stats.get("overlapping polls", 0) == 0
        # Every job was polled, and most of them more than once.
        assert stats["GET /v2/batch/scrape/{id} 200"] > 300


def test_killed_worker_poll_lease_is_taken_over(redis_process: RedisProcess) -> None:
    firecrawl = {"scrape_delay": 0.01, "get_latency": 3.0}
    with polled_deployment(redis_process, firecrawl=firecrawl, with_worker=False) as d:
        env = worker_env(d, redis_process.url)
        first = subprocess.Popen(
            [sys.executable, "-m", "receiver", "worker"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        job_id = d.create({"provider": "firecrawl", "batch_id": d.firecrawl_batch(urls(1))})
        deadline = time.monotonic() + 20
        # Leased: due past the 0.3 s poll cap, so the first worker's poll is in flight.
        while (d.redis.zscore(d.keys.due_of(job_id), f"poll:{job_id}") or 0) < time.time() + 1:
            assert time.monotonic() < deadline, "the first worker never took the poll"
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        # The dead worker's lease on the poll runs out (2 s) and another worker takes it.
        lease_end = d.redis.zscore(d.keys.due_of(job_id), f"poll:{job_id}")
        assert lease_end is not None and lease_end > time.time()
        d.configure_firecrawl(get_latency=0.0)
        second = subprocess.Popen(
            [sys.executable, "-m", "receiver", "worker"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert d.wait(job_id, timeout=30)["status"] == "completed"
        finally:
            second.terminate()
            second.wait(20)


def test_retry_redrives_a_stalled_job_to_completion(redis_process: RedisProcess) -> None:
    with polled_deployment(redis_process, firecrawl={"stall": True, "scrape_delay": 0.01}) as d:
        batch_id = d.firecrawl_batch(urls(3))
        job_id = d.create({"provider": "firecrawl", "batch_id": batch_id, "stall_after": 1})
        assert d.wait(job_id)["status"] == "failed"
        d.configure_firecrawl(stall=False)
        response = httpx.post(f"{d.api}/jobs/{job_id}/retry", headers=d.headers(), timeout=10)
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "running" and "error" not in response.json()
        job = d.wait(job_id)
        assert job["status"] == "completed" and len(d.results(job_id)["results"]) == 3
        again = httpx.post(f"{d.api}/jobs/{job_id}/retry", headers=d.headers(), timeout=10)
        assert again.status_code == 409


def test_retry_resubmits_a_decodo_job_refused_at_submission(redis_process: RedisProcess) -> None:
    with polled_deployment(redis_process) as d:
        # The sandbox refuses our credentials for a while: the submission fails with 401.
        d.configure_sandbox(auth="cmVqZWN0OnJlamVjdA==")
        job_id = d.submit({"url": "https://example.com"})
        job = d.wait(job_id)
        assert job["status"] == "failed" and job["error"].startswith("unauthorized")
        d.configure_sandbox(auth="c2FuZGJveDpzYW5kYm94")
        response = httpx.post(f"{d.api}/jobs/{job_id}/retry", headers=d.headers(), timeout=10)
        assert response.status_code == 202, response.text
        job = d.wait(job_id)
        assert job["status"] == "completed" and job["progress"]["completed"] == 1


def test_polls_keep_to_the_provider_rate_shared_through_redis(
    redis_process: RedisProcess,
) -> None:
    """20 jobs due at once, polls every 50 ms wanted, 5 requests a second allowed."""
    rate, seconds = 5.0, 3.0
    with polled_deployment(
        redis_process, firecrawl={"scrape_delay": 60.0}, settings={"firecrawl_rps": rate}
    ) as d:
        batches = [d.firecrawl_batch(urls(1)) for _ in range(20)]
        started = time.monotonic()  # the first job is polled as soon as it is created
        for batch_id in batches:
            d.create({"provider": "firecrawl", "batch_id": batch_id})
        time.sleep(seconds)
        polls = d.stats(d.firecrawl).get("GET /v2/batch/scrape/{id} 200", 0)
        elapsed = time.monotonic() - started
    # A burst of one second's worth, then the rate: never the 20 / 0.05 s the jobs want.
    assert rate <= polls <= rate * (1 + elapsed) + 1, polls


# -- settings-level stall timeouts ----------------------------------------------------------


def stalled_worker(d: PolledDeployment, redis_url: str, **env: str) -> subprocess.Popen[bytes]:
    """A `receiver worker` process for both polled providers, its settings from `env`."""
    return subprocess.Popen(
        [sys.executable, "-m", "receiver", "worker"],
        env={
            **worker_env(d, redis_url),
            "DIFY_BASE_URL": f"{d.dify}/v1",
            "DIFY_API_KEY": "dataset-sandbox",
            **env,
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    ("env", "stalls"),
    [
        ({"RECEIVER_STALL_AFTER": "1"}, {"firecrawl", "dify"}),
        ({"RECEIVER_FIRECRAWL_STALL_AFTER": "1"}, {"firecrawl"}),
        ({"RECEIVER_DIFY_STALL_AFTER": "1"}, {"dify"}),
    ],
)
def test_stall_timeout_from_the_settings_per_provider(
    redis_process: RedisProcess, env: dict[str, str], stalls: set[str]
) -> None:
    """Two batches that never progress, no `stall_after` of their own: the worker's
    environment alone says which of them stalls after 1 s (the default is 30 minutes)."""
    firecrawl = {"stall": True, "scrape_delay": 0.01}
    with polled_deployment(
        redis_process, firecrawl=firecrawl, dify={"stall": True}, with_worker=False
    ) as d:
        dataset, batch, _ = d.dify_batch([{"name": "a.txt", "segments": 2}])
        jobs = {
            "firecrawl": d.create(
                {"provider": "firecrawl", "batch_id": d.firecrawl_batch(urls(3))}
            ),
            "dify": d.create({"provider": "dify", "dataset_id": dataset, "batch": batch}),
        }
        worker = stalled_worker(d, redis_process.url, **env)
        try:
            for provider in sorted(stalls):
                job = d.wait(jobs[provider], timeout=20)
                assert job["status"] == "failed", job
                assert job["error"] == "stalled: no progress for 1 s", job
            time.sleep(1.5)  # the others had as long, and longer: still polled
            for provider in sorted(set(jobs) - stalls):
                job = d.job(jobs[provider])
                assert job["status"] == "running" and "polled_at" in job, job
        finally:
            worker.terminate()
            worker.wait(20)


@pytest.mark.parametrize("while_paused", [True, False])
def test_stall_while_paused_setting_lets_a_paused_dify_batch_stall(
    redis_process: RedisProcess, while_paused: bool
) -> None:
    env = {"RECEIVER_DIFY_STALL_AFTER": "1"}
    if while_paused:
        env["RECEIVER_STALL_WHILE_PAUSED"] = "true"
    with polled_deployment(redis_process, dify={"step_seconds": 0.3}, with_worker=False) as d:
        dataset, batch, (doc,) = d.dify_batch([{"name": "a.txt", "segments": 3}])
        console = f"{d.dify}/console/api/datasets/{dataset}/documents/{doc}/processing"
        assert httpx.patch(f"{console}/pause", timeout=10).status_code == 204
        job_id = d.create({"provider": "dify", "dataset_id": dataset, "batch": batch})
        worker = stalled_worker(d, redis_process.url, **env)
        try:
            if while_paused:
                job = d.wait(job_id, timeout=20)
                assert job["status"] == "failed" and job["paused"] == 1, job
                assert job["error"] == "stalled: no progress for 1 s"
            else:
                d.wait_for_field(job_id, "paused")
                time.sleep(2.5)  # well past the stall timeout, but paused
                job = d.job(job_id)
                assert job["status"] == "running" and job["paused"] == 1, job
        finally:
            worker.terminate()
            worker.wait(20)


# -- submission -----------------------------------------------------------------------------


def test_firecrawl_submission_records_the_invalid_urls_it_ignored(
    redis_process: RedisProcess,
) -> None:
    # No top-level domain: Firecrawl's URL schema refuses it, which ignoreInvalidURLs skips.
    invalid = "https://intranet-host/page"
    with polled_deployment(redis_process, firecrawl={"scrape_delay": 0.01}) as d:
        job_id = d.create(
            {"provider": "firecrawl", "urls": [*urls(2), invalid], "ignoreInvalidURLs": True}
        )
        job = d.wait(job_id)
        assert job["status"] == "completed", job
        assert job["invalid_urls"] == [invalid]
        assert job["progress"] == {"completed": 2, "failed": 1, "total": 3}
        assert job["documents"] == 2
        sources = {doc["metadata"]["sourceURL"] for doc in d.results(job_id)["results"].values()}
        assert sources == set(urls(2))
        submitted = [e for e in events_of(d, job_id) if "batch_id" in e["detail"]]
        assert [e["detail"]["invalid_urls"] for e in submitted] == [[invalid]]


def test_firecrawl_submission_without_ignore_invalid_urls_fails_bad_request(
    redis_process: RedisProcess,
) -> None:
    with polled_deployment(redis_process) as d:
        job = d.wait(d.create({"provider": "firecrawl", "urls": [*urls(1), "https://nodot"]}))
        assert job["status"] == "failed" and job["error"].startswith("bad_request"), job
        assert "invalid_urls" not in job


# -- every Firecrawl request under the rate -------------------------------------------------


def gets_over_time(d: PolledDeployment, seconds: float) -> list[tuple[float, int]]:
    """(seconds since the start, the sandbox's successful status GETs), sampled."""
    started, samples = time.monotonic(), []
    while (elapsed := time.monotonic() - started) < seconds:
        samples.append((elapsed, d.stats(d.firecrawl).get("GET /v2/batch/scrape/{id} 200", 0)))
        time.sleep(0.1)
    return samples


def test_firecrawl_next_pages_keep_to_the_provider_rate(redis_process: RedisProcess) -> None:
    """A finished batch of 16 one-document pages, 4 requests a second allowed: its 15 `next`
    pages are fetched by one poll, yet at the rate, not all at once."""
    rate, pages = 4.0, 16
    firecrawl = {"scrape_delay": 0.01, "concurrency": 50, "page_size": 1}
    with polled_deployment(
        redis_process, firecrawl=firecrawl, settings={"firecrawl_rps": rate}
    ) as d:
        batch_id = d.firecrawl_batch(urls(pages))
        httpx.post(f"{d.firecrawl}/_sandbox/batches/{batch_id}/finish", timeout=10)
        job_id = d.create({"provider": "firecrawl", "batch_id": batch_id})
        samples = gets_over_time(d, 2.0)
        job = d.wait(job_id)
        gets = d.stats(d.firecrawl).get("GET /v2/batch/scrape/{id} 200", 0)
    assert job["status"] == "completed" and job["documents"] == pages, job
    assert gets == pages  # one poll saw it completed and followed `next` 15 times
    # A burst of one second's worth, then the rate (+1: a sample may straddle a turn).
    for elapsed, count in samples:
        assert count <= rate * (1 + elapsed) + 1, samples


def test_firecrawl_submissions_keep_to_the_provider_rate(redis_process: RedisProcess) -> None:
    """12 submissions at once, 3 requests a second allowed: the POSTs wait their turns."""
    rate = 3.0
    firecrawl = {"scrape_delay": 60.0}
    with polled_deployment(
        redis_process, firecrawl=firecrawl, settings={"firecrawl_rps": rate, "poll_min": 30.0}
    ) as d:
        started = time.monotonic()
        for _ in range(12):
            d.create({"provider": "firecrawl", "urls": urls(1)})
        time.sleep(2.0)
        stats = d.stats(d.firecrawl)
        elapsed = time.monotonic() - started
    requests = stats.get("POST /v2/batch/scrape 200", 0) + stats.get(
        "GET /v2/batch/scrape/{id} 200", 0
    )
    assert stats.get("POST /v2/batch/scrape 200", 0) >= rate, stats
    assert requests <= rate * (1 + elapsed) + 1, stats


def test_firecrawl_cancels_keep_to_the_provider_rate(redis_process: RedisProcess) -> None:
    """8 cancels in a row, 2 requests a second allowed (no worker: only the DELETEs count)."""
    rate, count = 2.0, 8
    firecrawl = {"scrape_delay": 60.0}
    with polled_deployment(
        redis_process, firecrawl=firecrawl, settings={"firecrawl_rps": rate}, with_worker=False
    ) as d:
        jobs = [
            d.create({"provider": "firecrawl", "batch_id": d.firecrawl_batch(urls(1))})
            for _ in range(count)
        ]
        started = time.monotonic()
        for job_id in jobs:
            response = httpx.delete(f"{d.api}/jobs/{job_id}", headers=d.headers(), timeout=10)
            assert response.status_code == 202, response.text
        elapsed = time.monotonic() - started
        assert d.stats(d.firecrawl)["DELETE /v2/batch/scrape/{id} 200"] == count
    # A burst of one second's worth, then one every 1 / rate seconds.
    assert elapsed >= (count - rate) / rate - 0.2, elapsed
