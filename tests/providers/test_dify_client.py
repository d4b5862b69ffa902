from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from receiver.errors import (
    NotFound,
    ProviderError,
    RateLimited,
    Rejected,
    Unauthorized,
    Unavailable,
)
from receiver.providers.dify import (
    STAGES,
    DifyClient,
    DocumentStatus,
    raise_for_dify_status,
    summarize,
)
from tests.providers.captures import (
    CAPTURES,
    Record,
    Replay,
    load,
    load_path,
    response_of,
    target_of,
)
from tests.providers.conftest import Handler, MockHttp

pytestmark = pytest.mark.anyio

DIFY = "dify"
KEY = "dataset-test-key"
LOCAL = "http://127.0.0.1:5001/v1"  # the captured server's API base
DATASET = "96cc60c5-782e-419e-aa36-655f0742d733"
PDF_ERROR = "Failed to load document (PDFium: Data format error)."

ClientFor = Callable[[Handler], DifyClient]

# Every poll timeline captured, with the batch state each of its saved polls implies.
TIMELINES = {
    "014": ["running"] * 5 + ["completed"],  # small: completed 1/1 only after indexing 1/1
    "023": ["running"] * 6 + ["completed"],  # big: total_segments grows while splitting
    "026": ["failed"],  # corrupt PDF
    "032": ["running"] * 3 + ["completed"],  # file .md
    "051": ["running"] * 4,  # paused while splitting: total keeps growing
    "055": ["running"] * 3,  # multi: completed + error + paused is not the end
    "061": ["running", "running", "failed"],  # multi after resume: order changes
    "070": ["running"] * 6 + ["completed"],  # bigX after resume: total goes 3000 -> 10
    "083": ["running"] * 2,  # re-submitted bigX paused with stale 3000/3000
    "085": ["running"],
    "091": ["running", "running", "failed"],
    "100": ["running"] * 6 + ["completed"],
    "122": ["running", "running", "completed"],  # empty text: completed 0/0
    "127": ["running", "running", "completed"],  # whitespace: completed 0/0
}


def where(record: Record) -> tuple[str, str]:
    """(dataset_id, batch) of a captured indexing-status request."""
    parts = target_of(record).split("/")  # /v1/datasets/{dataset}/documents/{batch}/indexing-status
    return parts[3], parts[5]


def timeline(number: str) -> list[dict[str, Any]]:
    polls: list[dict[str, Any]] = load(DIFY, number)["polls"]
    return polls


def saved_polls(number: str) -> list[tuple[dict[str, Any], Record]]:
    """The timeline's polls that were captured in full, with their records, in order."""
    return [
        (p, load_path(CAPTURES / DIFY / p["saved"])) for p in timeline(number) if p.get("saved")
    ]


def from_timeline(doc: dict[str, Any]) -> DocumentStatus:
    """A document as a timeline entry summarises it (id prefix, status, segments, error)."""
    done, total = (int(n) for n in doc["seg"].split("/"))
    return DocumentStatus(
        doc["id"], doc["status"], doc["error"], done, total, None, None, None, None
    )


def by_prefix(docs: list[DocumentStatus], prefix: str) -> DocumentStatus:
    [found] = [d for d in docs if d.id.startswith(prefix)]
    return found


