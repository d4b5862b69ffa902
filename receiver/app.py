"""The web app: Decodo callbacks, the job API, health."""

from __future__ import annotations

import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver import store as store_module
from receiver.errors import InvalidRequest, InvalidToken, PayloadTooLarge, ReceiverError, UnknownJob
from receiver.ingest import CallbackCommitter
from receiver.jobs.decodo import parse_request
from receiver.keys import Keys
from receiver.settings import Settings
from receiver.store import JobStatus, Store, new_job_id
from receiver.tokens import PassthroughSigner

log = logging.getLogger(__name__)

# Bytes a POST /jobs body may hold (100,000 URLs fit).
MAX_JOB_BODY = 32 * 1024 * 1024
# Codes of the callbacks script that mean "recorded, or nothing left to record": 202.
_ACKNOWLEDGED = frozenset(
    {store_module.ACCEPTED, store_module.DUPLICATE, store_module.EARLY, store_module.CLOSED}
)
# Task statuses a Decodo callback may carry, mapped to what we record.
_CALLBACK_STATUS = {"done": "done", "faulted": "faulted", "failed": "faulted"}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


def error_response(status: int, code: str, message: str) -> Response:
    return json_response({"error": code, "message": message}, status)


@dataclass
class Services:
    """What the routes share, opened in the lifespan."""

    settings: Settings
    redis: Redis
    store: Store
    signer: PassthroughSigner
    committer: CallbackCommitter


