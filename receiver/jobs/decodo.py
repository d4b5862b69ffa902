"""Decodo jobs: validate a request, submit it, fetch results, reconcile lost callbacks."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from receiver import display, schemas
from receiver.backoff import backoff
from receiver.display import Display
from receiver.errors import (
    InvalidRequest,
    NotFound,
    Permanent,
    Transient,
)
from receiver.jobs.base import Context, Provider, Schema, UnknownWork, retry_at
from receiver.metrics import FETCH_SECONDS, FETCHES
from receiver.providers.decodo import BATCH_LIMIT, DONE, FAULTED, DecodoClient, SubmittedTask
from receiver.settings import Settings
from receiver.store import JobStatus, Store, TaskStatus, Work, WorkItem, new_job_id
from receiver.store.rates import SharedRate
from receiver.tokens import PassthroughSigner

log = logging.getLogger(__name__)

# Keys receiver sets itself on every Decodo request.
_RESERVED = frozenset({"callback_url", "passthrough", "passtrough"})
# The request keys that name what to scrape, and whether each is a batch.
_INPUTS = {"url": False, "query": False, "urls": True, "queries": True}
# Most items one job may hold; larger sets are split by the caller into several jobs.
MAX_ITEMS = 100_000
# Seconds a job's state read for a results fetch is reused, and how many jobs are kept.
_STATE_TTL = 1.0
_STATE_CACHE_SIZE = 10_000
# Concurrent GET /v3/task/{id} while reconciling one job.
RECONCILE_CONCURRENCY = 20


@dataclass(frozen=True)
class DecodoRequest:
    key: str  # "url" or "query": the Decodo parameter the items go in
    items: list[str]
    batch: bool
    params: dict[str, Any]  # Decodo's own parameters, passed through

    def as_params(self) -> dict[str, Any]:
        return {"key": self.key, "items": self.items, "batch": self.batch, "params": self.params}

    @classmethod
    def from_params(cls, stored: Mapping[str, Any]) -> DecodoRequest:
        return cls(
            stored["key"], list(stored["items"]), bool(stored["batch"]), dict(stored["params"])
        )

    def chunks(self) -> list[list[str]]:
        if not self.batch:
            return [self.items]
        return [self.items[i : i + BATCH_LIMIT] for i in range(0, len(self.items), BATCH_LIMIT)]


def parse_request(body: Mapping[str, Any]) -> DecodoRequest:
    """Validate a POST /jobs body for Decodo; InvalidRequest says what is wrong."""
    given = [key for key in _INPUTS if key in body]
    if len(given) != 1:
        raise InvalidRequest("give exactly one of url, query, urls, queries")
    name = given[0]
    batch = _INPUTS[name]
    raw = body[name]
    items = raw if batch else [raw]
    if not isinstance(items, list) or not items:
        raise InvalidRequest(f"{name} must be a non-empty list of strings")
    if len(items) > MAX_ITEMS:
        raise InvalidRequest(f"{name} holds {len(items)} items; at most {MAX_ITEMS} per job")
    key = "url" if name in ("url", "urls") else "query"
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise InvalidRequest(f"every {key} must be a non-empty string")
        if key == "url" and not item.startswith(("http://", "https://")):
            raise InvalidRequest(f"{key} must start with http:// or https://: {item[:100]!r}")
    reserved = sorted(_RESERVED & body.keys())
    if reserved:
        raise InvalidRequest(f"{', '.join(reserved)} is set by receiver, not by the request")
    params = {k: v for k, v in body.items() if k not in _INPUTS and k != "provider"}
    if "target" in params and not isinstance(params["target"], str):
        raise InvalidRequest("target must be a string")
    return DecodoRequest(key, [str(i) for i in items], batch, params)


class DecodoJobs:
    """The worker's side of Decodo jobs. Each step returns when to run it again, or None."""

    # Results fetches and reconciliations go by job id: the fetch is the hot path.
    direct: frozenset[str] = frozenset({Work.FETCH, Work.RECONCILE})

    def __init__(
        self,
        store: Store,
        client: DecodoClient,
        signer: PassthroughSigner,
        settings: Settings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.client = client
        self.signer = signer
        self.settings = settings
        self.clock = clock
        self._states: dict[str, tuple[float, dict[str, Any] | None]] = {}
        # Batch submissions, one per interval across every worker process.
        self._batches = SharedRate(store, "decodo:batch", settings.decodo_batch_interval)
        # Results requests in flight: the fetch concurrency bounds these, not the steps
        # around them, so a fetch that is storing its results already leaves room.
        self._fetching = asyncio.Semaphore(settings.fetch_concurrency)

    @property
    def callback_url(self) -> str:
        return self.settings.public_url + "/callbacks/decodo"

    async def run(
        self, kind: str, job_id: str, task_id: str, job: Mapping[str, Any] | None
    ) -> float | None:
        if kind == Work.FETCH:
            return await self.fetch(job_id, task_id)
        if kind == Work.RECONCILE:
            return await self.reconcile(job_id)
        if kind == Work.SUBMIT:
            return await self.submit(job_id)
        raise UnknownWork(f"decodo jobs have no {kind!r} work")

    # -- submit -------------------------------------------------------------------------

    async def submit(self, job_id: str) -> float | None:
        job = await self.store.get_job(job_id)
        if job is None or JobStatus(job["status"]).terminal or not job["submitting"]:
            return None
        request = DecodoRequest.from_params(job["params"])
        chunks = request.chunks()
        params = {
            **request.params,
            "callback_url": self.callback_url,
            "passthrough": self.signer.sign(job_id),
        }
        try:
            for index in range(job.get("chunks", 0), len(chunks)):
                tasks = await self._submit_chunk(request, params, chunks[index])
                await self.store.record_submission(
                    job_id,
                    index,
                    ((t.id, t.input) for t in tasks),
                    last=index == len(chunks) - 1,
                    reconcile_after=self.settings.reconcile_after,
                )
        except Transient as exc:
            return await self._retry(job_id, Work.SUBMIT, exc)
        except Permanent as exc:
            log.warning(
                "decodo submission refused",
                extra={"job_id": job_id, "provider": "decodo", **exc.log_fields()},
            )
            await self.store.finish_job(job_id, JobStatus.FAILED, f"{exc.reason}: {exc}")
        return None

    async def _submit_chunk(
        self, request: DecodoRequest, params: dict[str, Any], items: Sequence[str]
    ) -> list[SubmittedTask]:
        if not request.batch:
            return [await self.client.submit_task({**params, request.key: items[0]})]
        # One batch request per interval across every worker process: the limit is in Redis.
        await self._batches.wait()
        return await self.client.submit_batch(params, request.key, items)

    # -- fetch results ------------------------------------------------------------------

    async def fetch(self, job_id: str, task_id: str) -> float | None:
        job = await self._state(job_id)
        if job is None or JobStatus(job["status"]).terminal:
            return None
        if self._expired(job):
            await self.store.fail_task(job_id, task_id, self._expiry_reason(), expired=True)
            return None
        try:
            body = await self._get_results(task_id)
        except Transient as exc:
            FETCHES.labels("decodo", exc.reason).inc()
            return await self._retry(
                job_id, WorkItem(Work.FETCH, job_id, task_id).attempt_name, exc
            )
        except Permanent as exc:
            FETCHES.labels("decodo", exc.reason).inc()
            await self._fail_task(job, task_id, exc)
            return None
        if body is None:  # 204: not ready yet
            FETCHES.labels("decodo", "not_ready").inc()
            return await self._retry(
                job_id, WorkItem(Work.FETCH, job_id, task_id).attempt_name, None
            )
        FETCHES.labels("decodo", "stored").inc()
        await self.store.store_results(job_id, task_id, body, self.settings.results_ttl)
        return None

    async def _get_results(self, task_id: str) -> bytes | None:
        """GET the task's results within the fetch concurrency; the request timed."""
        async with self._fetching:
            started = time.perf_counter()
            try:
                return await self.client.get_results(task_id)
            finally:
                FETCH_SECONDS.labels("decodo").observe(time.perf_counter() - started)

    # -- reconcile ----------------------------------------------------------------------

    async def reconcile(self, job_id: str) -> float | None:
        """Poll the tasks still waiting for a callback; a lost callback loses nothing."""
        job = await self.store.get_state(job_id)
        if job is None or JobStatus(job["status"]).terminal:
            return None
        tasks = await self.store.get_tasks(job_id)
        pending = [t for t, status in tasks.items() if status == TaskStatus.PENDING]
        if not pending:
            return None
        if self._expired(job):
            for task_id in pending:
                await self.store.fail_task(job_id, task_id, self._expiry_reason(), expired=True)
            return None
        limit = asyncio.Semaphore(RECONCILE_CONCURRENCY)
        outcomes = await asyncio.gather(*(self._check(job, t, limit) for t in pending))
        if all(outcomes):
            return None
        attempt = await self.store.count_attempt(job_id, Work.RECONCILE)
        base = max(self.settings.reconcile_after, 1.0)
        return self.clock() + backoff(attempt, base, max(base, 3600.0))

    async def _check(self, job: Mapping[str, Any], task_id: str, limit: asyncio.Semaphore) -> bool:
        """Whether the task has left `pending` at Decodo (and is now recorded so)."""
        job_id = job["id"]
        async with limit:
            try:
                task = await self.client.get_task(task_id)
            except Transient:
                return False
            except Permanent as exc:
                await self._fail_task(job, task_id, exc)
                return True
        status = task.get("status")
        if status in (DONE, FAULTED):
            await self.store.apply_callbacks([(job_id, task_id, str(status))], "reconcile")
            log.info(
                "reconciled a task without callback",
                extra={"job_id": job_id, "task_id": task_id, "status": status},
            )
            return True
        return False

    # -- helpers ------------------------------------------------------------------------

    async def _state(self, job_id: str) -> dict[str, Any] | None:
        """The job's state, read at most once a second per job: the fetches of a big job's
        tasks share it. A stale status is harmless: the atomic step checks it again."""
        now = time.monotonic()
        cached = self._states.get(job_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        state = await self.store.get_state(job_id)
        if len(self._states) >= _STATE_CACHE_SIZE:
            self._states.clear()
        self._states[job_id] = (now + _STATE_TTL, state)
        return state

    async def _fail_task(self, job: Mapping[str, Any], task_id: str, exc: Permanent) -> None:
        # Decodo drops results after its retention window: a 404 that says so, or any 404
        # once the job is older than that window, is an expiry, not a fault.
        expired = isinstance(exc, NotFound) and (
            "expired" in str(exc).lower() or self._expired(job)
        )
        reason = f"expired: {exc}" if expired else f"{exc.reason}: {exc}"
        await self.store.fail_task(job["id"], task_id, reason, expired=expired)

    def _expired(self, job: Mapping[str, Any]) -> bool:
        started = job.get("submitted_at") or job["created_at"]
        return bool(self.clock() - started > self.settings.provider_retention)

    def _expiry_reason(self) -> str:
        hours = self.settings.provider_retention / 3600
        return f"expired: Decodo keeps results {hours:g} h and they were not fetched in time"

    async def _retry(self, job_id: str, work: str, exc: Transient | None) -> float | None:
        return await retry_at(
            self.store,
            self.settings,
            self.clock,
            provider="decodo",
            job_id=job_id,
            work=work,
            exc=exc,
        )


class Decodo(Provider):
    """Decodo's Scraper API: tasks submitted with a callback URL, results fetched on callback."""

    name = "decodo"
    display = Display("tasks", display.decodo)
    credentials = (("decodo_auth", "DECODO_AUTH"),)

    async def create(self, body: Mapping[str, Any], store: Store) -> tuple[str, bool]:
        request = parse_request(body)
        job_id = new_job_id()
        await store.create_job(
            job_id,
            self.name,
            total=len(request.items),
            params=request.as_params(),
            work=Work.SUBMIT,
        )
        return job_id, True

    def workflow(self, context: Context) -> DecodoJobs:
        settings = context.settings
        client = DecodoClient(context.http, settings.decodo_base_url, settings.decodo_auth)
        return DecodoJobs(context.store, client, context.signer, settings)

    def public(self, job: Mapping[str, Any]) -> dict[str, Any]:
        params = job.get("params") or {}
        if not params:
            return {}
        request = {
            "items": len(params.get("items", [])),
            "key": params.get("key"),
            "params": params.get("params", {}),
        }
        return {"request": request}

    def request_schemas(self) -> dict[str, Schema]:
        url = {"type": "string", "pattern": schemas.HTTP_URL}
        query = {"type": "string", "pattern": r"\S"}
        many = {"type": "array", "minItems": 1, "maxItems": MAX_ITEMS}
        properties = {
            "provider": {"const": self.name},
            "url": url,
            "query": query,
            "urls": {**many, "items": url},
            "queries": {**many, "items": query},
            "target": {"type": "string"},
            # receiver sets these itself.
            **dict.fromkeys(sorted(_RESERVED), False),
        }
        request = schemas.obj(
            properties,
            ["provider"],
            oneOf=[{"required": [key]} for key in _INPUTS],
            additionalProperties=True,
            description="Exactly one of url, query, urls, queries; other keys are Decodo's "
            "own parameters, passed on as given.",
        )
        return {"DecodoJobRequest": request}


PROVIDER = Decodo()
