"""The Dify knowledge API sandbox, run on loopback and held to the seed and the captures.

Every indexing-status answer goes through `check_indexing_status`: a 200 is validated against
the seed's OpenAPI schema (tests/data/dify_indexing_status.yaml), an error against Dify's error
envelope, and error bodies are compared with what a real Dify 1.13.3 answered
(tests/data/captures/dify).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from jsonschema import FormatChecker
from openapi_schema_validator import OAS30Validator, oas30_format_checker

from receiver.sandbox.common import Clock
from receiver.sandbox.dify import DifySandboxConfig, create_app
from tests.data import DATA
from tests.servers import free_port, serve_app, wait_for_port

SEED = DATA / "dify_indexing_status.yaml"  # the seed's ````yaml fence
CAPTURES = DATA / "captures" / "dify"
KEY = "dataset-sandbox"
AUTH = {"Authorization": f"Bearer {KEY}"}
T0 = 1795357775.0  # the sandbox clock starts here (the captures' own time) and moves on demand
FAILURE = "Failed to load document (PDFium: Data format error)."
TERMINAL = {"completed", "error"}
# The seed omits `nullable` on these four, yet a real server answers null before the step
# (capture 008, a waiting document): the one relaxation of the seed's schema.
OBSERVED_NULLABLE = (
    "processing_started_at",
    "parsing_completed_at",
    "cleaning_completed_at",
    "splitting_completed_at",
)
# Dify's error envelope (PROVIDERS.md section 3, "Errors"); the seed has no error schema.
ERROR_SCHEMA = {
    "type": "object",
    "required": ["code", "message", "status"],
    "additionalProperties": False,
    "properties": {
        "code": {"type": "string"},
        "message": {"type": "string"},
        "status": {"type": "integer"},
    },
}


# --- the seed's schema and the captures -----------------------------------------------------


def format_checker() -> FormatChecker:
    """OpenAPI 3.0 formats plus `uuid`, which the seed puts on `id`."""
    checker = FormatChecker()
    checker.checkers.update(oas30_format_checker.checkers)
    return checker


def seed_operation() -> dict[str, Any]:
    """The operation as the seed's doc page renders it (paths, response, components)."""
    operation: dict[str, Any] = yaml.safe_load(SEED.read_text(encoding="utf-8"))
    return operation


@functools.cache
def seed_validators() -> dict[int, OAS30Validator]:
    """One validator per status code the seed documents, `#/components/...` refs resolved.

    Besides OBSERVED_NULLABLE, every field is required and no other is allowed, as in every
    capture, so that a field the sandbox drops or adds fails.
    """
    operation = seed_operation()
    components = copy.deepcopy(operation["components"])
    item = components["schemas"]["IndexingStatus"]
    for name in OBSERVED_NULLABLE:
        item["properties"][name]["nullable"] = True
    item["required"] = sorted(item["properties"])
    item["additionalProperties"] = False
    validators = {}
    for status, media in operation["paths"]["response"].items():
        schema = media["application/json"]["schemaArray"][0]
        root = {**schema, "required": ["data"], "components": components}
        validators[int(status)] = OAS30Validator(root, format_checker=format_checker())
    return validators


@functools.cache
def capture(number: int) -> dict[str, Any]:
    (path,) = CAPTURES.glob(f"{number:03d}_*.json")
    record: dict[str, Any] = orjson.loads(path.read_bytes())
    return record


def captured_body(number: int) -> Any:
    return capture(number)["response"]["json"]


def check_indexing_status(response: httpx.Response) -> None:
    """Fail on any drift of an indexing-status answer from the seed or the captures."""
    validator = seed_validators().get(response.status_code)
    if validator is not None:
        assert response.headers["content-type"] == "application/json"
        validator.validate(response.json())
        return
    if response.headers["content-type"].startswith("text/html"):
        assert response.status_code == 404
        assert response.text == capture(105)["response"]["text"]
        return
    body = response.json()
    OAS30Validator(ERROR_SCHEMA).validate(body)
    assert body["status"] == response.status_code


# --- a sandbox on loopback ------------------------------------------------------------------


