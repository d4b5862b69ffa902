"""The routes of the Firecrawl sandbox around the batches (receiver.sandbox.firecrawl.app):
errors routes, injected answers, knobs at run time, counts."""

from __future__ import annotations

import re
import uuid

import anyio
import httpx
import pytest

from receiver.sandbox.firecrawl import FirecrawlSandboxConfig
from tests.sandbox.firecrawl_client import (
    SLOW,
    TIMEOUT,
    advance,
    capture,
    checked,
    open_sandbox,
    page_urls,
    poll,
    submit,
)


@pytest.mark.anyio
async def test_failed_pages_are_listed_at_every_errors_route_with_the_fail_codes() -> None:
    async with open_sandbox(**SLOW, fail_rate=1.0, fail_codes=TIMEOUT) as client:
        batch_id = await submit(client, 3)
        await advance(client, 30)
        body = await poll(client, batch_id)
        routes = ("/v2/crawl/{}/errors", "/v1/batch/scrape/{}/errors", "/v2/batch/scrape/{}/errors")
        lists = [checked(await client.get(route.format(batch_id)), 200) for route in routes]
    all_failed = capture(47)["response"]["json"]  # every page failed: completed 0 of 0
    fields = ("status", "completed", "total", "data")
    assert [body[name] for name in fields] == [all_failed[name] for name in fields]
    assert lists[0] == lists[1] == lists[2]
    assert lists[0]["robotsBlocked"] == []
    (real,) = [e for e in capture(35)["response"]["json"]["errors"] if e["code"] == TIMEOUT]
    errors = lists[0]["errors"]
    assert [e["url"] for e in errors] == page_urls(3)
    for error in errors:
        assert list(error) == list(real)
        assert (error["code"], error["error"]) == (TIMEOUT, real["error"])


@pytest.mark.anyio
async def test_v2_batch_errors_route_is_express_404_page_unless_served() -> None:
    real = capture(24)
    real_id = httpx.URL(real["request"]["url"]).path.split("/")[4]
    async with open_sandbox(**SLOW, v2_batch_errors=False) as client:
        batch_id = await submit(client, 1)
        path = f"/v2/batch/scrape/{batch_id}/errors"
        missing = await client.get(path)
        unauthenticated = await client.get(path, headers={"Authorization": ""})
        crawl = await client.get(f"/v2/crawl/{batch_id}/errors")
        unknown_method = await client.put(f"/v2/batch/scrape/{batch_id}?skip=1")
        await client.patch("/_sandbox/config", json={"v2_batch_errors": True})
        served = await client.get(path)
    expected = real["response"]["text"].replace(real_id, batch_id)
    content_type = dict(real["response"]["headers"])["Content-Type"]
    for response in (missing, unauthenticated):
        assert (response.status_code, response.text) == (404, expected)
        assert response.headers["content-type"] == content_type
        assert response.headers["x-powered-by"] == "Express"
    assert unknown_method.status_code == 404
    assert f"<pre>Cannot PUT /v2/batch/scrape/{batch_id}</pre>" in unknown_method.text
    assert checked(served, 200) == checked(crawl, 200)


@pytest.mark.anyio
async def test_a_knob_value_the_config_refuses_is_400_and_changes_nothing() -> None:
    async with open_sandbox() as client:
        changes = {"fail_rate": 1.0, "fail_codes": "SCRAPE_TIMEOUT,SCRAPE_BOGUS"}
        refused = await client.patch("/_sandbox/config", json=changes)
        knobs = (await client.get("/_sandbox/config")).json()
    assert refused.status_code == 400 and "SCRAPE_BOGUS" in refused.json()["error"]
    assert (knobs["fail_rate"], knobs["fail_codes"]) == (0.0, FirecrawlSandboxConfig().fail_codes)
    with pytest.raises(ValueError, match="fail_codes"):
        FirecrawlSandboxConfig(fail_codes=" , ")


@pytest.mark.anyio
@pytest.mark.parametrize("header", [False, True])
async def test_rate_limited_requests_are_429_with_retry_after_in_the_message(header: bool) -> None:
    async with open_sandbox(
        get_429_rate=1.0, post_429_rate=1.0, retry_after=7, retry_after_header=header
    ) as client:
        get = await client.get(f"/v2/batch/scrape/{uuid.uuid4()}")
        post = await client.post("/v2/batch/scrape", json={"urls": page_urls(1)})
    message = checked(get, 429)["error"]
    assert re.fullmatch(
        r"Rate limit exceeded\. Consumed \(req/min\): 101, Remaining \(req/min\): 0\. Upgrade your "
        r"plan at https://firecrawl\.dev/pricing for increased rate limits or please retry after "
        r"7s, resets at \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT",
        message,
    )
    assert checked(post, 429)["success"] is False
    assert get.headers.get("retry-after") == ("7" if header else None)


@pytest.mark.anyio
async def test_server_errors_are_500_unknown_error() -> None:
    async with open_sandbox(**SLOW) as client:
        batch_id = await submit(client, 1)
        await client.patch("/_sandbox/config", json={"get_500_rate": 1.0, "delete_500_rate": 1.0})
        get = await client.get(f"/v2/batch/scrape/{batch_id}")
        delete = await client.delete(f"/v2/batch/scrape/{batch_id}")
    for response in (get, delete):
        body = checked(response, 500)
        assert body["code"] == "UNKNOWN_ERROR"
        assert re.fullmatch(
            r"An unexpected error occurred\. Please contact help@firecrawl\.com "
            r"for help\. Your exception ID is [0-9a-f]{32}",
            body["error"],
        )


@pytest.mark.anyio
async def test_status_polls_are_402_payment_required_at_get_402_rate() -> None:
    async with open_sandbox(**SLOW) as client:
        batch_id = await submit(client, 1)
        await client.patch("/_sandbox/config", json={"get_402_rate": 1.0})
        refused = await client.get(f"/v2/batch/scrape/{batch_id}")
        await client.patch("/_sandbox/config", json={"get_402_rate": 0.0})
        await poll(client, batch_id)
    assert checked(refused, 402) == {"error": "Payment required to access this resource."}


@pytest.mark.anyio
async def test_requests_repeated_after_a_429_are_timed_against_its_wait() -> None:
    async with open_sandbox(get_429_rate=1.0, retry_after=1) as client:
        path = f"/v2/batch/scrape/{uuid.uuid4()}"
        checked(await client.get(path), 429)
        checked(await client.get(path), 429)  # at once: too early
        await anyio.sleep(1.05)
        checked(await client.get(path), 429)  # after the second 429's 1 s: in time
        stats = (await client.get("/_sandbox/stats")).json()
    assert (stats["retries too early"], stats["retries in time"]) == (1, 1)


@pytest.mark.anyio
async def test_stats_count_requests_by_route_and_status() -> None:
    async with open_sandbox() as client:
        batch_id = await submit(client, 1)
        await client.get(f"/v2/batch/scrape/{batch_id}")
        await client.get(f"/v2/batch/scrape/{uuid.uuid4()}")
        stats = (await client.get("/_sandbox/stats")).json()
    assert stats["POST /v2/batch/scrape 200"] == 1
    assert stats["GET /v2/batch/scrape/{id}"] == 2
    assert stats["GET /v2/batch/scrape/{id} 404"] == 1
