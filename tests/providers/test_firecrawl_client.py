from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from receiver.errors import (
    NotFound,
    PaymentRequired,
    ProviderError,
    RateLimited,
    Rejected,
    Unauthorized,
    Unavailable,
)
from receiver.providers.firecrawl import BatchStatus, FirecrawlClient
from tests.providers.captures import Replay, body_of, load, response_of, target_of
from tests.providers.conftest import Handler, MockHttp

pytestmark = pytest.mark.anyio

FC = "firecrawl"
KEY = "fc-test-key"
LOCAL = "http://127.0.0.1:3002"  # the origin of the captured server
BATCH_A = "f5970c94-8cc8-41e9-b71b-5b033e16a8c8"
BATCH_B = "beb47136-d516-47c8-ba2a-d2f0e4ced8ba"
BATCH_C = "44e36b79-03c3-47d3-9506-ce02444b9381"
BATCH_E = "1f18d282-7722-44d1-87e0-d5bbf00b5465"
BATCH_F = "6cfcf6ea-135d-4e26-b8d7-d2e0457915a1"
BATCH_G = "2072c64b-1cc6-4c1f-9806-716eef31d461"

ClientFor = Callable[[Handler], FirecrawlClient]


def replay(*numbers: str, check: bool = True) -> Replay:
    return Replay((load(FC, n) for n in numbers), check=check)


def progress(status: BatchStatus) -> tuple[str, int, int, int, bool, bool]:
    """What one poll says: status, completed, total, documents, next present, terminal."""
    return (
        status.status,
        status.completed,
        status.total,
        len(status.documents),
        status.next is not None,
        status.terminal,
    )


def scrape_ids(documents: list[dict[str, Any]]) -> list[str]:
    return [d["metadata"]["scrapeId"] for d in documents]


def captured_json(number: str) -> dict[str, Any]:
    answer: dict[str, Any] = load(FC, number)["response"]["json"]
    return answer