@dataclass
class Sandbox:
    client: httpx.AsyncClient
    clock: Clock
    config: DifySandboxConfig

    async def create_dataset(self, name: str = "golden-economy") -> str:
        response = await self.client.post("/v1/datasets", json={"name": name})
        assert response.status_code == 200
        dataset_id: str = response.json()["id"]
        return dataset_id

    async def create_text(self, dataset_id: str, name: str, text: str = "Some text.") -> Any:
        body = {"name": name, "text": text, "indexing_technique": "economy"}
        response = await self.client.post(
            f"/v1/datasets/{dataset_id}/document/create-by-text", json=body
        )
        assert response.status_code == 200
        return response.json()

    async def create_batch(self, dataset_id: str, documents: list[dict[str, Any]]) -> Any:
        path = f"/_sandbox/datasets/{dataset_id}/batches"
        response = await self.client.post(path, json={"documents": documents})
        assert response.status_code == 200
        return response.json()

    async def poll(self, dataset_id: str, batch: str, **headers: str) -> httpx.Response:
        path = f"/v1/datasets/{dataset_id}/documents/{batch}/indexing-status"
        response = await self.client.get(path, headers=headers)
        check_indexing_status(response)
        return response

    async def items(self, dataset_id: str, batch: str) -> list[dict[str, Any]]:
        response = await self.poll(dataset_id, batch)
        assert response.status_code == 200
        items: list[dict[str, Any]] = response.json()["data"]
        return items

    async def walk(self, dataset_id: str, batch: str, tick: float) -> list[dict[str, Any]]:
        """Poll every `tick` clock seconds until each document ends; the single items seen."""
        seen = []
        for _ in range(10_000):
            items = await self.items(dataset_id, batch)
            seen.append(items[0])
            if all(item["indexing_status"] in TERMINAL for item in items):
                return seen
            self.clock.advance(tick)
        raise AssertionError("the batch never finished")

    async def configure(self, **knobs: Any) -> None:
        response = await self.client.patch("/_sandbox/config", json=knobs)
        assert response.status_code == 200


@contextlib.asynccontextmanager
async def open_sandbox(**knobs: Any) -> AsyncIterator[Sandbox]:
    """A real sandbox with a clock that moves only when told, and a client with the key."""
    config = DifySandboxConfig(**{"seed": 3, "jitter_seconds": 0.0, **knobs})
    clock = Clock(base=lambda: T0)
    with serve_app(create_app(config, clock)) as base_url:
        async with httpx.AsyncClient(base_url=base_url, headers=AUTH, timeout=10) as client:
            yield Sandbox(client, clock, config)


def statuses(seen: list[dict[str, Any]]) -> list[str]:
    """The indexing_status values in order, repeats dropped."""
    walk: list[str] = []
    for item in seen:
        if not walk or walk[-1] != item["indexing_status"]:
            walk.append(item["indexing_status"])
    return walk


def counts(seen: list[dict[str, Any]], status: str) -> list[tuple[int, int]]:
    return [
        (item["completed_segments"], item["total_segments"])
        for item in seen
        if item["indexing_status"] == status
    ]


# --- the contract helpers themselves --------------------------------------------------------


def test_seed_schema_accepts_every_status_answer_captured_from_real_dify() -> None:
    checked = 0
    for path in sorted(CAPTURES.glob("*.json")):
        record = orjson.loads(path.read_bytes())
        request = record.get("request", {})
        if request.get("path", "").endswith("/indexing-status"):
            response = record["response"]
            status, body = response["status"], response["json"]
            if status == 200:
                seed_validators()[200].validate(body)
            elif body is not None:
                OAS30Validator(ERROR_SCHEMA).validate(body)
            checked += 1
    assert checked > 60


@pytest.mark.parametrize(
    "drift",
    [
        {"id": "not-a-uuid"},
        {"total_segments": 1.5},
        {"completed_at": "2026-11-22T14:29:37Z"},
        {"extra": 1},
        {"total_segments": None},
    ],
)
def test_seed_schema_rejects_a_drifted_item(drift: dict[str, Any]) -> None:
    item = {**captured_body(13)["data"][0], **drift}
    if drift == {"total_segments": None}:
        del item["total_segments"]  # a missing field
    assert not seed_validators()[200].is_valid({"data": [item]})


