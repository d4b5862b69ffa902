"""`receiver watch`: jobs followed through their Server-Sent Events, resumed after drops.

The event stream drives everything shown: a snapshot (`job.state`) first, then each event.
On a terminal the jobs are progress bars (rich); piped, each event is one plain line on
stdout, and the outcome of a watched job a line on stderr. What a job counts (its unit) and
its provider's own progress words come from `receiver.display`, fed the job's fields: the
snapshot's, with each event's `detail` merged in.

A piped line, with `JOB PROVIDER` after the type when every job is watched:

    AT TYPE STATUS COMPLETED/TOTAL UNIT failed=FAILED[ progress="WORDS"][ reason="REASON"]
    2026-11-22T22:30:00.000+00:00 task.failed running 3/10 tasks failed=1 reason="timeout"
    2026-11-22T22:30:01.000+00:00 job.progress running 2/4 documents failed=0 progress="indexing 2"

Every field up to `failed=` is one word, separated by single spaces, so a field keeps its
place; `progress=` (the provider's words, when it has any to say) and `reason=` (why a task
or the job failed) are JSON strings, so `grep 'progress="segments'` finds them.

Whatever the receiver or a provider wrote is shown as text, with its control characters
escaped (`receiver.client.text`): in a word field, ESC is `\x1b`; in a JSON string, `\u001b`.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Protocol

import httpx
import orjson
from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskID
from rich.table import Column
from rich.text import Text

from receiver.client.api import PAGE_MOST, Api, job_path
from receiver.client.sse import ServerSentEvent
from receiver.client.stream import GIVE_UP_AFTER, EventSource, WatchError
from receiver.client.tables import STATUS_STYLES, make_console
from receiver.client.text import json_text, plain, printable
from receiver.display import Display, display
from receiver.events import Event

# Exit code of `receiver watch JOB` for each way a job ends.
OUTCOMES = {"completed": 0, "failed": 1, "cancelled": 2, "expired": 3}
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT
# The snapshot the receiver sends first on every connection to /jobs/{id}/events.
SNAPSHOT = "job.state"
# Job statuses `receiver watch` without a job lists before following the events of all.
IN_FLIGHT = ("submitted", "running")
# Seconds without a byte (heartbeats come every 15) before a stream counts as dropped.
STREAM_READ_TIMEOUT = 60.0


# -- what the events say ----------------------------------------------------------------


@dataclass
class JobProgress:
    """One job as its snapshot and events tell it."""

    id: str
    provider: str
    status: str
    completed: int = 0
    failed: int = 0
    total: int = 0
    error: str = ""
    started: float | None = None  # epoch seconds the job was created, when known
    ended: float | None = None  # epoch seconds it ended
    # The job's fields: its snapshot (as `GET /jobs/{id}` shows it), each event's detail
    # merged in; what the provider's display describes.
    fields: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_job(cls, job: Mapping[str, Any]) -> JobProgress:
        """From a job as `GET /jobs/{id}` shows it."""
        progress = job.get("progress") or {}
        return cls(
            id=str(job.get("id", "")),
            provider=str(job.get("provider", "")),
            status=str(job.get("status", "")),
            completed=int(progress.get("completed", 0)),
            failed=int(progress.get("failed", 0)),
            total=int(progress.get("total", 0)),
            error=str(job.get("error") or ""),
            started=_epoch(job.get("created_at")),
            ended=_epoch(job.get("finished_at")),
            fields=dict(job),
        )

    @classmethod
    def from_event(cls, event: Event) -> JobProgress:
        job = cls(event.job_id, event.provider, event.status)
        if event.type == "job.created":
            job.started = _epoch(event.at)
        job.apply(event)
        return job

    def apply(self, event: Event) -> None:
        self.status = event.status or self.status
        self.provider = event.provider or self.provider
        self.completed = event.progress.get("completed", self.completed)
        self.failed = event.progress.get("failed", self.failed)
        self.total = event.progress.get("total", self.total)
        self.fields.update(event.detail)
        if event.final:
            self.error = str(event.detail.get("reason") or self.error)
            self.ended = _epoch(event.at) or time.time()

    @property
    def exit_code(self) -> int | None:
        """How `receiver watch` exits for this job; None while it has not ended."""
        return OUTCOMES.get(self.status)

    @property
    def display(self) -> Display:
        return display(self.provider)

    def describe(self) -> str:
        """The provider's own words on the job's progress (`segments 120/4000`), or ""."""
        return self.display.describe(self.fields)

    def outcome(self) -> str:
        """`job ID failed: every task failed (0 done, 2 failed of 2 tasks)`."""
        reason = f": {self.error}" if self.error else ""
        counts = f"{self.completed} done, {self.failed} failed of {self.total} {self.display.unit}"
        return f"job {self.id} {self.status}{reason} ({counts})"


@dataclass(frozen=True)
class Change:
    """One message of the stream applied to a job."""

    job: JobProgress
    type: str  # job.state, or the event's type
    at: str  # ISO 8601 time of the change
    reason: str = ""


def read_change(jobs: dict[str, JobProgress], message: ServerSentEvent) -> Change | None:
    """Apply one SSE message to the jobs it concerns; None for what is not a job's news."""
    try:
        body = orjson.loads(message.data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict):
        return None
    if message.event == SNAPSHOT:
        change = snapshot(body)
        jobs[change.job.id] = change.job
        return change
    if "type" not in body or "job_id" not in body:
        return None
    event = Event.from_dict(body, message.id)
    known = jobs.get(event.job_id)
    if known is None:
        known = jobs[event.job_id] = JobProgress.from_event(event)
    else:
        known.apply(event)
    return Change(known, event.type, event.at, str(event.detail.get("reason") or ""))


