"""`receiver watch`: jobs followed through their Server-Sent Events, resumed after drops.

The event stream drives everything shown: a snapshot (`job.state`) first, then each event.
On a terminal the jobs are progress bars (rich); piped, each event is one plain line.
"""

from __future__ import annotations

import random
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
from rich.markup import escape
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskID, TextColumn
from rich.text import Text

from receiver.client.sse import ServerSentEvent, iter_sse
from receiver.events import Event

# Exit code of `receiver watch JOB` for each way a job ends.
OUTCOMES = {"completed": 0, "failed": 1, "cancelled": 2, "expired": 3}
EXIT_UNKNOWN_JOB = 4  # the receiver has no such job
EXIT_NO_STREAM = 5  # the receiver is unreachable, refused us, or the stream broke for good
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT

STATUS_STYLES = {
    "submitted": "dim",
    "running": "cyan",
    "completed": "green",
    "failed": "red",
    "cancelled": "yellow",
    "expired": "magenta",
}
# The snapshot the receiver sends first on every connection to /jobs/{id}/events.
SNAPSHOT = "job.state"
# Seconds of the longest wait between two reconnections.
_BACKOFF_CAP = 4.0
# Seconds without any connection before `receiver watch` gives up, by default.
GIVE_UP_AFTER = 300.0


class WatchError(Exception):
    """Watching cannot go on; `exit_code` says why."""

    def __init__(self, message: str, exit_code: int = EXIT_NO_STREAM) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _Unavailable(Exception):
    """The receiver answered 429 or 5xx, or not with an event stream: worth another try."""


_TRANSIENT = (httpx.TransportError, _Unavailable)