# --- the status walk ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_status_walks_every_step_with_growing_segments() -> None:
    async with open_sandbox(step_seconds=1.0, segments=10, economy=False) as sandbox:
        dataset_id = await sandbox.create_dataset()
        batch = (await sandbox.create_text(dataset_id, "small.txt"))["batch"]
        seen = await sandbox.walk(dataset_id, batch, tick=0.05)

    assert statuses(seen) == ["waiting", "parsing", "splitting", "indexing", "completed"]
    totals = [item["total_segments"] for item in seen]
    assert totals == sorted(totals)
    assert any(0 < total < 10 for _, total in counts(seen, "splitting"))
    indexing = counts(seen, "indexing")
    assert {total for _, total in indexing} == {10}
    assert any(0 < done < 10 for done, _ in indexing)
    assert (10, 10) in indexing  # all segments done while the status still says indexing
    assert seen[0] == dict(captured_body(8)["data"][0], id=seen[0]["id"])  # waiting, all null
    last = seen[-1]
    assert (last["completed_segments"], last["total_segments"]) == (10, 10)
    stamps = [last[name] for name in (*OBSERVED_NULLABLE, "completed_at")]
    assert stamps == [T0 + 1, T0 + 2, T0 + 3, T0 + 3, T0 + 4]
    assert all(type(stamp) is int for stamp in stamps)
    assert (last["paused_at"], last["error"], last["stopped_at"]) == (None, None, None)


@pytest.mark.anyio
async def test_status_under_economy_keeps_completed_segments_at_zero_until_completed() -> None:
    async with open_sandbox(step_seconds=1.0, segments=3000, economy=True) as sandbox:
        dataset_id = await sandbox.create_dataset()
        batch = (await sandbox.create_text(dataset_id, "big.txt"))["batch"]
        seen = await sandbox.walk(dataset_id, batch, tick=0.1)

    # As the real big document did (captures 016-022): 0/N growing, 0/3000, then 3000/3000.
    real = {n: captured_body(n)["data"][0] for n in (21, 22)}
    indexing, completed = (
        (real[n]["completed_segments"], real[n]["total_segments"]) for n in (21, 22)
    )
    assert {done for done, _ in counts(seen, "splitting")} == {0}
    assert len(counts(seen, "indexing")) > 5
    assert set(counts(seen, "indexing")) == {indexing} == {(0, 3000)}
    assert counts(seen, "completed") == [completed] == [(3000, 3000)]


@pytest.mark.anyio
async def test_status_shows_cleaning_only_when_asked() -> None:
    async with open_sandbox(step_seconds=1.0, emit_cleaning=True) as sandbox:
        dataset_id = await sandbox.create_dataset()
        batch = (await sandbox.create_text(dataset_id, "small.txt"))["batch"]
        seen = await sandbox.walk(dataset_id, batch, tick=0.25)

    walk = ["waiting", "parsing", "cleaning", "splitting", "indexing", "completed"]
    assert statuses(seen) == walk
    assert seen[-1]["cleaning_completed_at"] == T0 + 3
    assert seen[-1]["splitting_completed_at"] == T0 + 4


@pytest.mark.anyio
async def test_status_reports_the_failing_document_of_a_batch() -> None:
    documents = [
        {"name": "good1.txt", "segments": 2},
        {"name": "broken2.pdf", "fail": True},
        {"name": "good3.txt", "segments": 7},
    ]
    async with open_sandbox() as sandbox:
        dataset_id = await sandbox.create_dataset()
        created = await sandbox.create_batch(dataset_id, documents)
        assert [d["name"] for d in created["documents"]] == [d["name"] for d in documents]
        sandbox.clock.advance(60)
        items = await sandbox.items(dataset_id, created["batch"])

    by_id = {item["id"]: item for item in items}
    good1, broken, good3 = (by_id[d["id"]] for d in created["documents"])
    assert (good1["indexing_status"], good1["total_segments"]) == ("completed", 2)
    assert (good3["indexing_status"], good3["total_segments"]) == ("completed", 7)
    real = captured_body(25)["data"][0]
    for name in ("indexing_status", "error", "parsing_completed_at", "completed_at"):
        assert broken[name] == real[name]
    assert (broken["completed_segments"], broken["total_segments"]) == (0, 0)
    assert broken["processing_started_at"] is not None
    assert broken["stopped_at"] is not None


@pytest.mark.anyio
async def test_error_rate_of_one_fails_every_document() -> None:
    async with open_sandbox(error_rate=1.0) as sandbox:
        dataset_id = await sandbox.create_dataset()
        batch = (await sandbox.create_text(dataset_id, "doc.txt"))["batch"]
        seen = await sandbox.walk(dataset_id, batch, tick=0.1)

    assert statuses(seen) == ["waiting", "parsing", "error"]
    assert seen[-1]["error"] == FAILURE


