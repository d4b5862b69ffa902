from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
from jsonschema import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.sandbox.firecrawl import FirecrawlSandboxConfig, create_app
from tests.data import DATA
from tests.sandbox.openapi_seeds import (
    FIRECRAWL_SEEDS,
    OpenApiContract,
    firecrawl_contract,
    firecrawl_next_drift,
    load_openapi,
)
from tests.servers import serve_app

CONTRACT = firecrawl_contract()  # the seeds, with what every capture requires
CAPTURES = DATA / "captures" / "firecrawl"
# Webhooks the self-hosted build sent (copied from shared/captures/firecrawl-webhooks).
WEBHOOK_CAPTURE = Path(__file__).parent / "captures" / "firecrawl-webhooks"
STATUS_PATH = re.compile(r"^/v2/batch/scrape/[^/]+$")
AUTH = {"Authorization": "Bearer fc-sandbox"}
SECRET = "whsec-test"
STRICT_MESSAGE = (
    "Unrecognized key in body -- please review the v2 API documentation for request body changes"
)
TIMEOUT = "SCRAPE_TIMEOUT"  # the code of a page whose scrape timed out (capture 035)
# Slow pages, one at a time: page i finishes (i+1)*10 s after submission; tests move the clock.
SLOW = {"scrape_delay": 10.0, "concurrency": 1}


@contextlib.asynccontextmanager
async def open_sandbox(**knobs: Any) -> AsyncIterator[httpx.AsyncClient]:
    with serve_app(create_app(FirecrawlSandboxConfig(**knobs))) as base_url:
        async with httpx.AsyncClient(base_url=base_url, headers=AUTH, timeout=5) as client:
            yield client


def checked(response: httpx.Response, status: int) -> Any:
    """The JSON body, once the status is right and the seed's schema, if it has one, agrees."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    path = response.request.url.path
    CONTRACT.validate(response.request.method, path, status, body)
    if response.request.method == "GET" and status == 200 and STATUS_PATH.match(path):
        assert not firecrawl_next_drift(str(response.request.url), body)
    return body


def capture(number: int) -> dict[str, Any]:
    """One record of a real Firecrawl server (tests/data/captures/firecrawl/INDEX.md)."""
    (path,) = CAPTURES.glob(f"{number:03d}_*.json")
    record: dict[str, Any] = orjson.loads(path.read_bytes())
    return record


def captured() -> list[tuple[str, str, int, Any]]:
    """(method, URL, status, JSON body) of every capture of a real Firecrawl server."""
    records = []
    for path in sorted(CAPTURES.glob("*.json")):
        record = orjson.loads(path.read_bytes())
        request, response = record["request"], record["response"]
        records.append(
            (request["method"], request["url"], response["status"], response.get("json"))
        )
    return records


def page_urls(count: int) -> list[str]:
    return [f"https://example.com/page{i}.html" for i in range(count)]


async def submit(client: httpx.AsyncClient, count: int = 3, **fields: Any) -> str:
    body = checked(
        await client.post("/v2/batch/scrape", json={"urls": page_urls(count), **fields}), 200
    )
    batch_id: str = body["id"]
    return batch_id


async def submit_raw(client: httpx.AsyncClient, urls: list[str]) -> dict[str, Any]:
    response = await client.post("/v2/batch/scrape", json={"urls": urls, "ignoreInvalidURLs": True})
    body: dict[str, Any] = checked(response, 200)
    return body


async def poll(client: httpx.AsyncClient, batch_id: str, **params: Any) -> dict[str, Any]:
    body: dict[str, Any] = checked(
        await client.get(f"/v2/batch/scrape/{batch_id}", params=params), 200
    )
    return body


async def follow(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    body: dict[str, Any] = checked(await client.get(httpx.URL(url).raw_path.decode()), 200)
    return body


async def read_by_next(client: httpx.AsyncClient, batch_id: str) -> list[dict[str, Any]]:
    """The status answer, then every page its `next` leads to."""
    pages = [await poll(client, batch_id)]
    while "next" in pages[-1]:
        pages.append(await follow(client, pages[-1]["next"]))
    return pages


async def advance(client: httpx.AsyncClient, seconds: float) -> None:
    response = await client.post("/_sandbox/advance", json={"seconds": seconds})
    assert response.status_code == 200


async def wait_for_stat(client: httpx.AsyncClient, key: str, count: int) -> None:
    with anyio.fail_after(5):
        while (await client.get("/_sandbox/stats")).json().get(key, 0) < count:
            await anyio.sleep(0.01)


def origin(client: httpx.AsyncClient) -> str:
    return str(client.base_url).rstrip("/")


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.01)


def sources(body: dict[str, Any]) -> list[str]:
    return [doc["metadata"]["sourceURL"] for doc in body["data"]]


@dataclass
class Delivery:
    headers: dict[str, str]
    raw: bytes
    signed: bool  # X-Firecrawl-Signature is the HMAC-SHA256 of the raw body
    target: bytes  # the path and query string, as the request line had them

    @property
    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = orjson.loads(self.raw)
        return body


class WebhookReceiver:
    """Records every delivery and checks its signature; the first `failures` answer 500."""

    def __init__(self, failures: int) -> None:
        self.deliveries: list[Delivery] = []
        self.failures = failures

    async def receive(self, request: Request) -> Response:
        raw = await request.body()
        expected = "sha256=" + hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()
        signature = request.headers.get("x-firecrawl-signature", "")
        signed = hmac.compare_digest(signature, expected)
        target = request.scope["raw_path"] + b"?" + request.scope["query_string"]
        self.deliveries.append(Delivery(dict(request.headers), raw, signed, target))
        return Response(status_code=500 if len(self.deliveries) <= self.failures else 200)

    def types(self) -> list[str]:
        return [d.body["type"] for d in self.deliveries]


@contextlib.contextmanager
def run_receiver(failures: int = 0) -> Iterator[tuple[str, WebhookReceiver]]:
    receiver = WebhookReceiver(failures)
    app = Starlette(routes=[Route("/hook", receiver.receive, methods=["POST"])])
    with serve_app(app) as base_url:
        yield f"{base_url}/hook", receiver


# ---------------------------------------------------------------- the contract itself


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


# ---------------------------------------------------------------- submission


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


# ---------------------------------------------------------------- status and progress


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


def expiry(body: dict[str, Any]) -> float:
    assert body["expiresAt"].endswith("Z")
    return datetime.fromisoformat(body["expiresAt"]).timestamp()


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
async def test_not_found_pages_are_successes_with_status_code_404() -> None:
    async with open_sandbox(**SLOW, not_found_rate=1.0) as client:
        batch_id = await submit(client, 2)
        await advance(client, 20)
        body = await poll(client, batch_id)
    assert (body["status"], body["completed"], body["total"]) == ("completed", 2, 2)
    assert [d["metadata"]["statusCode"] for d in body["data"]] == [404, 404]


# ---------------------------------------------------------------- cancel and expiry


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


# ---------------------------------------------------------------- injected faults


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


# ---------------------------------------------------------------- webhooks

FAST = {"scrape_delay": 0.03, "concurrency": 1, "webhook_secret": SECRET}


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


def captured_deliveries() -> list[dict[str, Any]]:
    """The requests of capture 053: one batch's webhooks from the self-hosted build."""
    path = WEBHOOK_CAPTURE / "053_webhook_deliveries_unsigned.json"
    return [d["request"] for d in orjson.loads(path.read_bytes())["deliveries"]]


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
