"""Dify knowledge API simulator: datasets, documents by text and their indexing status.

A real HTTP server that answers like a Dify 1.13.3 API server (see the captures in
shared/captures/dify): the service API under `/v1` (so a client's DIFY_BASE_URL is
`http://127.0.0.1:9003/v1`), the console's pause and resume under `/console/api`, and
`/_sandbox/...` control routes. Each document walks waiting → parsing → splitting → indexing
→ completed (or `error`); its state is computed from the clock when asked, so polling costs
a few dictionary look-ups.

Run: `python -m receiver.sandbox.dify --port 9003 --step-seconds 0.2 --error-rate 0.1`.
"""

from __future__ import annotations

import bisect
import hmac
import math
import random
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from receiver.sandbox.common import Clock, Stats, control_routes, json_response
from receiver.sandbox.faults import FaultKnobs, Faults, SandboxApp
from receiver.sandbox.runner import run_sandbox

__all__ = ["DifySandboxConfig", "create_app", "main"]  # the rest is the simulator's inside


@dataclass
class DifySandboxConfig(FaultKnobs):
    """Knobs of the Dify simulator; each is also `--knob-name` on the command line. The
    fault knobs it shares with the other sandboxes are in `faults.FaultKnobs`."""

    api_key: str = field(default="dataset-sandbox", repr=False)  # the valid dataset API key
    step_seconds: float = 0.2  # seconds each indexing step lasts, before jitter
    jitter_seconds: float = 0.05  # at most this many seconds added at random to each step
    segments: int = 5  # segments of a document created with non-blank text
    economy: bool = False  # economy indexing: completed_segments stays 0 until completed
    emit_cleaning: bool = False  # show a `cleaning` step (a real server never shows it)
    error_rate: float = 0.0  # chance that a new document ends in `error`
    shuffle: bool = True  # shuffle data[] on every poll, as the real order varies
    resume_resplits: bool = True  # a document paused while splitting splits again on resume
    # A document paused while splitting goes on splitting under `paused`, total_segments
    # growing to the end of the step, as a real server does (captures 047-050); False
    # freezes it where it was.
    split_while_paused: bool = True
    resubmit_stale: bool = True  # a re-submitted document shows its last run while waiting
    stall: bool = False  # documents never leave their current step
    api_disabled: bool = False  # 403 "Dataset api access is not enabled." for every dataset
    rate_limit_403_rate: float = 0.0  # chance of the knowledge rate-limit 403 per request
    status_429_rate: float = 0.0  # chance of a 429 too_many_requests per request
    status_500_rate: float = 0.0  # chance of a 500 internal_server_error per request
    seed: int | None = None  # seed of the random generator (ids, jitter, faults, order)


VERSION_HEADERS = {"X-Version": "1.13.3", "X-Env": "PRODUCTION"}  # on every real answer
FAILURE = "Failed to load document (PDFium: Data format error)."  # a corrupt PDF's error
NO_HEADER = "Authorization header must be provided and start with 'Bearer'"
WRONG_SCHEME = "Authorization scheme must be 'Bearer'"
BAD_TOKEN = "Access token is invalid"
API_DISABLED = "Dataset api access is not enabled."
RATE_LIMITED = "Sorry, you have reached the knowledge base request rate limit of your subscription."
TOO_MANY = "Too many requests. Please try again later."
INTERNAL = (
    "The server encountered an internal error and was unable to complete your request. "
    "Either the server is overloaded or there is an error in the application."
)
BAD_JSON = "The browser (or proxy) sent a request that this server could not understand."
CREATE_BY_TEXT_HINT = (
    " You have requested this URI [{path}] but did you mean"
    " /v1/datasets/<uuid:dataset_id>/document/create-by-text or"
    " /v1/datasets/<uuid:dataset_id>/document/create_by_text or"
    " /v1/datasets/<uuid:dataset_id>/document/create-by-file ?"
)
FLASK_PAGE = (
    "<!doctype html>\n<html lang=en>\n<title>{title}</title>\n<h1>{heading}</h1>\n<p>{text}</p>\n"
)
NOT_FOUND_PAGE = FLASK_PAGE.format(
    title="404 Not Found",
    heading="Not Found",
    text="The requested URL was not found on the server. If you entered the URL manually "
    "please check your spelling and try again.",
)
NOT_ALLOWED_PAGE = FLASK_PAGE.format(
    title="405 Method Not Allowed",
    heading="Method Not Allowed",
    text="The method is not allowed for the requested URL.",
)
PYDANTIC_DOCS = "https://errors.pydantic.dev/2.12/v/"  # the pydantic of Dify 1.13.3
DOC_FORMS = ("text_model", "hierarchical_model", "qa_model")
TECHNIQUES = ("high_quality", "economy")
INDEXING_SHARE = 0.8  # completed_segments reaches total at this share of the indexing step
STAMP_FIELDS = (
    "processing_started_at",
    "parsing_completed_at",
    "cleaning_completed_at",
    "splitting_completed_at",
    "completed_at",
)
UUID_PATTERN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z", re.I)
DISPLAY_STATUS = {
    "waiting": "queuing",
    "paused": "paused",
    "error": "error",
    "completed": "available",
}


