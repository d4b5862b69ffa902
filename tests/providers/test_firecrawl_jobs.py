"""The Firecrawl workflow on a real Redis, its provider answered by the captures of a real
self-hosted server: a cancel with pages in flight, a DELETE of a completed batch, failed
pages accounted for, and documents the server would not serve."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest

from receiver.jobs.firecrawl import CANCEL_SETTLE, PROVIDER, FirecrawlJobs, ending, tally
from receiver.providers.firecrawl import BatchStatus, FirecrawlClient, PageError
from receiver.settings import Settings
from receiver.store import JobStatus, Store
from receiver.tokens import PassthroughSigner
from tests.providers.captures import Record, assert_matches, load, response_of
from tests.providers.conftest import MockHttp

pytestmark = pytest.mark.anyio

FC = "firecrawl"
LOCAL = "http://127.0.0.1:3002"  # the origin of the captured server
BATCH_B = "beb47136-d516-47c8-ba2a-d2f0e4ced8ba"
BATCH_C = "44e36b79-03c3-47d3-9506-ce02444b9381"
BATCH_F = "6cfcf6ea-135d-4e26-b8d7-d2e0457915a1"
BATCH_G = "2072c64b-1cc6-4c1f-9806-716eef31d461"
# When the captures were taken: their batches expire a day later (expiresAt).
CAPTURED_AT = datetime(2026, 11, 22, 14, 15, tzinfo=UTC).timestamp()
SETTINGS = Settings(
    secret_keys=("k1",),
    firecrawl_base_url=LOCAL,
    firecrawl_api_key="fc-test",
    firecrawl_rps=1000.0,
    public_url="https://receiver.example",
)


class Served:
    """Answers each request with the next record, checking method, path and query; a
    submission's body must be the captured one plus the webhook we add (kept in `webhooks`)."""

    def __init__(self, records: Iterable[Record]) -> None:
        self.records = list(records)
        self.seen: list[httpx.Request] = []
        self.webhooks: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert len(self.seen) < len(self.records), f"unexpected {request.method} {request.url}"
        record = self.records[len(self.seen)]
        self.seen.append(request)
        if request.method == "POST":
            body = orjson.loads(request.content)
            self.webhooks.append(body.pop("webhook"))
            record = {**record, "request": {**record["request"], "body": None}}
            assert body == load(FC, _number(record))["request"]["body"]
        assert_matches(request, record)
        return response_of(record)

    @property
    def exhausted(self) -> bool:
        return len(self.seen) == len(self.records)


def _number(record: Record) -> str:
    return str(record["number"])


def captures(*numbers: str) -> list[Record]:
    return [{**load(FC, n), "number": n} for n in numbers]


def answer(method: str, path: str, body: dict[str, Any]) -> Record:
    """A record of an answer the captures lack (the errors of batch G, which had none)."""
    return {
        "number": "",
        "request": {"method": method, "url": f"{LOCAL}{path}", "headers": {}, "body": None},
        "response": {
            "status": 200,
            "headers": [["content-type", "application/json"]],
            "json": body,
        },
    }


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def workflow(
    store: Store, mock_http: MockHttp, served: Served, clock: Clock | None = None
) -> FirecrawlJobs:
    client = FirecrawlClient(mock_http(served), LOCAL, "fc-test")
    signer = PassthroughSigner(SETTINGS.secret_keys, SETTINGS.token_max_age).webhook_signer()
    return FirecrawlJobs(store, client, SETTINGS, signer, clock=clock or Clock(CAPTURED_AT))


async def submit(store: Store, jobs: FirecrawlJobs, number: str) -> str:
    """A job of the captured submission's URLs and options, submitted."""
    body = dict(load(FC, number)["request"]["body"])
    job_id, _ = await PROVIDER.create({"provider": FC, **body}, store)
    await jobs.submit(job_id)
    return job_id


async def poll(store: Store, jobs: FirecrawlJobs, job_id: str, times: int) -> dict[str, Any]:
    for _ in range(times):
        job = await store.get_job(job_id)
        assert job is not None
        await jobs.poll(job)
    job = await store.get_job(job_id)
    assert job is not None
    return job


async def events(store: Store, job_id: str) -> list[dict[str, Any]]:
    entries: Any = await store.redis.xrange(store.keys.events(0))
    found = []
    for _, fields in entries:
        if fields[b"job_id"].decode() == job_id:
            found.append({"type": fields[b"type"].decode(), **orjson.loads(fields[b"detail"])})
    return found


def failures_of(number: str) -> list[dict[str, Any]]:
    errors = load(FC, number)["response"]["json"]["errors"]
    return [{"url": e["url"], "code": e["code"], "error": e["error"]} for e in errors]