@pytest.mark.anyio
async def test_empty_and_blank_text_complete_with_no_segments() -> None:
    async with open_sandbox() as sandbox:
        dataset_id = await sandbox.create_dataset()
        for name, text in (("empty.txt", ""), ("blank.txt", " \n\t ")):
            batch = (await sandbox.create_text(dataset_id, name, text))["batch"]
            seen = await sandbox.walk(dataset_id, batch, tick=0.05)
            assert statuses(seen)[-1] == "completed"
            assert {item["total_segments"] for item in seen} == {0}
            assert seen[-1]["completed_segments"] == 0


@pytest.mark.anyio
async def test_data_order_changes_between_polls_unless_disabled() -> None:
    documents = [{"name": f"doc{i}.txt"} for i in range(6)]
    async with open_sandbox() as sandbox:
        dataset_id = await sandbox.create_dataset()
        batch = (await sandbox.create_batch(dataset_id, documents))["batch"]
        orders = {tuple(i["id"] for i in await sandbox.items(dataset_id, batch)) for _ in range(8)}
        assert len(orders) > 1
        await sandbox.configure(shuffle=False)
        orders = {tuple(i["id"] for i in await sandbox.items(dataset_id, batch)) for _ in range(8)}
        assert len(orders) == 1


@pytest.mark.anyio
async def test_stall_keeps_documents_in_their_step() -> None:
    async with open_sandbox(step_seconds=1.0, segments=10) as sandbox:
        dataset_id = await sandbox.create_dataset()
        batch = (await sandbox.create_text(dataset_id, "doc.txt"))["batch"]
        sandbox.clock.advance(2.5)
        before = (await sandbox.items(dataset_id, batch))[0]
        await sandbox.configure(stall=True)
        await sandbox.items(dataset_id, batch)
        sandbox.clock.advance(100)
        stalled = (await sandbox.items(dataset_id, batch))[0]
        await sandbox.configure(stall=False)
        await sandbox.items(dataset_id, batch)
        seen = await sandbox.walk(dataset_id, batch, tick=0.25)

    assert stalled == before
    assert (before["indexing_status"], before["total_segments"]) == ("splitting", 5)
    assert statuses(seen) == ["splitting", "indexing", "completed"]
    assert seen[-1]["completed_at"] == T0 + 104  # four steps plus the 100 stalled seconds


# --- pause and resume -----------------------------------------------------------------------


def processing(dataset_id: str, document_id: str, action: str) -> str:
    return f"/console/api/datasets/{dataset_id}/documents/{document_id}/processing/{action}"


@pytest.mark.anyio
async def test_pause_freezes_a_document_and_resume_continues() -> None:
    async with open_sandbox(step_seconds=1.0) as sandbox:
        dataset_id = await sandbox.create_dataset()
        created = await sandbox.create_text(dataset_id, "doc.txt")
        document_id, batch = created["document"]["id"], created["batch"]
        sandbox.clock.advance(1.5)
        paused = await sandbox.client.patch(processing(dataset_id, document_id, "pause"))
        assert (paused.status_code, paused.content) == (204, b"")
        sandbox.clock.advance(30)
        held = (await sandbox.items(dataset_id, batch))[0]
        resumed = await sandbox.client.patch(processing(dataset_id, document_id, "resume"))
        assert resumed.status_code == 204
        seen = await sandbox.walk(dataset_id, batch, tick=0.25)

    assert (held["indexing_status"], held["paused_at"]) == ("paused", int(T0 + 1.5))
    assert held["parsing_completed_at"] is None  # paused while parsing: no progress since
    assert statuses(seen) == ["parsing", "splitting", "indexing", "completed"]
    assert {item["paused_at"] for item in seen} == {None}
    assert seen[-1]["parsing_completed_at"] == T0 + 32  # 0.5 s of parsing left after resume