# --- the indexing model ---------------------------------------------------------------------


class Step(NamedTuple):
    status: str  # indexing_status while the step runs
    seconds: float  # running time the step lasts
    stamps: tuple[str, ...]  # timestamp fields written when the step ends


@dataclass(eq=False)
class Run:
    """One indexing run of a document; its state at any time follows from these fields."""

    steps: tuple[Step, ...]
    ends: tuple[float, ...]  # running seconds at the end of each step
    failed: bool  # ends in `error` instead of `completed`
    segments: int
    base: float = 0.0  # running seconds done before `anchor`
    anchor: float | None = None  # clock time since which it runs; None while paused
    stamps: dict[str, int] = field(default_factory=dict)  # steps ended before `anchor`
    paused_at: int | None = None  # unix seconds of the pause, while paused
    held_step: int | None = None  # the step a pause lets run to its end, no further
    stale: dict[str, Any] | None = None  # the previous run's answer, shown while waiting


@dataclass(eq=False)
class Document:
    id: str
    name: str
    position: int
    created_at: int  # unix seconds of the first submission
    size: int  # bytes of the text
    batch: str
    run: Run


@dataclass(eq=False)
class Dataset:
    id: str
    name: str
    description: str
    indexing_technique: str | None
    permission: str
    created_at: int
    documents: dict[str, Document] = field(default_factory=dict)
    by_name: dict[str, str] = field(default_factory=dict)  # document name → id
    batches: dict[str, list[str]] = field(default_factory=dict)  # batch → document ids
    positions: int = 0  # documents ever created


class Stalls:
    """Clock intervals during which the `stall` knob froze every document."""

    def __init__(self) -> None:
        self.intervals: list[tuple[float, float]] = []  # (start, end); end inf while stalled

    def sync(self, stalled: bool, now: float) -> None:
        active = bool(self.intervals) and self.intervals[-1][1] == math.inf
        if stalled and not active:
            self.intervals.append((now, math.inf))
        elif active and not stalled:
            self.intervals[-1] = (self.intervals[-1][0], now)

    def running(self, start: float, end: float) -> float:
        """Seconds of [start, end] outside any stall."""
        total = end - start
        for low, high in self.intervals:
            total -= max(0.0, min(high, end) - max(low, start))
        return max(total, 0.0)

    def clock_time(self, start: float, seconds: float) -> float:
        """The clock time at which `seconds` outside stalls have passed since `start`."""
        at = start
        for low, high in self.intervals:
            if high <= at:
                continue
            if low >= at + seconds:
                break
            seconds -= max(low - at, 0.0)
            at = high
        return at + seconds


