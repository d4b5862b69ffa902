"""Helpers of the Firecrawl sandbox tests: a sandbox on loopback, its checked answers, the
captures of a real server, and a webhook receiver."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import anyio
import httpx
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.sandbox.firecrawl import FirecrawlSandboxConfig, create_app
from tests.data import DATA
from tests.sandbox.openapi_seeds import (
    firecrawl_contract,
    firecrawl_next_drift,
)
from tests.servers import serve_app

CONTRACT = firecrawl_contract()  # the seeds, with what every capture requires


CAPTURES = DATA / "captures" / "firecrawl"


# Webhooks the self-hosted build sent (capture 053).
WEBHOOK_CAPTURE = DATA / "captures" / "firecrawl-webhooks"


STATUS_PATH = re.compile(r"^/v2/batch/scrape/[^/]+$")


AUTH = {"Authorization": "Bearer fc-sandbox"}


SECRET = "whsec-test"


STRICT_MESSAGE = (
    "Unrecognized key in body -- please review the v2 API documentation for request body changes"
)


TIMEOUT = "SCRAPE_TIMEOUT"  # the code of a page whose scrape timed out (capture 035)


# Slow pages, one at a time: page i finishes (i+1)*10 s after submission; tests move the clock.
SLOW = {"scrape_delay": 10.0, "concurrency": 1}
# Pages done within a fraction of a second, for webhooks on the real clock; signed.
FAST = {"scrape_delay": 0.03, "concurrency": 1, "webhook_secret": SECRET}


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


def expiry(body: dict[str, Any]) -> float:
    assert body["expiresAt"].endswith("Z")
    return datetime.fromisoformat(body["expiresAt"]).timestamp()
