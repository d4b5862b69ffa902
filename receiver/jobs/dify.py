"""Dify indexing jobs: track a batch of documents until every one is indexed or failed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from receiver.errors import InvalidRequest
from receiver.jobs.common import optional_stall_after, safe_id
from receiver.polling import Observation, Poller, signature
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

    def __init__(self, store: Store, client: DifyClient, settings: Settings) -> None:
        super().__init__(store, settings)
        self.client = client

    @property
    def rate(self) -> float:
        return self.settings.dify_rps

    async def observe(self, job: Mapping[str, Any]) -> Observation:
        external = job["external"]
        docs = await self.client.indexing_status(external["dataset_id"], external["batch"])
        summary = summarize(docs)
        # Matched by id: Dify lists the documents in a different order on each poll.
        moved = signature(
            sorted((d.id, d.indexing_status, d.completed_segments, d.total_segments) for d in docs)
        )
        if moved != job.get("signature"):  # the documents' statuses are as recorded otherwise
            await self.store.record_documents(
                job["id"],
                {d.id: d.indexing_status for d in docs},
                {d.id: d.error for d in docs if d.error and d.indexing_status == "error"},
            )
        seen = Observation(
            signature=moved,
            fields={
                "total": summary.documents,
                "completed": summary.completed_documents,
                "failed": summary.failed_documents,
                "paused": summary.paused,
                "segments_completed": summary.segments_completed,
                "segments_total": summary.segments_total,
            },
            detail={
                "segments": {
                    "completed": summary.segments_completed,
                    "total": summary.segments_total,
                },
                "paused": summary.paused,
            },
            paused=summary.paused > 0,
        )
        if summary.state == COMPLETED:
            seen.final = JobStatus.COMPLETED
        elif summary.state == FAILED:
            seen.final = JobStatus.FAILED
            seen.reason = "; ".join(f"{doc}: {error}" for doc, error in summary.errors.items())
        return seen
