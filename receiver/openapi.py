"""The OpenAPI 3.1 document of the HTTP API, served at GET /openapi.json."""

from __future__ import annotations

from typing import Any

from receiver.api import MAX_JOB_BODY, PROVIDERS
from receiver.jobs.decodo import MAX_ITEMS
from receiver.jobs.firecrawl import MAX_URLS, OPTIONS
from receiver.store import JobStatus

Schema = dict[str, Any]

# Event types, in the order a job goes through them.
EVENT_TYPES = (
    "job.created",
    "job.progress",
    "task.completed",
    "task.failed",
    "job.completed",
    "job.failed",
    "job.cancelled",
    "job.expired",
)
# An id receiver puts in a provider's URL path (Dify's dataset id and batch); ".." is refused.
_SAFE_ID = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
_UUID = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
# A Decodo task id as a callback carries it: 1 to 64 printable ASCII characters.
_TASK_ID = "^[ -~]{1,64}$"
# The JSON integers the callback parser reads as integers (wider ones become floats).
_INT_RANGE = {"minimum": -(2**63), "maximum": 2**64 - 1}
# An event id of the durable stream, as SSE's `id:` and `Last-Event-ID` carry it.
_EVENT_ID = r"^\d{1,20}-\d{1,20}$"


def document() -> dict[str, Any]:
    """The whole document; a fresh dict on every call, so callers may change theirs."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "receiver",
            "version": "1",
            "description": "Provider callbacks, a job API, health, metrics and events. "
            "Errors are JSON {error, message}.",
        },
        "paths": {**_callback_paths(), **_service_paths(), **_job_paths(), **_event_paths()},
        "components": {
            "schemas": {**_job_schemas(), **_request_schemas(), **_answer_schemas()},
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "RECEIVER_API_TOKEN",
                }
            },
        },
    }


# -- building blocks ----------------------------------------------------------------------


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Schema) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _answer(description: str, schema: Schema, headers: Schema | None = None) -> Schema:
    answer: Schema = {"description": description, "content": _json(schema)}
    if headers:
        answer["headers"] = headers
    return answer


def _error(description: str, *codes: str, pattern: str | None = None) -> Schema:
    """An error answer whose `error` is one of `codes` (or matches `pattern`)."""
    choices: list[Schema] = [{"enum": list(codes)}] if codes else []
    if pattern:
        choices.append({"pattern": pattern})
    code = choices[0] if len(choices) == 1 else {"anyOf": choices}
    return _answer(description, {"allOf": [_ref("Error"), {"properties": {"error": code}}]})


def _header(description: str, required: bool = True) -> Schema:
    return {"description": description, "required": required, "schema": {"type": "string"}}


def _unauthorized() -> Schema:
    answer = _error("No valid `Authorization: Bearer` token.", "unauthorized")
    answer["headers"] = {"WWW-Authenticate": _header('Bearer realm="receiver"')}
    return answer


def _unavailable(*, providers: bool = False) -> Schema:
    """503: Redis is unreachable (retry after `Retry-After`), or a provider's transient error."""
    if not providers:
        answer = _error("Redis is unreachable; retry later.", "unavailable")
        answer["headers"] = {"Retry-After": _header("Seconds to wait.")}
        return answer
    answer = _error(
        "Redis is unreachable, or the provider failed transiently (5xx, 429, no answer).",
        "unavailable",
        pattern="^provider_[a-z_]+$",
    )
    answer["headers"] = {"Retry-After": _header("Seconds to wait (Redis only).", False)}
    return answer


def _too_large(limit: str) -> Schema:
    return _error(f"The body is over {limit}; the rest is not read.", "payload_too_large")


def _bad_request(description: str) -> Schema:
    return _error(description, "invalid_request")


def _query(name: str, schema: Schema, description: str) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _job_id() -> Schema:
    return {
        "name": "job_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "minLength": 1},
        "description": "A job id as POST /jobs gives it; any other is 404.",
    }


def _limit(default: int, most: int) -> Schema:
    schema = {"type": "integer", "minimum": 1, "maximum": most, "default": default}
    return _query("limit", schema, f"How many to return, 1 to {most}.")


# -- paths --------------------------------------------------------------------------------


def _callback_paths() -> dict[str, Any]:
    return {
        "/callbacks/decodo": {"post": _decodo_callback()},
        "/callbacks/firecrawl": {"post": _firecrawl_webhook()},
    }


