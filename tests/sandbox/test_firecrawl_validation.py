"""Submissions to the Firecrawl sandbox (receiver.sandbox.firecrawl.validation): what the strict
schema refuses, as the real server words it."""

from __future__ import annotations

import uuid

import pytest

from tests.sandbox.firecrawl_client import (
    SLOW,
    STRICT_MESSAGE,
    checked,
    open_sandbox,
    origin,
    page_urls,
    poll,
    submit,
    submit_raw,
)


@pytest.mark.anyio
async def test_submit_answers_a_uuid_the_status_url_and_invalid_urls() -> None:
    async with open_sandbox() as client:
        response = await client.post("/v2/batch/scrape", json={"urls": page_urls(2)})
        body = checked(response, 200)
    assert list(body) == ["success", "id", "url", "invalidURLs"]
    assert uuid.UUID(body["id"]).version == 4
    assert body["url"] == f"{origin(client)}/v2/batch/scrape/{body['id']}"
    assert body["invalidURLs"] == []


@pytest.mark.anyio
async def test_submit_with_an_unknown_key_is_400_unrecognized_keys() -> None:
    async with open_sandbox() as client:
        response = await client.post("/v2/batch/scrape", json={"urls": page_urls(1), "bogusKey": 1})
    assert checked(response, 400) == {
        "success": False,
        "code": "BAD_REQUEST",
        "error": "Bad Request",
        "details": [
            {
                "code": "unrecognized_keys",
                "keys": ["bogusKey"],
                "path": [],
                "message": STRICT_MESSAGE,
            }
        ],
    }


@pytest.mark.anyio
async def test_submit_with_malformed_json_or_without_urls_is_400() -> None:
    async with open_sandbox() as client:
        malformed = await client.post(
            "/v2/batch/scrape", content=b'{"urls": [', headers={"Content-Type": "application/json"}
        )
        missing = await client.post("/v2/batch/scrape", json={})
    assert checked(malformed, 400) == {
        "success": False,
        "code": "BAD_REQUEST_INVALID_JSON",
        "error": "Bad request, malformed JSON",
    }
    assert checked(missing, 400)["details"] == [
        {
            "code": "invalid_type",
            "expected": "array",
            "received": "undefined",
            "path": ["urls"],
            "message": "Required",
        }
    ]


@pytest.mark.anyio
async def test_submit_with_an_invalid_url_is_400_unless_invalid_urls_are_ignored() -> None:
    urls = [*page_urls(2), "not a url"]
    async with open_sandbox(**SLOW) as client:
        refused = checked(await client.post("/v2/batch/scrape", json={"urls": urls}), 400)
        accepted = checked(
            await client.post("/v2/batch/scrape", json={"urls": urls, "ignoreInvalidURLs": True}),
            200,
        )
        nothing_valid = await submit_raw(client, ["not a url", "ftp://x.example.com/a"])
        empty = await poll(client, nothing_valid["id"])
    path = ["urls", 2]
    assert refused["details"] == [
        {"validation": "url", "code": "invalid_string", "message": "Invalid url", "path": path},
        {
            "code": "custom",
            "path": path,
            "message": "URL must have a valid top-level domain or be a valid path",
        },
        {"code": "custom", "message": "Invalid URL", "path": path},
    ]
    assert accepted["invalidURLs"] == ["not a url"]
    assert nothing_valid["invalidURLs"] == ["not a url", "ftp://x.example.com/a"]
    assert (empty["status"], empty["completed"], empty["total"], empty["data"]) == (
        "completed",
        0,
        0,
        [],
    )
    assert "next" not in empty


@pytest.mark.anyio
async def test_submit_with_wrongly_typed_options_is_400_with_zod_details() -> None:
    body = {
        "urls": page_urls(1),
        "mobile": "yes",
        "maxConcurrency": 0,
        "webhook": {"url": "https://hooks.example.com/x", "events": ["page", "finished"]},
    }
    async with open_sandbox() as client:
        details = checked(await client.post("/v2/batch/scrape", json=body), 400)["details"]
    assert [(d["code"], d["path"]) for d in details] == [
        ("invalid_type", ["mobile"]),
        ("invalid_enum_value", ["webhook", "events", 1]),
        ("too_small", ["maxConcurrency"]),
    ]


@pytest.mark.anyio
async def test_submit_of_more_than_max_urls_is_400() -> None:
    async with open_sandbox(max_urls=5) as client:
        response = await client.post("/v2/batch/scrape", json={"urls": page_urls(6)})
    assert checked(response, 400)["details"][0]["code"] == "too_big"


@pytest.mark.anyio
async def test_submit_beyond_the_credits_is_402() -> None:
    async with open_sandbox(credits=6) as client:
        await submit(client, 2)
        json_format = {"urls": page_urls(1), "formats": [{"type": "json", "prompt": "title"}]}
        refused = await client.post("/v2/batch/scrape", json=json_format)  # 5 credits a page
        await submit(client, 4)
        over = await client.post("/v2/batch/scrape", json={"urls": page_urls(1)})
    assert checked(over, 402) == checked(refused, 402)
    assert checked(refused, 402) == {
        "success": False,
        "error": "Insufficient credits to perform this request. For more credits, you can "
        "upgrade your plan at https://firecrawl.dev/pricing.",
    }


@pytest.mark.anyio
async def test_requests_without_the_api_key_are_401() -> None:
    async with open_sandbox() as client:
        batch_id = await submit(client, 1)
        wrong = {"Authorization": "Bearer fc-wrong"}
        answers = [
            await client.post("/v2/batch/scrape", json={"urls": page_urls(1)}, headers=wrong),
            await client.get(f"/v2/batch/scrape/{batch_id}", headers={"Authorization": ""}),
            await client.delete(f"/v2/batch/scrape/{batch_id}", headers=wrong),
        ]
    for response in answers:
        assert checked(response, 401) == {"success": False, "error": "Unauthorized: Invalid token"}


@pytest.mark.anyio
async def test_append_to_id_adds_pages_to_the_batch() -> None:
    async with open_sandbox(**SLOW) as client:
        batch_id = await submit(client, 2)
        appended = await client.post(
            "/v2/batch/scrape", json={"urls": ["https://example.com/extra"], "appendToId": batch_id}
        )
        unknown = await client.post(
            "/v2/batch/scrape", json={"urls": page_urls(1), "appendToId": str(uuid.uuid4())}
        )
        body = await poll(client, batch_id)
    assert checked(appended, 200)["id"] == batch_id
    assert body["total"] == 3
    assert checked(unknown, 404) == {"success": False, "error": "Job not found"}