class Indexer:
    """Datasets, documents and batches, with each document's status computed on demand."""

    def __init__(self, config: DifySandboxConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.rng = random.Random(config.seed)
        self.stalls = Stalls()
        self.datasets: dict[str, Dataset] = {}
        self.user_id = self.new_id()  # the account that "created" everything

    def new_id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def now(self) -> float:
        now = self.clock()
        self.stalls.sync(self.config.stall, now)
        return now

    def create_dataset(self, body: dict[str, Any], dataset_id: str | None = None) -> Dataset:
        technique = body.get("indexing_technique")
        dataset = Dataset(
            id=dataset_id or self.new_id(),
            name=str(body.get("name") or f"sandbox-{len(self.datasets) + 1}"),
            description=str(body.get("description") or ""),
            indexing_technique=technique if technique in TECHNIQUES else None,
            permission=str(body.get("permission") or "only_me"),
            created_at=int(self.clock()),
        )
        self.datasets[dataset.id] = dataset
        return dataset

    def submit(self, dataset: Dataset, specs: list[tuple[str, int, bool, int]]) -> str:
        """Index documents given as (name, segments, fail, size) under one new batch."""
        now = self.now()
        batch = self.new_batch(dataset, now)
        ids = [self.submit_one(dataset, spec, batch, now).id for spec in specs]
        dataset.batches[batch] = ids
        return batch

    def submit_one(
        self, dataset: Dataset, spec: tuple[str, int, bool, int], batch: str, now: float
    ) -> Document:
        name, segments, fail, size = spec
        failed = fail or self.rng.random() < self.config.error_rate
        run = self.new_run(segments, failed, now)
        document = dataset.documents.get(dataset.by_name.get(name, ""))
        if document is None:
            dataset.positions += 1
            document = Document(self.new_id(), name, dataset.positions, int(now), size, batch, run)
            dataset.documents[document.id] = document
            dataset.by_name[name] = document.id
            return document
        if self.config.resubmit_stale:
            run.stale = self.render(document, now)
        document.run, document.batch, document.size = run, batch, size
        return document

    def new_batch(self, dataset: Dataset, now: float) -> str:
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(now))
        while True:
            batch = stamp + str(self.rng.randint(100000, 999999))
            if batch not in dataset.batches:
                return batch

    def new_run(self, segments: int, failed: bool, now: float) -> Run:
        steps = self.plan(failed)
        ends = tuple(sum(step.seconds for step in steps[: i + 1]) for i in range(len(steps)))
        return Run(steps, ends, failed, 0 if failed else segments, anchor=now)

    def plan(self, failed: bool) -> tuple[Step, ...]:
        def seconds() -> float:
            return self.config.step_seconds + self.rng.uniform(0.0, self.config.jitter_seconds)

        start = Step("waiting", seconds(), ("processing_started_at",))
        if failed:  # a document that cannot be loaded fails while parsing
            return start, Step("parsing", seconds(), ("stopped_at",))
        steps = [start, Step("parsing", seconds(), ("parsing_completed_at",))]
        split_stamps: tuple[str, ...] = ("cleaning_completed_at", "splitting_completed_at")
        if self.config.emit_cleaning:
            steps.append(Step("cleaning", seconds(), ("cleaning_completed_at",)))
            split_stamps = ("splitting_completed_at",)
        steps.append(Step("splitting", seconds(), split_stamps))
        steps.append(Step("indexing", seconds(), ("completed_at",)))
        return tuple(steps)

    def batch_items(self, dataset: Dataset, batch: str) -> list[dict[str, Any]]:
        """The indexing-status items of a batch: empty when unknown, superseded or deleted."""
        now = self.now()
        documents = dataset.documents
        items = [
            self.render(documents[i], now)
            for i in dataset.batches.get(batch, ())
            if i in documents and documents[i].batch == batch
        ]
        if self.config.shuffle:
            self.rng.shuffle(items)
        return items

    def progress(self, run: Run, now: float) -> float:
        if run.anchor is None:
            return run.base
        done = run.base + self.stalls.running(run.anchor, now)
        return done if run.held_step is None else min(done, run.ends[run.held_step])

    def status(self, run: Run, now: float) -> tuple[int, str]:
        """Index of the current step (len(steps) once finished) and the stored status."""
        index = bisect.bisect_right(run.ends, self.progress(run, now))
        if run.held_step is not None:
            index = min(index, run.held_step)
        if index < len(run.steps):
            return index, run.steps[index].status
        return index, "error" if run.failed else "completed"

    def render(self, document: Document, now: float) -> dict[str, Any]:
        run = document.run
        progress = self.progress(run, now)
        index, status = self.status(run, now)
        if run.stale is not None and index == 0:
            item = dict(run.stale)
        else:
            stamps = self.stamps(run, index)
            done, total = self.segments(run, index, progress)
            item = {
                "id": document.id,
                "indexing_status": status,
                **{name: stamps.get(name) for name in STAMP_FIELDS},
                "paused_at": None,
                "error": FAILURE if status == "error" else None,
                "stopped_at": stamps.get("stopped_at"),
                "completed_segments": done,
                "total_segments": total,
            }
        item["indexing_status"] = status if run.paused_at is None else "paused"
        item["paused_at"] = run.paused_at
        return item

    def stamps(self, run: Run, index: int) -> dict[str, int]:
        """Unix seconds of the ends of the steps before `index`."""
        stamps = dict(run.stamps)
        for i in range(index):
            missing = [name for name in run.steps[i].stamps if name not in stamps]
            if missing and run.anchor is not None:
                at = int(self.stalls.clock_time(run.anchor, run.ends[i] - run.base))
                stamps.update(dict.fromkeys(missing, at))
        return stamps

    def segments(self, run: Run, index: int, progress: float) -> tuple[int, int]:
        """(completed_segments, total_segments) at `progress` in step `index`."""
        count = run.segments
        if index >= len(run.steps):
            return count, count
        step = run.steps[index]
        share = (
            1.0 if step.seconds <= 0 else (progress - run.ends[index] + step.seconds) / step.seconds
        )
        if step.status == "splitting":
            return 0, int(count * share)
        if step.status == "indexing":
            done = 0 if self.config.economy else int(count * share / INDEXING_SHARE)
            return min(done, count), count
        return 0, 0

    def pause(self, document: Document) -> bool:
        """Pause a document still in progress; False when it has finished."""
        now = self.now()
        run = document.run
        index, status = self.status(run, now)
        if index >= len(run.steps):
            return False
        if status == "splitting" and self.config.split_while_paused:
            run.held_step = index  # the split runs on, under `paused`
        elif run.anchor is not None:
            run.stamps = self.stamps(run, index)
            run.base, run.anchor = self.progress(run, now), None
        run.paused_at = int(now)
        return True

    def resume(self, document: Document) -> bool:
        """Resume a paused document; False when it is not paused."""
        now = self.now()
        run = document.run
        if run.paused_at is None:
            return False
        index, _ = self.status(run, now)
        if run.anchor is not None:  # held: it ran on while paused
            run.stamps = self.stamps(run, index)
            run.base = self.progress(run, now)
        step = run.steps[index]
        if self.config.resume_resplits and step.status == "splitting":
            run.base = run.ends[index] - step.seconds  # splits again from no segments
        run.anchor, run.paused_at, run.held_step = now, None, None
        return True

    def delete_document(self, dataset: Dataset, document: Document) -> None:
        del dataset.documents[document.id]
        if dataset.by_name.get(document.name) == document.id:
            del dataset.by_name[document.name]