def recording(handler: Handler) -> tuple[Handler, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    return record, seen


def answer(*docs: dict[str, Any]) -> Handler:
    return lambda r: httpx.Response(200, json={"data": list(docs)})


def item(doc_id: str, status: str, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": doc_id,
        "indexing_status": status,
        "processing_started_at": None,
        "parsing_completed_at": None,
        "cleaning_completed_at": None,
        "splitting_completed_at": None,
        "completed_at": None,
        "paused_at": None,
        "error": None,
        "stopped_at": None,
        "completed_segments": 0,
        "total_segments": 0,
    }
    return {**base, **fields}


@pytest.fixture
def client_for(mock_http: MockHttp) -> ClientFor:
    """A factory of clients of the captured server's API base, answered by a handler."""
    return lambda handler: DifyClient(mock_http(handler), LOCAL, KEY)


# --- Poll timelines replayed ---


def test_every_captured_timeline_is_replayed() -> None:
    captured = {p.name[:3] for p in (CAPTURES / DIFY).glob("*_timeline.json")}
    assert captured == set(TIMELINES)


@pytest.mark.parametrize("number", sorted(TIMELINES))
async def test_timeline_replayed_through_indexing_status_and_summarize(
    client_for: ClientFor, number: str
) -> None:
    steps = saved_polls(number)
    answers = Replay(record for _, record in steps)
    client = client_for(answers)
    states = []
    for poll, record in steps:
        docs = await client.indexing_status(*where(record))
        expected = [from_timeline(d) for d in poll["docs"]]
        for want in expected:  # by id, never by position
            got = by_prefix(docs, want.id)
            assert (got.indexing_status, got.error) == (want.indexing_status, want.error)
            assert (got.completed_segments, got.total_segments) == (
                want.completed_segments,
                want.total_segments,
            )
        summary = summarize(docs)
        assert summary.documents == len(expected)
        assert summary.segments_completed == sum(d.completed_segments for d in expected)
        assert summary.segments_total == sum(d.total_segments for d in expected)
        assert summary.paused == sum(d.indexing_status == "paused" for d in expected)
        assert {k[:8] for k in summary.errors} == {
            d.id for d in expected if d.indexing_status == "error"
        }
        states.append(summary.state)
    assert states == TIMELINES[number]
    assert answers.exhausted
    assert {r.headers["authorization"] for r in answers.seen} == {f"Bearer {KEY}"}


@pytest.mark.parametrize("number", sorted(TIMELINES))
def test_summarize_every_poll_of_a_timeline(number: str) -> None:
    # Polling stopped at the first terminal answer: every earlier poll is still running.
    states = [summarize([from_timeline(d) for d in p["docs"]]).state for p in timeline(number)]
    final = TIMELINES[number][-1]
    assert states == ["running"] * (len(states) - 1) + [final]


async def test_small_document_step_by_step(client_for: ClientFor) -> None:
    steps = saved_polls("014")
    client = client_for(Replay(record for _, record in steps))
    seen = []
    for _, record in steps:
        [doc] = await client.indexing_status(*where(record))
        seen.append((doc.indexing_status, doc.completed_segments, doc.total_segments))
    assert seen == [
        ("waiting", 0, 0),
        ("parsing", 0, 0),
        ("splitting", 0, 0),
        ("indexing", 0, 1),
        ("indexing", 1, 1),  # completed == total, still indexing
        ("completed", 1, 1),
    ]
    assert doc.completed_at is not None and doc.processing_started_at is not None


async def test_corrupt_pdf_is_a_failed_batch_with_dify_message(client_for: ClientFor) -> None:
    record = load(DIFY, "025")
    [doc] = await client_for(Replay([record])).indexing_status(*where(record))
    summary = summarize([doc])
    assert summary.state == "failed" and summary.failed_documents == 1
    assert summary.errors == {doc.id: PDF_ERROR}
    assert doc.stopped_at is not None and doc.completed_at is None


async def test_progress_goes_down_after_a_resume(client_for: ClientFor) -> None:
    records = [load(DIFY, n) for n in ("063", "064", "065", "069")]
    client = client_for(Replay(records))
    totals = [summarize(await client.indexing_status(*where(r))).segments_total for r in records]
    assert totals == [3000, 10, 68, 3000]


async def test_documents_are_matched_by_id_when_order_changes(client_for: ClientFor) -> None:
    before, after = load(DIFY, "054"), load(DIFY, "058")
    client = client_for(Replay([before, after]))
    first = await client.indexing_status(*where(before))
    second = await client.indexing_status(*where(after))
    assert [d.id for d in first] != [d.id for d in second]
    assert {d.id for d in first} == {d.id for d in second}
    was = {d.id: d.indexing_status for d in first}
    now = {d.id: d.indexing_status for d in second}
    assert was == {
        "2cf3b66d-d30e-4612-b83b-57549817e6ac": "completed",
        "87378134-bf1d-4531-8192-90cf94c418b9": "error",
        "b7eb8941-00be-4e6f-a881-f3018d8dc095": "paused",
    }
    assert now == {**was, "b7eb8941-00be-4e6f-a881-f3018d8dc095": "splitting"}


@pytest.mark.parametrize(
    ("number", "state", "documents", "terminal", "paused"),
    [
        ("035", "completed", 1, 1, 0),
        ("036", "completed", 1, 1, 0),
        ("042", "running", 3, 0, 0),
        ("044", "running", 3, 0, 1),  # paused is a hold, not an end
        ("045", "running", 1, 0, 0),
        ("076", "running", 3, 0, 0),  # re-submitted: stale counts and error while waiting
        ("078", "running", 3, 0, 1),
        ("079", "running", 1, 0, 0),  # waiting with a stale 3000/3000
        ("112", "completed", 1, 1, 0),
        ("129", "completed", 1, 1, 0),
        ("141", "completed", 1, 1, 0),
        ("143", "completed", 1, 1, 0),
        ("145", "completed", 1, 1, 0),
    ],
)
async def test_single_polls_summarized(
    client_for: ClientFor, number: str, state: str, documents: int, terminal: int, paused: int
) -> None:
    record = load(DIFY, number)
    summary = summarize(await client_for(Replay([record])).indexing_status(*where(record)))
    assert (summary.state, summary.documents, summary.terminal, summary.paused) == (
        state,
        documents,
        terminal,
        paused,
    )


async def test_stale_error_of_a_waiting_document_is_not_a_failure(client_for: ClientFor) -> None:
    record = load(DIFY, "076")
    docs = await client_for(Replay([record])).indexing_status(*where(record))
    stale = by_prefix(docs, "87378134")
    assert stale.indexing_status == "waiting" and stale.error == PDF_ERROR
    summary = summarize(docs)
    assert summary.failed_documents == 0 and summary.errors == {}


# --- Errors captured from the real server ---


@pytest.mark.parametrize(
    ("number", "error", "reason", "said"),
    [
        ("101", NotFound, "documents_not_found", "Documents not found."),  # unknown batch
        ("102", NotFound, "documents_not_found", "Documents not found."),  # non-numeric batch
        ("103", NotFound, "documents_not_found", "Documents not found."),  # superseded batch
        ("104", NotFound, "dataset_not_found", "Dataset not found."),
        ("105", NotFound, "not_found", "Not Found"),  # dataset id not a UUID: HTML page
        ("106", Unauthorized, "unauthorized", "Access token is invalid"),
        ("107", Unauthorized, "unauthorized", "Authorization header must be provided"),
        ("108", Unauthorized, "unauthorized", "Authorization scheme must be 'Bearer'"),
        ("110", Unauthorized, "forbidden", "Dataset api access is not enabled."),
        ("131", NotFound, "documents_not_found", "Documents not found."),  # document deleted
        ("134", NotFound, "documents_not_found", "Documents not found."),  # other dataset's batch
        ("136", NotFound, "dataset_not_found", "Dataset not found."),  # dataset deleted
    ],
)
async def test_captured_errors_are_translated(
    client_for: ClientFor, number: str, error: type[ProviderError], reason: str, said: str
) -> None:
    record = load(DIFY, number)
    with pytest.raises(error) as caught:
        await client_for(Replay([record])).indexing_status(*where(record))
    assert caught.value.reason == reason
    assert caught.value.status == record["response"]["status"]
    assert said in str(caught.value)


async def test_the_html_404_of_a_non_uuid_dataset_id_is_one_line(client_for: ClientFor) -> None:
    """Flask's several-line page would break the jobs table as the job's error."""
    record = load(DIFY, "105")
    assert record["response"]["text"].count("\n") >= 4  # the page as captured
    with pytest.raises(NotFound) as caught:
        await client_for(Replay([record])).indexing_status(*where(record))
    assert str(caught.value) == "dify answered 404: 404 Not Found"


@pytest.mark.parametrize(
    ("number", "error", "reason"),
    [
        ("113", Rejected, "invalid_param"),
        ("114", Rejected, "invalid_param"),
        ("115", Rejected, "invalid_param"),
        ("116", NotFound, "dataset_not_found"),  # "Dataset not found. You have requested ..."
        ("117", Unauthorized, "unauthorized"),
    ],
)
def test_captured_create_errors_are_translated(
    number: str, error: type[ProviderError], reason: str
) -> None:
    with pytest.raises(error) as caught:
        raise_for_dify_status(response_of(load(DIFY, number)))
    assert caught.value.reason == reason


# --- Errors the captures do not hold ---

_RATE_LIMIT = "Sorry, you have reached the knowledge base request rate limit of your subscription."


@pytest.mark.parametrize(
    ("response", "error", "reason"),
    [
        (
            httpx.Response(403, json={"code": "forbidden", "message": _RATE_LIMIT, "status": 403}),
            RateLimited,
            "rate_limited",
        ),
        (
            httpx.Response(
                429, json={"code": "too_many_requests", "message": "slow", "status": 429}
            ),
            RateLimited,
            "rate_limited",
        ),
        (
            httpx.Response(400, json={"code": "invalid_param", "message": "x", "status": 400}),
            Rejected,
            "invalid_param",
        ),
        (
            httpx.Response(500, json={"code": "internal", "message": "boom"}),
            Unavailable,
            "unavailable",
        ),
        (httpx.Response(502, text="<html>Bad Gateway</html>"), Unavailable, "unavailable"),
        (httpx.Response(200, text="<!doctype html><p>sign in</p>"), Unavailable, "unavailable"),
        (httpx.Response(200, text="ok"), Rejected, "bad_answer"),
        (httpx.Response(200, json={"data": {}}), Rejected, "bad_answer"),
        (
            httpx.Response(200, json={"data": [{"indexing_status": "waiting"}]}),
            Rejected,
            "bad_answer",
        ),
        (httpx.Response(200, json={"data": ["x"]}), Rejected, "bad_answer"),
        (httpx.Response(301, headers={"Location": "/elsewhere"}), Rejected, "unexpected_redirect"),
    ],
)
async def test_errors_are_translated(
    client_for: ClientFor, response: httpx.Response, error: type[ProviderError], reason: str
) -> None:
    with pytest.raises(error) as caught:
        await client_for(lambda r: response).indexing_status(DATASET, "20261122142935277307")
    assert caught.value.reason == reason


async def test_rate_limit_403_is_retried_not_fatal(client_for: ClientFor) -> None:
    response = httpx.Response(
        403, json={"code": "forbidden", "message": _RATE_LIMIT, "status": 403}
    )
    with pytest.raises(RateLimited) as caught:
        await client_for(lambda r: response).indexing_status(DATASET, "1")
    assert caught.value.status == 403 and caught.value.retry_after is None


async def test_429_carries_retry_after(client_for: ClientFor) -> None:
    response = httpx.Response(429, headers={"Retry-After": "5"}, json={"message": "slow"})
    with pytest.raises(RateLimited) as caught:
        await client_for(lambda r: response).indexing_status(DATASET, "1")
    assert caught.value.retry_after == 5.0


@pytest.mark.parametrize("failure", [httpx.ConnectError("refused"), httpx.ReadTimeout("slow")])
async def test_network_errors_are_unavailable(client_for: ClientFor, failure: Exception) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise failure

    with pytest.raises(Unavailable):
        await client_for(fail).indexing_status(DATASET, "1")


@pytest.mark.parametrize(
    ("dataset_id", "batch"),
    [
        ("..", "1"),
        (".", "1"),
        ("a/b", "1"),
        (DATASET, "../../datasets"),
        (DATASET, "1?x=y"),
        (DATASET, "1#frag"),
        (DATASET, ""),
        ("", "1"),
        (DATASET, "a\\b"),
    ],
)
async def test_unsafe_ids_are_refused_before_sending(
    client_for: ClientFor, dataset_id: str, batch: str
) -> None:
    handler, seen = recording(answer())
    with pytest.raises(Rejected) as caught:
        await client_for(handler).indexing_status(dataset_id, batch)
    assert caught.value.reason == "bad_id"
    assert seen == []


async def test_request_goes_under_the_base_path_with_ids_quoted(client_for: ClientFor) -> None:
    handler, seen = recording(answer())
    await client_for(handler).indexing_status("a b", "20261122142935277307")
    assert (
        seen[0].url.raw_path == b"/v1/datasets/a%20b/documents/20261122142935277307/indexing-status"
    )
    assert seen[0].headers["authorization"] == f"Bearer {KEY}"


# --- Parsing and summarize on their own ---


async def test_float_timestamps_are_read_as_ints(client_for: ClientFor) -> None:
    doc = item("d1", "completed", processing_started_at=1795357879.5, completed_at=1795357880.0)
    [got] = await client_for(answer(doc)).indexing_status(DATASET, "1")
    assert (got.processing_started_at, got.completed_at, got.paused_at) == (
        1795357879,
        1795357880,
        None,
    )


def test_summarize_empty_batch_is_running() -> None:
    summary = summarize([])
    assert summary.state == "running" and summary.documents == 0 and summary.errors == {}


@pytest.mark.parametrize("status", ["cleaning", "re_segment", "archived", "waiting", "indexing"])
def test_summarize_unknown_or_unfinished_status_is_running(status: str) -> None:
    done = DocumentStatus("a", "completed", None, 1, 1, 1, 2, None, None)
    other = DocumentStatus("b", status, None, 0, 0, None, None, None, None)
    summary = summarize([done, other])
    assert summary.state == "running" and summary.terminal == 1


def test_summarize_all_completed_and_error_without_message() -> None:
    done = DocumentStatus("a", "completed", None, 2, 2, 1, 2, None, None)
    assert summarize([done, done]).state == "completed"
    failed = DocumentStatus("b", "error", None, 0, 0, 1, None, None, 3)
    summary = summarize([done, failed])
    assert summary.state == "failed" and summary.errors == {"b": "indexing failed"}
    assert (summary.completed_documents, summary.failed_documents, summary.terminal) == (1, 1, 2)


@pytest.mark.parametrize("number", sorted(TIMELINES))
def test_summarize_counts_each_document_stage(number: str) -> None:
    for poll in timeline(number):
        docs = [from_timeline(d) for d in poll["docs"]]
        summary = summarize(docs)
        want: dict[str, int] = {}
        for doc in docs:
            want[doc.indexing_status] = want.get(doc.indexing_status, 0) + 1
        assert summary.stages == want
        assert list(summary.stages) == [s for s in STAGES if s in want]  # in stage order
        # Until the batch ends, some document moves or is paused: it may move any moment.
        assert summary.busy == (summary.state == "running")


def test_summarize_stages_keep_an_unknown_status_after_the_known_ones() -> None:
    docs = [
        DocumentStatus("a", "re_segment", None, 0, 0, None, None, None, None),
        DocumentStatus("b", "completed", None, 1, 1, 1, 2, None, None),
        DocumentStatus("c", "indexing", None, 0, 3, 1, None, None, None),
        DocumentStatus("d", "indexing", None, 1, 3, 1, None, None, None),
    ]
    summary = summarize(docs)
    assert list(summary.stages.items()) == [("indexing", 2), ("completed", 1), ("re_segment", 1)]
    assert (summary.moving, summary.busy) == (2, True)


@pytest.mark.parametrize(
    ("statuses", "busy"),
    [
        ([], False),  # an empty batch: nothing is expected to move
        (["re_segment"], False),  # a status Dify does not move on its own, as far as we know
        (["paused"], True),  # a resume may come any moment
        (["paused", "completed"], True),
        (["waiting"], True),
        (["cleaning"], True),
        (["splitting", "error"], True),
        (["completed", "error"], False),  # ended
    ],
)
def test_summarize_busy_while_a_document_moves_or_is_paused(
    statuses: list[str], busy: bool
) -> None:
    docs = [
        DocumentStatus(str(i), status, None, 0, 0, None, None, None, None)
        for i, status in enumerate(statuses)
    ]
    assert summarize(docs).busy is busy
