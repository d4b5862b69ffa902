"""The OpenAPI document: served at /openapi.json, covering every route, and kept by the app.

schemathesis loads the document from the running receiver (real uvicorn, real Redis), sends
requests generated from it, and checks every answer: no 5xx, a documented status and media
type, and a body that fits the documented schema.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from redis.asyncio import Redis
from schemathesis import APIOperation, BaseSchema, Case, CheckFunction, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import BaseRoute, Mount, Route

from receiver.app import create_app
from receiver.openapi import document
from receiver.settings import Settings
from receiver.store import JobStatus, Store
from receiver.tokens import PassthroughSigner, sign_webhook
from tests.e2e import TOKEN, PolledDeployment, e2e_settings, polled_deployment
from tests.servers import RedisProcess

Operation = APIOperation[Any, Any, Any, Any]

WEBHOOK_SECRET = "openapi-webhook-secret"
CHECKS: list[CheckFunction] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Examples per operation and generation mode, derandomized so that a run is repeatable.
EXAMPLES = 40
# Streams end only with their job: documented, checked below, not fuzzed.
STREAMS = {("GET", "/events"), ("GET", "/jobs/{job_id}/events")}
# Requests outside the document, for which it promises a 400 invalid_request:
# (path, query, JSON body or None for a GET); "{job}" is a real job's id.
OUTSIDE: dict[str, tuple[str, dict[str, str], dict[str, Any] | None]] = {
    "jobs_limit_superscript_digit": ("/jobs", {"limit": "²"}, None),
    "jobs_cursor_nan": ("/jobs", {"cursor": "nan|" + "0" * 32}, None),
    "results_limit_superscript_digit": ("/jobs/{job}/results", {"limit": "²"}, None),
    "results_cursor_superscript_digit": ("/jobs/{job}/results", {"cursor": "²"}, None),
    "results_cursor_past_64_bits": ("/jobs/{job}/results", {"cursor": str(2**64)}, None),
    "dify_id_trailing_newline": (
        "/jobs",
        {},
        {"provider": "dify", "dataset_id": "ds\n", "batch": "b"},
    ),
    "firecrawl_batch_trailing_newline": (
        "/jobs",
        {},
        {"provider": "firecrawl", "batch_id": f"{uuid.UUID(int=7)}\n"},
    ),
}


@dataclass
class Seeds:
    """Real jobs in several states, so that generated requests reach more than 404s."""

    job_ids: list[str]
    tokens: list[str]  # passthrough tokens: of live, ended and unknown jobs
    task_ids: list[str]  # Decodo task ids the jobs hold
    batch_ids: list[str]  # Firecrawl batches a job tracks


@pytest.fixture(scope="module")
def deployment(redis_process: RedisProcess) -> Iterator[PolledDeployment]:
    knobs = {"firecrawl_webhook_secret": WEBHOOK_SECRET}
    with polled_deployment(redis_process, with_worker=False, settings=knobs) as d:
        yield d


def _documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in doc["paths"].items() for method in item}


def _routed(routes: Sequence[BaseRoute], prefix: str = "") -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for route in routes:
        if isinstance(route, Mount):
            found |= _routed(route.routes, prefix + route.path)
        elif isinstance(route, Route):
            methods = (route.methods or {"GET"}) - {"HEAD"}
            found |= {(method, prefix + route.path) for method in methods}
    return found


def _create(deployment: PolledDeployment, body: dict[str, Any]) -> str:
    response = httpx.post(
        f"{deployment.api}/jobs", json=body, headers=deployment.headers(), timeout=10
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def _validate(name: str, instance: Any) -> None:
    """Raise unless `instance` fits the document's component schema `name`."""
    root = {"$ref": f"#/components/schemas/{name}", "components": document()["components"]}
    Draft202012Validator(root, format_checker=Draft202012Validator.FORMAT_CHECKER).validate(
        instance
    )


def _sse_frames(lines: Iterator[str]) -> list[dict[str, str]]:
    """The frames of an SSE body, field name -> value; comments skipped."""
    frames: list[dict[str, str]] = [{}]
    for line in lines:
        if not line:
            frames.append({})
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            frames[-1][name] = value
    return [frame for frame in frames if frame]