# --- request checks and bodies --------------------------------------------------------------


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    body = {"code": code, "message": message, "status": status}
    return json_response(body, status, {**VERSION_HEADERS, **(headers or {})})


def answer(body: Any, status: int = 200) -> Response:
    return json_response(body, status, VERSION_HEADERS)


def no_content() -> Response:
    return Response(b"", 204, VERSION_HEADERS, media_type="application/json")


def unauthorized(message: str) -> Response:
    return error(401, "unauthorized", message, {"WWW-Authenticate": 'Bearer realm="api"'})


def html_page(page: str, status: int) -> Response:
    return Response(page, status, VERSION_HEADERS, media_type="text/html; charset=utf-8")


def as_uuid(value: str) -> str | None:
    return value.lower() if UUID_PATTERN.match(value) else None


def check_token(header: str | None, api_key: str) -> Response | None:
    """Dify's `validate_and_get_api_token`: the same three 401s in the same order."""
    if header is None or " " not in header:
        return unauthorized(NO_HEADER)
    parts = header.split(None, 1)
    if len(parts) != 2:
        return unauthorized(NO_HEADER)
    if parts[0].lower() != "bearer":
        return unauthorized(WRONG_SCHEME)
    if not hmac.compare_digest(parts[1].encode(), api_key.encode()):
        return unauthorized(BAD_TOKEN)
    return None


