"""What `receiver watch` makes of a job's stream: jobs' progress, lines and bars.

The per-provider tests feed what the receiver sends: a job's snapshot as `GET /jobs/{id}`
shows it, then its events, whose `detail` keys are job field names.
"""

from __future__ import annotations

import io
import re

import orjson
import pytest
from rich.console import Console

from receiver.client.sse import ServerSentEvent
from receiver.client.watch import (
    BarsView,
    Change,
    JobProgress,
    LineView,
    format_line,
    read_change,
    watch_job,
)
from receiver.events import Event
from tests.client.frames import (
    AT,
    DATASET,
    DIFY_DOCS,
    dify_stream,
    event,
    messages,
)


def lines_of(stream: list[ServerSentEvent], with_job: bool = False) -> list[str]:
    """The line of each message, as it is read."""
    jobs: dict[str, JobProgress] = {}
    changes = (read_change(jobs, message) for message in stream)
    return [format_line(change, with_job=with_job) for change in changes if change]


def bars_after(stream: list[ServerSentEvent], with_job: bool = False) -> str:
    """The bars as a 160-column terminal shows them once the stream is read, and the
    lines an ended job left above them."""
    out = io.StringIO()
    console = Console(file=out, width=160, force_terminal=True, color_system=None)
    view = BarsView(console, with_job=with_job)
    jobs: dict[str, JobProgress] = {}
    for message in stream:
        if change := read_change(jobs, message):
            view.update(change)
    console.print(view.progress.make_tasks_table(view.progress.tasks))
    return out.getvalue()


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
    assert (
        format_line(change)
        == "2026-11-22T22:30:00.000+00:00 job.progress running 3/10 tasks failed=0"
    )
    assert format_line(change, with_job=True) == (
        "2026-11-22T22:30:00.000+00:00 job.progress j1 decodo running 3/10 tasks failed=0"
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
    assert last.job.outcome() == "job j1 failed: every task failed (0 done, 2 failed of 2 tasks)"
    assert format_line(last).endswith(' failed 0/2 tasks failed=2 reason="every task failed"')


@pytest.mark.parametrize(
    ("status", "code"),
    [("completed", 0), ("failed", 1), ("cancelled", 2), ("expired", 3), ("running", None)],
)
def test_exit_code_per_status(status: str, code: int | None) -> None:
    assert JobProgress("j", "decodo", status).exit_code == code


# -- per provider: fields, lines, bars -----------------------------------------------------


def test_job_progress_keeps_the_snapshot_fields_with_each_detail_merged_in() -> None:
    jobs: dict[str, JobProgress] = {}
    first, moved = [read_change(jobs, message) for message in dify_stream()[:2]]
    assert first is not None and moved is not None
    job = moved.job
    assert job is first.job
    assert job.fields["external"] == {"dataset_id": DATASET, "batch": "20261201125041756115"}
    assert (job.fields["segments_completed"], job.fields["segments_total"]) == (1200, 4000)
    assert job.fields["stages"] == {"indexing": 1}
    assert job.describe() == "segments 1200/4000 · indexing 1"


def test_line_view_names_the_unit_and_appends_the_providers_words(
    capsys: pytest.CaptureFixture[str],
) -> None:
    job = watch_job(dify_stream(), LineView())
    assert job.exit_code == 1
    reason = f'reason="{DIFY_DOCS[0]}: Failed to load"'
    assert capsys.readouterr().out.splitlines() == [
        f'{AT.format(2)} job.state running 0/2 documents failed=0 progress="segments 120/4000"',
        f"{AT.format(3)} job.progress running 0/2 documents failed=1"
        ' progress="segments 1200/4000 · indexing 1"',
        f'{AT.format(4)} job.progress running 1/2 documents failed=1 progress="segments 4000/4000"',
        f'{AT.format(5)} job.failed failed 1/2 documents failed=1 progress="segments 4000/4000"'
        f" {reason}",
    ]
    assert job.outcome() == (
        f"job {job.id} failed: {DIFY_DOCS[0]}: Failed to load (1 done, 1 failed of 2 documents)"
    )


def test_line_of_a_firecrawl_job_counts_pages_in_firecrawls_words() -> None:
    job = {
        "id": "aea08302796e383f6fcc",
        "provider": "firecrawl",
        "status": "running",
        "progress": {"completed": 0, "failed": 0, "total": 30},
        "external": {"batch_id": "b5954cba-7195-4b5e-ad78-c64f1f39230a"},
        "created_at": AT.format(0),
        "updated_at": AT.format(1),
        "tasks": [],
    }
    stream = messages(
        job,
        event("job.progress", job, 2, (20, 0, 30), provider_status="scraping"),
        event("job.progress", job, 3, (30, 0, 30), documents=20, documents_missing=10),
    )
    lines = lines_of(stream, with_job=True)
    who = "job.progress aea08302796e383f6fcc firecrawl running"
    assert lines == [
        f"{AT.format(1)} job.state aea08302796e383f6fcc firecrawl running 0/30 pages failed=0",
        f'{AT.format(2)} {who} 20/30 pages failed=0 progress="firecrawl scraping"',
        f"{AT.format(3)} {who} 30/30 pages failed=0"
        ' progress="firecrawl scraping · documents 20 (10 missing)"',
    ]


def test_line_of_a_decodo_job_says_it_is_retrying() -> None:
    job = {
        "id": "j1",
        "provider": "decodo",
        "status": "running",
        "progress": {"completed": 0, "failed": 0, "total": 3},
    }
    failing = {"consecutive_failures": 3, "last_error": "decodo unreachable: ConnectError"}
    stream = messages(job, event("job.progress", job, 2, (0, 0, 3), **failing))
    quiet, retrying = lines_of(stream)
    assert quiet == " job.state running 0/3 tasks failed=0"  # no time in the snapshot
    assert retrying == (
        f"{AT.format(2)} job.progress running 0/3 tasks failed=0"
        ' progress="retrying: decodo unreachable: ConnectError (3 in a row)"'
    )


def test_line_of_a_provider_this_version_does_not_know_counts_items() -> None:
    job = {"id": "j9", "provider": "newcomer", "status": "running", "progress": {"total": 5}}
    assert lines_of(messages(job)) == [" job.state running 0/5 items failed=0"]


def test_bars_show_the_unit_and_the_providers_words() -> None:
    stream = dify_stream()
    screen = bars_after(stream[:2])
    assert re.search(
        r"dify running +━*\S* +0 done 1 failed of 2 documents +\S+/s +\d+:\d\d:\d\d"
        r" +segments 1200/4000 · indexing 1",
        screen,
    ), screen
    later = bars_after(stream[:3])
    assert "1 done 1 failed of 2 documents" in later
    assert "segments 4000/4000" in later and "indexing" not in later


def test_bars_of_every_job_leave_the_outcome_with_its_unit() -> None:
    screen = bars_after(dify_stream(), with_job=True)
    assert screen.count("(1 done, 1 failed of 2 documents)") == 1, screen
    assert "8255c2a18256 dify" not in screen  # the ended job's bar is gone
