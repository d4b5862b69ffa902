"""Dify jobs end to end: the Dify sandbox, the receiver and its worker, for real.

What a Dify user watches: each document's stage and the segment counts in every event
(economy indexing holds completed_segments at 0 through indexing).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx

from receiver.providers.dify import STAGES
from tests.e2e import PolledDeployment, polled_deployment
from tests.servers import RedisProcess

DIFY_KEY = {"Authorization": "Bearer dataset-sandbox"}


def progress_events(d: PolledDeployment, job_id: str) -> list[dict[str, Any]]:
    return [e for e in d.events(job_id) if e["type"] == "job.progress" and "stages" in e["detail"]]


def unix(at: str) -> float:
    return datetime.fromisoformat(at).timestamp()


def stage_of(event: dict[str, Any]) -> str:
    """The one document's stage an event shows."""
    [stage] = event["detail"]["stages"]
    return str(stage)


def until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.05)
    return found


def sandbox_document(d: PolledDeployment, dataset: str, batch: str) -> dict[str, Any]:
    """The batch's one document as the Dify sandbox itself says it is now."""
    path = f"{d.dify}/v1/datasets/{dataset}/documents/{batch}/indexing-status"
    [doc] = httpx.get(path, headers=DIFY_KEY, timeout=10).json()["data"]
    return dict(doc)


def test_economy_indexing_shows_its_stage_in_every_event_and_on_the_job(
    redis_process: RedisProcess,
) -> None:
    with polled_deployment(redis_process, dify={"economy": True, "step_seconds": 0.5}) as d:
        dataset, batch, _ = d.dify_batch([{"name": "a.txt", "segments": 40}])
        job = d.wait(d.create({"provider": "dify", "dataset_id": dataset, "batch": batch}))
        assert job["status"] == "completed"
        assert job["stages"] == {"completed": 1}
        assert (job["segments_completed"], job["segments_total"]) == (40, 40)
        events = progress_events(d, job["id"])
        # Every event says where the document is, under the job's field names.
        for event in events:
            assert set(event["detail"]) == {
                "stages",
                "segments_completed",
                "segments_total",
                "paused",
            }
        stages = [stage_of(e) for e in events]
        assert stages == sorted(stages, key=STAGES.index)  # forward through the stages
        assert {"splitting", "indexing", "completed"} <= set(stages)
        # The whole indexing stage at 0 of 40 segments: the stage shows it moving.
        indexing = [e["detail"] for e in events if stage_of(e) == "indexing"]
        assert indexing and all(
            (i["segments_completed"], i["segments_total"]) == (0, 40) for i in indexing
        )
        assert events[-1]["detail"]["segments_completed"] == 40
