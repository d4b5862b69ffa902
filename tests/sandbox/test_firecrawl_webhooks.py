"""The Firecrawl sandbox's webhooks (receiver.sandbox.firecrawl.webhooks), cloud and self-hosted."""

from __future__ import annotations

from typing import Any

import anyio
import orjson
import pytest

from tests.sandbox.firecrawl_client import (
    FAST,
    WEBHOOK_CAPTURE,
    open_sandbox,
    page_urls,
    poll,
    run_receiver,
    sources,
    submit,
    wait_for_stat,
    wait_until,
)


def captured_deliveries() -> list[dict[str, Any]]:
    """The requests of capture 053: one batch's webhooks from the self-hosted build."""
    path = WEBHOOK_CAPTURE / "053_webhook_deliveries_unsigned.json"
    return [d["request"] for d in orjson.loads(path.read_bytes())["deliveries"]]


@pytest.mark.anyio
async def test_batch_fails_ends_a_finished_batch_failed() -> None:
    with run_receiver() as (hook_url, receiver):
        async with open_sandbox(**FAST, batch_fails=True) as client:
            batch_id = await submit(client, 2, webhook={"url": hook_url, "events": ["failed"]})
            await wait_until(lambda: "batch_scrape.failed" in receiver.types())
            body = await poll(client, batch_id)
    assert (body["status"], body["completed"], body["total"]) == ("failed", 2, 2)
    assert sources(body) == page_urls(2)
    failed = receiver.deliveries[-1].body
    assert failed["success"] is False and failed["error"] and failed["id"] == batch_id


@pytest.mark.anyio
async def test_webhooks_are_signed_and_carry_started_pages_and_completed() -> None:
    with run_receiver() as (hook_url, receiver):
        async with open_sandbox(**FAST) as client:
            webhook = {"url": hook_url, "headers": {"X-Token": "abc"}, "metadata": {"job": "42"}}
            batch_id = await submit(client, 3, webhook=webhook)
            await wait_until(lambda: "batch_scrape.completed" in receiver.types())
    deliveries = receiver.deliveries
    assert receiver.types() == [
        "batch_scrape.started",
        *["batch_scrape.page"] * 3,
        "batch_scrape.completed",
    ]
    assert all(d.signed and d.headers["x-token"] == "abc" for d in deliveries)
    bodies = [d.body for d in deliveries]
    assert all(
        b["id"] == batch_id and b["metadata"] == {"job": "42"} and b["success"] for b in bodies
    )
    assert len({b["webhookId"] for b in bodies}) == 5
    assert [b["data"][0]["metadata"]["sourceURL"] for b in bodies[1:4]] == page_urls(3)
    assert bodies[0]["data"] == bodies[4]["data"] == []
    assert list(bodies[0]) == ["success", "type", "id", "webhookId", "data", "metadata"]


@pytest.mark.anyio
async def test_selfhosted_webhooks_are_sent_as_the_build_sends_them() -> None:
    real = captured_deliveries()
    query = "token=a%2Fb%3D%3D&job=42&empty=&dup=1&dup=2"
    metadata = real[0]["body"]["metadata"]  # {"job_id": "x"}
    with run_receiver() as (hook_url, receiver):
        # A secret too: the self-hosted build has no such setting, and signs nothing.
        async with open_sandbox(**FAST, webhook_style="selfhosted") as client:
            webhook = {"url": f"{hook_url}?{query}", "metadata": metadata}
            batch_id = await submit(client, 6, webhook=webhook)
            await wait_until(lambda: "batch_scrape.completed" in receiver.types())
    assert receiver.types() == [d["body"]["type"] for d in real]
    names = {name.lower() for name in real[0]["headers"]}
    for delivery, captured in zip(receiver.deliveries, real, strict=True):
        assert set(delivery.headers) == names  # no signature, nothing of httpx's own
        for name in ("Accept", "Content-Type", "User-Agent", "Accept-Encoding"):
            assert delivery.headers[name.lower()] == captured["headers"][name]
        assert list(delivery.body) == list(captured["body"])  # no webhookId
        assert (delivery.body["id"], delivery.body["metadata"]) == (batch_id, metadata)
        assert delivery.target == b"/hook?" + query.encode()
    for index in (0, -1):  # started and completed: the same bytes, but for the batch id
        assert len(receiver.deliveries[index].raw) == int(real[index]["headers"]["Content-Length"])