def _job_stream(deployment: PolledDeployment, job_id: str, **headers: str) -> list[dict[str, str]]:
    url = f"{deployment.api}/jobs/{job_id}/events"
    with httpx.stream("GET", url, headers={**deployment.headers(), **headers}, timeout=10) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        return _sse_frames(r.iter_lines())


def test_openapi_json_serves_the_document(deployment: PolledDeployment) -> None:
    response = httpx.get(f"{deployment.api}/openapi.json", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == document()


def test_openapi_documents_every_route_and_no_other() -> None:
    settings = Settings(redis_url="redis://127.0.0.1:1/0", secret_keys=("k",), api_token="t")
    assert _routed(create_app(settings).routes) == _documented(document())


def test_openapi_document_is_fresh_on_every_call() -> None:
    first = document()
    first["paths"].clear()
    first["components"]["schemas"]["Job"]["required"].append("x")
    assert document()["paths"]
    assert "x" not in document()["components"]["schemas"]["Job"]["required"]


def test_event_streams_keep_to_the_event_and_job_schemas(deployment: PolledDeployment) -> None:
    job_id = _create(deployment, {"provider": "decodo", "urls": ["https://a.example"]})
    cancelled = httpx.delete(f"{deployment.api}/jobs/{job_id}", headers=deployment.headers())
    assert cancelled.status_code == 200, cancelled.text
    [state] = _job_stream(deployment, job_id)
    assert state["event"] == "job.state"
    _validate("Job", json.loads(state["data"]))
    frames = _job_stream(deployment, job_id, **{"Last-Event-ID": "0-0"})
    assert [frame["event"] for frame in frames] == ["job.created", "job.cancelled"]
    for frame in frames:
        event = json.loads(frame["data"])
        _validate("Event", event)
        assert (event["id"], event["type"]) == (frame["id"], frame["event"])


@pytest.mark.parametrize("name", sorted(OUTSIDE))
def test_request_outside_the_document_is_a_400(deployment: PolledDeployment, name: str) -> None:
    path, query, body = OUTSIDE[name]
    if "{job}" in path:
        path = path.format(job=_create(deployment, {"provider": "decodo", "url": "https://a"}))
    method = "GET" if body is None else "POST"
    response = httpx.request(
        method,
        f"{deployment.api}{path}",
        params=query,
        json=body,
        headers=deployment.headers(),
        timeout=10,
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_request"


# -- schemathesis against the running app ---------------------------------------------------


async def _seed(deployment: PolledDeployment, redis_process: RedisProcess) -> Seeds:
    """Jobs submitting, running, completed, failed and tracked; results and task errors."""
    decodo = [_create(deployment, {"provider": "decodo", "url": "https://a"}) for _ in range(4)]
    batch = deployment.firecrawl_batch(["https://b.example"])
    tracked = [
        _create(deployment, {"provider": "firecrawl", "batch_id": batch}),
        _create(deployment, {"provider": "firecrawl", "batch_id": str(uuid.uuid4())}),
        _create(deployment, {"provider": "dify", "dataset_id": "ds-1", "batch": "b-1"}),
    ]
    # What a worker would record; none runs here, so every job stays as seeded until fuzzed.
    redis = Redis.from_url(redis_process.url)
    store = Store(redis)
    try:
        _, running, completed, failed = decodo
        for job_id, tasks in ((running, ["t-1", "t-2"]), (completed, ["t-3"])):
            pairs = [(task, "https://a") for task in tasks]
            await store.record_submission(job_id, 0, pairs, last=True, reconcile_after=300)
            await store.apply_callbacks([(job_id, tasks[0], "done")])
            await store.store_results(job_id, tasks[0], b'{"results": [{"content": "a"}]}', 60)
        await store.finish_job(failed, JobStatus.FAILED, "provider_rejected: seeded")
        await store.store_documents(tracked[0], {"https://b.example": b'{"markdown": "b"}'}, 60)
        await store.record_documents(tracked[2], {"doc-1": "error"}, {"doc-1": "seeded"})
    finally:
        await redis.aclose()
    signer = PassthroughSigner(e2e_settings(redis_process, "").secret_keys, 3600)
    return Seeds(
        job_ids=decodo + tracked,
        tokens=[signer.sign(job_id) for job_id in [*decodo, uuid.uuid4().hex]],
        task_ids=["t-1", "t-2", "t-3"],
        batch_ids=[batch],
    )


def _with_token(case: Case[Any], token: str | None, task_id: str | None) -> Case[Any]:
    """A Decodo callback, sometimes with a real token and a task id one of the jobs holds."""
    if isinstance(case.body, dict):
        if token is not None:
            case.body.pop("passtrough", None)
            case.body["passthrough"] = token
        if task_id is not None:
            case.body["id"] = task_id
    return case


def _signed(case: Case[Any], batch_id: str | None, sign: bool) -> Case[Any]:
    """A Firecrawl webhook, sometimes about a tracked batch, and signed over the bytes sent."""
    if not isinstance(case.body, dict):
        return case
    if batch_id is not None:
        case.body["id"] = batch_id
    if sign:
        raw = json.dumps(case.body).encode()  # not orjson: generated integers pass 64 bits
        case.body = raw
        case.headers["X-Firecrawl-Signature"] = sign_webhook(WEBHOOK_SECRET, raw)
    return case


def _cases(
    operation: Operation, mode: GenerationMode, seeds: Seeds
) -> st.SearchStrategy[Case[Any]]:
    strategy: st.SearchStrategy[Case[Any]] = operation.as_strategy(generation_mode=mode)
    if "{job_id}" in operation.path:
        known = [
            operation.as_strategy(generation_mode=mode, path_parameters={"job_id": job_id})
            for job_id in seeds.job_ids
        ]
        strategy = st.one_of(strategy, *known)
    if operation.path == "/callbacks/decodo":
        tokens, tasks = (
            st.sampled_from([None, *seeds.tokens]),
            st.sampled_from([None, *seeds.task_ids]),
        )
        strategy = st.builds(_with_token, strategy, tokens, tasks)
    if operation.path == "/callbacks/firecrawl":
        batches = st.sampled_from([None, *seeds.batch_ids])
        strategy = st.builds(_signed, strategy, batches, st.booleans())
    return strategy


def _modes(operation: Operation) -> list[GenerationMode]:
    """Positive, and negative when the operation takes anything that can be made invalid."""
    inputs = (operation.path_parameters, operation.headers, operation.query, operation.body)
    if any(len(found) for found in inputs):
        return [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    return [GenerationMode.POSITIVE]


def _checks(operation: Operation) -> list[CheckFunction]:
    if operation.path == "/readyz":  # its 503 is the documented "not ready": no worker runs here
        return [check for check in CHECKS if check is not not_a_server_error]
    return CHECKS


def _operations(schema: BaseSchema) -> Iterator[Operation]:
    """Every documented operation but the streams."""
    for path in schema:
        for method in schema[path]:
            if (method.upper(), path) not in STREAMS:
                yield schema[path][method]


def _fuzz(operation: Operation, mode: GenerationMode, seeds: Seeds, base_url: str) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True)
    @given(case=_cases(operation, mode, seeds))
    def run(case: Case[Any]) -> None:
        case.call_and_validate(
            base_url=base_url,
            headers={"Authorization": f"Bearer {TOKEN}"},
            checks=_checks(operation),
            timeout=10,
        )

    run()


def test_app_keeps_to_its_document(
    deployment: PolledDeployment, redis_process: RedisProcess
) -> None:
    seeds = asyncio.run(_seed(deployment, redis_process))
    schema = schemathesis.openapi.from_url(f"{deployment.api}/openapi.json")
    failures: list[str] = []
    for operation in _operations(schema):
        for mode in _modes(operation):
            try:
                _fuzz(operation, mode, seeds, deployment.api)
            # Collected, so that one operation's failures do not hide the others'.
            except (Exception, BaseExceptionGroup) as exc:
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)
