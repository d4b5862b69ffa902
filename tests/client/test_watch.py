"""What `receiver watch` makes of a job's stream: jobs' progress and lines."""

from __future__ import annotations

import orjson
import pytest

from receiver.client.sse import ServerSentEvent
from receiver.client.watch import Change, JobProgress, format_line, read_change
from receiver.events import Event


def test_format_line_is_one_plain_line_per_event() -> None:
    event = Event(
        id="1-0",
        type="job.progress",
        job_id="j1",
        provider="decodo",
        status="running",
        progress={"completed": 3, "failed": 0, "total": 10},
        at="2026-11-22T22:30:00.000+00:00",
    )
    change = Change(JobProgress.from_event(event), event.type, event.at)
    assert format_line(change) == "2026-11-22T22:30:00.000+00:00 job.progress running 3/10 failed=0"
    assert format_line(change, with_job=True) == (
        "2026-11-22T22:30:00.000+00:00 job.progress j1 decodo running 3/10 failed=0"
    )


def test_read_change_follows_the_snapshot_then_the_events_to_the_outcome() -> None:
    jobs: dict[str, JobProgress] = {}
    state = {"id": "j1", "provider": "decodo", "status": "running", "progress": {"total": 2}}
    first = read_change(jobs, ServerSentEvent("5-0", "job.state", orjson.dumps(state).decode()))
    assert first is not None and first.job.exit_code is None
    assert read_change(jobs, ServerSentEvent("5-0", "message", "not json")) is None
    final = {
        "type": "job.failed",
        "job_id": "j1",
        "provider": "decodo",
        "status": "failed",
        "progress": {"completed": 0, "failed": 2, "total": 2},
        "at": "2026-11-22T22:30:02.000+00:00",
        "detail": {"reason": "every task failed"},
    }
    last = read_change(jobs, ServerSentEvent("6-0", "job.failed", orjson.dumps(final).decode()))
    assert last is not None and last.job is first.job
    assert (last.job.exit_code, last.reason) == (1, "every task failed")
    assert last.job.outcome() == "job j1 failed: every task failed (0 done, 2 failed of 2)"
    assert format_line(last).endswith(' failed 0/2 failed=2 reason="every task failed"')


@pytest.mark.parametrize(
    ("status", "code"),
    [("completed", 0), ("failed", 1), ("cancelled", 2), ("expired", 3), ("running", None)],
)
def test_exit_code_per_status(status: str, code: int | None) -> None:
    assert JobProgress("j", "decodo", status).exit_code == code