def snapshot(job: Mapping[str, Any]) -> Change:
    """A job as `GET /jobs/{id}` shows it, as the first change of its watch."""
    progress = JobProgress.from_job(job)
    at = job.get("updated_at") or job.get("created_at") or ""
    return Change(progress, SNAPSHOT, str(at), progress.error)


def format_line(change: Change, *, with_job: bool = False) -> str:
    """`2026-11-22T22:30:00.000+00:00 job.progress running 3/10 tasks failed=0`, one per
    event, with the provider's words and the reason when there are any (module docstring)."""
    job = change.job
    who = f" {printable(job.id)} {printable(job.provider)}" if with_job else ""
    line = f"{printable(change.at)} {printable(change.type)}{who} {printable(job.status)}"
    line += f" {job.completed}/{job.total} {job.display.unit} failed={job.failed}"
    if words := job.describe():
        line += f" progress={_quoted(words)}"
    if change.reason:
        line += f" reason={_quoted(change.reason)}"
    return line


def _quoted(text: str) -> str:
    return json_text(text)


def _epoch(value: object) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


# -- following ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Sources:
    """How `receiver watch` opens its event streams: the receiver, the client, when to give
    up, and where reconnections are told."""

    api: Api
    client: httpx.Client
    give_up_after: float = GIVE_UP_AFTER
    retries: int | None = None
    notify: Callable[[str], None] = lambda message: None

    def open(self, path: str) -> EventSource:
        return EventSource(
            self.client,
            self.api.url(path),
            {},
            give_up_after=self.give_up_after,
            retries=self.retries,
            notify=self.notify,
        )


@contextlib.contextmanager
def event_sources(
    api: Api,
    give_up_after: float = GIVE_UP_AFTER,
    retries: int | None = None,
    notify: Callable[[str], None] = lambda message: None,
) -> Iterator[Sources]:
    timeout = httpx.Timeout(10.0, read=STREAM_READ_TIMEOUT)
    with httpx.Client(headers=api.headers, timeout=timeout) as client:
        yield Sources(api, client, give_up_after, retries, notify)


def follow_job(sources: Sources, job_id: str) -> int:
    """`receiver watch JOB`: bars on a terminal, lines when piped; the exit code."""
    source = sources.open(job_path(job_id, "/events"))
    console = make_console()
    if console.is_terminal:
        with BarsView(console) as view:
            job = watch_job(source, view)
        console.print(outcome_text(job))
    else:
        job = watch_job(source, LineView())
        print(printable(job.outcome()), file=sys.stderr, flush=True)
    return job.exit_code or 0


def follow_all(sources: Sources) -> None:
    """`receiver watch`: every job in flight, from the list of running ones and then the
    events of all (never ends by itself)."""
    with contextlib.closing(sources.open("/events")) as source:
        source.connect()  # before listing: no event is lost between the list and the stream
        listed = [
            job for status in IN_FLIGHT for job in sources.api.list_jobs(status, limit=PAGE_MOST)
        ]
        snapshots = {job["id"]: snapshot(job) for job in listed}.values()
        console = make_console()
        if not console.is_terminal:
            watch_all(source, snapshots, LineView(with_job=True))
            return
        with BarsView(console, with_job=True) as view:
            watch_all(source, snapshots, view)