def pydantic_error(model: str, problems: list[tuple[str, str, str, Any]]) -> str:
    """A pydantic ValidationError's text for (field, message, type, input) problems."""
    count = len(problems)
    lines = [f"{count} validation error{'s' if count > 1 else ''} for {model}"]
    for name, message, kind, value in problems:
        shown = repr(value)
        if len(shown) > 50:  # pydantic keeps 25 + 24 characters of a long input
            shown = shown[:25] + "..." + shown[-24:]
        details = f"[type={kind}, input_value={shown}, input_type={type(value).__name__}]"
        lines += [
            name,
            f"  {message} {details}",
            f"    For further information visit {PYDANTIC_DOCS}{kind}",
        ]
    return "\n".join(lines)


def text_problems(body: dict[str, Any]) -> list[tuple[str, str, str, Any]]:
    """What DocumentTextCreatePayload rejects in a create-by-text body."""
    problems: list[tuple[str, str, str, Any]] = []
    for name in ("name", "text"):
        if name not in body:
            problems.append((name, "Field required", "missing", body))
        elif not isinstance(body[name], str):
            problems.append((name, "Input should be a valid string", "string_type", body[name]))
    doc_form = body.get("doc_form")
    if doc_form is not None and doc_form not in DOC_FORMS:
        problems.append(("doc_form", "Value error, Invalid doc_form.", "value_error", doc_form))
    return problems


def technique_problem(dataset: Dataset, technique: Any) -> str | None:
    if technique is None:
        return None if dataset.indexing_technique else "indexing_technique is required."
    if technique in TECHNIQUES:
        return None
    problem = ("indexing_technique", "Input should be 'high_quality' or 'economy'")
    return pydantic_error("KnowledgeConfig", [(*problem, "literal_error", technique)])


def dataset_body(dataset: Dataset, user_id: str) -> dict[str, Any]:
    """A dataset as POST /v1/datasets answers it (capture 006)."""
    documents = len(dataset.documents)
    return {
        "id": dataset.id,
        "name": dataset.name,
        "description": dataset.description,
        "provider": "vendor",
        "permission": dataset.permission,
        "data_source_type": None,
        "indexing_technique": dataset.indexing_technique,
        "app_count": 0,
        "document_count": documents,
        "word_count": 0,
        "created_by": user_id,
        "author_name": "admin",
        "created_at": dataset.created_at,
        "updated_by": user_id,
        "updated_at": dataset.created_at,
        "embedding_model": None,
        "embedding_model_provider": None,
        "embedding_available": None,
        "retrieval_model_dict": {
            "search_method": "semantic_search",
            "reranking_enable": False,
            "reranking_mode": None,
            "reranking_model": {"reranking_provider_name": "", "reranking_model_name": ""},
            "weights": None,
            "top_k": 2,
            "score_threshold_enabled": False,
            "score_threshold": None,
        },
        "summary_index_setting": dict.fromkeys(
            ("enable", "model_name", "model_provider_name", "summary_prompt")
        ),
        "tags": [],
        "doc_form": None,
        "external_knowledge_info": dict.fromkeys(
            (
                "external_knowledge_id",
                "external_knowledge_api_id",
                "external_knowledge_api_name",
                "external_knowledge_api_endpoint",
            )
        ),
        "external_retrieval_model": {
            "top_k": 2,
            "score_threshold": 0.0,
            "score_threshold_enabled": None,
        },
        "doc_metadata": [],
        "built_in_field_enabled": False,
        "pipeline_id": None,
        "runtime_mode": "general",
        "chunk_structure": None,
        "icon_info": dict.fromkeys(("icon_type", "icon", "icon_background", "icon_url")),
        "is_published": False,
        "total_documents": documents,
        "total_available_documents": documents,
        "enable_api": True,
        "is_multimodal": False,
    }