def _decodo_callback() -> Schema:
    return {
        "operationId": "decodo_callback",
        "tags": ["callbacks"],
        "summary": "Decodo's task callback, authenticated by the passthrough token it echoes.",
        "security": [],
        "requestBody": {"required": True, "content": _json(_ref("DecodoCallback"))},
        "responses": {
            "202": _answer(
                "Recorded in Redis (or nothing left to record).",
                _status_answer("accepted", "duplicate", "early", "closed"),
            ),
            "400": _bad_request("Not a JSON object, no task id, or an unknown status."),
            "401": _error(
                "The passthrough token is missing, forged, tampered or expired.",
                "invalid_token",
                "expired_token",
            ),
            "404": _error(
                "No such job, or a task that is not the job's.", "unknown_job", "unknown_task"
            ),
            "413": _too_large("RECEIVER_MAX_BODY"),
            "503": _unavailable(),
        },
    }


def _firecrawl_webhook() -> Schema:
    signature = {"type": "string", "pattern": "^sha256=[0-9a-f]{64}$"}
    return {
        "operationId": "firecrawl_webhook",
        "tags": ["callbacks"],
        "summary": "Firecrawl's webhook: a signed hint that a batch moved; it speeds up the poll.",
        "security": [],
        "parameters": [
            {
                "name": "X-Firecrawl-Signature",
                "in": "header",
                "required": True,
                "schema": signature,
                "description": "HMAC-SHA256 of the raw body, hex.",
            },
        ],
        "requestBody": {"required": True, "content": _json(_ref("FirecrawlWebhook"))},
        "responses": {
            "200": _answer(
                "Taken, already seen, or about a batch no job tracks.",
                _status_answer("accepted", "duplicate", "ignored"),
            ),
            "400": _bad_request("Not a JSON object, or no string webhookId, id and type."),
            "401": _error("The signature is missing or does not match.", "invalid_token"),
            "404": _error("FIRECRAWL_WEBHOOK_SECRET is not set.", "not_configured"),
            "413": _too_large("RECEIVER_MAX_BODY"),
            "503": _unavailable(),
        },
    }


def _service_paths() -> dict[str, Any]:
    text = {"text/plain": {"schema": {"type": "string"}}}
    return {
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "tags": ["service"],
                "summary": "Liveness.",
                "responses": {"200": _answer("The process lives.", _status_answer("ok"))},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "tags": ["service"],
                "summary": "Readiness: Redis answers and a worker heartbeat is fresh.",
                "responses": {
                    "200": _answer("Ready.", _ref("Ready")),
                    "503": _answer("Not ready, and why.", _ref("NotReady")),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "tags": ["service"],
                "summary": "Prometheus metrics, text exposition format.",
                "responses": {"200": {"description": "The metrics.", "content": text}},
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "tags": ["service"],
                "summary": "This document.",
                "responses": {"200": _answer("The OpenAPI document.", _ref("OpenAPIDocument"))},
            }
        },
    }


def _job_paths() -> dict[str, Any]:
    return {
        "/jobs": {"post": _create_job(), "get": _list_jobs()},
        "/jobs/{job_id}": {"get": _show_job(), "delete": _cancel_job()},
        "/jobs/{job_id}/retry": {"post": _retry_job()},
        "/jobs/{job_id}/results": {"get": _job_results()},
    }


def _bearer(operation_id: str, summary: str, responses: Schema, **rest: Any) -> Schema:
    """An operation behind the API token, with its 401 and (unless given) 503 answers."""
    return {
        "operationId": operation_id,
        "tags": ["jobs"],
        "summary": summary,
        "security": [{"bearer": []}],
        **rest,
        "responses": {"401": _unauthorized(), "503": _unavailable(), **responses},
    }


def _create_job() -> Schema:
    location = {"Location": _header("/jobs/{id} of the job.")}
    return _bearer(
        "create_job",
        "Create a job (Decodo), or track a provider's batch (Firecrawl, Dify).",
        {
            "202": _answer("Created.", _ref("Job"), location),
            "200": _answer("That batch is tracked already: its job.", _ref("Job"), location),
            "400": _bad_request("The body is not a valid job request; `message` says why."),
            "413": _too_large(f"{MAX_JOB_BODY} bytes"),
        },
        requestBody={"required": True, "content": _json(_ref("JobRequest"))},
    )