def recording(handler: Handler) -> tuple[Handler, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    return record, seen


@pytest.fixture
def client_for(mock_http: MockHttp) -> ClientFor:
    """A factory of clients of the captured server's origin, answered by a handler."""
    return lambda handler: FirecrawlClient(mock_http(handler), LOCAL, KEY)


# --- Batch A: polled from 0/6 to completed, then pages that ignore skip and limit ---


async def test_status_batch_a_polls_step_by_step(client_for: ClientFor) -> None:
    answers = replay("003", "004", "005", "006", "007")
    client = client_for(answers)
    polls = [await client.status(BATCH_A) for _ in range(5)]
    assert [progress(p) for p in polls] == [
        ("scraping", 0, 6, 0, True, False),
        ("scraping", 1, 6, 1, True, False),
        ("scraping", 3, 6, 3, True, False),
        ("scraping", 5, 6, 5, True, False),
        ("completed", 6, 6, 6, False, True),
    ]
    assert [p.next for p in polls[:4]] == [
        f"{LOCAL}/v2/batch/scrape/{BATCH_A}?skip={n}" for n in (0, 1, 3, 5)
    ]
    assert [p.credits_used for p in polls] == [0, 1, 3, 5, 6]
    assert polls[0].expires_at == "2026-11-23T14:14:07.000Z"
    assert polls[-1].expires_at == "2026-11-23T14:14:16.000Z"  # moves forward between polls
    assert answers.exhausted
    assert {r.headers["authorization"] for r in answers.seen} == {f"Bearer {KEY}"}


async def test_status_keeps_a_target_404_as_a_document(client_for: ClientFor) -> None:
    client = client_for(replay("007"))
    done = await client.status(BATCH_A)
    codes = {
        d["metadata"]["sourceURL"].rsplit("/", 1)[1]: d["metadata"]["statusCode"]
        for d in done.documents
    }
    assert codes["missing-404.html"] == 404
    assert sorted(codes) == [
        "missing-404.html",
        "page1.html",
        "page2.html",
        "page3.html",
        "page4.html",
        "page5.html",
    ]


@pytest.mark.parametrize("number", ["008", "009", "010"])
async def test_collect_dedupes_pages_that_ignore_skip_and_limit(
    client_for: ClientFor, number: str
) -> None:
    # 007 is the completed poll; a next page (?limit=2, ?skip=3, ?skip=3&limit=2) repeats it all.
    answers = replay("007", number)
    client = client_for(answers)
    done = await client.status(BATCH_A)
    page_url = load(FC, number)["request"]["url"]
    documents = await client.collect(dataclasses.replace(done, next=page_url))
    assert len(documents) == 6
    assert scrape_ids(documents) == scrape_ids(done.documents)
    assert answers.exhausted and answers.seen[1].url == page_url


async def test_collect_stops_when_a_page_adds_nothing(client_for: ClientFor) -> None:
    # A server that repeats every document and always says there is more.
    page = captured_json("009")
    endless = f"{LOCAL}/v2/batch/scrape/{BATCH_A}?skip=6"
    handler, seen = recording(lambda r: httpx.Response(200, json={**page, "next": endless}))
    client = client_for(handler)
    first = dataclasses.replace(await client.status(BATCH_A), next=endless)
    documents = await client.collect(first)
    assert len(documents) == 6
    assert len(seen) == 2  # the status poll and one page


async def test_collect_caps_pages_at_total(client_for: ClientFor) -> None:
    # Every page brings one new document and a next: stop after `total` pages.
    def fresh_page(request: httpx.Request) -> httpx.Response:
        n = int(request.url.params["skip"])
        document = {"markdown": f"p{n}", "metadata": {"scrapeId": f"s{n}"}}
        return httpx.Response(
            200,
            json={
                "success": True,
                "status": "completed",
                "completed": 3,
                "total": 3,
                "next": f"{LOCAL}/v2/batch/scrape/x?skip={n + 1}",
                "data": [document],
            },
        )

    handler, seen = recording(fresh_page)
    first = BatchStatus("completed", 3, 3, 3, None, f"{LOCAL}/v2/batch/scrape/x?skip=1", [])
    documents = await client_for(handler).collect(first)
    assert [d["markdown"] for d in documents] == ["p1", "p2", "p3"]
    assert len(seen) == 3


async def test_collect_dedupes_by_url_then_by_content(client_for: ClientFor) -> None:
    by_url = {"markdown": "a", "metadata": {"sourceURL": "https://x.example/a"}}
    by_url_again = {"markdown": "a, later", "metadata": {"sourceURL": "https://x.example/a"}}
    bare = {"markdown": "no metadata"}
    first = BatchStatus("completed", 4, 4, 4, None, None, [by_url, by_url_again, bare, dict(bare)])
    client = client_for(lambda r: pytest.fail("collect sent a request"))
    assert await client.collect(first) == [by_url, bare]


@pytest.mark.parametrize(
    "elsewhere",
    [
        "https://evil.example/v2/batch/scrape/x?skip=1",
        "http://127.0.0.1:3003/v2/batch/scrape/x?skip=1",
        # A self-hosted server without ENV=local: https on its own plain-HTTP port.
        "https://127.0.0.1:3002/v2/batch/scrape/x?skip=1",
        "http://localhost:3002/v2/batch/scrape/x?skip=1",
    ],
)
async def test_collect_follows_a_next_url_on_our_origin_whatever_host_it_names(
    client_for: ClientFor, elsewhere: str
) -> None:
    handler, seen = recording(lambda r: httpx.Response(200, json=captured_json("007")))
    client = client_for(handler)
    first = BatchStatus("completed", 6, 6, 6, None, elsewhere, [])
    documents = await client.collect(first)
    assert documents  # the page's documents, read from our own origin
    assert [str(request.url) for request in seen] == [f"{LOCAL}/v2/batch/scrape/x?skip=1"]


@pytest.mark.parametrize(
    ("elsewhere", "says"),
    [
        ("https://evil.example/v2/crawl/x?skip=1", "'/v2/crawl/x' is not a batch status path"),
        ("http://127.0.0.1:3002/admin", "'/admin' is not a batch status path"),
        ("http://127.0.0.1:3002/v2/batch/scrape/x/../../keys", "is not a batch status path"),
        ("http://127.0.0.1:3002:99999/v2/batch/scrape/x", "is not a URL"),
    ],
)
async def test_collect_refuses_a_next_url_that_is_not_a_batch_status(
    client_for: ClientFor, elsewhere: str, says: str
) -> None:
    handler, seen = recording(lambda r: httpx.Response(200, json=captured_json("007")))
    client = client_for(handler)
    first = BatchStatus("completed", 6, 6, 6, None, elsewhere, [])
    with pytest.raises(Rejected) as caught:
        await client.collect(first)
    assert caught.value.reason == "foreign_next_url"
    assert says in str(caught.value)
    assert seen == []  # our key never left


# --- Batch B: cancelled mid-run; documents keep arriving and total shrinks ---


async def test_cancel_batch_b_and_watch_it_settle(client_for: ClientFor) -> None:
    answers = replay("012", "013", "014", "015", "016", "017", "018")
    client = client_for(answers)
    before = await client.status(BATCH_B)
    assert await client.cancel(BATCH_B) == "cancelled"
    after = [await client.status(BATCH_B) for _ in range(5)]
    assert progress(before) == ("scraping", 0, 12, 0, True, False)
    assert [progress(p) for p in after] == [
        ("cancelled", 0, 12, 0, True, True),  # terminal, yet still a next
        ("cancelled", 0, 12, 0, True, True),
        ("cancelled", 0, 6, 0, True, True),  # queued pages dropped
        ("cancelled", 6, 6, 6, False, True),  # running pages finished after the cancel
        ("cancelled", 6, 6, 6, False, True),
    ]
    assert answers.exhausted and answers.seen[1].method == "DELETE"


async def test_collect_right_after_cancel_follows_next_once(client_for: ClientFor) -> None:
    # 014 says cancelled 0/12 with next ?skip=0; the server ignores skip and answers like 015.
    answers = replay("014", "015", check=False)
    client = client_for(answers)
    cancelled = await client.status(BATCH_B)
    assert await client.collect(cancelled) == []
    assert answers.seen[1].url == cancelled.next == f"{LOCAL}/v2/batch/scrape/{BATCH_B}?skip=0"


async def test_cancel_twice_answers_cancelled_again(client_for: ClientFor) -> None:
    assert await client_for(replay("019")).cancel(BATCH_B) == "cancelled"


# --- Batches C, F, empty: total shrinks as pages fail outright; the batch still completes ---


async def test_status_batch_c_total_shrinks_as_pages_fail(client_for: ClientFor) -> None:
    client = client_for(replay("032", "033", "034"))
    polls = [await client.status(BATCH_C) for _ in range(3)]
    assert [progress(p) for p in polls] == [
        ("scraping", 0, 4, 0, True, False),
        ("scraping", 2, 3, 2, True, False),
        ("completed", 2, 2, 2, False, True),
    ]
    documents = await client.collect(polls[-1])  # no next: nothing more is sent
    assert sorted(d["metadata"]["sourceURL"] for d in documents) == [
        "http://127.0.0.1:8000/page1.html",
        "http://127.0.0.1:8000/page2.html",
    ]


async def test_status_batch_f_every_page_failed(client_for: ClientFor) -> None:
    client = client_for(replay("045", "046", "047"))
    polls = [await client.status(BATCH_F) for _ in range(3)]
    assert [progress(p) for p in polls] == [
        ("scraping", 0, 2, 0, True, False),
        ("scraping", 0, 1, 0, True, False),
        ("completed", 0, 0, 0, False, True),
    ]
    assert await client.collect(polls[-1]) == []


@pytest.mark.parametrize("number", ["036", "037"])
async def test_status_of_an_empty_batch_is_completed_0_of_0(
    client_for: ClientFor, number: str
) -> None:
    batch_id = target_of(load(FC, number)).rsplit("/", 1)[1]
    done = await client_for(replay(number)).status(batch_id)
    assert progress(done) == ("completed", 0, 0, 0, False, True)


# --- Batch E: following next mid-flight returns the same documents again ---


async def test_collect_refuses_a_running_batch_and_follows_next_once_done(
    client_for: ClientFor,
) -> None:
    answers = replay("041", "043", "042")
    client = client_for(answers)
    running = await client.status(BATCH_E)
    assert progress(running) == ("scraping", 5, 7, 5, True, False)
    with pytest.raises(ValueError):
        await client.collect(running)
    assert len(answers.seen) == 1  # never follows next while scraping

    done = await client.status(BATCH_E)
    assert progress(done) == ("completed", 7, 7, 7, False, True)
    # 042 is what next (?skip=5) answered mid-flight: the same 5 documents, not the 2 after them.
    documents = await client.collect(dataclasses.replace(done, next=running.next))
    assert scrape_ids(documents) == scrape_ids(done.documents)
    assert set(scrape_ids(captured_json("042")["data"])) == set(scrape_ids(running.documents))
    assert answers.exhausted


# --- Batch G: DELETE after completion ---


async def test_cancel_after_completed_turns_the_batch_cancelled(client_for: ClientFor) -> None:
    client = client_for(replay("050", "051", "052"))
    done = await client.status(BATCH_G)
    assert await client.cancel(BATCH_G) == "cancelled"
    after = await client.status(BATCH_G)
    assert progress(done) == ("completed", 2, 2, 2, False, True)
    assert progress(after) == ("cancelled", 2, 2, 2, False, True)
    assert scrape_ids(after.documents) == scrape_ids(done.documents)


# --- Unknown ids ---


@pytest.mark.parametrize(
    ("number", "call"), [("020", "status"), ("021", "cancel"), ("022", "status"), ("023", "cancel")]
)
async def test_unknown_or_malformed_id_is_not_found(
    client_for: ClientFor, number: str, call: str
) -> None:
    client = client_for(replay(number))
    batch_id = target_of(load(FC, number)).rsplit("/", 1)[1]
    with pytest.raises(NotFound) as caught:
        await getattr(client, call)(batch_id)
    assert caught.value.reason == "not_found" and caught.value.status == 404
    assert "Job not found" in str(caught.value)


# --- Submit ---


@pytest.mark.parametrize(
    ("number", "invalid"),
    [
        ("002", ["not a url"]),
        ("011", []),
        ("026", []),
        ("030", ["not a url", "ftp://x.example.com/a"]),
        ("031", []),
        ("038", []),
        ("040", []),
        ("044", []),
        ("049", []),
    ],
)
async def test_submit_sends_the_captured_body_and_reads_the_answer(
    client_for: ClientFor, number: str, invalid: list[str]
) -> None:
    record = load(FC, number)
    options = dict(body_of(record))
    urls = options.pop("urls")
    answers = replay(number)  # checks the body we send is the one captured
    submitted = await client_for(answers).submit(urls, options, None)
    assert submitted.id == record["response"]["json"]["id"]
    assert submitted.invalid_urls == invalid
    assert answers.exhausted


@pytest.mark.parametrize(
    ("number", "said"),
    [
        ("001", "urls.6: Invalid url"),
        ("027", "urls: Required"),
        ("028", "BAD_REQUEST_INVALID_JSON Bad request, malformed JSON"),
        ("029", "Unrecognized key in body"),
    ],
)
async def test_submit_refused_is_rejected_with_the_details(
    client_for: ClientFor, number: str, said: str
) -> None:
    # 027 sent no urls and 028 broken JSON, which this client cannot: only their answers replay.
    client = client_for(replay(number, check=number == "001" or number == "029"))
    body = body_of(load(FC, number))
    options = dict(body) if isinstance(body, dict) else {}
    urls = options.pop("urls", [])
    with pytest.raises(Rejected) as caught:
        await client.submit(urls, options, None)
    assert caught.value.reason == "bad_request" and caught.value.status == 400
    assert said in str(caught.value)


async def test_submit_sends_bearer_key_flat_options_and_webhook(client_for: ClientFor) -> None:
    answer = {"success": True, "id": "b-1", "url": f"{LOCAL}/v2/batch/scrape/b-1"}
    handler, seen = recording(lambda r: httpx.Response(200, json=answer))
    webhook = {"url": "https://hooks.example/fc", "events": ["page", "completed"]}
    submitted = await client_for(handler).submit(
        ["https://a.example"], {"formats": ["markdown"], "ignoreInvalidURLs": True}, webhook
    )
    assert submitted.id == "b-1" and submitted.invalid_urls == []  # invalidURLs left out
    assert seen[0].url == f"{LOCAL}/v2/batch/scrape" and seen[0].method == "POST"
    assert seen[0].headers["authorization"] == f"Bearer {KEY}"
    assert orjson.loads(seen[0].content) == {
        "urls": ["https://a.example"],
        "formats": ["markdown"],
        "ignoreInvalidURLs": True,
        "webhook": webhook,
    }


async def test_submit_refuses_urls_or_webhook_among_options(client_for: ClientFor) -> None:
    client = client_for(lambda r: pytest.fail("submit sent a request"))
    with pytest.raises(ValueError):
        await client.submit(["https://a.example"], {"urls": ["https://b.example"]}, None)


# --- Error translation ---

_INSUFFICIENT = (
    "Insufficient credits to perform this request. For more credits, you can upgrade your plan"
)
_UNKNOWN = "An unexpected error occurred. Please contact help@firecrawl.com for help."


@pytest.mark.parametrize(
    ("response", "error", "reason"),
    [
        (
            httpx.Response(402, json={"success": False, "error": _INSUFFICIENT}),
            PaymentRequired,
            "payment_required",
        ),
        (httpx.Response(404, json={"success": False, "error": "Job expired"}), NotFound, "expired"),
        (response_of(load(FC, "024")), NotFound, "not_found"),  # Express's HTML 404
        (
            httpx.Response(401, json={"success": False, "error": "Unauthorized"}),
            Unauthorized,
            "unauthorized",
        ),
        (
            httpx.Response(403, json={"success": False, "error": "Forbidden"}),
            Unauthorized,
            "unauthorized",
        ),
        (
            httpx.Response(
                500, json={"success": False, "code": "UNKNOWN_ERROR", "error": _UNKNOWN}
            ),
            Unavailable,
            "unavailable",
        ),
        (httpx.Response(502, text="<html>Bad gateway</html>"), Unavailable, "unavailable"),
        (httpx.Response(503, text="busy"), Unavailable, "unavailable"),
        (
            httpx.Response(408, json={"success": False, "error": "timeout"}),
            Unavailable,
            "unavailable",
        ),
        (httpx.Response(422, json={"error": "nope"}), Rejected, "rejected"),
        (
            httpx.Response(302, headers={"Location": "https://elsewhere.example/"}),
            Rejected,
            "unexpected_redirect",
        ),
        (
            httpx.Response(200, json={"success": False, "error": "Internal"}),
            Unavailable,
            "unavailable",
        ),
        (
            httpx.Response(200, json={"success": False, "error": "Job not found"}),
            NotFound,
            "not_found",
        ),
        (
            httpx.Response(
                200, text="<!DOCTYPE html><p>login</p>", headers={"Content-Type": "text/html"}
            ),
            Unavailable,
            "unavailable",
        ),
        (httpx.Response(200, text="ok"), Rejected, "bad_answer"),
        (httpx.Response(200, json=[]), Rejected, "bad_answer"),
        (httpx.Response(200, json={"success": True, "status": "scraping"}), Rejected, "bad_answer"),
    ],
)
async def test_status_errors_are_translated(
    client_for: ClientFor, response: httpx.Response, error: type[ProviderError], reason: str
) -> None:
    with pytest.raises(error) as caught:
        await client_for(lambda r: response).status(BATCH_A)
    assert caught.value.reason == reason


async def test_payment_required_carries_firecrawl_words(client_for: ClientFor) -> None:
    client = client_for(
        lambda r: httpx.Response(402, json={"success": False, "error": _INSUFFICIENT})
    )
    with pytest.raises(PaymentRequired) as caught:
        await client.status(BATCH_A)
    assert "Insufficient credits" in str(caught.value) and caught.value.status == 402


@pytest.mark.parametrize(
    ("response", "wait"),
    [
        (
            httpx.Response(
                429,
                json={
                    "success": False,
                    "error": "Rate limit exceeded. Consumed (req/min): 26, Remaining (req/min): 0. "
                    "Upgrade your plan at https://firecrawl.dev/pricing for increased rate limits "
                    "or please retry after 12s, resets at Sun Nov 22 2026 14:20:00 GMT+0000",
                },
            ),
            12.0,
        ),
        (
            httpx.Response(
                429, headers={"Retry-After": "30"}, json={"success": False, "error": "Too many"}
            ),
            30.0,
        ),
        (httpx.Response(429, json={"success": False, "error": "Too many"}), None),
    ],
)
async def test_rate_limited_carries_retry_after(
    client_for: ClientFor, response: httpx.Response, wait: float | None
) -> None:
    with pytest.raises(RateLimited) as caught:
        await client_for(lambda r: response).status(BATCH_A)
    assert caught.value.retry_after == wait
    assert caught.value.reason == "rate_limited" and caught.value.status == 429


async def test_cancel_of_a_completed_batch_409_is_rejected(client_for: ClientFor) -> None:
    client = client_for(lambda r: httpx.Response(409, json={"error": "Crawl is already completed"}))
    with pytest.raises(Rejected) as caught:
        await client.cancel(BATCH_G)
    assert caught.value.reason == "already_completed"
    assert "Crawl is already completed" in str(caught.value)


@pytest.mark.parametrize(
    "failure",
    [httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("eof")],
)
async def test_network_errors_are_unavailable(client_for: ClientFor, failure: Exception) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise failure

    with pytest.raises(Unavailable):
        await client_for(fail).status(BATCH_A)


@pytest.mark.parametrize("bad", ["", ".", "..", "../x", "a/b", "x?skip=1", "x#y", "a\\b"])
async def test_unsafe_ids_are_refused_before_sending(client_for: ClientFor, bad: str) -> None:
    handler, seen = recording(lambda r: httpx.Response(200, json=captured_json("007")))
    client = client_for(handler)
    for call in (client.status, client.cancel):
        with pytest.raises(Rejected) as caught:
            await call(bad)
        assert caught.value.reason == "bad_id"
    assert seen == []


async def test_ids_are_quoted_into_the_path(client_for: ClientFor) -> None:
    handler, seen = recording(lambda r: httpx.Response(200, json=captured_json("007")))
    await client_for(handler).status("a b%")
    assert seen[0].url.raw_path == b"/v2/batch/scrape/a%20b%25"


# --- The errors route: the failed pages' URLs, codes and messages ---


def _errors_of(number: str) -> list[tuple[str, str | None, str]]:
    return [(e["url"], e["code"], e["error"]) for e in captured_json(number)["errors"]]


@pytest.mark.parametrize(
    ("number", "batch"), [("025", BATCH_B), ("035", BATCH_C), ("048", BATCH_F)]
)
async def test_errors_read_the_v2_crawl_route(
    client_for: ClientFor, number: str, batch: str
) -> None:
    answers = replay(number)  # GET /v2/crawl/{id}/errors, as the self-hosted build serves it
    errors = await client_for(answers).errors(batch)
    assert [(e.url, e.code, e.error) for e in errors] == _errors_of(number)
    assert answers.exhausted


async def test_errors_fall_back_to_v1_where_the_v2_route_is_absent(client_for: ClientFor) -> None:
    # A server without /v2/crawl/{id}/errors answers Express's HTML 404 (capture 024's page).
    absent, listed = response_of(load(FC, "024")), response_of(load(FC, "035"))

    def serve(request: httpx.Request) -> httpx.Response:
        return listed if request.url.path.startswith("/v1/") else absent

    handler, seen = recording(serve)
    errors = await client_for(handler).errors(BATCH_C)
    assert [(e.url, e.code, e.error) for e in errors] == _errors_of("035")
    assert [r.url.path for r in seen] == [
        f"/v2/crawl/{BATCH_C}/errors",
        f"/v1/batch/scrape/{BATCH_C}/errors",
    ]


async def test_errors_of_a_batch_neither_route_knows_is_not_found(client_for: ClientFor) -> None:
    handler, seen = recording(lambda r: response_of(load(FC, "024")))
    with pytest.raises(NotFound):
        await client_for(handler).errors(BATCH_C)
    assert len(seen) == 2


async def test_errors_list_robots_blocked_urls_and_skip_entries_without_url(
    client_for: ClientFor,
) -> None:
    answer = {
        "errors": [{"id": "e1", "url": "https://a.example/1", "error": "boom"}, {"id": "e2"}],
        "robotsBlocked": ["https://a.example/private"],
    }
    errors = await client_for(lambda r: httpx.Response(200, json=answer)).errors(BATCH_C)
    assert [(e.url, e.code, e.error) for e in errors] == [
        ("https://a.example/1", None, "boom"),
        ("https://a.example/private", "ROBOTS_BLOCKED", "blocked by the site's robots.txt"),
    ]


async def test_errors_answer_without_its_list_is_rejected(client_for: ClientFor) -> None:
    with pytest.raises(Rejected) as caught:
        await client_for(lambda r: httpx.Response(200, json={"success": True})).errors(BATCH_C)
    assert caught.value.reason == "bad_answer"
