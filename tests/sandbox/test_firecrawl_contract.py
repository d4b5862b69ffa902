"""The contract the Firecrawl sandbox is held to: the seeds, tightened by what every capture of a
real server shows."""

from __future__ import annotations

import uuid

import httpx
import pytest
from jsonschema import ValidationError

from tests.sandbox.firecrawl_client import (
    CONTRACT,
    SLOW,
    STATUS_PATH,
    advance,
    captured,
    open_sandbox,
    poll,
    submit,
)
from tests.sandbox.openapi_seeds import (
    FIRECRAWL_SEEDS,
    OpenApiContract,
    firecrawl_next_drift,
    load_openapi,
)


def test_seed_documents_the_answers_the_sandbox_gives() -> None:
    path = f"/v2/batch/scrape/{uuid.uuid4()}"
    for status in (200, 402, 429, 500):
        assert CONTRACT.documents_status("GET", path, status)
    for status in (200, 404, 500):
        assert CONTRACT.documents_status("DELETE", path, status)
    assert not CONTRACT.documents_status("GET", path, 404)


def test_contract_accepts_every_answer_captured_from_a_real_server() -> None:
    checked_bodies = nexts = 0
    for method, url, status, body in captured():
        path = httpx.URL(url).path
        if CONTRACT.validate(method, path, status, body):
            checked_bodies += 1
        if method == "GET" and status == 200 and STATUS_PATH.match(path):
            assert not firecrawl_next_drift(url, body), url
            nexts += 1
    assert checked_bodies == 33 and nexts == 28  # 28 GET 200s, 3 DELETE 200s, 2 DELETE 404s


def test_tightened_contract_requires_what_the_captures_show() -> None:
    seed = OpenApiContract(*(load_openapi(name) for name in FIRECRAWL_SEEDS))
    body = next(b for m, _, s, b in captured() if m == "GET" and s == 200 and "next" in b)
    path = f"/v2/batch/scrape/{uuid.uuid4()}"
    for name in ("success", "status", "completed", "total", "creditsUsed", "expiresAt", "data"):
        drifted = {k: v for k, v in body.items() if k != name}
        assert seed.validate("GET", path, 200, drifted)  # the seed as written lets it pass
        with pytest.raises(ValidationError):
            CONTRACT.validate("GET", path, 200, drifted)
    with pytest.raises(ValidationError):
        CONTRACT.validate("GET", path, 200, {**body, "done": True})
    for drifted in ({}, {"status": "cancelled", "success": True}):
        with pytest.raises(ValidationError):
            CONTRACT.validate("DELETE", path, 200, drifted)
    with pytest.raises(ValidationError):
        CONTRACT.validate("DELETE", path, 404, {"success": False, "error": "Job not found"})


def test_next_is_checked_against_total_skip_and_data() -> None:
    url = "https://api.firecrawl.dev/v2/batch/scrape/x"
    scraping = {"status": "scraping", "completed": 1, "total": 3, "data": [{}]}
    assert firecrawl_next_drift(url, {**scraping, "next": f"{url}?skip=1"}) == ""
    assert "no `next`" in firecrawl_next_drift(url, scraping)
    assert "no `next`" in firecrawl_next_drift(url, {**scraping, "next": None})
    done = {"status": "completed", "completed": 3, "total": 3, "data": [{}] * 3}
    assert firecrawl_next_drift(url, done) == ""
    assert "a `next`" in firecrawl_next_drift(url, {**done, "next": None})
    # Pages after `skip` count: 3 of 5 here after 2 skipped is all of them.
    page = {"status": "completed", "completed": 5, "total": 5, "data": [{}] * 3}
    assert firecrawl_next_drift(f"{url}?skip=2", page) == ""
    assert "no `next`" in firecrawl_next_drift(f"{url}?skip=1", page)


@pytest.mark.anyio
async def test_contract_rejects_a_drifted_status_body() -> None:
    async with open_sandbox(**SLOW) as client:
        batch_id = await submit(client, 1)
        await advance(client, 10)
        body = await poll(client, batch_id)
    path = f"/v2/batch/scrape/{batch_id}"
    assert CONTRACT.validate("GET", path, 200, body)
    body["data"][0]["metadata"]["statusCode"] = "200"
    with pytest.raises(ValidationError):
        CONTRACT.validate("GET", path, 200, body)
    with pytest.raises(ValidationError):
        CONTRACT.validate("GET", path, 200, {**body, "expiresAt": "tomorrow"})
