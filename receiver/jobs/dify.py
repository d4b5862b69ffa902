"""Dify indexing jobs: track a batch of documents until every one is indexed or failed."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from receiver import display, schemas
from receiver.display import Display
from receiver.errors import InvalidRequest
from receiver.jobs.base import Cancelled, Context, Provider, Schema, Workflow, stall
from receiver.jobs.common import SAFE_ID, optional_stall_after, safe_id
from receiver.polling import Observation, Poller, fingerprint
from receiver.providers.dify import COMPLETED, FAILED, DifyClient, summarize
from receiver.settings import Settings
from receiver.store import JobStatus, Store


@dataclass(frozen=True)
class DifyRequest:
    dataset_id: str
    batch: str
    stall_after: float | None


def parse_request(body: Mapping[str, Any]) -> DifyRequest:
    """Validate a POST /jobs body for Dify; InvalidRequest says what is wrong."""
    extra = set(body) - {"provider", "dataset_id", "batch", "stall_after"}
    if extra:
        raise InvalidRequest(f"unknown Dify field(s): {', '.join(sorted(extra))}")
    return DifyRequest(
        safe_id(body, "dataset_id"), safe_id(body, "batch"), optional_stall_after(body)
    )


class DifyJobs(Poller):
    provider = "dify"

    def __init__(
        self,
        store: Store,
        client: DifyClient,
        settings: Settings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(store, settings, clock)
        self.client = client

    @property
    def rate(self) -> float:
        return self.settings.dify_rps

    async def sync(self, job: Mapping[str, Any]) -> Observation:
        external = job["external"]
        docs = await self.client.indexing_status(external["dataset_id"], external["batch"])
        summary = summarize(docs)
        # Matched by id: Dify lists the documents in a different order on each poll. Each
        # document's stage is in it, so a stage change is progress as a count change is
        # (economy indexing holds completed_segments at 0 through the whole indexing stage).
        moved = fingerprint(
            sorted((d.id, d.indexing_status, d.completed_segments, d.total_segments) for d in docs)
        )
        if moved != job.get("fingerprint"):  # the documents' statuses are as recorded otherwise
            await self.store.record_documents(
                job["id"],
                {d.id: d.indexing_status for d in docs},
                {d.id: d.error for d in docs if d.error and d.indexing_status == "error"},
            )
        # The detail's keys are job field names: a client merges each event into the job.
        progress = {
            "stages": summary.stages,
            "segments_completed": summary.segments_completed,
            "segments_total": summary.segments_total,
            "paused": summary.paused,
        }
        seen = Observation(
            fingerprint=moved,
            fields={
                "total": summary.documents,
                "completed": summary.completed_documents,
                "failed": summary.failed_documents,
                **progress,
            },
            detail=progress,
            paused=summary.paused > 0,
            # A paused document resumes, and a moving one moves on, at any moment: poll them
            # every few seconds. An empty batch is expected to move by nobody: it backs off.
            busy=summary.busy,
        )
        if summary.state == COMPLETED:
            seen.final = JobStatus.COMPLETED
        elif summary.state == FAILED:
            seen.final = JobStatus.FAILED
            seen.reason = "; ".join(f"{doc}: {error}" for doc, error in summary.errors.items())
        return seen


class Dify(Provider):
    """Dify's knowledge API: the indexing of a batch of documents, polled to the end."""

    name = "dify"
    display = Display("documents", display.dify)
    credentials = (("dify_api_key", "DIFY_API_KEY"),)

    async def create(self, body: Mapping[str, Any], store: Store) -> tuple[str, bool]:
        request = parse_request(body)
        external = {"dataset_id": request.dataset_id, "batch": request.batch}
        external_id = f"{request.dataset_id}:{request.batch}"
        return await store.track_job(self.name, external_id, external, stall(request.stall_after))

    def workflow(self, context: Context) -> DifyJobs:
        settings = context.settings
        client = DifyClient(context.http, settings.dify_base_url, settings.dify_api_key)
        return DifyJobs(context.store, client, settings)

    async def cancel(self, job: Mapping[str, Any], workflow: Workflow) -> Cancelled:
        return Cancelled(
            "cancelled here only: Dify's service API cannot stop indexing, so Dify goes on "
            "indexing these documents (receiver retry follows them again)",
            at_provider=False,
        )

    def request_schemas(self) -> dict[str, Schema]:
        safe_id = {"type": "string", "pattern": SAFE_ID.pattern, "not": {"pattern": r"\.\."}}
        request = schemas.obj(
            {
                "provider": {"const": self.name},
                "dataset_id": safe_id,
                "batch": safe_id,
                "stall_after": schemas.stall_after(),
            },
            ["provider", "dataset_id", "batch"],
            description="Track the indexing of a batch of documents in a dataset.",
        )
        return {"DifyJobRequest": request}


PROVIDER = Dify()
