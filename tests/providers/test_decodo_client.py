from __future__ import annotations

from collections.abc import Callable

import httpx
import orjson
import pytest

from receiver.errors import NotFound, RateLimited, Rejected, Unauthorized, Unavailable
from receiver.providers.base import raise_for_status, retry_after, summary
from receiver.providers.decodo import DecodoClient

pytestmark = pytest.mark.anyio

BASE = "https://scraper.example"
Handler = Callable[[httpx.Request], httpx.Response]


def client_with(handler: Handler) -> tuple[DecodoClient, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    http = httpx.AsyncClient(transport=httpx.MockTransport(record))
    return DecodoClient(http, BASE, "dXNlcjpwYXNz"), seen


async def test_submit_task_sends_basic_auth_and_parses_id() -> None:
    client, seen = client_with(
        lambda r: httpx.Response(
            200,
            json={"id": "7434928397127555073", "status": "pending", "url": "https://ip.decodo.com"},
        )
    )
    task = await client.submit_task({"url": "https://ip.decodo.com", "passthrough": "tok"})
    assert task.id == "7434928397127555073" and task.input == "https://ip.decodo.com"
    assert seen[0].url == f"{BASE}/v3/task"
    assert seen[0].headers["authorization"] == "Basic dXNlcjpwYXNz"
    assert orjson.loads(seen[0].content)["passthrough"] == "tok"
    await client.http.aclose()


async def test_submit_batch_maps_queries_to_tasks() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        urls = orjson.loads(request.content)["url"]
        queries = [{"id": str(1000 + i), "url": u, "status": "pending"} for i, u in enumerate(urls)]
        return httpx.Response(200, json={"id": "b1", "queries": queries, "errors": []})

    client, seen = client_with(answer)
    tasks = await client.submit_batch({"target": "universal"}, "url", ["https://a", "https://b"])
    assert [(t.id, t.input) for t in tasks] == [("1000", "https://a"), ("1001", "https://b")]
    assert seen[0].url == f"{BASE}/v3/task/batch"
    await client.http.aclose()


async def test_get_results_none_on_204_and_body_on_200() -> None:
    answers = iter([httpx.Response(204), httpx.Response(200, json={"results": [{"content": "x"}]})])
    client, seen = client_with(lambda r: next(answers))
    assert await client.get_results("42") is None
    body = await client.get_results("42")
    assert body is not None and orjson.loads(body)["results"][0]["content"] == "x"
    assert seen[0].url == f"{BASE}/v3/task/42/results"
    await client.http.aclose()


@pytest.mark.parametrize(
    ("response", "error"),
    [
        (
            httpx.Response(401, json={"status": "failed", "message": "Username invalid."}),
            Unauthorized,
        ),
        (httpx.Response(403, json={"message": "forbidden"}), Unauthorized),
        (httpx.Response(404, json={"message": "Task not found"}), NotFound),
        (httpx.Response(422, json={"message": "bad"}), Rejected),
        (httpx.Response(429, headers={"Retry-After": "7"}), RateLimited),
        (httpx.Response(500, text="oops"), Unavailable),
        (httpx.Response(503, text="oops"), Unavailable),
        (httpx.Response(200, text="<html>"), Unavailable),  # a proxy's page: retried
        (httpx.Response(200, text='{"results": [{"con'), Unavailable),  # cut short: retried
        (httpx.Response(200, text="ok"), Rejected),
    ],
)
async def test_errors_are_translated(response: httpx.Response, error: type[Exception]) -> None:
    client, _ = client_with(lambda r: response)
    with pytest.raises(error):
        await client.get_results("1")
    await client.http.aclose()


async def test_network_error_is_unavailable() -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    client, _ = client_with(fail)
    with pytest.raises(Unavailable):
        await client.get_task("1")
    await client.http.aclose()


async def test_rate_limited_carries_retry_after() -> None:
    client, _ = client_with(lambda r: httpx.Response(429, headers={"Retry-After": "7"}))
    with pytest.raises(RateLimited) as caught:
        await client.get_results("1")
    assert caught.value.retry_after == 7.0
    await client.http.aclose()


async def test_credentials_never_leave_the_provider_origin() -> None:
    client, seen = client_with(lambda r: httpx.Response(200, json={}))
    for elsewhere in (
        "https://evil.example/v3/task",
        "http://scraper.example/v3/task",
        "https://scraper.example:8443/v3/task",
    ):
        with pytest.raises(Rejected):
            await client.request("GET", elsewhere)
    assert seen == []
    await client.http.aclose()


def test_retry_after_reads_header_seconds_date_and_message() -> None:
    assert retry_after(httpx.Response(429, headers={"Retry-After": "3"})) == 3.0
    dated = httpx.Response(429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:10 GMT"})
    assert retry_after(dated, now=1445412480.0) == 10.0
    message = httpx.Response(429, json={"error": "Rate limit exceeded ... retry after 12s, resets"})
    assert retry_after(message) == 12.0
    assert retry_after(httpx.Response(429)) is None


@pytest.mark.parametrize(
    ("body", "kind", "said"),
    [
        (
            b"<html><head><title>502 Bad\n Gateway</title></head><body>x</body></html>",
            "text/html",
            "502 Bad Gateway",
        ),
        (
            b"<!DOCTYPE html>\n<h1>Service &amp; Unavailable</h1>\n",
            "text/html",
            "Service & Unavailable",
        ),
        (b"<html><body>no title</body></html>", "text/html", "an HTML page"),
        (
            b"upstream\nconnect error\r\n or disconnect",
            "text/plain",
            "upstream connect error or disconnect",
        ),
        (b"x" * 500, "text/plain", "x" * 199 + "\u2026"),
    ],
)
def test_a_body_that_is_no_json_error_is_summarized_on_one_line(
    body: bytes, kind: str, said: str
) -> None:
    response = httpx.Response(502, content=body, headers={"content-type": kind})
    assert summary(response) == said
    with pytest.raises(Unavailable) as caught:
        raise_for_status("decodo", response)
    assert str(caught.value) == f"decodo answered 502: {said}"


@pytest.mark.parametrize("task_id", ["../x", "..", ".", "a/b", "a?b", "a#b", "a\\b", ""])
async def test_a_task_id_that_could_leave_its_path_segment_is_refused(task_id: str) -> None:
    # Unquoted, ../x made GET /v3/x/results and a?b asked for /v3/task/a with a query.
    client, seen = client_with(lambda r: httpx.Response(200, json={"status": "done"}))
    for call in (client.get_task, client.get_results):
        with pytest.raises(Rejected) as caught:
            await call(task_id)
        assert caught.value.reason == "bad_id"
    assert seen == []  # nothing sent
    await client.http.aclose()


@pytest.mark.parametrize(
    ("task_id", "segment"),
    [
        ("7434928397127555073", "7434928397127555073"),
        ("a b", "a%20b"),
        ("50%", "50%25"),
        ("a;b=c", "a%3Bb%3Dc"),
        ("é", "%C3%A9"),
        ("%2e%2e", "%252e%252e"),
    ],
)
async def test_a_task_id_is_quoted_into_one_path_segment(task_id: str, segment: str) -> None:
    client, seen = client_with(lambda r: httpx.Response(200, json={"status": "done"}))
    await client.get_task(task_id)
    await client.get_results(task_id)
    paths = [request.url.raw_path.decode() for request in seen]
    assert paths == [f"/v3/task/{segment}", f"/v3/task/{segment}/results"]
    await client.http.aclose()