@pytest.mark.anyio
@pytest.mark.parametrize(("style", "sent"), [("cloud", 2), ("selfhosted", 1)])
async def test_a_refused_webhook_is_retried_only_in_the_cloud_style(style: str, sent: int) -> None:
    with run_receiver(failures=1) as (hook_url, receiver):
        knobs = {"webhook_style": style, "webhook_retry_delays": "0.05"}
        async with open_sandbox(**FAST, **knobs) as client:
            await submit(client, 1, webhook={"url": hook_url, "events": ["started"]})
            await wait_for_stat(client, "webhook batch_scrape.started 500", 1)
            await anyio.sleep(0.3)
    assert len(receiver.deliveries) == sent


@pytest.mark.anyio
async def test_cloud_webhooks_keep_the_url_and_metadata_as_submitted() -> None:
    query = "sig=abc%2B%2F%3D&next=%2Fhook%3Fa%3D1&x="
    metadata = {"job_id": "j-1", "tenant": 't/é "quoted"', "nested": {"list": [1, 2.5, None]}}
    with run_receiver() as (hook_url, receiver):
        async with open_sandbox(**FAST) as client:
            webhook = {"url": f"{hook_url}?{query}", "metadata": metadata, "events": ["started"]}
            await submit(client, 1, webhook=webhook)
            await wait_until(lambda: len(receiver.deliveries) == 1)
    (delivery,) = receiver.deliveries
    assert delivery.target == b"/hook?" + query.encode()
    assert delivery.body["metadata"] == metadata and delivery.signed


@pytest.mark.anyio
async def test_webhook_events_filter_what_is_sent() -> None:
    with run_receiver() as (hook_url, receiver):
        knobs = {"fail_rate": 1.0, "fail_codes": "SCRAPE_TIMEOUT"}
        async with open_sandbox(**FAST, **knobs) as client:
            await submit(client, 2, webhook={"url": hook_url, "events": ["page", "completed"]})
            await wait_until(lambda: "batch_scrape.completed" in receiver.types())
    assert receiver.types() == ["batch_scrape.page", "batch_scrape.page", "batch_scrape.completed"]
    page = receiver.deliveries[0].body
    assert (page["success"], page["data"], page["error"]) == (False, [], "Scrape timed out")


@pytest.mark.anyio
async def test_webhook_duplicates_resend_the_identical_body() -> None:
    with run_receiver() as (hook_url, receiver):
        async with open_sandbox(**FAST, webhook_duplicate_rate=1.0) as client:
            await submit(client, 1, webhook={"url": hook_url, "events": ["started"]})
            await wait_until(lambda: len(receiver.deliveries) == 2)
    first, second = receiver.deliveries
    assert first.raw == second.raw and first.signed and second.signed


@pytest.mark.anyio
async def test_webhook_non_2xx_is_retried_after_the_retry_delays() -> None:
    with run_receiver(failures=2) as (hook_url, receiver):
        async with open_sandbox(**FAST, webhook_retry_delays="0.02,0.02,0.02") as client:
            await submit(client, 1, webhook={"url": hook_url, "events": ["started"]})
            await wait_until(lambda: len(receiver.deliveries) == 3)
            # The third answer reaches the receiver before the sandbox has counted it.
            await wait_for_stat(client, "webhook batch_scrape.started 200", 1)
            stats = (await client.get("/_sandbox/stats")).json()
    assert len({d.raw for d in receiver.deliveries}) == 1
    assert stats["webhook batch_scrape.started 500"] == 2
    assert stats["webhook batch_scrape.started 200"] == 1


@pytest.mark.anyio
async def test_webhook_drop_rate_drops_deliveries() -> None:
    with run_receiver() as (hook_url, receiver):
        async with open_sandbox(**FAST, webhook_drop_rate=1.0) as client:
            await submit(client, 1, webhook=hook_url)
            await wait_for_stat(client, "webhook dropped", 3)  # started, page, completed
    assert receiver.deliveries == []