@pytest.mark.anyio
@pytest.mark.parametrize("resplits", [True, False])
async def test_resume_after_a_pause_while_splitting(resplits: bool) -> None:
    async with open_sandbox(step_seconds=1.0, segments=100, resume_resplits=resplits) as sandbox:
        dataset_id = await sandbox.create_dataset()
        created = await sandbox.create_text(dataset_id, "bigX.txt")
        document_id, batch = created["document"]["id"], created["batch"]
        sandbox.clock.advance(2.5)
        await sandbox.client.patch(processing(dataset_id, document_id, "pause"))
        held = (await sandbox.items(dataset_id, batch))[0]
        await sandbox.client.patch(processing(dataset_id, document_id, "resume"))
        seen = await sandbox.walk(dataset_id, batch, tick=0.1)

    assert (held["indexing_status"], held["total_segments"]) == ("paused", 50)
    totals = [total for _, total in counts(seen, "splitting")]
    assert totals[0] == (0 if resplits else 50)  # splitting again drops the segments
    assert totals == sorted(totals)
    assert seen[-1]["total_segments"] == 100


@pytest.mark.anyio
@pytest.mark.parametrize("runs_on", [True, False])
async def test_a_document_paused_while_splitting_splits_on_then_again_after_resume(
    runs_on: bool,
) -> None:
    """Captures 046-070: paused while splitting, total_segments grows under `paused` to the
    end of the split (47-50); resumed, it splits again from few segments (63-64) and goes on
    to indexing and completed."""
    knobs = {"step_seconds": 1.0, "segments": 100, "split_while_paused": runs_on}
    async with open_sandbox(**knobs) as sandbox:
        dataset_id = await sandbox.create_dataset()
        created = await sandbox.create_text(dataset_id, "bigX.txt")
        document_id, batch = created["document"]["id"], created["batch"]
        sandbox.clock.advance(2.25)  # a quarter into splitting
        paused = await sandbox.client.patch(processing(dataset_id, document_id, "pause"))
        held = []
        for _ in range(4):
            held.append((await sandbox.items(dataset_id, batch))[0])
            sandbox.clock.advance(0.5)
        sandbox.clock.advance(30)
        held.append((await sandbox.items(dataset_id, batch))[0])
        resumed = await sandbox.client.patch(processing(dataset_id, document_id, "resume"))
        seen = await sandbox.walk(dataset_id, batch, tick=0.1)

    assert (paused.status_code, resumed.status_code) == (204, 204)
    real = captured_body(50)["data"][0]  # paused 0/2389, the split not yet stamped
    for item in held:
        assert item["indexing_status"] == "paused" and item["paused_at"] == int(T0 + 2.25)
        assert (item["completed_segments"], item["splitting_completed_at"]) == (0, None)
        assert item.keys() == real.keys()
    totals = [item["total_segments"] for item in held]
    assert totals == ([25, 75, 100, 100, 100] if runs_on else [25] * 5)
    splitting = [total for _, total in counts(seen, "splitting")]
    assert splitting[0] == 0 < totals[-1]  # split again: fewer segments than before
    assert splitting == sorted(splitting)
    assert statuses(seen) == ["splitting", "indexing", "completed"]
    assert seen[-1]["total_segments"] == 100


@pytest.mark.anyio
async def test_pause_of_a_finished_document_and_resume_of_a_running_one_answer_400() -> None:
    async with open_sandbox() as sandbox:
        dataset_id = await sandbox.create_dataset()
        document_id = (await sandbox.create_text(dataset_id, "doc.txt"))["document"]["id"]
        running = await sandbox.client.patch(processing(dataset_id, document_id, "resume"))
        sandbox.clock.advance(60)
        finished = await sandbox.client.patch(processing(dataset_id, document_id, "pause"))

    assert (finished.status_code, finished.json()) == (400, captured_body(56))
    assert running.status_code == 400
    assert running.json()["code"] == "document_indexing"


# --- documents that move or go ----------------------------------------------------------------


@pytest.mark.anyio
async def test_resubmitted_document_moves_to_a_new_batch() -> None:
    async with open_sandbox(step_seconds=1.0, segments=3) as sandbox:
        dataset_id = await sandbox.create_dataset()
        first = await sandbox.create_text(dataset_id, "bigX.txt")
        await sandbox.walk(dataset_id, first["batch"], tick=0.5)
        second = await sandbox.create_text(dataset_id, "bigX.txt")
        old = await sandbox.poll(dataset_id, first["batch"])
        waiting = (await sandbox.items(dataset_id, second["batch"]))[0]
        seen = await sandbox.walk(dataset_id, second["batch"], tick=0.5)

    assert second["document"]["id"] == first["document"]["id"]
    assert second["batch"] != first["batch"]
    assert (old.status_code, old.json()) == (404, captured_body(103))
    # Like capture 076: waiting again, with the counts and times of the previous run.
    assert waiting["indexing_status"] == "waiting"
    assert (waiting["completed_segments"], waiting["total_segments"]) == (3, 3)
    assert waiting["completed_at"] is not None
    assert statuses(seen) == ["waiting", "parsing", "splitting", "indexing", "completed"]