# -- batch B: submitted, cancelled with pages in flight (011-018, errors 025) ------------------


async def test_a_cancelled_batch_keeps_every_page_landing_after_the_cancel(
    store: Store, mock_http: MockHttp
) -> None:
    served = Served(captures("011", "012", "013", "014", "015", "016", "017", "025"))
    jobs = workflow(store, mock_http, served)
    job_id = await submit(store, jobs, "011")
    job = await poll(store, jobs, job_id, 1)  # 012: scraping 0 of 12
    assert (job["status"], job["provider_status"]) == ("running", "scraping")
    cancelled = await PROVIDER.cancel(job, jobs)  # DELETE: 013 {"status": "cancelled"}
    assert (cancelled.at_provider, cancelled.ends_now) == (True, False)
    assert cancelled.provider_status == "cancelled"
    assert cancelled.message.startswith("firecrawl answered cancelled")
    running = await poll(store, jobs, job_id, 3)  # 014, 015: 0 of 12; 016: 0 of 6
    assert running["status"] == "running" and running["provider_status"] == "cancelled"
    assert running["progress"] == {"completed": 0, "failed": 6, "total": 12}
    assert await store.get_results(job_id) == {}
    done = await poll(store, jobs, job_id, 1)  # 017: cancelled 6 of 6, then errors 025
    assert served.exhausted
    assert done["status"] == "cancelled"
    assert done["error"] == "cancelled by a user: 6 of 12 pages scraped"
    assert done["progress"] == {"completed": 6, "failed": 6, "total": 12}
    assert done["documents"] == 6 and done["documents_missing"] == 0
    assert done["failures"] == failures_of("025")  # the six dropped by the cancel
    documents = load(FC, "017")["response"]["json"]["data"]
    results = await store.get_results(job_id)
    assert sorted(d["metadata"]["sourceURL"] for d in results.values()) == sorted(
        d["metadata"]["sourceURL"] for d in documents
    )
    final = [e for e in await events(store, job_id) if e["type"] == "job.progress"][-1]
    assert final["documents"] == 6 and final["failures"] == failures_of("025")


async def test_a_cancelled_batch_that_never_reaches_its_total_ends_cancelled_not_stalled(
    store: Store, mock_http: MockHttp
) -> None:
    again = {**load(FC, "015"), "number": "015"}  # what the next of 014 (?skip=0) answers
    again["request"] = {**again["request"], "url": load(FC, "014")["response"]["json"]["next"]}
    served = Served([*captures("011", "013", "014", "015", "025"), again])
    clock = Clock(CAPTURED_AT)
    jobs = workflow(store, mock_http, served, clock)
    job_id = await submit(store, jobs, "011")
    job = await store.get_job(job_id)
    assert job is not None
    await PROVIDER.cancel(job, jobs)  # 013
    await poll(store, jobs, job_id, 1)  # 014: cancelled 0 of 12
    clock.now += CANCEL_SETTLE + 1  # no page landed since: the batch is taken as settled
    done = await poll(store, jobs, job_id, 1)  # 015 unchanged; errors 025; its next page
    assert served.exhausted
    assert done["status"] == "cancelled"
    assert done["error"] == "cancelled by a user: 0 of 12 pages scraped"
    assert done["progress"] == {"completed": 0, "failed": 12, "total": 12}


async def test_the_webhook_of_a_submitted_batch_carries_the_jobs_token(
    store: Store, mock_http: MockHttp
) -> None:
    served = Served(captures("011"))
    jobs = workflow(store, mock_http, served)
    job_id = await submit(store, jobs, "011")
    [webhook] = served.webhooks
    assert webhook["events"] == ["completed", "failed"]
    assert webhook["metadata"] == {"job_id": job_id}
    url = httpx.URL(webhook["url"])
    assert str(url.copy_with(query=None)) == "https://receiver.example/callbacks/firecrawl"
    assert jobs.signer.verify(url.params["token"]) == job_id


# -- batch G: tracked, DELETE after it completed (050-052) ------------------------------------


async def test_a_delete_of_a_completed_batch_reports_cancelled_and_keeps_the_documents(
    store: Store, mock_http: MockHttp
) -> None:
    no_errors = answer("GET", f"/v2/crawl/{BATCH_G}/errors", {"errors": [], "robotsBlocked": []})
    served = Served([*captures("051", "052"), no_errors])
    jobs = workflow(store, mock_http, served)
    job_id, _ = await store.track_job(FC, BATCH_G, {"batch_id": BATCH_G})
    job = await store.get_job(job_id)
    assert job is not None
    cancelled = await PROVIDER.cancel(job, jobs)  # 051: 200 {"status": "cancelled"}, no 409
    assert cancelled.provider_status == "cancelled" and not cancelled.ends_now
    done = await poll(store, jobs, job_id, 1)  # 052: cancelled 2 of 2
    assert served.exhausted
    assert done["status"] == "cancelled" and done["provider_status"] == "cancelled"
    assert done["error"] == "cancelled by a user: 2 of 2 pages scraped"
    assert done["progress"] == {"completed": 2, "failed": 0, "total": 2}
    assert len(await store.get_results(job_id)) == done["documents"] == 2
    assert "cancel_requested_at" in PROVIDER.public(done)