@dataclass
class EventSource:
    """The messages of an SSE endpoint, resumed with `Last-Event-ID` after every drop.

    A drop (network error, 429 or 5xx, or the response ending) is followed by a
    reconnection after an exponential backoff with jitter, capped at a few seconds. Every
    stream opened starts the count afresh, however quiet it then stays: WatchError comes
    only after `give_up_after` seconds without a connection (counted from the moment one
    was last up, or from the start), or after `retries` failed reconnections in a row when
    that is set. Refusals (401, 404) raise at once. Iterating never ends by itself: the
    reader stops once it has what it wanted.
    """

    client: httpx.Client
    url: str
    headers: Mapping[str, str]
    give_up_after: float = GIVE_UP_AFTER
    retries: int | None = None  # an extra bound on reconnections in a row; None: no bound
    backoff: float = 0.5  # seconds before the first reconnection; doubles each time
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    notify: Callable[[str], None] = lambda message: None
    last_id: str | None = None
    _response: httpx.Response | None = field(default=None, init=False, repr=False)
    _failures: int = field(default=0, init=False, repr=False)  # since a stream last opened
    # clock() when a stream was last up (when it dropped), or when watching began.
    _last_up: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        self._last_up = self.clock()

    def connect(self) -> None:
        """Open the stream unless it is open, so nothing that happens from now on is missed."""
        while self._response is None:
            try:
                self._response = self._open()
            except _TRANSIENT as exc:
                self._pause(_describe(exc))

    def close(self) -> None:
        if self._response is not None:
            self._response.close()
            self._response = None

    def __iter__(self) -> Iterator[ServerSentEvent]:
        while True:
            try:
                self.connect()
                yield from self._drain()
                problem = "the stream ended early"
            except _TRANSIENT as exc:
                problem = _describe(exc)
            self._pause(problem)

    def _drain(self) -> Iterator[ServerSentEvent]:
        response, self._response = self._response, None
        assert response is not None
        try:
            for message in iter_sse(response):
                if message.id:
                    self.last_id = message.id
                yield message
        finally:
            self._last_up = self.clock()  # it was up until now
            response.close()

    def _open(self) -> httpx.Response:
        headers = {**self.headers, "Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if self.last_id:
            headers["Last-Event-ID"] = self.last_id
        request = self.client.build_request("GET", self.url, headers=headers)
        response = self.client.send(request, stream=True)
        if _is_event_stream(response):
            self._failures = 0
            return response
        response.read()
        response.close()
        raise _refusal(response)

    def _pause(self, problem: str) -> None:
        """Wait before the next reconnection, or raise WatchError when it is time to give up."""
        self._failures += 1
        down = self.clock() - self._last_up
        self._give_up_when_due(problem, down)
        delay = min(_BACKOFF_CAP, self.backoff * 2 ** min(self._failures - 1, 16))
        delay *= random.uniform(0.5, 1.0)
        # The last try comes when the time is up, so giving up does not wait a backoff more.
        delay = min(delay, self.give_up_after - down)
        tries = "" if self.retries is None else f"/{self.retries}"
        self.notify(
            f"{problem}; reconnecting in {delay:.1f} s (try {self._failures}{tries}, "
            f"no connection for {_seconds(down)} of {_seconds(self.give_up_after)})"
        )
        self.sleep(delay)

    def _give_up_when_due(self, problem: str, down: float) -> None:
        if down >= self.give_up_after:
            limit = _seconds(self.give_up_after)
            raise WatchError(f"{self.url}: {problem}; gave up after {limit} without a connection")
        if self.retries is not None and self._failures > self.retries:
            tries = f"{self.retries} reconnection{'' if self.retries == 1 else 's'}"
            raise WatchError(f"{self.url}: {problem}; gave up after {tries} in a row")


def _is_event_stream(response: httpx.Response) -> bool:
    return response.status_code == 200 and _media_type(response) == "text/event-stream"


def _media_type(response: httpx.Response) -> str:
    kind: str = response.headers.get("content-type", "")
    return kind.partition(";")[0].strip().lower()


def _seconds(value: float) -> str:
    """`300 s`, `2.5 s`: a duration as the messages show it."""
    return f"{round(value, 1):g} s"


def _refusal(response: httpx.Response) -> Exception:
    """The error of an answer to a stream request that is not an event stream."""
    if response.status_code < 300:  # a proxy's page, say: as good as no connection
        return _Unavailable(
            f"{response.status_code}: not an event stream but {_media_type(response)!r}"
        )
    code, message = api_error(response)
    text = f"{response.status_code}: {message}"
    if response.status_code == 429 or response.status_code >= 500:
        return _Unavailable(text)
    if code == "unknown_job":
        return WatchError(text, EXIT_UNKNOWN_JOB)
    return WatchError(text)


def api_error(response: httpx.Response) -> tuple[str, str]:
    """(code, message) of the receiver's JSON error answer, or of any other answer."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict):
        return str(body.get("error", "")), str(body.get("message") or body.get("error"))
    return "", response.text.strip() or response.reason_phrase


def _describe(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


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
        if event.final:
            self.error = str(event.detail.get("reason") or self.error)
            self.ended = _epoch(event.at) or time.time()

    @property
    def exit_code(self) -> int | None:
        """How `receiver watch` exits for this job; None while it has not ended."""
        return OUTCOMES.get(self.status)

    def outcome(self) -> str:
        """`job ID failed: every task failed (0 done, 2 failed of 2)`."""
        reason = f": {self.error}" if self.error else ""
        counts = f"{self.completed} done, {self.failed} failed of {self.total}"
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
    """`2026-11-22T22:30:00.000+00:00 job.progress running 3/10 failed=0`, one per event."""
    job = change.job
    who = f" {job.id} {job.provider}" if with_job else ""
    line = f"{change.at} {change.type}{who} {job.status} {job.completed}/{job.total}"
    line += f" failed={job.failed}"
    if change.reason:
        line += f" reason={orjson.dumps(change.reason).decode()}"
    return line


def _epoch(value: object) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


# -- following ----------------------------------------------------------------------------


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
            TextColumn("{task.description}"),
            BarColumn(),
            _CountsColumn(),
            _RateColumn(),
            _ElapsedColumn(),
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
        self.progress.update(task, description=self._describe(job), total=total, completed=done)
        if self.with_job and job.exit_code is not None:
            self.progress.console.print(outcome_text(job))
            self.progress.remove_task(self.tasks.pop(job.id))

    def _describe(self, job: JobProgress) -> str:
        style = STATUS_STYLES.get(job.status, "")
        who = f"{escape(job.id[:12])} " if self.with_job else ""
        return f"{who}[bold]{escape(job.provider)}[/] [{style}]{escape(job.status)}[/]"


def outcome_text(job: JobProgress) -> Text:
    return Text(job.outcome(), style=STATUS_STYLES.get(job.status, ""))


class _CountsColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        job: JobProgress = task.fields["job"]
        return Text.assemble(
            (str(job.completed), "green"),
            " done ",
            (str(job.failed), "red" if job.failed else ""),
            f" failed of {job.total}",
        )


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
