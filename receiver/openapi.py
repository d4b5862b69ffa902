"""The OpenAPI 3.1 document of the HTTP API, served at GET /openapi.json."""

from __future__ import annotations

from typing import Any

from receiver import __version__
from receiver.api import MAX_JOB_BODY
from receiver.callbacks import TASK_ID
from receiver.events import STREAM_ID
from receiver.registry import PROVIDERS
from receiver.schemas import Schema, enum, obj, ref
from receiver.settings import DURABILITY_LEVELS
from receiver.store import JobStatus

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
_TASK_ID = f"^{TASK_ID.pattern}$"
# The JSON integers the callback parser reads as integers (wider ones become floats).
_INT_RANGE = {"minimum": -(2**63), "maximum": 2**64 - 1}
# An entry id of a stream, or with several partitions one per partition, comma-separated:
# an event's id, and the cursor of GET /events.
_ID = STREAM_ID.pattern.replace("(", "").replace(")", "")
_STREAM_ID = f"^{_ID}(,{_ID})*$"
# The next_cursor of GET /jobs: the same, where a partition not yet read is `+`.
_JOBS_CURSOR = f"^({_ID}|\\+)(,({_ID}|\\+))*$"
# The `error` of a provider's failure passed on: provider_<reason>.
_PROVIDER_ERROR = "^provider_[a-z_]+$"