def document_body(indexer: Indexer, document: Document) -> dict[str, Any]:
    """A document as create-by-text answers it (capture 007)."""
    upload_id = indexer.new_id()
    status = indexer.render(document, indexer.now())["indexing_status"]
    return {
        "id": document.id,
        "position": document.position,
        "data_source_type": "upload_file",
        "data_source_info": {"upload_file_id": upload_id},
        "data_source_detail_dict": {
            "upload_file": {
                "id": upload_id,
                "name": document.name,
                "size": document.size,
                "extension": "txt",
                "mime_type": "text/plain",
                "created_by": indexer.user_id,
                "created_at": indexer.clock(),
            }
        },
        "dataset_process_rule_id": indexer.new_id(),
        "name": document.name,
        "created_from": "api",
        "created_by": indexer.user_id,
        "created_at": document.created_at,
        "tokens": None,
        "indexing_status": status,
        "error": None,
        "enabled": True,
        "disabled_at": None,
        "disabled_by": None,
        "archived": False,
        "display_status": DISPLAY_STATUS.get(status, "indexing"),
        "word_count": None,
        "hit_count": 0,
        "doc_form": "text_model",
        "doc_metadata": None,
        "summary_index_status": None,
        "need_summary": False,
    }


async def read_object(request: Request) -> dict[str, Any] | None:
    """The JSON object of a request body; None when it is not one."""
    try:
        body = orjson.loads(await request.body() or b"{}")
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else None


def batch_specs(body: dict[str, Any], default_segments: int) -> list[tuple[str, int, bool, int]]:
    """(name, segments, fail, size) of each entry of a control-route `documents` list."""
    entries = body.get("documents")
    if not isinstance(entries, list) or not entries:
        raise ValueError("documents must be a non-empty list")
    specs = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ValueError("each document needs a string name")
        segments = int(entry.get("segments", default_segments))
        specs.append((entry["name"], max(segments, 0), bool(entry.get("fail", False)), 0))
    return specs


# --- routes ---------------------------------------------------------------------------------


