"""The documents of the Firecrawl sandbox and their pages (receiver.sandbox.firecrawl.documents):
formats, paging, `next`."""

from __future__ import annotations

import uuid

import httpx
import orjson
import pytest

from tests.sandbox.firecrawl_client import (
    SLOW,
    advance,
    checked,
    follow,
    open_sandbox,
    origin,
    page_urls,
    poll,
    read_by_next,
    sources,
    submit,
)


@pytest.mark.anyio
async def test_documents_follow_the_requested_formats() -> None:
    formats = ["markdown", "html", "rawHtml", "links", {"type": "json", "prompt": "the title"}]
    async with open_sandbox(**SLOW) as client:
        batch_id = await submit(client, 2, formats=formats)
        await advance(client, 20)
        body = await poll(client, batch_id)
    doc = body["data"][0]
    assert set(doc) == {"markdown", "html", "rawHtml", "links", "json", "metadata"}
    assert body["creditsUsed"] == 10
    metadata = doc["metadata"]
    assert {
        "title",
        "sourceURL",
        "url",
        "statusCode",
        "scrapeId",
        "contentType",
        "proxyUsed",
        "cacheState",
        "creditsUsed",
    } <= set(metadata)
    assert (metadata["statusCode"], metadata["creditsUsed"]) == (200, 5)
    assert uuid.UUID(metadata["scrapeId"])


@pytest.mark.anyio
async def test_cloud_paging_follows_next_in_pages_of_page_size() -> None:
    async with open_sandbox(scrape_delay=1.0, concurrency=10) as client:
        batch_id = await submit(client, 250)
        await advance(client, 30)
        pages = await read_by_next(client, batch_id)
        limited = await poll(client, batch_id, skip=240, limit=5)
    assert [len(p["data"]) for p in pages] == [100, 100, 50]
    assert [p["next"].rsplit("?", 1)[1] for p in pages[:2]] == ["skip=100", "skip=200"]
    assert [s for p in pages for s in sources(p)] == page_urls(250)
    assert sources(limited) == page_urls(250)[240:245]
    assert limited["next"].endswith("?skip=245&limit=5")


@pytest.mark.anyio
async def test_cloud_paging_cuts_pages_past_page_max_bytes() -> None:
    async with open_sandbox(**SLOW, page_max_bytes=1500) as client:
        batch_id = await submit(client, 10)
        await advance(client, 100)
        first = await poll(client, batch_id)
        rest = [first]
        while "next" in rest[-1]:
            rest.append(await follow(client, rest[-1]["next"]))
    assert 1 < len(first["data"]) < 10
    assert sum(len(orjson.dumps(d)) for d in first["data"]) <= 1500
    assert [s for p in rest for s in sources(p)] == page_urls(10)


@pytest.mark.anyio
async def test_cloud_next_is_present_while_scraping() -> None:
    async with open_sandbox(**SLOW) as client:
        batch_id = await submit(client, 5)
        await advance(client, 20)
        body = await poll(client, batch_id)
        followed = await follow(client, body["next"])
    assert (body["status"], body["completed"], len(body["data"])) == ("scraping", 2, 2)
    assert body["next"].endswith("?skip=2")
    assert followed["data"] == [] and followed["next"].endswith("?skip=2")


@pytest.mark.anyio
async def test_selfhosted_paging_ignores_skip_and_limit() -> None:
    async with open_sandbox(**SLOW, paging="selfhosted") as client:
        batch_id = await submit(client, 7)
        await advance(client, 50)
        midflight = await poll(client, batch_id)
        followed = await follow(client, midflight["next"])
        limited = await poll(client, batch_id, limit=2)
        await advance(client, 20)
        done = await poll(client, batch_id, skip=3, limit=2)
    assert (midflight["completed"], len(midflight["data"])) == (5, 5)
    assert midflight["next"].endswith("?skip=5")
    assert followed["data"] == midflight["data"] and "next" not in followed
    assert len(limited["data"]) == 5 and limited["next"].endswith("?skip=5&limit=2")
    assert (done["status"], sources(done)) == ("completed", page_urls(7))
    assert "next" not in done


@pytest.mark.anyio
@pytest.mark.parametrize("paging", ["cloud", "selfhosted"])
async def test_pages_of_big_documents_are_cut_at_page_max_bytes(paging: str) -> None:
    """30 documents of 500 KB: pages of 20 within 10 MiB. Self-hosted ignores skip, so its
    `next` answers the first 20 again and the last 10 cannot be read (INDEX.md)."""
    knobs = {"paging": paging, "document_bytes": 500_000, "scrape_delay": 0.1}
    async with open_sandbox(**knobs) as client:
        batch_id = await submit(client, 30)
        await advance(client, 1)
        pages = await read_by_next(client, batch_id)
        skipped = await poll(client, batch_id, skip=20, limit=10)
    assert pages[0]["status"] == "completed"
    assert {len(orjson.dumps(doc)) for page in pages for doc in page["data"]} == {500_000}
    assert [page.get("next", "").rpartition("?")[2] for page in pages] == ["skip=20", ""]
    if paging == "cloud":
        assert [len(page["data"]) for page in pages] == [20, 10]
        assert sources(pages[0]) + sources(pages[1]) == page_urls(30)
        assert sources(skipped) == page_urls(30)[20:]
    else:
        assert pages[1]["data"] == pages[0]["data"] == skipped["data"]
        assert sources(pages[0]) == page_urls(30)[:20]


@pytest.mark.anyio
async def test_document_bytes_pads_the_markdown_of_each_document() -> None:
    async with open_sandbox(**SLOW, document_bytes=5000) as client:
        batch_id = await submit(client, 2)
        no_markdown = await submit(client, 1, formats=["html"])
        await advance(client, 20)
        padded = await poll(client, batch_id)
        plain = await poll(client, no_markdown)
    assert [len(orjson.dumps(doc)) for doc in padded["data"]] == [5000, 5000]
    assert padded["data"][0]["markdown"].startswith("Sandbox page 1\n")
    assert len(orjson.dumps(plain["data"][0])) < 1000


@pytest.mark.anyio
async def test_next_base_url_replaces_the_origin_of_next() -> None:
    async with open_sandbox(**SLOW, next_base_url="https://elsewhere.example") as client:
        batch_id = await submit(client, 2)
        body = await poll(client, batch_id)
    assert body["next"] == f"https://elsewhere.example/v2/batch/scrape/{batch_id}?skip=0"


@pytest.mark.anyio
async def test_url_scheme_writes_https_on_the_plain_http_host_and_port() -> None:
    """As a self-hosted server without ENV=local writes `url` and `next` (INDEX.md)."""
    async with open_sandbox(**SLOW, page_size=1, url_scheme="https") as client:
        submitted = checked(await client.post("/v2/batch/scrape", json={"urls": page_urls(3)}), 200)
        batch_id = submitted["id"]
        await advance(client, 30)
        first = await poll(client, batch_id)
        second = await follow(client, first["next"])  # served over plain HTTP all the same
    own = httpx.URL(origin(client))
    assert own.scheme == "http"
    https = f"https://{own.host}:{own.port}/v2/batch/scrape/{batch_id}"
    assert submitted["url"] == https
    assert (first["next"], second["next"]) == (f"{https}?skip=1", f"{https}?skip=2")
