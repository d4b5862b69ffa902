"""A Firecrawl batch's progress on the sandbox's clock (receiver.sandbox.firecrawl.batches):
status, cancel, expiry."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.sandbox.firecrawl_client import (
    SLOW,
    advance,
    capture,
    checked,
    expiry,
    open_sandbox,
    origin,
    page_urls,
    poll,
    sources,
    submit,
)


@pytest.mark.anyio
async def test_batch_goes_from_scraping_to_completed() -> None:
    async with open_sandbox(**SLOW) as client:
        batch_id = await submit(client, 3)
        start = await poll(client, batch_id)
        await advance(client, 10)
        one = await poll(client, batch_id)
        await advance(client, 20)
        done = await poll(client, batch_id)
        again = await poll(client, batch_id)
    status_url = f"{origin(client)}/v2/batch/scrape/{batch_id}"
    assert {k: start[k] for k in ("status", "completed", "total", "creditsUsed", "data")} == {
        "status": "scraping",
        "completed": 0,
        "total": 3,
        "creditsUsed": 0,
        "data": [],
    }
    assert start["next"] == f"{status_url}?skip=0"
    assert (one["status"], one["completed"], one["next"]) == ("scraping", 1, f"{status_url}?skip=1")
    assert (done["status"], done["completed"], done["total"], done["creditsUsed"]) == (
        "completed",
        3,
        3,
        3,
    )
    assert "next" not in done
    assert sources(done) == page_urls(3)
    assert done["data"] == again["data"]  # stable documents: same scrapeId on every poll
    assert expiry(done) > expiry(start) > time.time() + 86000


@pytest.mark.anyio
async def test_jitter_and_max_concurrency_keep_pages_in_order() -> None:
    async with open_sandbox(scrape_delay=10.0, concurrency=10, jitter=5.0, seed=1) as client:
        batch_id = await submit(client, 5, maxConcurrency=1)  # one at a time: 10 s a page
        await advance(client, 16)
        early = await poll(client, batch_id)
        await advance(client, 100)
        done = await poll(client, batch_id)
    assert early["completed"] == 1
    assert (done["status"], sources(done)) == ("completed", page_urls(5))


@pytest.mark.anyio
async def test_linger_keeps_scraping_with_every_page_done() -> None:
    async with open_sandbox(**SLOW, linger=30.0) as client:
        batch_id = await submit(client, 2)
        await advance(client, 25)
        lingering = await poll(client, batch_id)
        await advance(client, 30)
        done = await poll(client, batch_id)
    assert (lingering["status"], lingering["completed"], lingering["total"]) == ("scraping", 2, 2)
    assert done["status"] == "completed"


@pytest.mark.anyio
async def test_stall_never_completes_until_the_finish_control_route() -> None:
    async with open_sandbox(**SLOW, stall=True) as client:
        batch_id = await submit(client, 3)
        await advance(client, 1000)
        stalled = await poll(client, batch_id)
        finish = await client.post(f"/_sandbox/batches/{batch_id}/finish")
        done = await poll(client, batch_id)
    assert (stalled["status"], stalled["completed"], stalled["total"]) == ("scraping", 2, 3)
    assert finish.status_code == 200
    assert (done["status"], done["completed"], done["total"]) == ("completed", 3, 3)


@pytest.mark.anyio
async def test_failed_pages_shrink_total_and_are_listed_in_errors() -> None:
    async with open_sandbox(**SLOW, fail_rate=0.5, seed=7) as client:
        batch_id = await submit(client, 10)
        await advance(client, 100)
        body = await poll(client, batch_id)
        errors = checked(await client.get(f"/v2/batch/scrape/{batch_id}/errors"), 200)
        crawl_errors = checked(await client.get(f"/v2/crawl/{batch_id}/errors"), 200)
    failed = [e["url"] for e in errors["errors"]]
    assert 0 < len(failed) < 10
    assert body["status"] == "completed"
    assert body["completed"] == body["total"] == 10 - len(failed)
    assert sorted(sources(body) + failed) == sorted(page_urls(10))
    assert errors == crawl_errors and errors["robotsBlocked"] == []
    assert set(errors["errors"][0]) == {"id", "timestamp", "url", "code", "error"}


@pytest.mark.anyio
async def test_not_found_pages_are_successes_with_status_code_404() -> None:
    async with open_sandbox(**SLOW, not_found_rate=1.0) as client:
        batch_id = await submit(client, 2)
        await advance(client, 20)
        body = await poll(client, batch_id)
    assert (body["status"], body["completed"], body["total"]) == ("completed", 2, 2)
    assert [d["metadata"]["statusCode"] for d in body["data"]] == [404, 404]


@pytest.mark.anyio
async def test_cancel_mid_scrape_keeps_in_flight_pages_and_drops_queued_ones() -> None:
    # Two at a time, 10 s each: page i ends at (i+1)*5 s. At 12 s, pages 0-1 are done and
    # 2-3 are running; 4-11 are queued.
    async with open_sandbox(scrape_delay=10.0, concurrency=2) as client:
        batch_id = await submit(client, 12)
        await advance(client, 12)
        cancelled = checked(await client.delete(f"/v2/batch/scrape/{batch_id}"), 200)
        right_after = await poll(client, batch_id)
        await advance(client, 10)
        final = await poll(client, batch_id)
        again = checked(await client.delete(f"/v2/batch/scrape/{batch_id}"), 200)
        errors = checked(await client.get(f"/v2/batch/scrape/{batch_id}/errors"), 200)
    assert cancelled == again == {"status": "cancelled"}
    assert (right_after["status"], right_after["completed"], right_after["total"]) == (
        "cancelled",
        2,
        4,
    )
    assert right_after["next"].endswith("?skip=2")
    assert (final["status"], final["completed"], final["total"]) == ("cancelled", 4, 4)
    assert "next" not in final
    assert [e["url"] for e in errors["errors"]] == page_urls(12)[4:]
    assert "Parent crawl/batch scrape was cancelled" in errors["errors"][0]["error"]


@pytest.mark.anyio
async def test_unknown_or_malformed_ids_are_404() -> None:
    async with open_sandbox() as client:
        for batch_id in (str(uuid.uuid4()), "not-a-uuid"):
            get = await client.get(f"/v2/batch/scrape/{batch_id}")
            delete = await client.delete(f"/v2/batch/scrape/{batch_id}")
            assert checked(get, 404) == {"success": False, "error": "Job not found"}
            assert checked(delete, 404) == {"error": "Job not found"}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("conflict", "status", "after"), [(False, 200, "cancelled"), (True, 409, "completed")]
)
async def test_cancel_of_a_completed_batch(conflict: bool, status: int, after: str) -> None:
    async with open_sandbox(**SLOW, conflict_on_completed_cancel=conflict) as client:
        batch_id = await submit(client, 2)
        await advance(client, 20)
        response = await client.delete(f"/v2/batch/scrape/{batch_id}")
        body = await poll(client, batch_id)
    expected = {"status": "cancelled"} if status == 200 else {"error": "Crawl is already completed"}
    assert checked(response, status) == expected
    assert (body["status"], body["completed"]) == (after, 2)
    if not conflict:  # the self-hosted build: captures 051 and 052, the same batch of 2 pages
        assert checked(response, 200) == capture(51)["response"]["json"]
        real = capture(52)["response"]["json"]
        assert list(body) == list(real)  # no next: everything was returned
        fields = ("success", "status", "completed", "total", "creditsUsed")
        assert [body[name] for name in fields] == [real[name] for name in fields]


@pytest.mark.anyio
async def test_cancel_keeps_collecting_the_pages_in_flight() -> None:
    """As the build did (INDEX.md): 240 URLs, cancelled at 111 completed with 17 running,
    ended cancelled with 128 of 128; DELETE answered alike before and after (013, 019)."""
    build = {"paging": "selfhosted", "scrape_delay": 17.0, "concurrency": 17}  # a page a second
    async with open_sandbox(**build) as client:
        batch_id = await submit(client, 240)
        await advance(client, 111.5)
        cancelled = checked(await client.delete(f"/v2/batch/scrape/{batch_id}"), 200)
        right_after = await poll(client, batch_id)
        await advance(client, 8)
        landing = await poll(client, batch_id)
        await advance(client, 60)
        final = await poll(client, batch_id)
        again = checked(await client.delete(f"/v2/batch/scrape/{batch_id}"), 200)
    assert cancelled == again == capture(13)["response"]["json"] == capture(19)["response"]["json"]
    counts = [(b["status"], b["completed"], b["total"]) for b in (right_after, landing, final)]
    assert counts == [("cancelled", 111, 128), ("cancelled", 119, 128), ("cancelled", 128, 128)]
    assert "next" in right_after and "next" in landing  # like captures 014 to 016
    assert list(final) == list(capture(18)["response"]["json"])  # next gone, as in 017 and 018
    assert sources(final) == page_urls(240)[:128]


@pytest.mark.anyio
async def test_batch_expires_after_expiry_seconds() -> None:
    async with open_sandbox(**SLOW) as client:
        batch_id = await submit(client, 1)
        await advance(client, 10 + 86400 - 5)
        alive = await poll(client, batch_id)
        await advance(client, 10)
        expired = await client.get(f"/v2/batch/scrape/{batch_id}")
        delete = await client.delete(f"/v2/batch/scrape/{batch_id}")
    assert alive["status"] == "completed"
    assert checked(expired, 404) == {"success": False, "error": "Job expired"}
    assert checked(delete, 404) == {"error": "Job not found"}