class DifyApi:
    """The request handlers, around one `Indexer`."""

    def __init__(self, indexer: Indexer) -> None:
        self.indexer = indexer
        self.config = indexer.config

    def gate(self, request: Request) -> Response | None:
        """The checks in front of every service route: the API key, then injected faults."""
        refused = check_token(request.headers.get("authorization"), self.config.api_key)
        return refused or self.fault()

    def fault(self) -> Response | None:
        config, chance = self.config, self.indexer.rng.random
        if config.rate_limit_403_rate > 0 and chance() < config.rate_limit_403_rate:
            return error(403, "forbidden", RATE_LIMITED)
        if config.status_429_rate > 0 and chance() < config.status_429_rate:
            return error(429, "too_many_requests", TOO_MANY)
        if config.status_500_rate > 0 and chance() < config.status_500_rate:
            return error(500, "internal_server_error", INTERNAL)
        return None

    def find_dataset(self, dataset_id: str, hint: str = "") -> Dataset | Response:
        dataset = self.indexer.datasets.get(dataset_id)
        if dataset is None:
            return error(404, "not_found", "Dataset not found." + hint)
        if self.config.api_disabled:
            return error(403, "forbidden", API_DISABLED)
        return dataset

    def open_dataset(self, request: Request, hint: str = "") -> Dataset | Response:
        """Route match (HTML 404 for a non-UUID id), then the gate, then the dataset."""
        dataset_id = as_uuid(request.path_params["dataset_id"])
        if dataset_id is None:
            return html_page(NOT_FOUND_PAGE, 404)
        return self.gate(request) or self.find_dataset(dataset_id, hint)

    async def indexing_status(self, request: Request) -> Response:
        dataset = self.open_dataset(request)
        if isinstance(dataset, Response):
            return dataset
        items = self.indexer.batch_items(dataset, request.path_params["batch"])
        if not items:
            return error(404, "not_found", "Documents not found.")
        return answer({"data": items})

    async def create_dataset(self, request: Request) -> Response:
        refused = self.gate(request)
        if refused is not None:
            return refused
        body = await read_object(request)
        if body is None:
            return error(400, "bad_request", BAD_JSON)
        name = body.get("name")
        if not isinstance(name, str) or not name:
            return error(400, "invalid_param", "name is required.")
        if any(d.name == name for d in self.indexer.datasets.values()):
            message = "The dataset name already exists. Please modify your dataset name."
            return error(409, "dataset_name_duplicate", message)
        dataset = self.indexer.create_dataset(body)
        return answer(dataset_body(dataset, self.indexer.user_id))

    async def delete_dataset(self, request: Request) -> Response:
        dataset = self.open_dataset(request)
        if isinstance(dataset, Response):
            return dataset
        del self.indexer.datasets[dataset.id]
        return no_content()

    async def create_by_text(self, request: Request) -> Response:
        dataset = self.open_dataset(request, CREATE_BY_TEXT_HINT.format(path=request.url.path))
        if isinstance(dataset, Response):
            return dataset
        body = await read_object(request)
        if body is None:
            return error(400, "bad_request", BAD_JSON)
        problems = text_problems(body)
        if problems:
            return error(
                400, "invalid_param", pydantic_error("DocumentTextCreatePayload", problems)
            )
        problem = technique_problem(dataset, body.get("indexing_technique"))
        if problem is not None:
            return error(400, "invalid_param", problem)
        return self.index_text(dataset, body)

    def index_text(self, dataset: Dataset, body: dict[str, Any]) -> Response:
        dataset.indexing_technique = dataset.indexing_technique or body["indexing_technique"]
        text: str = body["text"]
        segments = self.config.segments if text.strip() else 0
        spec = (body["name"], segments, False, len(text.encode()))
        batch = self.indexer.submit(dataset, [spec])
        document = dataset.documents[dataset.batches[batch][0]]
        return answer({"document": document_body(self.indexer, document), "batch": batch})

    async def delete_document(self, request: Request) -> Response:
        dataset = self.open_dataset(request)
        if isinstance(dataset, Response):
            return dataset
        document = dataset.documents.get(request.path_params["document_id"].lower())
        if document is None:
            return error(404, "not_found", "Document Not Exists.")
        self.indexer.delete_document(dataset, document)
        return no_content()

    def find_document(self, request: Request) -> Document | Response:
        """A console route's document (the console's own login is not simulated)."""
        dataset_id = as_uuid(request.path_params["dataset_id"])
        document_id = as_uuid(request.path_params["document_id"])
        if dataset_id is None or document_id is None:
            return html_page(NOT_FOUND_PAGE, 404)
        dataset = self.indexer.datasets.get(dataset_id)
        if dataset is None:
            return error(404, "not_found", "Dataset not found.")
        document = dataset.documents.get(document_id)
        return document or error(404, "not_found", "Document not found.")

    async def pause(self, request: Request) -> Response:
        document = self.find_document(request)
        if isinstance(document, Response):
            return document
        if not self.indexer.pause(document):
            return error(400, "document_indexing", "Cannot pause completed document.")
        return no_content()

    async def resume(self, request: Request) -> Response:
        document = self.find_document(request)
        if isinstance(document, Response):
            return document
        if not self.indexer.resume(document):
            return error(400, "document_indexing", "Document is not in paused status.")
        return no_content()

    async def sandbox_dataset(self, request: Request) -> Response:
        """Create a dataset without a key; an `id` makes it idempotent."""
        body = await read_object(request)
        if body is None:
            return answer({"error": "body must be a JSON object"}, 400)
        dataset_id = as_uuid(str(body["id"])) if "id" in body else None
        if "id" in body and dataset_id is None:
            return answer({"error": "id must be a UUID"}, 400)
        dataset = self.indexer.datasets.get(dataset_id or "")
        if dataset is None:
            dataset = self.indexer.create_dataset(body, dataset_id)
        return answer(dataset_body(dataset, self.indexer.user_id))

    async def sandbox_batch(self, request: Request) -> Response:
        """Several documents in one batch, like the console's multi-file upload."""
        dataset = self.indexer.datasets.get(request.path_params["dataset_id"].lower())
        if dataset is None:
            return answer({"error": "unknown dataset"}, 404)
        body = await read_object(request)
        try:
            specs = batch_specs(body or {}, self.config.segments)
        except (TypeError, ValueError) as exc:
            return answer({"error": str(exc)}, 400)
        batch = self.indexer.submit(dataset, specs)
        documents = [dataset.documents[i] for i in dataset.batches[batch]]
        bodies = [document_body(self.indexer, d) for d in documents]
        return answer({"batch": batch, "documents": bodies})

    def routes(self) -> list[Route]:
        dataset = "/v1/datasets/{dataset_id}"
        console = "/console/api/datasets/{dataset_id}/documents/{document_id}/processing"
        return [
            Route("/v1/datasets", self.create_dataset, methods=["POST"]),
            Route(dataset, self.delete_dataset, methods=["DELETE"]),
            Route(dataset + "/document/create-by-text", self.create_by_text, methods=["POST"]),
            Route(dataset + "/document/create_by_text", self.create_by_text, methods=["POST"]),
            Route(dataset + "/documents/{batch}/indexing-status", self.indexing_status),
            Route(dataset + "/documents/{document_id}", self.delete_document, methods=["DELETE"]),
            Route(console + "/pause", self.pause, methods=["PATCH"]),
            Route(console + "/resume", self.resume, methods=["PATCH"]),
            Route("/_sandbox/datasets", self.sandbox_dataset, methods=["POST"]),
            Route("/_sandbox/datasets/{dataset_id}/batches", self.sandbox_batch, methods=["POST"]),
        ]


