"""Firecrawl end to end: the receiver and its worker against the Firecrawl sandbox set to
answer like the self-hosted build of the captures (cancels with pages in flight, failed pages
dropped from total, result pages that repeat the first, unsigned webhooks)."""

from __future__ import annotations

import time
from typing import Any

import httpx

from tests.e2e import PolledDeployment, Target, polled_deployment
from tests.servers import RedisProcess

SANDBOX_KEY = {"Authorization": "Bearer fc-sandbox"}


def urls(count: int) -> list[str]:
    return [f"https://site.example/page/{i}" for i in range(count)]


def cancel(d: PolledDeployment, job_id: str) -> httpx.Response:
    return httpx.delete(f"{d.api}/jobs/{job_id}", headers=d.headers(), timeout=10)


def batch_at_firecrawl(d: PolledDeployment, batch_id: str) -> dict[str, Any]:
    status: dict[str, Any] = httpx.get(
        f"{d.firecrawl}/v2/batch/scrape/{batch_id}", headers=SANDBOX_KEY, timeout=10
    ).json()
    return status


def wait_until(d: PolledDeployment, job_id: str, done: Any, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while not done(job := d.job(job_id)):
        assert time.monotonic() < deadline, f"never: {job}"
        time.sleep(0.02)
    return job


def last_progress(d: PolledDeployment, job_id: str) -> dict[str, Any]:
    progress = [e for e in d.events(job_id) if e["type"] == "job.progress"]
    detail: dict[str, Any] = progress[-1]["detail"]
    return detail


# -- a user's cancel ---------------------------------------------------------------------------


def test_cancel_of_a_submitted_batch_keeps_every_page_that_lands_after_it(
    redis_process: RedisProcess,
) -> None:
    # Four pages at once, one second each: at any moment four are in flight.
    with polled_deployment(redis_process, firecrawl={"scrape_delay": 1.0, "concurrency": 4}) as d:
        job_id = d.create({"provider": "firecrawl", "urls": urls(12)})
        wait_until(d, job_id, lambda job: job["progress"]["completed"] >= 2)
        response = cancel(d, job_id)
        assert response.status_code == 202, response.text
        answer = response.json()
        assert answer["status"] == "running" and answer["provider_status"] == "cancelled"
        assert answer["cancel"]["at_provider"] is True
        assert answer["cancel"]["message"].startswith("firecrawl answered cancelled")
        at_cancel = answer["progress"]["completed"]
        job = d.wait(job_id)
        kept = batch_at_firecrawl(d, job["external"]["batch_id"])
        assert kept["status"] == "cancelled" and kept["completed"] == kept["total"]
        assert job["status"] == "cancelled" and job["provider_status"] == "cancelled"
        assert job["error"] == f"cancelled by a user: {kept['completed']} of 12 pages scraped"
        assert kept["completed"] > at_cancel  # the pages in flight landed after the cancel
        assert job["progress"] == {
            "completed": kept["completed"],
            "failed": 12 - kept["completed"],
            "total": 12,
        }
        assert job["documents"] == len(d.results(job_id)["results"]) == kept["completed"]
        assert len(job["failures"]) == 12 - kept["completed"]
        assert all("cancelled" in failure["error"] for failure in job["failures"])
        assert cancel(d, job_id).status_code == 409  # ended: nothing more to cancel


def test_cancel_of_a_tracked_batch_counts_the_pages_firecrawl_dropped(
    redis_process: RedisProcess,
) -> None:
    with polled_deployment(redis_process, firecrawl={"scrape_delay": 1.0, "concurrency": 4}) as d:
        batch_id = d.firecrawl_batch(urls(12))
        job_id = d.create({"provider": "firecrawl", "batch_id": batch_id})
        assert cancel(d, job_id).status_code == 202
        job = d.wait(job_id)
        kept = batch_at_firecrawl(d, batch_id)["completed"]
        assert job["status"] == "cancelled"
        assert job["progress"] == {"completed": kept, "failed": 12 - kept, "total": 12}
        assert len(d.results(job_id)["results"]) == kept > 0


def test_cancel_of_a_completed_batch_on_a_selfhosted_server_keeps_its_documents(
    redis_process: RedisProcess,
) -> None:
    # The build answers 200 cancelled (never 409) and turns the batch cancelled for good.
    settings = {"poll_min": 20.0, "poll_max": 20.0}
    with polled_deployment(redis_process, firecrawl={"scrape_delay": 60.0}, settings=settings) as d:
        batch_id = d.firecrawl_batch(urls(2))
        job_id = d.create({"provider": "firecrawl", "batch_id": batch_id})
        d.wait_for_field(job_id, "next_poll_at")  # polled once; the next poll is 20 s away
        httpx.post(f"{d.firecrawl}/_sandbox/batches/{batch_id}/finish", timeout=10)
        response = cancel(d, job_id)
        assert response.status_code == 202, response.text
        assert response.json()["provider_status"] == "cancelled"
        assert response.json()["cancel"]["message"].startswith("firecrawl answered cancelled")
        job = d.wait(job_id, timeout=10)  # the cancel made the poll due: not 20 s later
        assert job["status"] == "cancelled" and job["provider_status"] == "cancelled"
        assert job["error"] == "cancelled by a user: 2 of 2 pages scraped"
        assert job["documents"] == len(d.results(job_id)["results"]) == 2


def test_cancel_of_a_job_not_submitted_yet_is_local_and_at_once(
    redis_process: RedisProcess,
) -> None:
    with polled_deployment(redis_process, with_worker=False) as d:
        job_id = d.create({"provider": "firecrawl", "urls": urls(3)})
        response = cancel(d, job_id)
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "cancelled"
        assert response.json()["cancel"]["at_provider"] is False
        assert not any(name.startswith("DELETE") for name in d.stats(d.firecrawl))


# -- every URL accounted for -------------------------------------------------------------------


def test_every_submitted_url_is_completed_failed_or_invalid(redis_target: Target) -> None:
    # A third of the pages time out and drop out of Firecrawl's total, as on the real build;
    # its /v2/batch/scrape/{id}/errors is the HTML 404 page there.
    firecrawl = {
        "fail_rate": 0.34,
        "fail_codes": "SCRAPE_TIMEOUT",
        "v2_batch_errors": False,
        "scrape_delay": 0.02,
    }
    invalid = "https://intranet-host/page"  # no top-level domain: in invalidURLs
    submitted = [*urls(15), invalid]
    with polled_deployment(redis_target, firecrawl=firecrawl) as d:
        job_id = d.create({"provider": "firecrawl", "urls": submitted, "ignoreInvalidURLs": True})
        job = d.wait(job_id)
        at_firecrawl = batch_at_firecrawl(d, job["external"]["batch_id"])
        failed_pages = 15 - at_firecrawl["total"]
        assert failed_pages >= 2, "the seed should fail a few pages"
        assert job["status"] == "completed", job
        assert job["progress"] == {
            "completed": at_firecrawl["completed"],
            "failed": failed_pages + 1,
            "total": 16,
        }
        assert job["invalid_urls"] == [invalid]
        assert len(job["failures"]) == failed_pages
        assert {(f["code"], f["error"]) for f in job["failures"]} == {
            ("SCRAPE_TIMEOUT", "Scrape timed out")
        }
        read = {doc["metadata"]["sourceURL"] for doc in d.results(job_id)["results"].values()}
        assert read | {f["url"] for f in job["failures"]} | {invalid} == set(submitted)
        assert job["error"] == f"{failed_pages + 1} of 16 URLs failed (1 invalid)"
        assert last_progress(d, job_id)["failures"] == job["failures"]


def test_a_tracked_batch_counts_its_failed_pages_from_the_errors_route(
    redis_process: RedisProcess,
) -> None:
    firecrawl = {"fail_rate": 0.34, "scrape_delay": 0.02}
    with polled_deployment(redis_process, firecrawl=firecrawl) as d:
        batch_id = d.firecrawl_batch(urls(15))
        job = d.wait(d.create({"provider": "firecrawl", "batch_id": batch_id}))
        at_firecrawl = batch_at_firecrawl(d, batch_id)
        failed = 15 - at_firecrawl["total"]
        assert failed >= 2
        assert job["progress"] == {"completed": 15 - failed, "failed": failed, "total": 15}
        assert len(job["failures"]) == failed


# -- documents Firecrawl will not serve --------------------------------------------------------


def test_documents_past_a_selfhosted_first_result_page_are_reported_missing(
    redis_process: RedisProcess,
) -> None:
    # 30 documents of 500 KB: pages are cut at 10 MiB (20 documents) and skip is ignored,
    # so every `next` repeats the first 20; the other 10 can never be read.
    firecrawl = {
        "paging": "selfhosted",
        "document_bytes": 500_000,
        "scrape_delay": 0.002,
        "concurrency": 50,
    }
    submitted = urls(30)
    with polled_deployment(redis_process, firecrawl=firecrawl) as d:
        job_id = d.create({"provider": "firecrawl", "urls": submitted})
        job = d.wait(job_id, timeout=60)
        assert job["status"] == "completed"
        assert job["progress"] == {"completed": 30, "failed": 0, "total": 30}
        assert job["documents"] == len(d.results(job_id)["results"]) == 20
        assert job["documents_missing"] == 10
        assert job["missing_urls"] == submitted[20:]
        assert job["error"] == (
            "firecrawl served only 20 of 30 documents: 10 could not be read from its result pages"
        )
        final = last_progress(d, job_id)
        assert final["documents_missing"] == 10 and final["missing_urls"] == submitted[20:]
        ended = d.events(job_id)[-1]
        assert ended["type"] == "job.completed" and "only 20 of 30" in ended["detail"]["reason"]


def test_a_tracked_batch_reports_the_count_of_documents_missing(
    redis_process: RedisProcess,
) -> None:
    firecrawl = {"paging": "selfhosted", "document_bytes": 500_000, "scrape_delay": 0.002}
    with polled_deployment(redis_process, firecrawl=firecrawl) as d:
        batch_id = d.firecrawl_batch(urls(30))
        job = d.wait(d.create({"provider": "firecrawl", "batch_id": batch_id}), timeout=60)
        assert job["documents"] == 20 and job["documents_missing"] == 10
        assert "missing_urls" not in job  # a batch submitted elsewhere: its URLs unknown


# -- webhooks from a self-hosted server --------------------------------------------------------


def test_selfhosted_webhooks_are_taken_and_hasten_the_poll(redis_target: Target) -> None:
    # Unsigned, no webhookId, no FIRECRAWL_WEBHOOK_SECRET: the token in the URL is the proof.
    settings = {"poll_min": 20.0, "poll_max": 20.0}
    firecrawl = {"webhook_style": "selfhosted", "scrape_delay": 2.0, "concurrency": 1}
    with polled_deployment(redis_target, firecrawl=firecrawl, settings=settings) as d:
        started = time.monotonic()
        job = d.wait(d.create({"provider": "firecrawl", "urls": urls(2)}), timeout=15)
        assert job["status"] == "completed"
        assert time.monotonic() - started < 10  # well before the 20 s poll interval
        assert d.stats(d.firecrawl)["GET /v2/batch/scrape/{id} 200"] == 2
        deadline = time.monotonic() + 5
        while not d.stats(d.firecrawl).get("webhook batch_scrape.completed 200"):
            assert time.monotonic() < deadline, d.stats(d.firecrawl)
            time.sleep(0.05)