async def test_a_job_not_submitted_yet_is_cancelled_here_at_once(
    store: Store, mock_http: MockHttp
) -> None:
    jobs = workflow(store, mock_http, Served([]))
    job_id, _ = await PROVIDER.create({"provider": FC, "urls": ["https://a.example/"]}, store)
    job = await store.get_job(job_id)
    assert job is not None
    cancelled = await PROVIDER.cancel(job, jobs)
    assert (cancelled.at_provider, cancelled.ends_now) == (False, True)


async def test_a_batch_submitted_after_its_job_was_cancelled_is_cancelled_too(
    store: Store,
) -> None:
    # The job is cancelled here while its submission is on its way to Firecrawl.
    job_id, _ = await PROVIDER.create({"provider": FC, **load(FC, "011")["request"]["body"]}, store)
    seen: list[httpx.Request] = []

    async def serve(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "POST":
            await store.finish_job(job_id, JobStatus.CANCELLED, "cancelled by a user")
            return response_of(load(FC, "011"))
        return response_of(load(FC, "013"))

    async with httpx.AsyncClient(transport=httpx.MockTransport(serve)) as http:
        signer = PassthroughSigner(SETTINGS.secret_keys, SETTINGS.token_max_age)
        client = FirecrawlClient(http, LOCAL, "fc-test")
        jobs = FirecrawlJobs(store, client, SETTINGS, signer.webhook_signer(), lambda: CAPTURED_AT)
        assert await jobs.submit(job_id) is None
    assert [(r.method, r.url.path) for r in seen] == [
        ("POST", "/v2/batch/scrape"),
        ("DELETE", f"/v2/batch/scrape/{BATCH_B}"),
    ]
    job = await store.get_job(job_id)
    assert job is not None and job["status"] == "cancelled"
    assert await store.due_at(f"poll:{job_id}") is None  # nothing polls it


# -- batches C and F: failed pages dropped from total, their reasons at /errors ----------------


async def test_failed_pages_are_counted_with_their_url_code_and_message(
    store: Store, mock_http: MockHttp
) -> None:
    served = Served(captures("031", "032", "033", "034", "035"))
    jobs = workflow(store, mock_http, served)
    job_id = await submit(store, jobs, "031")
    first = await poll(store, jobs, job_id, 1)  # 032: 0 of 4
    assert first["progress"] == {"completed": 0, "failed": 0, "total": 4}
    second = await poll(store, jobs, job_id, 1)  # 033: 2 of 3, one page dropped
    assert second["progress"] == {"completed": 2, "failed": 1, "total": 4}
    done = await poll(store, jobs, job_id, 1)  # 034: completed 2 of 2, then errors 035
    assert served.exhausted
    assert done["status"] == "completed"
    assert done["progress"] == {"completed": 2, "failed": 2, "total": 4}
    assert done["failures"] == failures_of("035")
    assert {f["code"] for f in done["failures"]} == {"SCRAPE_TIMEOUT", "SCRAPE_ALL_ENGINES_FAILED"}
    assert done["error"] == "2 of 4 URLs failed"
    assert done["documents"] == 2


async def test_a_batch_whose_every_page_failed_fails(store: Store, mock_http: MockHttp) -> None:
    served = Served(captures("044", "045", "046", "047", "048"))
    jobs = workflow(store, mock_http, served)
    job_id = await submit(store, jobs, "044")
    done = await poll(store, jobs, job_id, 3)  # 045 0/2, 046 0/1, 047 completed 0/0; 048
    assert served.exhausted
    assert done["status"] == "failed"
    assert done["progress"] == {"completed": 0, "failed": 2, "total": 2}
    assert done["failures"] == failures_of("048")
    assert done["error"].startswith("no page scraped: 2 of 2 URLs failed; first: ")


async def test_a_tracked_batch_counts_firecrawl_total_and_the_errors_route(
    store: Store, mock_http: MockHttp
) -> None:
    served = Served(captures("034", "035"))
    jobs = workflow(store, mock_http, served)
    job_id, _ = await store.track_job(FC, BATCH_C, {"batch_id": BATCH_C})
    done = await poll(store, jobs, job_id, 1)
    assert served.exhausted
    assert done["status"] == "completed"
    assert done["progress"] == {"completed": 2, "failed": 2, "total": 4}
    assert len(done["failures"]) == 2


async def test_the_errors_route_absent_falls_back_to_v1(store: Store, mock_http: MockHttp) -> None:
    absent = {**load(FC, "024"), "number": "024"}  # Express's HTML 404 for a missing route
    absent["request"] = {**absent["request"], "url": f"{LOCAL}/v2/crawl/{BATCH_C}/errors"}
    v1 = {**load(FC, "035"), "number": "035"}
    v1["request"] = {**v1["request"], "url": f"{LOCAL}/v1/batch/scrape/{BATCH_C}/errors"}
    served = Served([*captures("034"), absent, v1])
    jobs = workflow(store, mock_http, served)
    job_id, _ = await store.track_job(FC, BATCH_C, {"batch_id": BATCH_C})
    done = await poll(store, jobs, job_id, 1)
    assert served.exhausted and done["failures"] == failures_of("035")


async def test_no_errors_route_at_all_still_counts_the_failed_pages(
    store: Store, mock_http: MockHttp
) -> None:
    absent = {**load(FC, "024"), "number": "024"}
    routes = (f"/v2/crawl/{BATCH_C}/errors", f"/v1/batch/scrape/{BATCH_C}/errors")
    missing = [{**absent, "request": {**absent["request"], "url": LOCAL + r}} for r in routes]
    served = Served([*captures("031", "034"), *missing])
    jobs = workflow(store, mock_http, served)
    job_id = await submit(store, jobs, "031")
    done = await poll(store, jobs, job_id, 1)
    assert served.exhausted
    assert done["status"] == "completed" and "failures" not in done
    assert done["progress"] == {"completed": 2, "failed": 2, "total": 4}


# -- documents Firecrawl does not serve ---------------------------------------------------------


def document(url: str) -> dict[str, Any]:
    return {"markdown": url, "metadata": {"sourceURL": url, "scrapeId": url}}


def test_tally_names_the_unread_urls_of_a_submitted_batch() -> None:
    urls = [f"https://a.example/{i}" for i in range(6)]
    job = {"params": {"urls": urls}, "invalid_urls": [urls[5]]}
    batch = BatchStatus("completed", 4, 4, 4, None, None, [])
    errors = [PageError(urls[4], "SCRAPE_TIMEOUT", "Scrape timed out")]
    counted = tally(job, batch, [document(urls[0]), document(urls[1] + "/")], errors)
    assert (counted.total, counted.completed, counted.failed) == (6, 4, 2)
    assert (counted.documents, counted.documents_missing) == (2, 2)
    assert counted.missing_urls == urls[2:4]
    status, reason = ending(job, batch, counted)
    assert status == "completed"
    assert reason == (
        "2 of 6 URLs failed (1 invalid); firecrawl served only 2 of 4 documents: "
        "2 could not be read from its result pages"
    )
    assert counted.fields()["missing_urls"] == orjson.dumps(urls[2:4])
    assert counted.detail() == {
        "documents": 2,
        "documents_missing": 2,
        "failures": [{"url": urls[4], "code": "SCRAPE_TIMEOUT", "error": "Scrape timed out"}],
        "missing_urls": urls[2:4],
    }


def test_tally_of_a_tracked_batch_counts_but_cannot_name_the_unread() -> None:
    batch = BatchStatus("completed", 30, 30, 30, None, None, [])
    counted = tally({}, batch, [document(f"https://a.example/{i}") for i in range(20)], [])
    assert (counted.total, counted.completed, counted.documents_missing) == (30, 30, 10)
    assert counted.missing_urls == [] and "missing_urls" not in counted.detail()


def test_tally_names_no_urls_when_they_do_not_match_their_documents() -> None:
    urls = ["https://a.example/1", "https://a.example/2"]
    renamed = [document("https://a.example/1?redirected")]
    batch = BatchStatus("completed", 2, 2, 2, None, None, [])
    counted = tally({"params": {"urls": urls}}, batch, renamed, [])
    assert counted.documents_missing == 1 and counted.missing_urls == []


def test_whole_batches_complete_without_a_reason() -> None:
    urls = ["https://a.example/1"]
    batch = BatchStatus("completed", 1, 1, 1, None, None, [])
    counted = tally({"params": {"urls": urls}}, batch, [document(urls[0])], [])
    assert ending({"params": {"urls": urls}}, batch, counted) == ("completed", "")
    assert counted.fields()["documents_missing"] == 0
    assert "failures" not in counted.fields() and "missing_urls" not in counted.fields()