@pytest.mark.anyio
async def test_deleted_document_leaves_its_batch_not_found() -> None:
    async with open_sandbox() as sandbox:
        dataset_id = await sandbox.create_dataset()
        created = await sandbox.create_text(dataset_id, "to-delete.txt")
        path = f"/v1/datasets/{dataset_id}/documents/{created['document']['id']}"
        deleted = await sandbox.client.delete(path)
        gone = await sandbox.poll(dataset_id, created["batch"])
        again = await sandbox.client.delete(path)

    assert (deleted.status_code, deleted.content) == (204, b"")
    assert (gone.status_code, gone.json()) == (404, captured_body(131))
    assert again.status_code == 404


# --- errors as the real server answers them -------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("authorization", "number"),
    [(None, 107), ("Token dataset-sandbox", 108), ("Bearer dataset-wrong", 106)],
)
async def test_bad_credentials_answer_401_like_captures(
    authorization: str | None, number: int
) -> None:
    async with open_sandbox() as sandbox:
        dataset_id = await sandbox.create_dataset()
        batch = (await sandbox.create_text(dataset_id, "doc.txt"))["batch"]
        del sandbox.client.headers["Authorization"]
        headers = {} if authorization is None else {"Authorization": authorization}
        response = await sandbox.poll(dataset_id, batch, **headers)

    real = capture(number)["response"]
    assert (response.status_code, response.json()) == (401, real["json"])
    assert response.headers["www-authenticate"] == real["headers"]["WWW-Authenticate"]


@pytest.mark.anyio
async def test_disabled_dataset_api_answers_403_like_capture() -> None:
    async with open_sandbox(api_disabled=True) as sandbox:
        dataset_id = await sandbox.create_dataset()
        batch = "20261122142935277307"
        disabled = await sandbox.poll(dataset_id, batch)
        await sandbox.configure(api_disabled=False)
        enabled = await sandbox.poll(dataset_id, batch)

    assert (disabled.status_code, disabled.json()) == (403, captured_body(110))
    assert enabled.status_code == 404  # past the 403; that batch does not exist here


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("knob", "status", "code"),
    [
        ("rate_limit_403_rate", 403, "forbidden"),
        ("status_429_rate", 429, "too_many_requests"),
        ("status_500_rate", 500, "internal_server_error"),
    ],
)
async def test_injected_faults_answer_dify_errors(knob: str, status: int, code: str) -> None:
    async with open_sandbox() as sandbox:
        dataset_id = await sandbox.create_dataset()
        batch = (await sandbox.create_text(dataset_id, "doc.txt"))["batch"]
        await sandbox.configure(**{knob: 1.0})
        response = await sandbox.poll(dataset_id, batch)

    assert (response.status_code, response.json()["code"]) == (status, code)
    if status == 403:
        assert response.json()["message"] == (
            "Sorry, you have reached the knowledge base request rate limit of your subscription."
        )


@pytest.mark.anyio
async def test_unknown_dataset_and_batches_answer_404_like_captures() -> None:
    async with open_sandbox() as sandbox:
        dataset_id = await sandbox.create_dataset()
        other_id = await sandbox.create_dataset("tmp-to-delete")
        other_batch = (await sandbox.create_text(other_id, "tmp.txt"))["batch"]
        unknown_dataset = await sandbox.poll("1d2453c5-1072-4710-b71d-c7b0cf181a1c", other_batch)
        unknown_batch = await sandbox.poll(dataset_id, "20991231235959123456")
        not_numeric = await sandbox.poll(dataset_id, "not-a-batch")
        elsewhere = await sandbox.poll(dataset_id, other_batch)
        await sandbox.client.delete(f"/v1/datasets/{other_id}")
        deleted_dataset = await sandbox.poll(other_id, other_batch)

    answers = [unknown_dataset, unknown_batch, not_numeric, elsewhere, deleted_dataset]
    assert [(r.status_code, r.json()) for r in answers] == [
        (404, captured_body(number)) for number in (104, 101, 102, 134, 136)
    ]


