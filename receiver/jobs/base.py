"""What a provider is to receiver: one `Provider` per module, listed in `receiver.registry`.

A provider parses its `POST /jobs` body and creates the job, builds the worker's workflow
for its jobs, cancels them, and names what `show`/`watch` display of them and its OpenAPI
request schema. Everything else (the store, the schedule, events, the API) is shared.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import httpx

from receiver.backoff import backoff
from receiver.display import Display
from receiver.errors import RateLimited, Transient
from receiver.settings import Settings
from receiver.store import Store
from receiver.tokens import PassthroughSigner

log = logging.getLogger(__name__)

Schema = dict[str, Any]


class UnknownWork(Exception):
    """A piece of work no workflow runs (a queue entry of another version, say)."""


@dataclass(frozen=True)
class Context:
    """What a workflow is built from, in a web or a worker process."""

    settings: Settings
    store: Store
    http: httpx.AsyncClient
    signer: PassthroughSigner


class Workflow(Protocol):
    """The worker's side of one provider's jobs."""

    # Kinds of work run from the job id alone, without the dispatcher reading the job
    # first (Decodo's results fetches: the hot path).
    direct: frozenset[str]

    async def run(
        self, kind: str, job_id: str, task_id: str, job: Mapping[str, Any] | None
    ) -> float | None:
        """Run one piece of work; when to run it again (unix time), or None."""


@dataclass(frozen=True)
class Cancelled:
    """What a cancel did at the provider, as the API reports it."""

    message: str  # what the provider said, or why nothing was asked of it
    at_provider: bool  # the provider was asked to stop
    ends_now: bool = True  # False: the job ends once the provider settles (pages in flight)
    provider_status: str | None = None  # the status the provider answered


class Provider(ABC):
    name: ClassVar[str]
    display: ClassVar[Display]
    # (Settings attribute, environment variable) of each credential its jobs need.
    credentials: ClassVar[tuple[tuple[str, str], ...]] = ()

    def missing_credential(self, settings: Settings) -> str | None:
        """The variable to set before a job of this provider can run, or None."""
        for attribute, variable in self.credentials:
            if not getattr(settings, attribute):
                return variable
        return None

    @abstractmethod
    async def create(self, body: Mapping[str, Any], store: Store) -> tuple[str, bool]:
        """Validate a `POST /jobs` body (InvalidRequest says what is wrong) and create its
        job: (job id, created); False when it tracks something an existing job tracks."""

    @abstractmethod
    def workflow(self, context: Context) -> Workflow: ...

    async def cancel(self, job: Mapping[str, Any], workflow: Workflow) -> Cancelled:
        """Stop the job's work at the provider where it can be stopped."""
        return Cancelled(f"{self.name} jobs are cancelled here only", at_provider=False)

    def public(self, job: Mapping[str, Any]) -> dict[str, Any]:
        """Fields of its own the API shows of a job (beyond the shared ones)."""
        return {}

    @abstractmethod
    def request_schemas(self) -> dict[str, Schema]:
        """The OpenAPI schemas of its `POST /jobs` bodies, by component name."""


async def retry_at(
    store: Store,
    settings: Settings,
    clock: Callable[[], float],
    *,
    provider: str,
    job_id: str,
    work: str,
    exc: Transient | None,
) -> float | None:
    """When to try a job's `work` again after `exc` (None: the provider's answer is not
    ready yet, which is no failure); None once the job has ended. The one retry rule of every
    workflow: a failure is recorded on the job (its last error and failures in a row, see
    `Store.record_failure`); the delay is `backoff` of the work's attempts, or the
    provider's own Retry-After when longer."""
    if exc is None:
        attempt = await store.count_attempt(job_id, work)
    else:
        attempt = await store.record_failure(job_id, work, str(exc))
        if attempt == 0:
            return None
    after = exc.retry_after if isinstance(exc, RateLimited) else None
    delay = backoff(attempt - 1, settings.retry_base, settings.retry_cap, after)
    fields = exc.log_fields() if exc else {"reason": "not_ready"}
    log.info(
        "retrying later",
        extra={
            "job_id": job_id,
            "provider": provider,
            "work": work,
            "delay_s": round(delay, 3),
            **fields,
        },
    )
    return clock() + delay


def stall(stall_after: float | None) -> dict[str, Any]:
    """The job fields of a request's own stall timeout."""
    return {} if stall_after is None else {"stall_after": stall_after}
