"""Dify jobs end to end: the Dify sandbox, the receiver and its worker, for real.

What a Dify user watches: each document's stage and the segment counts in every event
(economy indexing holds completed_segments at 0 through indexing), a resume noticed within
seconds however long the pause (with the shipped poll intervals), the HTML 404 of a
non-UUID dataset id as a one-line error, and a cancel that is local only.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
from rich.console import Console

from receiver.client.tables import print_jobs
from receiver.polling import BUSY_POLL_MAX
from receiver.providers.dify import STAGES
from tests.e2e import PolledDeployment, Target, polled_deployment
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
    redis_target: Target,
) -> None:
    with polled_deployment(redis_target, dify={"economy": True, "step_seconds": 0.5}) as d:
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


def test_a_resume_after_a_long_pause_is_noticed_within_seconds_with_its_re_split(
    redis_process: RedisProcess,
) -> None:
    # The shipped poll intervals (1 s to 60 s), not the test deployment's fast ones.
    settings = {"poll_min": 1.0, "poll_max": 60.0}
    dify = {"step_seconds": 4.0, "segments": 200, "resume_resplits": True}
    with polled_deployment(redis_process, dify=dify, settings=settings) as d:
        dataset, batch, (doc,) = d.dify_batch([{"name": "big.txt", "segments": 200}])
        job_id = d.create({"provider": "dify", "dataset_id": dataset, "batch": batch})
        until(
            lambda: sandbox_document(d, dataset, batch)["total_segments"] >= 20,
            20,
            "the document splitting",
        )
        console = f"{d.dify}/console/api/datasets/{dataset}/documents/{doc}/processing"
        assert httpx.patch(f"{console}/pause", timeout=10).status_code == 204
        # Paused while splitting, the document splits on to the end of the step (as a real
        # server does, captures 047-050), then holds.
        until(
            lambda: (
                (job := d.job(job_id)).get("stages") == {"paused": 1}
                and job["segments_total"] == 200
            ),
            10,
            "the pause, held",
        )

        # A long pause: the interval stays within the busy cap instead of backing off.
        key = d.keys.job(job_id)
        intervals: list[float] = []
        paused_until = time.monotonic() + 10.0
        while time.monotonic() < paused_until:
            raw: Any = d.redis.hget(key, "poll_interval")
            intervals.append(float(raw or 0))
            time.sleep(0.2)
        assert max(intervals) <= BUSY_POLL_MAX + 1e-6, intervals
        assert d.job(job_id)["status"] == "running"

        resumed_at = time.time()
        assert httpx.patch(f"{console}/resume", timeout=10).status_code == 204
        job = d.wait(job_id, timeout=30)
        assert job["status"] == "completed"
        assert (job["segments_completed"], job["segments_total"]) == (200, 200)

        after = [e for e in progress_events(d, job_id) if unix(e["at"]) >= resumed_at]
        assert after, "the resume was never seen"
        assert stage_of(after[0]) != "paused"
        assert unix(after[0]["at"]) - resumed_at <= 4.0
        # The re-split from no segments is in the events: the total drops from the paused
        # 200 and grows again, then indexing and the end.
        split = [e["detail"]["segments_total"] for e in after if stage_of(e) == "splitting"]
        assert split and all(total < 200 for total in split), split
        assert any(total > 0 for total in split) and split == sorted(split), split
        assert stage_of(after[-1]) == "completed"


def test_a_non_uuid_dataset_id_fails_the_job_with_a_one_line_error(
    redis_process: RedisProcess,
) -> None:
    # Dify's Flask router answers its HTML 404 page (capture 105) before any API code.
    with polled_deployment(redis_process) as d:
        _, batch, _ = d.dify_batch([{"name": "a.txt"}])
        job = d.wait(d.create({"provider": "dify", "dataset_id": "not-a-uuid", "batch": batch}))
        assert job["status"] == "failed"
        assert job["error"] == "not_found: dify answered 404: 404 Not Found"
        route = "GET /v1/datasets/{dataset_id}/documents/{batch}/indexing-status 404"
        assert d.stats(d.dify)[route] == 1  # one answer: a 404 is not retried
        listed = httpx.get(f"{d.api}/jobs", headers=d.headers(), timeout=10).json()["jobs"]
        assert [j["error"] for j in listed] == [job["error"]]
        # The jobs table keeps the job on one row.
        out = io.StringIO()
        print_jobs(Console(file=out, width=200), listed)
        rows = [line for line in out.getvalue().splitlines() if job["id"] in line]
        assert len(rows) == 1 and "404 Not Found" in rows[0]
        assert "<" not in out.getvalue()


def scheduled(d: PolledDeployment, member: str) -> bool:
    """Whether the member is in one of the receiver's schedules (due sorted sets)."""
    keys = [d.keys.due(p) for p in range(d.keys.partitions)]
    return any(d.redis.zscore(key, member) is not None for key in keys)


def cancelled_while_indexing(d: PolledDeployment) -> tuple[str, dict[str, Any], str, str]:
    """A job of a one-document batch cancelled while Dify indexes it: (job id, the cancel's
    answer, dataset id, batch)."""
    dataset, batch, _ = d.dify_batch([{"name": "a.txt", "segments": 4}])
    job_id = d.create({"provider": "dify", "dataset_id": dataset, "batch": batch})
    d.wait_for_field(job_id, "stages")
    response = httpx.delete(f"{d.api}/jobs/{job_id}", headers=d.headers(), timeout=10)
    assert response.status_code == 200, response.text
    return job_id, response.json(), dataset, batch


def test_a_cancel_is_local_only_and_says_dify_goes_on_indexing(
    redis_process: RedisProcess,
) -> None:
    with polled_deployment(redis_process, dify={"step_seconds": 0.5}) as d:
        job_id, answer, dataset, batch = cancelled_while_indexing(d)
        assert answer["status"] == "cancelled"
        assert answer["cancel"]["at_provider"] is False
        assert "Dify goes on indexing" in answer["cancel"]["message"]
        assert d.job(job_id)["status"] == "cancelled"
        assert [e["type"] for e in d.events(job_id)][-1] == "job.cancelled"
        # Dify did go on: the document is indexed whatever the receiver did.
        until(
            lambda: sandbox_document(d, dataset, batch)["indexing_status"] == "completed",
            10,
            "Dify finishing the indexing",
        )
        assert d.job(job_id)["status"] == "cancelled"


def test_retry_after_a_cancel_follows_the_batch_to_completed(
    redis_target: Target,
) -> None:
    with polled_deployment(redis_target, dify={"step_seconds": 0.5}) as d:
        job_id, _, dataset, batch = cancelled_while_indexing(d)
        # The worker has seen the cancel (its next poll dropped the job from the schedule),
        # and Dify has finished: the retry alone must follow the batch again.
        until(lambda: not scheduled(d, f"poll:{job_id}"), 10, "the poll dropped")
        until(
            lambda: sandbox_document(d, dataset, batch)["indexing_status"] == "completed",
            10,
            "Dify finishing the indexing",
        )
        retried = httpx.post(f"{d.api}/jobs/{job_id}/retry", headers=d.headers(), timeout=10)
        assert retried.status_code == 202, retried.text
        job = d.wait(job_id, timeout=15)
        assert job["status"] == "completed"
        assert job["stages"] == {"completed": 1} and job["segments_completed"] == 4
        types = [e["type"] for e in d.events(job_id)]
        assert types.index("job.cancelled") < types.index("job.completed")
