"""The job API: create, list, show, results and cancel."""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from receiver.errors import InvalidRequest, NotFound, Rejected, UnknownJob
from receiver.jobs.base import Provider
from receiver.registry import PROVIDERS
from receiver.store import JobStatus, cursors, iso
from receiver.web import Services, error_response, json_response, parse_json_object, read_body

# Bytes a POST /jobs body may hold (100,000 URLs fit).
MAX_JOB_BODY = 32 * 1024 * 1024
# A whole number in ASCII digits (str.isdigit also takes "²").
_WHOLE = re.compile(r"[0-9]{1,19}")
# Job hash fields shown as they are.
_SHOWN = (
    "id",
    "provider",
    "status",
    "progress",
    "error",
    "external",
    "provider_status",
    "credits_used",
    "expires_at",
    "invalid_urls",
    "documents",
    "segments_completed",
    "segments_total",
    "paused",
    "stages",
    "failures",
    "documents_missing",
    "missing_urls",
    "last_error",
    "consecutive_failures",
    "stall_after",
)


async def create_job(request: Request, services: Services) -> Response:
    body = parse_json_object(await read_body(request, MAX_JOB_BODY))
    provider = _provider(body.get("provider"))
    missing = provider.missing_credential(services.settings)
    if missing is not None:
        raise InvalidRequest(
            f"{provider.name} jobs need {missing}: set it in the receiver's environment"
        )
    job_id, created = await provider.create(body, services.store)
    job = await services.store.get_job(job_id)
    status = 202 if created else 200
    return json_response(public_job(job or {}), status, {"Location": f"/jobs/{job_id}"})


def _provider(name: object) -> Provider:
    provider = PROVIDERS.get(name) if isinstance(name, str) else None
    if provider is None:
        raise InvalidRequest(f"provider must be one of: {', '.join(PROVIDERS)}")
    return provider


async def list_jobs(request: Request, services: Services) -> Response:
    """Newest first; `status` and `provider` filter; `next_cursor` pages on."""
    query = request.query_params
    status, provider = query.get("status"), query.get("provider")
    if status is not None and status not in {s.value for s in JobStatus}:
        raise InvalidRequest("status must be one of: " + ", ".join(s.value for s in JobStatus))
    if provider is not None and provider not in PROVIDERS:
        raise InvalidRequest(f"provider must be one of: {', '.join(PROVIDERS)}")
    jobs, cursor = await services.store.list_jobs(
        status=status,
        provider=provider,
        limit=_limit(request, default=100, most=1000),
        cursor=_jobs_cursor(query.get("cursor"), services.store.keys.partitions),
    )
    return json_response({"jobs": [public_job(job) for job in jobs], "next_cursor": cursor})


def _jobs_cursor(raw: str | None, partitions: int) -> str | None:
    if raw is None:
        return None
    try:
        cursors.parse(raw, partitions, top=True)
    except ValueError:
        raise InvalidRequest("cursor must be a next_cursor this API gave") from None
    return raw


def _limit(request: Request, default: int, most: int) -> int:
    raw = request.query_params.get("limit", str(default))
    if not _WHOLE.fullmatch(raw) or not 0 < int(raw) <= most:
        raise InvalidRequest(f"limit must be a whole number from 1 to {most}")
    return int(raw)


async def get_job(request: Request, services: Services) -> Response:
    job = await _job(request, services)
    body = public_job(job)
    body["tasks"] = await services.store.get_task_details(job["id"])
    return json_response(body)


async def get_results(request: Request, services: Services) -> Response:
    """One page of results (about `limit`), keyed by task id or document key."""
    job = await _job(request, services)
    raw_cursor = request.query_params.get("cursor", "0")
    if not _WHOLE.fullmatch(raw_cursor) or int(raw_cursor) >= 2**63:
        raise InvalidRequest("cursor must be a next_cursor this API gave")
    limit = _limit(request, default=100, most=1000)
    results, cursor = await services.store.results_page(job["id"], int(raw_cursor), limit)
    return json_response(
        {
            "job_id": job["id"],
            "status": job["status"],
            "results": results,
            "next_cursor": str(cursor) if cursor else None,
        }
    )


async def retry_job(request: Request, services: Services) -> Response:
    """Re-drive a failed, expired or cancelled job's unfinished work."""
    job = await _job(request, services)
    outcome = await services.store.reopen_job(job["id"])
    if outcome == "not_ended":
        return error_response(409, "job_not_ended", f"the job is {job['status']}: nothing to retry")
    reopened = await services.store.get_job(job["id"])
    return json_response(public_job(reopened or job), 202)


async def cancel_job(request: Request, services: Services) -> Response:
    """Cancel at the provider when it can (Firecrawl), and end the job `cancelled`; or,
    when the provider still delivers what was under way, once that has landed (202)."""
    job = await _job(request, services)
    if JobStatus(job["status"]).terminal:
        return error_response(409, "job_ended", f"the job already ended {job['status']}")
    provider = PROVIDERS[job["provider"]]
    try:
        cancelled = await provider.cancel(job, services.workflows[provider.name])
    except NotFound as exc:
        return error_response(404, "provider_not_found", f"{provider.name}: {exc}")
    except Rejected as exc:
        if exc.status == 409:
            return error_response(409, "provider_conflict", f"{provider.name}: {exc}")
        raise
    store = services.store
    if cancelled.provider_status is not None:
        await store.update_job(job["id"], {"provider_status": cancelled.provider_status})
    if cancelled.ends_now:
        outcome = await store.finish_job(job["id"], JobStatus.CANCELLED, "cancelled by a user")
        if outcome != "finished":
            return error_response(409, "job_ended", "the job ended meanwhile")
    answer = public_job(await store.get_job(job["id"]) or job)
    answer["cancel"] = {"at_provider": cancelled.at_provider, "message": cancelled.message}
    return json_response(answer, 200 if cancelled.ends_now else 202)


async def _job(request: Request, services: Services) -> dict[str, Any]:
    job_id = request.path_params["job_id"]
    job = await services.store.get_job(job_id)
    if job is None:
        raise UnknownJob(f"no job {job_id}")
    return job


def public_job(job: dict[str, Any]) -> dict[str, Any]:
    """A job as the API shows it: no internal counters or request internals."""
    shown: dict[str, Any] = {key: job[key] for key in _SHOWN if key in job}
    for key in (
        "created_at",
        "updated_at",
        "submitted_at",
        "finished_at",
        "polled_at",
        "last_error_at",
    ):
        if key in job:
            shown[key] = iso(job[key])
    if not shown.get("consecutive_failures"):  # nothing in retry: no stale error shown
        shown.pop("consecutive_failures", None)
        shown.pop("last_error", None)
        shown.pop("last_error_at", None)
    provider = PROVIDERS.get(job.get("provider", ""))
    if provider is not None:
        shown |= provider.public(job)
    return shown