def _list_jobs() -> Schema:
    statuses = {"type": "string", "enum": [s.value for s in JobStatus]}
    cursor = {"type": "string", "description": "The next_cursor of the previous page."}
    return _bearer(
        "list_jobs",
        "Jobs, newest first.",
        {
            "200": _answer("One page of jobs.", _ref("JobList")),
            "400": _bad_request("A bad limit, status, provider or cursor."),
        },
        parameters=[
            _query("status", statuses, "Only jobs with this status."),
            _query("provider", {"type": "string", "enum": list(PROVIDERS)}, "Only this one's."),
            _limit(100, 1000),
            _query("cursor", cursor, "Carry on after the previous page."),
        ],
    )


def _show_job() -> Schema:
    return _bearer(
        "show_job",
        "A job with its tasks (Decodo) or documents (Dify).",
        {
            "200": _answer("The job.", _ref("JobDetail")),
            "404": _error("No such job.", "unknown_job"),
        },
        parameters=[_job_id()],
    )


def _cancel_job() -> Schema:
    provider = "^provider_[a-z_]+$"
    return _bearer(
        "cancel_job",
        "Cancel a job, at the provider too when it can (Firecrawl).",
        {
            "200": _answer("Cancelled.", _ref("Job")),
            "404": _error(
                "No such job, or the provider no longer knows the batch.",
                "unknown_job",
                "provider_not_found",
            ),
            "409": _error(
                "The job already ended, or the provider refused to cancel.",
                "job_ended",
                "provider_conflict",
            ),
            "502": _error("The provider refused the cancellation.", pattern=provider),
            "503": _unavailable(providers=True),
        },
        parameters=[_job_id()],
    )


def _retry_job() -> Schema:
    return _bearer(
        "retry_job",
        "Re-drive a failed, expired or cancelled job's unfinished work.",
        {
            "202": _answer("Running again.", _ref("Job")),
            "404": _error("No such job.", "unknown_job"),
            "409": _error("The job is not failed, expired or cancelled.", "job_not_ended"),
        },
        parameters=[_job_id()],
    )


def _job_results() -> Schema:
    cursor = {"type": "string", "pattern": "^[0-9]+$"}
    return _bearer(
        "job_results",
        "One page of a job's results, keyed by task id (Decodo) or document key (Firecrawl).",
        {
            "200": _answer("Results.", _ref("Results")),
            "400": _bad_request("A bad limit or cursor."),
            "404": _error("No such job.", "unknown_job"),
        },
        parameters=[
            _job_id(),
            _limit(100, 1000),
            _query("cursor", cursor, "The next_cursor of the previous page."),
        ],
    )


def _event_paths() -> dict[str, Any]:
    return {
        "/events": {"get": _events("all_events", "Every job's events, live.", per_job=False)},
        "/jobs/{job_id}/events": {
            "get": _events(
                "job_events",
                "One job's events: `job.state` (the job now) first, then its events until the "
                "final one.",
                per_job=True,
            )
        },
    }


def _events(operation_id: str, summary: str, *, per_job: bool) -> Schema:
    stream = {
        "description": "Server-Sent Events: `id: <event id>`, `event: <type>`, "
        "`data: <Event JSON>`; comment lines keep an idle stream open.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
    resume = {
        "name": "Last-Event-ID",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "pattern": _EVENT_ID},
        "description": "Resume after this event: every later one, none twice.",
    }
    responses: Schema = {
        "200": stream,
        "400": _bad_request("Last-Event-ID is not an event id."),
    }
    if per_job:
        responses["404"] = _error("No such job.", "unknown_job")
    operation = _bearer(
        operation_id,
        summary,
        responses,
        parameters=[_job_id(), resume] if per_job else [resume],
    )
    operation["tags"] = ["events"]
    return operation


# -- schemas ------------------------------------------------------------------------------


def _job_schemas() -> dict[str, Schema]:
    count = {"type": "integer", "minimum": 0}
    time = {"type": "string", "format": "date-time"}
    return {
        "Progress": {
            "type": "object",
            "required": ["completed", "failed", "total"],
            "properties": {"completed": count, "failed": count, "total": count},
            "description": "completed: tasks with stored results; failed: failed or expired.",
        },
        "Job": _job(count, time),
        "JobDetail": {
            "allOf": [
                _ref("Job"),
                {
                    "type": "object",
                    "required": ["tasks"],
                    "properties": {"tasks": {"type": "array", "items": _ref("Task")}},
                },
            ]
        },
        "Task": _task(),
        "JobList": {
            "type": "object",
            "required": ["jobs", "next_cursor"],
            "properties": {
                "jobs": {"type": "array", "items": _ref("Job")},
                "next_cursor": {"type": ["string", "null"], "description": "null: no more."},
            },
            "additionalProperties": False,
        },
        "Results": _results(),
        "Event": _event(count),
    }