@pytest.mark.anyio
async def test_non_uuid_dataset_id_answers_flask_html_404() -> None:
    async with open_sandbox() as sandbox:
        response = await sandbox.poll("not-a-uuid", "20261122142935277307")
        unmatched = await sandbox.client.get("/v1/nothing-here")
        no_key = {"Authorization": ""}
        path = "/v1/datasets/not-a-uuid/document/create-by-text"
        created = await sandbox.client.post(path, json={}, headers=no_key)

    real = capture(105)["response"]
    assert response.status_code == 404
    assert response.headers["content-type"] == real["headers"]["Content-Type"]
    assert response.text == real["text"]
    assert "<title>404 Not Found</title>" in real["text"].splitlines()
    assert (unmatched.status_code, unmatched.text) == (404, real["text"])
    assert (created.status_code, created.text) == (404, real["text"])  # before any key check


# --- creating datasets and documents ------------------------------------------------------------


def key_tree(value: Any) -> Any:
    """The keys of nested objects, so two answers compare by shape and not by values."""
    if isinstance(value, dict):
        return {key: key_tree(item) for key, item in value.items()}
    return None


@pytest.mark.anyio
async def test_create_dataset_and_document_answer_with_the_captures_keys() -> None:
    async with open_sandbox() as sandbox:
        body = capture(6)["request"]["body"]
        dataset = await sandbox.client.post("/v1/datasets", json=body)
        duplicate = await sandbox.client.post("/v1/datasets", json=body)
        created = await sandbox.create_text(dataset.json()["id"], "small.txt")

    assert key_tree(dataset.json()) == key_tree(captured_body(6))
    assert duplicate.status_code == 409
    assert key_tree(created) == key_tree(captured_body(7))
    document = created["document"]
    assert (document["indexing_status"], document["display_status"]) == ("waiting", "queuing")
    utc = time.strftime("%Y%m%d%H%M%S", time.gmtime(T0))
    assert re.fullmatch(utc + r"\d{6}", created["batch"])


@pytest.mark.anyio
@pytest.mark.parametrize("number", [113, 114, 115, 116])
async def test_rejected_create_by_text_answers_like_captures(number: int) -> None:
    request, real = capture(number)["request"], capture(number)["response"]
    async with open_sandbox() as sandbox:
        await sandbox.client.post(
            "/_sandbox/datasets", json={"id": capture(6)["response"]["json"]["id"]}
        )
        response = await sandbox.client.post(request["path"], json=request["body"])

    assert (response.status_code, response.json()) == (real["status"], real["json"])


@pytest.mark.anyio
async def test_requests_are_counted_in_stats() -> None:
    async with open_sandbox() as sandbox:
        dataset_id = await sandbox.create_dataset()
        batch = (await sandbox.create_text(dataset_id, "doc.txt"))["batch"]
        await sandbox.poll(dataset_id, batch)
        await sandbox.poll(dataset_id, "20991231235959123456")
        stats = (await sandbox.client.get("/_sandbox/stats")).json()

    route = "GET /v1/datasets/{dataset_id}/documents/{batch}/indexing-status"
    assert (stats[route], stats[f"{route} 200"], stats[f"{route} 404"]) == (2, 1, 1)
    assert stats["POST /v1/datasets 200"] == 1


# --- the command line -----------------------------------------------------------------------


@contextlib.contextmanager
def run_main(*arguments: str) -> Iterator[str]:
    port = free_port()
    command = [sys.executable, "-m", "receiver.sandbox.dify", "--port", str(port), *arguments]
    process = subprocess.Popen(command, cwd=Path(__file__).parents[2])
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


@pytest.mark.anyio
async def test_main_serves_with_knobs_from_the_command_line() -> None:
    with run_main("--api-key", "dataset-cli", "--segments", "2", "--economy", "true") as url:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            knobs = (await client.get("/_sandbox/config")).json()
            headers = {"Authorization": "Bearer dataset-cli"}
            created = await client.post("/v1/datasets", json={"name": "cli"}, headers=headers)

    assert (knobs["api_key"], knobs["segments"], knobs["economy"]) == ("dataset-cli", 2, True)
    assert knobs["step_seconds"] == DifySandboxConfig().step_seconds
    assert created.status_code == 200