class View(Protocol):
    def update(self, change: Change) -> None: ...


def watch_job(messages: Iterable[ServerSentEvent], view: View) -> JobProgress:
    """Follow one job's stream to the job's end; the job as it ended."""
    jobs: dict[str, JobProgress] = {}
    for message in messages:
        change = read_change(jobs, message)
        if change is None:
            continue
        view.update(change)
        if change.job.exit_code is not None:
            return change.job
    raise WatchError("the event stream ended before the job did")


def watch_all(messages: Iterable[ServerSentEvent], snapshots: Iterable[Change], view: View) -> None:
    """Show the jobs in flight, then follow every job's events (never ends by itself)."""
    jobs: dict[str, JobProgress] = {}
    for first in snapshots:
        if first.job.exit_code is None:
            jobs[first.job.id] = first.job
            view.update(first)
    for message in messages:
        change = read_change(jobs, message)
        if change is not None:
            view.update(change)
            if change.job.exit_code is not None:
                jobs.pop(change.job.id, None)


class LineView:
    """One plain line per event on stdout, for pipes and logs."""

    def __init__(self, *, with_job: bool = False) -> None:
        self.with_job = with_job

    def update(self, change: Change) -> None:
        sys.stdout.write(format_line(change, with_job=self.with_job) + "\n")
        sys.stdout.flush()


class BarsView:
    """A live progress bar per job; with `with_job`, an ended job leaves a line and goes."""

    def __init__(self, console: Console, *, with_job: bool = False) -> None:
        self.with_job = with_job
        self.progress = Progress(
            _JobColumn(with_job),
            BarColumn(),
            # The words wrap, not the numbers, when the terminal is narrow.
            _CountsColumn(table_column=Column(no_wrap=True)),
            _RateColumn(table_column=Column(no_wrap=True)),
            _ElapsedColumn(table_column=Column(no_wrap=True)),
            _WordsColumn(),
            console=console,
        )
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> BarsView:
        self.progress.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.progress.stop()

    def update(self, change: Change) -> None:
        job = change.job
        done = job.completed + job.failed
        total = job.total or None  # unknown yet: a pulsing bar
        task = self.tasks.get(job.id)
        if task is None:
            task = self.tasks[job.id] = self.progress.add_task("", total=total, job=job)
        self.progress.update(task, total=total, completed=done)
        if self.with_job and job.exit_code is not None:
            self.progress.console.print(outcome_text(job))
            self.progress.remove_task(self.tasks.pop(job.id))


def outcome_text(job: JobProgress) -> Text:
    return plain(job.outcome(), STATUS_STYLES.get(job.status, ""))


class _JobColumn(ProgressColumn):
    """`decodo running`, after the start of the job's id when every job is watched."""

    def __init__(self, with_job: bool) -> None:
        super().__init__()
        self.with_job = with_job

    def render(self, task: Task) -> Text:
        job: JobProgress = task.fields["job"]
        who = plain(f"{job.id[:12]} ") if self.with_job else ""
        status = plain(job.status, STATUS_STYLES.get(job.status, ""))
        return Text.assemble(who, plain(job.provider, "bold"), " ", status)


class _CountsColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        job: JobProgress = task.fields["job"]
        return Text.assemble(
            (str(job.completed), "green"),
            " done ",
            (str(job.failed), "red" if job.failed else ""),
            f" failed of {job.total} {job.display.unit}",
        )


class _WordsColumn(ProgressColumn):
    """The provider's own words on the job's progress: `segments 120/4000 · indexing 1`."""

    def render(self, task: Task) -> Text:
        job: JobProgress = task.fields["job"]
        return plain(job.describe())


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-/s" if speed is None else f"{speed:.1f}/s", style="progress.data.speed")


class _ElapsedColumn(ProgressColumn):
    """Time since the job was created (since watching began when that is unknown)."""

    def render(self, task: Task) -> Text:
        job: JobProgress = task.fields["job"]
        if job.started is None:
            seconds = task.elapsed or 0.0
        else:
            seconds = (job.ended or time.time()) - job.started
        return Text(str(timedelta(seconds=max(0, int(seconds)))), style="progress.elapsed")