def document() -> dict[str, Any]:
    """The whole document; a fresh dict on every call, so callers may change theirs."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "receiver",
            "version": __version__,
            "description": "Provider callbacks, a job API, health, metrics and events. "
            "Every error is JSON {error, message}.",
        },
        "paths": {**_callback_paths(), **_service_paths(), **_job_paths(), **_event_paths()},
        "components": {
            "schemas": {**_job_schemas(), **_request_schemas(), **_answer_schemas()},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "RECEIVER_API_TOKEN"}
            },
        },
    }


# -- building blocks ----------------------------------------------------------------------


def _statuses() -> Schema:
    return enum([s.value for s in JobStatus])


def _answer(description: str, schema: Schema, headers: Schema | None = None) -> Schema:
    answer: Schema = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    return {**answer, "headers": headers} if headers else answer


def _error(
    description: str, *codes: str, pattern: str = "", headers: Schema | None = None
) -> Schema:
    """An error answer whose `error` is one of `codes`, or matches `pattern`."""
    choices: list[Schema] = [{"enum": list(codes)}] if codes else []
    choices += [{"pattern": pattern}] if pattern else []
    code = choices[0] if len(choices) == 1 else {"anyOf": choices}
    schema = {"allOf": [ref("Error"), {"properties": {"error": code}}]}
    return _answer(description, schema, headers)


def _header(description: str, required: bool = True) -> Schema:
    return {"description": description, "required": required, "schema": {"type": "string"}}


def _unavailable() -> Schema:
    retry_after = {"Retry-After": _header("Seconds to wait.")}
    return _error("Redis is unreachable; retry later.", "unavailable", headers=retry_after)


def _too_large(limit: str) -> Schema:
    return _error(f"The body is over {limit}; the rest is not read.", "payload_too_large")


def _bad_request(description: str) -> Schema:
    return _error(description, "invalid_request")


def _unknown_job() -> Schema:
    return _error("No such job.", "unknown_job")


def _parameter(where: str, name: str, schema: Schema, description: str) -> Schema:
    required = where == "path"
    return {
        "name": name,
        "in": where,
        "required": required,
        "schema": schema,
        "description": description,
    }


def _job_id() -> Schema:
    schema = {"type": "string", "minLength": 1}
    return _parameter("path", "job_id", schema, "A job id as POST /jobs gave it; any other is 404.")


def _limit(default: int, most: int) -> Schema:
    schema = {"type": "integer", "minimum": 1, "maximum": most, "default": default}
    return _parameter("query", "limit", schema, f"How many to return, 1 to {most}.")


def _operation(tag: str, name: str, summary: str, responses: Schema, **more: Any) -> Schema:
    return {"operationId": name, "tags": [tag], "summary": summary, **more, "responses": responses}


def _bearer(name: str, summary: str, responses: Schema, **more: Any) -> Schema:
    """An operation behind the API token, with its 401 and (unless given) 503 answers."""
    unauthorized = _error(
        "No valid `Authorization: Bearer` token.",
        "unauthorized",
        headers={"WWW-Authenticate": _header('Bearer realm="receiver"')},
    )
    answers = {"401": unauthorized, "503": _unavailable(), **responses}
    return _operation("jobs", name, summary, answers, security=[{"bearer": []}], **more)


def _body(name: str) -> Schema:
    return {"required": True, "content": {"application/json": {"schema": ref(name)}}}


# -- paths --------------------------------------------------------------------------------


def _callback_paths() -> dict[str, Any]:
    return {
        "/callbacks/decodo": {"post": _decodo_callback()},
        "/callbacks/firecrawl": {"post": _firecrawl_webhook()},
    }


def _decodo_callback() -> Schema:
    acknowledged = _status_answer("accepted", "duplicate", "early", "closed")
    responses = {
        "202": _answer("Recorded in Redis, or nothing is left to record.", acknowledged),
        "400": _bad_request("Not a JSON object, no task id, or an unknown status."),
        "401": _error(
            "The token is missing, forged, tampered or expired.", "invalid_token", "expired_token"
        ),
        "404": _error("No such job, or not one of its tasks.", "unknown_job", "unknown_task"),
        "413": _too_large("RECEIVER_MAX_BODY"),
        "503": _unavailable(),
    }
    summary = "Decodo's task callback, authenticated by the passthrough token it echoes."
    return _operation(
        "callbacks",
        "decodo_callback",
        summary,
        responses,
        security=[],
        requestBody=_body("DecodoCallback"),
    )


def _firecrawl_webhook() -> Schema:
    signature = {"type": "string", "pattern": "^sha256=[0-9a-f]{64}$"}
    header = _parameter(
        "header",
        "X-Firecrawl-Signature",
        signature,
        "HMAC-SHA256 of the raw body, as Firecrawl's cloud signs it; checked when "
        "FIRECRAWL_WEBHOOK_SECRET is set. A self-hosted server sends none.",
    )
    token = _parameter(
        "query",
        "token",
        {"type": "string", "minLength": 1},
        "The job's signed token, in the webhook URL receiver gave Firecrawl with the batch.",
    )
    responses = {
        "200": _answer(
            "Taken, already seen, or about a batch no job tracks.",
            _status_answer("accepted", "duplicate", "ignored"),
        ),
        "400": _bad_request("Not a JSON object, or no string id and type."),
        "401": _error(
            "No valid token and no valid signature; or a token that is forged, expired or "
            "another job's; or a signature that does not match.",
            "invalid_token",
            "expired_token",
        ),
        "413": _too_large("RECEIVER_MAX_BODY"),
        "503": _unavailable(),
    }
    return _operation(
        "callbacks",
        "firecrawl_webhook",
        "Firecrawl's webhook, authenticated by the token in its URL or by its signature: "
        "a hint that a batch moved, which makes its next poll due now.",
        responses,
        security=[],
        parameters=[token, header],
        requestBody=_body("FirecrawlWebhook"),
    )


def _service_paths() -> dict[str, Any]:
    text = {
        "description": "Prometheus text format.",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
    readiness = {
        "200": _answer("Ready.", ref("Ready")),
        "503": _answer("Not ready, and why.", ref("NotReady")),
    }
    return {
        "/healthz": {
            "get": _operation(
                "service", "healthz", "Liveness.", {"200": _answer("Alive.", _status_answer("ok"))}
            )
        },
        "/readyz": {
            "get": _operation(
                "service", "readyz", "Redis answers and has room, and a worker beats.", readiness
            )
        },
        "/metrics": {"get": _operation("service", "metrics", "Prometheus metrics.", {"200": text})},
        "/openapi.json": {
            "get": _operation(
                "service",
                "openapi",
                "This document.",
                {"200": _answer("The document.", ref("OpenAPI"))},
            )
        },
    }


def _job_paths() -> dict[str, Any]:
    return {
        "/jobs": {"post": _create_job(), "get": _list_jobs()},
        "/jobs/{job_id}": {"get": _show_job(), "delete": _cancel_job()},
        "/jobs/{job_id}/retry": {"post": _retry_job()},
        "/jobs/{job_id}/results": {"get": _job_results()},
    }


def _create_job() -> Schema:
    location = {"Location": _header("/jobs/{id} of the job.")}
    responses = {
        "202": _answer("Created.", ref("Job"), location),
        "200": _answer("That batch is tracked already: its job.", ref("Job"), location),
        "400": _bad_request("Not a valid job request; `message` says why."),
        "413": _too_large(f"{MAX_JOB_BODY} bytes"),
    }
    summary = "Create a job (Decodo, Firecrawl), or track a batch (Firecrawl, Dify)."
    return _bearer("create_job", summary, responses, requestBody=_body("JobRequest"))


def _list_jobs() -> Schema:
    responses = {
        "200": _answer("One page of jobs.", ref("JobList")),
        "400": _bad_request("A bad limit, status, provider or cursor."),
    }
    parameters = [
        _parameter("query", "status", _statuses(), "Only jobs with this status."),
        _parameter("query", "provider", enum(list(PROVIDERS)), "Only this provider's jobs."),
        _limit(100, 1000),
        _parameter(
            "query",
            "cursor",
            {"type": "string", "pattern": _JOBS_CURSOR},
            "The previous page's next_cursor.",
        ),
    ]
    return _bearer("list_jobs", "Jobs, newest first.", responses, parameters=parameters)


def _show_job() -> Schema:
    responses = {"200": _answer("The job.", ref("JobDetail")), "404": _unknown_job()}
    summary = "A job with its tasks (Decodo) or documents (Dify)."
    return _bearer("show_job", summary, responses, parameters=[_job_id()])


def _cancel_job() -> Schema:
    responses = {
        "200": _answer("Cancelled now: nothing was running at the provider.", ref("CancelledJob")),
        "202": _answer(
            "Firecrawl was asked to stop (its answer is the job's provider_status); the job "
            "ends `cancelled` once Firecrawl settles, with the pages in flight collected.",
            ref("CancelledJob"),
        ),
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
        "502": _error("The provider refused the cancellation.", pattern=_PROVIDER_ERROR),
        "503": _error(
            "Redis is unreachable (with Retry-After), or the provider failed transiently.",
            "unavailable",
            pattern=_PROVIDER_ERROR,
            headers={"Retry-After": _header("Seconds to wait (Redis only).", False)},
        ),
    }
    summary = "Cancel a job, at the provider too when it can (Firecrawl)."
    return _bearer("cancel_job", summary, responses, parameters=[_job_id()])


def _retry_job() -> Schema:
    responses = {
        "202": _answer("Running again.", ref("Job")),
        "404": _unknown_job(),
        "409": _error("The job is not failed, expired or cancelled.", "job_not_ended"),
    }
    summary = "Re-drive a failed, expired or cancelled job's unfinished work."
    return _bearer("retry_job", summary, responses, parameters=[_job_id()])


def _job_results() -> Schema:
    responses = {
        "200": _answer("One page of results.", ref("Results")),
        "400": _bad_request("A bad limit or cursor."),
        "404": _unknown_job(),
    }
    cursor = {"type": "string", "pattern": "^[0-9]+$"}
    parameters = [
        _job_id(),
        _limit(100, 1000),
        _parameter("query", "cursor", cursor, "The previous page's next_cursor."),
    ]
    summary = "A job's results, keyed by task id (Decodo) or document key (Firecrawl)."
    return _bearer("job_results", summary, responses, parameters=parameters)


def _event_paths() -> dict[str, Any]:
    every = "Every job's events, from now or after Last-Event-ID."
    one = (
        "One job's events: first `job.state` (`data` is the Job), then its events to the final one."
    )
    return {
        "/events": {"get": _events("all_events", every, per_job=False)},
        "/jobs/{job_id}/events": {"get": _events("job_events", one, per_job=True)},
    }


def _events(name: str, summary: str, *, per_job: bool) -> Schema:
    stream = {
        "description": "Server-Sent Events: `id: <event id>`, `event: <type>`, `data: <Event>`; "
        "comment lines keep an idle stream open.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
    resume = _parameter(
        "header",
        "Last-Event-ID",
        {"type": "string", "pattern": _STREAM_ID},
        "Resume after this event: every later one, none twice.",
    )
    responses: Schema = {"200": stream, "400": _bad_request("Last-Event-ID is not an event id.")}
    if per_job:
        responses["404"] = _unknown_job()
    parameters = [_job_id(), resume] if per_job else [resume]
    return {**_bearer(name, summary, responses, parameters=parameters), "tags": ["events"]}


# -- schemas ------------------------------------------------------------------------------


def _count() -> Schema:
    return {"type": "integer", "minimum": 0}


def _job_schemas() -> dict[str, Schema]:
    count = _count()
    cursor = {"type": ["string", "null"], "description": "null: no more."}
    tasks = obj(
        {"tasks": {"type": "array", "items": ref("Task")}}, ["tasks"], additionalProperties=True
    )
    return {
        "Progress": obj(
            {"completed": count, "failed": count, "total": count},
            ["completed", "failed", "total"],
            description="completed: tasks with stored results; failed: failed or expired.",
        ),
        "Job": _job(),
        "JobDetail": {"allOf": [ref("Job"), tasks]},
        "CancelledJob": {"allOf": [ref("Job"), _cancel_answer()]},
        "Task": obj(
            {
                "id": {"type": "string"},
                "status": {
                    "type": "string",
                    "description": "Decodo: pending, done, stored, failed or expired; "
                    "Dify: the document's indexing status.",
                },
                "input": {"type": "string", "description": "The URL or query it was for."},
                "error": {"type": "string"},
            },
            ["id", "status"],
        ),
        "JobList": obj(
            {"jobs": {"type": "array", "items": ref("Job")}, "next_cursor": cursor},
            ["jobs", "next_cursor"],
        ),
        "Results": obj(
            {
                "job_id": {"type": "string"},
                "status": _statuses(),
                "results": {
                    "type": "object",
                    "description": "Task id or document key -> the provider's JSON.",
                },
                "next_cursor": cursor,
            },
            ["job_id", "status", "results", "next_cursor"],
        ),
        "Event": _event(),
    }


def _cancel_answer() -> Schema:
    cancel = obj(
        {
            "at_provider": {
                "type": "boolean",
                "description": "Whether the provider was asked to stop the job's work.",
            },
            "message": {
                "type": "string",
                "description": "What the provider answered, or why nothing was asked of it.",
            },
        },
        ["at_provider", "message"],
    )
    return obj({"cancel": cancel}, ["cancel"], additionalProperties=True)


def _job() -> Schema:
    count, time = _count(), {"type": "string", "format": "date-time"}
    request = obj(
        {
            "items": {"type": "integer", "minimum": 1},
            "key": enum(["url", "query"]),
            "params": {"type": "object", "description": "Decodo's own parameters, as given."},
        },
        ["items", "key", "params"],
        description="A Decodo job's request: how many items, url or query, the parameters.",
    )
    properties = {
        "id": {"type": "string"},
        "provider": enum(list(PROVIDERS)),
        "status": _statuses(),
        "progress": ref("Progress"),
        "error": {"type": "string", "description": "Why it failed or was cancelled."},
        "external": {"type": "object", "description": "The provider's ids of the job."},
        "provider_status": {"type": "string"},
        "credits_used": {"type": "integer"},
        "expires_at": {"type": "string", "description": "When the provider drops it."},
        "invalid_urls": {"type": "array", "items": {"type": "string"}},
        **dict.fromkeys(
            ("documents", "segments_completed", "segments_total", "paused", "documents_missing"),
            count,
        ),
        "stages": {
            "type": "object",
            "additionalProperties": count,
            "description": "Dify: how many documents are in each indexing stage.",
        },
        "failures": {
            "type": "array",
            "items": obj(
                {
                    "url": {"type": "string"},
                    "code": {"type": ["string", "null"]},
                    "error": {"type": "string"},
                },
                ["url", "code", "error"],
            ),
            "description": "Firecrawl: the failed pages, as its errors route lists them.",
        },
        "missing_urls": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Firecrawl: pages scraped whose documents it did not serve.",
        },
        "last_error": {
            "type": "string",
            "description": "While work of the job is in retry: its last error, on one line.",
        },
        "consecutive_failures": {"type": "integer", "minimum": 1},
        "stall_after": {"type": "number", "exclusiveMinimum": 0},
        **dict.fromkeys(
            (
                "created_at",
                "updated_at",
                "submitted_at",
                "finished_at",
                "polled_at",
                "last_error_at",
                "cancel_requested_at",
            ),
            time,
        ),
        "request": request,
    }
    # Fields may be added: clients ignore the ones they do not know.
    return obj(properties, ["id", "provider", "status", "progress"], additionalProperties=True)


def _event() -> Schema:
    properties = {
        "id": {"type": "string", "pattern": _STREAM_ID},
        "type": enum(EVENT_TYPES),
        "job_id": {"type": "string"},
        "provider": enum(list(PROVIDERS)),
        "status": _statuses(),
        "progress": ref("Progress"),
        "at": {"type": "string", "format": "date-time"},
        "detail": {"type": "object", "description": "What changed: task_id, reason, source."},
    }
    return obj(properties, list(properties), additionalProperties=True)


def _request_schemas() -> dict[str, Schema]:
    requests: dict[str, Schema] = {}
    for provider in PROVIDERS.values():
        requests |= provider.request_schemas()
    return {
        "JobRequest": {"oneOf": [ref(name) for name in requests]},
        **requests,
        "DecodoCallback": _decodo_callback_body(),
        "FirecrawlWebhook": obj(
            dict.fromkeys(
                ("webhookId", "id", "type"), {"type": "string", "minLength": 1, "maxLength": 200}
            ),
            ["id", "type"],
            additionalProperties=True,
            description="Firecrawl's webhook event: `id` is the batch, `type` the event "
            "(batch_scrape.completed and .failed make a poll due). `webhookId` (the cloud's, "
            "absent from a self-hosted server's) tells deliveries apart; without it an "
            "identical body is a repeat. Other keys are not read.",
        ),
    }


def _decodo_callback_body() -> Schema:
    task_id = {
        "oneOf": [{"type": "string", "pattern": _TASK_ID}, {"type": "integer", **_INT_RANGE}]
    }
    token = {"type": "string", "minLength": 1}
    properties = {
        "id": task_id,
        "task_id": task_id,
        "status": {"enum": ["done", "faulted", "failed", None]},
        # The short variant's only word on the outcome: a 2xx is done, any other faulted.
        "status_code": {
            "oneOf": [{"type": "integer"}, {"type": "string", "pattern": "^[0-9]{1,3}$"}]
        },
        "passthrough": token,
        "passtrough": token,
    }
    return obj(
        properties,
        allOf=[
            {"anyOf": [{"required": ["passthrough"]}, {"required": ["passtrough"]}]},
            {"anyOf": [{"required": ["id"]}, {"required": ["task_id"]}]},
        ],
        additionalProperties=True,
        description="Decodo's task, echoing our passthrough token. `id` wins over `task_id` and "
        "`passthrough` over the docs' spelling `passtrough`; other keys are not read.",
    )


def _answer_schemas() -> dict[str, Schema]:
    return {
        "Error": obj(
            {"error": {"type": "string"}, "message": {"type": "string"}}, ["error", "message"]
        ),
        "Ready": obj(
            {
                "ready": {"const": True},
                "workers": {"type": "integer", "minimum": 1},
                "durability": enum(DURABILITY_LEVELS),
            },
            ["ready", "workers", "durability"],
        ),
        "NotReady": obj(
            {
                "ready": {"const": False},
                "missing": enum(("redis", "worker")),
                "reason": {"type": "string"},
                "durability": enum(DURABILITY_LEVELS),
            },
            ["ready", "missing", "reason", "durability"],
        ),
        "OpenAPI": obj(
            {"openapi": {"type": "string"}}, ["openapi", "info", "paths"], additionalProperties=True
        ),
    }


def _status_answer(*statuses: str) -> Schema:
    return obj({"status": enum(statuses)}, ["status"])