class CountRequests:
    """Counts every request in `Stats` as "METHOD /route/path" (or "METHOD unmatched")."""

    def __init__(self, app: ASGIApp, stats: Stats) -> None:
        self.app = app
        self.stats = stats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            self.stats.count(f"{scope['method']} {path}", status)


async def flask_page(request: Request, exc: Exception) -> Response:
    """Unmatched URLs answer Flask's HTML pages, as the real server does."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return html_page(NOT_ALLOWED_PAGE, 405)
    return html_page(NOT_FOUND_PAGE, exc.status_code)


def fault_answer(status: int, retry_after: int | None) -> Response:
    """Dify's error body for an injected fault; Retry-After only when it is given."""
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    if status == 429:
        return error(429, "too_many_requests", TOO_MANY, headers)
    return error(status, "internal_server_error", INTERNAL, headers)


def create_app(config: DifySandboxConfig | None = None, clock: Clock | None = None) -> Starlette:
    """The simulator as an ASGI app; `config` stays live (PATCH /_sandbox/config changes it)."""
    config = config or DifySandboxConfig()
    clock = clock or Clock()
    stats = Stats()
    api = DifyApi(Indexer(config, clock))
    return SandboxApp(
        Faults(config, stats, fault_answer),
        routes=[*api.routes(), *control_routes(config, clock, stats)],
        middleware=[Middleware(CountRequests, stats=stats)],
        exception_handlers={404: flask_page, 405: flask_page},
    )


def main(argv: list[str] | None = None) -> None:
    """`python -m receiver.sandbox.dify [--host H] [--port P] [--knob-name VALUE ...]`."""
    run_sandbox("dify", argv)


if __name__ == "__main__":
    main()