def _job(count: Schema, time: Schema) -> Schema:
    return {
        "type": "object",
        "required": ["id", "provider", "status", "progress"],
        "properties": {
            "id": {"type": "string"},
            "provider": {"type": "string", "enum": list(PROVIDERS)},
            "status": {"type": "string", "enum": [s.value for s in JobStatus]},
            "progress": _ref("Progress"),
            "error": {"type": "string", "description": "Why it failed or was cancelled."},
            "external": {"type": "object", "description": "The provider's ids of the job."},
            "provider_status": {"type": "string"},
            "credits_used": {"type": "integer"},
            "expires_at": {"type": "string", "description": "When the provider drops it."},
            "invalid_urls": {"type": "array", "items": {"type": "string"}},
            "documents": count,
            "segments_completed": count,
            "segments_total": count,
            "paused": count,
            "stall_after": {"type": "number", "exclusiveMinimum": 0},
            "created_at": time,
            "updated_at": time,
            "submitted_at": time,
            "finished_at": time,
            "polled_at": time,
            "request": _decodo_summary(),
        },
        # Fields may be added; clients should ignore the ones they do not know.
        "additionalProperties": True,
    }


def _decodo_summary() -> Schema:
    return {
        "type": "object",
        "description": "A Decodo job's request: how many items, url or query, the parameters.",
        "required": ["items", "key", "params"],
        "properties": {
            "items": {"type": "integer", "minimum": 1},
            "key": {"type": "string", "enum": ["url", "query"]},
            "params": {"type": "object"},
        },
        "additionalProperties": False,
    }


def _task() -> Schema:
    return {
        "type": "object",
        "required": ["id", "status"],
        "properties": {
            "id": {"type": "string"},
            "status": {
                "type": "string",
                "description": "Decodo: pending, done, stored, failed or expired; "
                "Dify: the document's indexing status.",
            },
            "input": {"type": "string", "description": "The URL or query it was for."},
            "error": {"type": "string"},
        },
        "additionalProperties": False,
    }


def _results() -> Schema:
    return {
        "type": "object",
        "required": ["job_id", "status", "results", "next_cursor"],
        "properties": {
            "job_id": {"type": "string"},
            "status": {"type": "string", "enum": [s.value for s in JobStatus]},
            "results": {
                "type": "object",
                "description": "Task id or document key -> the provider's JSON, as fetched.",
                "additionalProperties": True,
            },
            "next_cursor": {"type": ["string", "null"], "description": "null: no more."},
        },
        "additionalProperties": False,
    }


def _event(count: Schema) -> Schema:
    return {
        "type": "object",
        "required": ["id", "type", "job_id", "provider", "status", "progress", "at", "detail"],
        "properties": {
            "id": {"type": "string", "pattern": _EVENT_ID},
            "type": {"type": "string", "enum": list(EVENT_TYPES)},
            "job_id": {"type": "string"},
            "provider": {"type": "string", "enum": list(PROVIDERS)},
            "status": {"type": "string", "enum": [s.value for s in JobStatus]},
            "progress": _ref("Progress"),
            "at": {"type": "string", "format": "date-time"},
            "detail": {
                "type": "object",
                "description": "What changed: task_id, reason, source (callback, reconcile).",
            },
        },
    }


def _request_schemas() -> dict[str, Schema]:
    return {
        "JobRequest": {
            "oneOf": [
                _ref("DecodoJobRequest"),
                _ref("FirecrawlTrackRequest"),
                _ref("FirecrawlSubmitRequest"),
                _ref("DifyJobRequest"),
            ]
        },
        "DecodoJobRequest": _decodo_request(),
        "FirecrawlTrackRequest": _firecrawl_track(),
        "FirecrawlSubmitRequest": _firecrawl_submit(),
        "DifyJobRequest": _dify_request(),
        "DecodoCallback": _decodo_callback_body(),
        "FirecrawlWebhook": _firecrawl_webhook_body(),
    }


def _stall_after() -> Schema:
    return {
        "type": "number",
        "exclusiveMinimum": 0,
        "description": "Seconds without progress after which the job fails as stalled.",
    }


