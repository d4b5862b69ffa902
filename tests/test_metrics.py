"""Metrics as a scraper sees them: polls, fetch latency, the work queue, webhooks, and the
sum over several web processes sharing PROMETHEUS_MULTIPROC_DIR."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson

from receiver.tokens import sign_webhook
from tests.e2e import PolledDeployment, deployment, polled_deployment
from tests.servers import RedisProcess, free_port, wait_for_port
from tests.test_events import finish_tasks, held_job, metric


def scrape(api: str) -> str:
    response = httpx.get(f"{api}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    return response.text


def moved(before: str, after: str, name: str, **labels: str) -> float:
    """How much the sample `name{labels}` grew between two scrapes."""
    return metric(after, name, **labels) - metric(before, name, **labels)


def scrape_until(api: str, name: str, value: float, timeout: float = 15.0, **labels: str) -> str:
    """Scrapes until the sample `name{labels}` reads `value`; that scrape."""
    deadline = time.monotonic() + timeout
    while metric(text := scrape(api), name, **labels) != value:
        assert time.monotonic() < deadline, f"{name}{labels} never read {value}:\n{text}"
        time.sleep(0.02)
    return text


def configure_dify(d: PolledDeployment, **knobs: object) -> None:
    response = httpx.patch(f"{d.dify}/_sandbox/config", json=knobs, timeout=10)
    assert response.status_code == 200, response.text


def webhook(batch_id: str) -> bytes:
    body = {"success": True, "type": "batch_scrape.started", "id": batch_id, "data": []}
    return orjson.dumps({**body, "webhookId": str(uuid.uuid4())})


# -- polls, fetches, the work queue ---------------------------------------------------------


def test_metrics_count_polls_by_provider_and_outcome(redis_process: RedisProcess) -> None:
    with polled_deployment(redis_process, firecrawl={"get_500_rate": 1.0}) as d:
        before = scrape(d.api)
        firecrawl = d.create({"provider": "firecrawl", "urls": ["https://example.com/a"]})
        labels = {"provider": "firecrawl", "outcome": "unavailable"}
        deadline = time.monotonic() + 15
        while moved(before, scrape(d.api), "receiver_polls_total", **labels) < 2:
            assert time.monotonic() < deadline, "no failing poll was counted"
            time.sleep(0.05)
        d.configure_firecrawl(get_500_rate=0.0)
        assert d.wait(firecrawl)["status"] == "completed"
        dataset, batch, _ = d.dify_batch([{"name": "a.txt", "segments": 2}])
        dify = d.create({"provider": "dify", "dataset_id": dataset, "batch": batch})
        assert d.wait(dify)["status"] == "completed"
        configure_dify(d, api_disabled=True)
        dataset, batch, _ = d.dify_batch([{"name": "b.txt"}])
        refused = d.create({"provider": "dify", "dataset_id": dataset, "batch": batch})
        assert d.wait(refused)["status"] == "failed"
        after = scrape(d.api)

    def polls(provider: str, outcome: str) -> float:
        return moved(before, after, "receiver_polls_total", provider=provider, outcome=outcome)

    assert polls("firecrawl", "unavailable") >= 2
    assert polls("firecrawl", "ok") >= 1
    assert polls("firecrawl", "forbidden") == 0
    assert polls("dify", "ok") >= 1
    assert polls("dify", "forbidden") == 1  # the refused job's one poll (403), then it failed
    assert polls("dify", "unavailable") == 0
    assert polls("decodo", "ok") == 0  # Decodo is fetched, not polled


def test_metrics_time_each_results_fetch(redis_process: RedisProcess) -> None:
    # Every results answer takes 0.3 s at the sandbox: past the 0.25 bucket, within 0.5.
    with deployment(redis_process, results_latency=0.3) as d:
        before = scrape(d.api)
        job_id = d.submit({"urls": ["https://example.com/1", "https://example.com/2"]})
        assert d.wait(job_id)["status"] == "completed"
        after = scrape(d.api)
    fetched = {"provider": "decodo"}
    assert moved(before, after, "receiver_fetch_seconds_count", **fetched) == 2
    assert moved(before, after, "receiver_fetch_seconds_sum", **fetched) >= 0.6
    assert moved(before, after, "receiver_fetch_seconds_bucket", le="0.25", **fetched) == 0
    assert moved(before, after, "receiver_fetch_seconds_bucket", le="0.5", **fetched) == 2
    assert moved(before, after, "receiver_fetches_total", outcome="stored", **fetched) == 2


def test_metrics_report_a_fetch_in_flight_as_pending_work(redis_process: RedisProcess) -> None:
    # The task waits at the sandbox until finished by hand, then its results answer takes
    # 3 s: the worker holds the fetch's work entry all along.
    with deployment(redis_process, completion_delay=60, results_latency=3.0) as d:
        job_id, (task_id,) = held_job(d, 1)
        idle = scrape_until(d.api, "receiver_work_stream_length", 0)  # the submission is done
        finish_tasks(d, [task_id])
        held = scrape_until(d.api, "receiver_work_pending", 1)
        time.sleep(0.2)
        later = scrape(d.api)
        assert d.job(job_id)["status"] == "running"  # the fetch was still in flight
        assert d.wait(job_id)["status"] == "completed"
        done = scrape_until(d.api, "receiver_work_pending", 0)
    assert metric(idle, "receiver_work_pending") == 0
    assert metric(held, "receiver_work_stream_length") == 1
    assert 0 < metric(held, "receiver_work_oldest_pending_seconds") < 3
    # The age grows with the wall clock while the entry waits.
    assert metric(later, "receiver_work_oldest_pending_seconds") >= 0.2
    assert metric(later, "receiver_work_pending") == 1
    assert metric(done, "receiver_work_stream_length") == 0
    assert metric(done, "receiver_work_oldest_pending_seconds") == 0


# -- Firecrawl webhooks ---------------------------------------------------------------------


def test_metrics_count_firecrawl_webhook_outcomes(redis_process: RedisProcess) -> None:
    secret = "whsec-metrics"
    settings = {"firecrawl_webhook_secret": secret}
    with polled_deployment(redis_process, settings=settings, with_worker=False) as d:
        batch_id = str(uuid.uuid4())
        d.create({"provider": "firecrawl", "batch_id": batch_id})
        url = f"{d.api}/callbacks/firecrawl"
        before = scrape(d.api)
        body = webhook(batch_id)
        signed = {"X-Firecrawl-Signature": sign_webhook(secret, body)}
        answers = [httpx.post(url, content=body, headers=signed, timeout=10) for _ in range(2)]
        forged = {"X-Firecrawl-Signature": sign_webhook("not-the-secret", body)}
        refused = httpx.post(url, content=body, headers=forged, timeout=10)
        stranger = webhook(str(uuid.uuid4()))  # a batch we do not track
        ignored = httpx.post(
            url,
            content=stranger,
            headers={"X-Firecrawl-Signature": sign_webhook(secret, stranger)},
            timeout=10,
        )
        after = scrape(d.api)
    assert [a.json()["status"] for a in answers] == ["accepted", "duplicate"]
    assert refused.status_code == 401 and ignored.json()["status"] == "ignored"
    for outcome in ("accepted", "duplicate", "bad_token", "ignored"):
        labels = {"provider": "firecrawl", "outcome": outcome}
        assert moved(before, after, "receiver_callbacks_total", **labels) == 1, outcome
    decodo = {"provider": "decodo", "outcome": "bad_token"}
    assert moved(before, after, "receiver_callbacks_total", **decodo) == 0


# -- several web processes ------------------------------------------------------------------


@contextlib.contextmanager
def web_process(redis_url: str, metrics_dir: Path) -> Iterator[str]:
    """`receiver web` as a child process sharing `metrics_dir`; its base URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "RECEIVER_"))}
    env.update(
        PORT=str(port),
        REDIS_URL=redis_url,
        RECEIVER_SECRET_KEYS="metrics-key-3d8f1a6b",
        RECEIVER_API_TOKEN="metrics-token-5c2e9b4f",
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
    )
    command = [sys.executable, "-m", "receiver", "web"]
    with subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    ) as web:
        try:
            wait_for_port(port)
            yield f"http://127.0.0.1:{port}"
        finally:
            web.terminate()
            web.wait(20)


def test_metrics_of_web_processes_sharing_a_directory_add_up(
    redis_process: RedisProcess, tmp_path: Path
) -> None:
    with (
        web_process(redis_process.url, tmp_path) as first,
        web_process(redis_process.url, tmp_path) as second,
    ):
        for api, count in ((first, 2), (second, 3)):
            for _ in range(count):
                response = httpx.post(f"{api}/callbacks/decodo", content=b"{not json", timeout=10)
                assert response.status_code == 400, response.text
        forged = orjson.dumps({"id": "1", "status": "done", "passthrough": "forged.token.x"})
        response = httpx.post(f"{second}/callbacks/decodo", content=forged, timeout=10)
        assert response.status_code == 401, response.text
        shown = {api: scrape(api) for api in (first, second)}
    for text in shown.values():
        malformed = {"provider": "decodo", "outcome": "malformed"}
        assert metric(text, "receiver_callbacks_total", **malformed) == 5, text
        assert metric(text, "receiver_callbacks_total", provider="decodo", outcome="bad_token") == 1
        assert text.count("# TYPE receiver_callbacks_total counter") == 1  # one family, summed