def create_app(
    settings: Settings,
    *,
    redis_factory: Callable[[], Redis] | None = None,
    background: Callable[[Services], contextlib.AbstractAsyncContextManager[None]] | None = None,
) -> Starlette:
    """The ASGI app. `background` runs beside it for its lifetime (the worker, in `run`)."""
    services: dict[str, Services] = {}

    def current() -> Services:
        return services["s"]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        redis = (
            redis_factory()
            if redis_factory
            else Redis.from_url(settings.redis_url or "", health_check_interval=30)
        )
        store = Store(redis, _keys(settings), events_maxlen=settings.events_maxlen)
        signer = PassthroughSigner(settings.secret_keys, settings.token_max_age)
        services["s"] = Services(settings, redis, store, signer, CallbackCommitter(store))
        try:
            if background is None:
                yield
            else:
                async with background(services["s"]):
                    yield
        finally:
            await redis.aclose()

    routes = [
        Route("/callbacks/decodo", _handler(current, decodo_callback), methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", _handler(current, readyz), methods=["GET"]),
        Route("/jobs", _authed(current, create_job), methods=["POST"]),
        Route("/jobs", _authed(current, list_jobs), methods=["GET"]),
        Route("/jobs/{job_id}", _authed(current, get_job), methods=["GET"]),
        Route("/jobs/{job_id}", _authed(current, cancel_job), methods=["DELETE"]),
        Route("/jobs/{job_id}/results", _authed(current, get_results), methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def _keys(settings: Settings) -> Keys:
    return Keys(settings.key_prefix)


Endpoint = Callable[[Request, Services], Awaitable[Response]]


def _handler(
    current: Callable[[], Services], endpoint: Endpoint
) -> Callable[[Request], Awaitable[Response]]:
    async def handle(request: Request) -> Response:
        try:
            return await endpoint(request, current())
        except ReceiverError as exc:
            return _error_for(exc)
        except RedisError as exc:
            log.warning("redis unavailable", extra={"error": type(exc).__name__})
            return json_response(
                {"error": "unavailable", "message": "storage is unavailable; retry later"},
                503,
                {"Retry-After": "1"},
            )

    return handle


def _authed(
    current: Callable[[], Services], endpoint: Endpoint
) -> Callable[[Request], Awaitable[Response]]:
    async def check(request: Request, services: Services) -> Response:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        expected = services.settings.api_token
        if (
            scheme.lower() != "bearer"
            or not expected
            or not hmac.compare_digest(token.strip().encode(), expected.encode())
        ):
            return json_response(
                {"error": "unauthorized", "message": "Authorization: Bearer <token> required"},
                401,
                {"WWW-Authenticate": 'Bearer realm="receiver"'},
            )
        return await endpoint(request, services)

    return _handler(current, check)


def _error_for(exc: ReceiverError) -> Response:
    status = getattr(exc, "status_code", 500)
    code = getattr(exc, "code", "error")
    return error_response(status, code, str(exc))


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing (413) anything above `limit` bytes without reading the rest."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body over the {limit} byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body over the {limit} byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json_object(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequest("body is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidRequest("body must be a JSON object")
    return data


# -- callbacks ----------------------------------------------------------------------------


async def decodo_callback(request: Request, services: Services) -> Response:
    body = parse_json_object(await read_body(request, services.settings.max_body))
    token = body.get("passthrough", body.get("passtrough"))
    if token is None:
        raise InvalidToken("missing passthrough token")
    job_id = services.signer.verify(token)
    task_id = _task_id(body)
    status = _callback_status(body)
    code = await services.committer.commit((job_id, task_id, status))
    if code in _ACKNOWLEDGED:
        return json_response({"status": code}, 202)
    if code == store_module.UNKNOWN_JOB:
        raise UnknownJob("no such job")
    return error_response(404, "unknown_task", "the task is not one of this job's tasks")


def _task_id(body: dict[str, Any]) -> str:
    raw = body.get("id", body.get("task_id"))
    if isinstance(raw, bool) or not isinstance(raw, str | int) or raw == "":
        raise InvalidRequest("the callback has no task id (id or task_id)")
    task_id = str(raw)
    if len(task_id) > 64 or not task_id.isascii() or not task_id.isprintable():
        raise InvalidRequest("the task id is not a Decodo task id")
    return task_id


def _callback_status(body: dict[str, Any]) -> str:
    raw = body.get("status")
    if raw is None:  # the short variant {task_id, status_code}: results will tell
        return "done"
    if not isinstance(raw, str) or raw not in _CALLBACK_STATUS:
        raise InvalidRequest("status must be done or faulted")
    return _CALLBACK_STATUS[raw]


# -- health -------------------------------------------------------------------------------


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request, services: Services) -> Response:
    redis, keys = services.redis, services.store.keys
    try:
        await redis.ping()
        fresh_after = time.time() - 3 * services.settings.heartbeat_interval
        workers = await redis.zcount(keys.heartbeats, fresh_after, "+inf")
    except RedisError as exc:
        return json_response({"ready": False, "reason": f"redis: {type(exc).__name__}"}, 503)
    if not workers:
        return json_response({"ready": False, "reason": "no worker heartbeat"}, 503)
    return json_response({"ready": True, "workers": workers})


# -- jobs ---------------------------------------------------------------------------------


async def create_job(request: Request, services: Services) -> Response:
    body = parse_json_object(await read_body(request, MAX_JOB_BODY))
    provider = body.get("provider")
    if provider != "decodo":
        raise InvalidRequest("provider must be one of: decodo")
    decodo = parse_request(body)
    job_id = new_job_id()
    await services.store.create_job(
        job_id, "decodo", total=len(decodo.items), params=decodo.as_params(), work="submit"
    )
    job = await services.store.get_job(job_id)
    return json_response(public_job(job or {}), 202, {"Location": f"/jobs/{job_id}"})


async def list_jobs(request: Request, services: Services) -> Response:
    limit = min(int(request.query_params.get("limit", "100") or 100), 1000)
    ids = await services.store.list_job_ids(limit)
    jobs = [await services.store.get_job(job_id) for job_id in ids]
    return json_response({"jobs": [public_job(job) for job in jobs if job]})


async def get_job(request: Request, services: Services) -> Response:
    job_id = request.path_params["job_id"]
    job = await services.store.get_job(job_id)
    if job is None:
        raise UnknownJob(f"no job {job_id}")
    body = public_job(job)
    body["tasks"] = await services.store.get_task_details(job_id)
    return json_response(body)


async def get_results(request: Request, services: Services) -> Response:
    job_id = request.path_params["job_id"]
    job = await services.store.get_job(job_id)
    if job is None:
        raise UnknownJob(f"no job {job_id}")
    results = await services.store.get_results(job_id)
    return json_response({"job_id": job_id, "status": job["status"], "results": results})


async def cancel_job(request: Request, services: Services) -> Response:
    job_id = request.path_params["job_id"]
    job = await services.store.get_job(job_id)
    if job is None:
        raise UnknownJob(f"no job {job_id}")
    outcome = await services.store.finish_job(job_id, JobStatus.CANCELLED, "cancelled by a user")
    job = await services.store.get_job(job_id)
    if outcome != "finished":
        return error_response(409, "job_ended", f"the job already ended: {job and job['status']}")
    return json_response(public_job(job or {}))


def public_job(job: dict[str, Any]) -> dict[str, Any]:
    """A job as the API shows it: no internal counters or request internals."""
    shown: dict[str, Any] = {
        key: job[key]
        for key in ("id", "provider", "status", "progress", "error", "external")
        if key in job
    }
    for key in ("created_at", "updated_at", "submitted_at", "finished_at"):
        if key in job:
            shown[key] = store_module.iso(job[key])
    params = job.get("params") or {}
    if job.get("provider") == "decodo" and params:
        shown["request"] = {
            "items": len(params.get("items", [])),
            "key": params.get("key"),
            "params": params.get("params", {}),
        }
    return shown