def _decodo_request() -> Schema:
    url = {"type": "string", "pattern": "^https?://"}
    query = {"type": "string", "pattern": r"\S"}
    many = {"type": "array", "minItems": 1, "maxItems": MAX_ITEMS}
    return {
        "type": "object",
        "description": "Exactly one of url, query, urls, queries; other keys are Decodo's "
        "own parameters, passed through.",
        "required": ["provider"],
        "properties": {
            "provider": {"const": "decodo"},
            "url": url,
            "query": query,
            "urls": {**many, "items": url},
            "queries": {**many, "items": query},
            "target": {"type": "string"},
            # receiver sets these itself.
            "callback_url": False,
            "passthrough": False,
            "passtrough": False,
        },
        "oneOf": [{"required": [key]} for key in ("url", "query", "urls", "queries")],
        "additionalProperties": True,
    }


def _firecrawl_track() -> Schema:
    return {
        "type": "object",
        "description": "Track a batch scrape submitted elsewhere.",
        "required": ["provider", "batch_id"],
        "properties": {
            "provider": {"const": "firecrawl"},
            "batch_id": {"type": "string", "pattern": _UUID},
            "stall_after": _stall_after(),
        },
        "additionalProperties": False,
    }


def _firecrawl_submit() -> Schema:
    url = {"type": "string", "pattern": "^https?://"}
    options = {name: {"description": "Passed to Firecrawl as given."} for name in sorted(OPTIONS)}
    return {
        "type": "object",
        "description": "Submit a batch scrape (POST /v2/batch/scrape) with Firecrawl's options.",
        "required": ["provider", "urls"],
        "properties": {
            "provider": {"const": "firecrawl"},
            "urls": {"type": "array", "minItems": 1, "maxItems": MAX_URLS, "items": url},
            "stall_after": _stall_after(),
            **options,
        },
        "additionalProperties": False,
    }


def _dify_request() -> Schema:
    safe_id = {"type": "string", "pattern": _SAFE_ID, "not": {"pattern": r"\.\."}}
    return {
        "type": "object",
        "description": "Track the indexing of a batch of documents in a dataset.",
        "required": ["provider", "dataset_id", "batch"],
        "properties": {
            "provider": {"const": "dify"},
            "dataset_id": safe_id,
            "batch": safe_id,
            "stall_after": _stall_after(),
        },
        "additionalProperties": False,
    }


def _decodo_callback_body() -> Schema:
    task_id = {
        "oneOf": [{"type": "string", "pattern": _TASK_ID}, {"type": "integer", **_INT_RANGE}]
    }
    token = {"type": "string", "minLength": 1}
    return {
        "type": "object",
        "description": "Decodo's task, echoing our passthrough token. `id` wins over `task_id`, "
        "`passthrough` over the docs' spelling `passtrough`; other keys are ignored.",
        "properties": {
            "id": task_id,
            "task_id": task_id,
            "status": {"enum": ["done", "faulted", "failed", None]},
            "passthrough": token,
            "passtrough": token,
        },
        "allOf": [
            {"anyOf": [{"required": ["passthrough"]}, {"required": ["passtrough"]}]},
            {"anyOf": [{"required": ["id"]}, {"required": ["task_id"]}]},
        ],
        "additionalProperties": True,
    }


def _firecrawl_webhook_body() -> Schema:
    text = {"type": "string", "minLength": 1}
    return {
        "type": "object",
        "description": "Firecrawl's webhook event; only webhookId, id and type are read.",
        "required": ["webhookId", "id", "type"],
        "properties": {"webhookId": text, "id": text, "type": text},
        "additionalProperties": True,
    }


def _answer_schemas() -> dict[str, Schema]:
    return {
        "Error": {
            "type": "object",
            "required": ["error", "message"],
            "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
            "additionalProperties": False,
        },
        "Ready": {
            "type": "object",
            "required": ["ready", "workers"],
            "properties": {"ready": {"const": True}, "workers": {"type": "integer", "minimum": 1}},
            "additionalProperties": False,
        },
        "NotReady": {
            "type": "object",
            "required": ["ready", "reason"],
            "properties": {"ready": {"const": False}, "reason": {"type": "string"}},
            "additionalProperties": False,
        },
        "OpenAPIDocument": {
            "type": "object",
            "required": ["openapi", "info", "paths"],
            "properties": {"openapi": {"type": "string"}},
        },
    }


def _status_answer(*statuses: str) -> Schema:
    return {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string", "enum": list(statuses)}},
        "additionalProperties": False,
    }
