"""The operators' commands (watch, jobs, show, retry, cancel) as a user runs them.

End to end, `python -m receiver ...` runs as a child process against a real deployment (the
Decodo sandbox, the receiver and a worker under uvicorn); `watch` under a pseudo-terminal for
its bar, piped for its lines. Drops and pages are scripted by a stand-in server, also real.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import orjson
import redis as sync_redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from receiver.sandbox.decodo import DEFAULT_AUTH
from receiver.store.keys import Keys
from tests.client.frames import (
    DIFY_DOCS,
    PING,
    SCRIPTED_STATE,
    as_frames,
    dify_snapshot,
    dify_stream,
    scripted_event,
)
from tests.e2e import (
    TOKEN,
    Deployment,
    Target,
    decodo_sandbox_server,
    deployment,
    polled_deployment,
)
from tests.servers import (
    RedisProcess,
    free_port,
    run_cli,
    serve_app,
    under_terminal,
    wait_for_port,
)

_ANSI = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|[@-Z\\-_])")


def cli_env(api: str, **values: str) -> dict[str, str]:
    """The environment of a user of the CLI: our receiver, our token, no forced rich modes."""
    dropped = ("REDIS_", "RECEIVER_", "FORCE_COLOR", "NO_COLOR", "TTY_", "COLUMNS", "LINES")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env.update({"RECEIVER_URL": api, "RECEIVER_API_TOKEN": TOKEN, "TERM": "xterm-256color"})
    env.update(values)
    return env


def printed_fields(stdout: str) -> dict[str, str]:
    """The `name  value` lines `receiver show` prints before a job's tasks or documents."""
    head = re.split(r"^(?:tasks|pages|documents|items) \(", stdout, maxsplit=1, flags=re.M)[0]
    return {found[1]: found[2] for line in head.splitlines() if (found := _FIELD.fullmatch(line))}


_FIELD = re.compile(r"([a-z_]+)\s+(.*\S)")


@dataclass
class Child:
    """A `receiver` child process whose output is read from `fd` (a terminal or a pipe)."""

    process: subprocess.Popen[bytes]
    fd: int
    output: str = ""
    errors: str = ""  # stderr, when piped

    def read_until(self, text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            if not self._read(deadline - time.monotonic()):
                raise AssertionError(f"{text!r} never came; output so far:\n{self.output}")
        return self.output

    def finish(self, timeout: float = 30) -> int:
        """Read to the end of the output; the exit code."""
        deadline = time.monotonic() + timeout
        while self._read(deadline - time.monotonic()):
            pass
        assert time.monotonic() < deadline, f"the command did not end:\n{self.output}"
        return self.process.wait(timeout)

    def _read(self, left: float) -> bool:
        if left <= 0 or not select.select([self.fd], [], [], left)[0]:
            return False
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the child closed its terminal
            return False
        self.output += _ANSI.sub("", data.decode("utf-8", "replace"))
        return bool(data)


@contextlib.contextmanager
def in_terminal(env: dict[str, str], *args: str, columns: int = 120) -> Iterator[Child]:
    """`receiver ARGS` under a pseudo-terminal of 30 lines (stdout and stderr)."""
    with under_terminal(env, *args, columns=columns) as (process, main):
        yield Child(process, main)


@contextlib.contextmanager
def piped(env: dict[str, str], *args: str) -> Iterator[Child]:
    """`receiver ARGS` with stdout piped; stderr is kept in `Child.errors` at the end."""
    command = [sys.executable, "-m", "receiver", *args]
    with (
        tempfile.TemporaryFile() as errors,
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=errors) as process,
    ):
        assert process.stdout is not None
        child = Child(process, process.stdout.fileno())
        try:
            yield child
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(10)
            errors.seek(0)
            child.errors = errors.read().decode()


def held_job(d: Deployment, count: int) -> tuple[str, list[str]]:
    """A job of `count` URLs whose tasks wait at the sandbox (its completion_delay is long)
    until finish_tasks: its id and its task ids."""
    job_id = d.submit({"urls": urls(count)})
    deadline = time.monotonic() + 10
    while len(tasks := d.job(job_id).get("tasks", [])) < count:
        assert time.monotonic() < deadline, d.job(job_id)
        time.sleep(0.05)
    return job_id, [task["id"] for task in tasks]


def finish_tasks(d: Deployment, task_ids: list[str], status: str = "done") -> None:
    """The sandbox finishes these tasks now (and calls back)."""
    for task_id in task_ids:
        response = httpx.post(
            f"{d.sandbox}/_sandbox/tasks/{task_id}/complete", json={"status": status}, timeout=10
        )
        assert response.status_code == 200, response.text


def urls(count: int) -> list[str]:
    return [f"https://example.com/{i}" for i in range(count)]


# What each provider's progress counts, as `watch` and `show` name it.
UNITS = {"decodo": "tasks", "firecrawl": "pages", "dify": "documents"}


def expected_line(event: dict[str, Any], with_job: bool = False) -> str:
    """The line the brief specifies for an event of the stream."""
    progress = event["progress"]
    who = f" {event['job_id']} {event['provider']}" if with_job else ""
    line = f"{event['at']} {event['type']}{who} {event['status']}"
    line += f" {progress['completed']}/{progress['total']} {UNITS[event['provider']]}"
    line += f" failed={progress['failed']}"
    if event["detail"].get("reason"):
        line += f" reason={orjson.dumps(event['detail']['reason']).decode()}"
    return line


DROP = b""  # in a script: the connection breaks here, mid-response
PAUSE = b"\0"  # in a script: a second with nothing sent


@dataclass
class Script:
    """What a stand-in receiver answers on each connection: frames, or an HTTP status."""

    answers: list[list[bytes] | int]
    last_ids: list[str | None] = field(default_factory=list)  # Last-Event-ID of each request
    queries: list[dict[str, str]] = field(default_factory=list)
    job: dict[str, Any] | None = None  # what GET /jobs/{id} answers for its id

    async def job_events(self, request: Request) -> Response:
        self.last_ids.append(request.headers.get("last-event-id"))
        answer = self.answers[min(len(self.last_ids), len(self.answers)) - 1]
        if isinstance(answer, int):
            return JSONResponse({"error": "unavailable", "message": "try later"}, answer)
        return StreamingResponse(self._send(answer), media_type="text/event-stream")

    async def _send(self, frames: list[bytes]) -> Any:
        for frame in frames:
            if frame == DROP:
                raise ConnectionAbortedError("scripted drop")
            if frame == PAUSE:
                await anyio.sleep(1)
                continue
            yield frame

    async def one_job(self, request: Request) -> Response:
        if self.job is None or self.job["id"] != request.path_params["job_id"]:
            message = f"no job {request.path_params['job_id']}"
            return JSONResponse({"error": "unknown_job", "message": message}, 404)
        return JSONResponse(self.job)

    async def jobs(self, request: Request) -> Response:
        """Pages of two jobs, then a cursor, up to six jobs."""
        self.queries.append(dict(request.query_params))
        start = int(request.query_params.get("cursor", "0"))
        ids = range(start, min(start + 2, 6), 1)
        page = [{"id": f"job{i}", "provider": "decodo", "status": "completed"} for i in ids]
        more = start + 2 < 6
        return JSONResponse({"jobs": page, "next_cursor": str(start + 2) if more else None})


@contextlib.contextmanager
def stand_in(script: Script) -> Iterator[str]:
    app = Starlette(
        routes=[
            Route("/jobs/{job_id}/events", script.job_events),
            Route("/jobs/{job_id}", script.one_job),
            Route("/jobs", script.jobs),
        ]
    )
    with serve_app(app) as url:
        yield url


# -- watch, end to end ----------------------------------------------------------------------


def test_watch_in_a_terminal_shows_the_bar_and_exits_0_when_the_job_completes(
    redis_process: RedisProcess,
) -> None:
    with deployment(redis_process, completion_delay=60) as d:
        job_id, tasks = held_job(d, 3)
        with in_terminal(cli_env(d.api), "watch", job_id) as child:
            child.read_until("0 done 0 failed of 3 tasks")
            before = len(child.output)
            finish_tasks(d, tasks[:1])
            child.read_until("1 done 0 failed of 3 tasks")
            time.sleep(0.3)  # tasks done apart in time give the bar a rate
            finish_tasks(d, tasks[1:2])
            child.read_until("2 done 0 failed of 3 tasks")
            time.sleep(1.2)  # the elapsed column ticks past a second
            finish_tasks(d, tasks[2:])
            code = child.finish()
    assert code == 0, child.output
    assert re.search(r"decodo running +━+", child.output)  # the bar
    assert f"job {job_id} completed (3 done, 0 failed of 3 tasks)" in child.output
    # The rate (done per second, one decimal) and the elapsed time (H:MM:SS) follow the counts.
    columns = re.compile(r"(\d) done 0 failed of 3 tasks +(-|\d+\.\d)/s +(\d+):(\d\d):(\d\d)")
    shown = [found.groups() for found in columns.finditer(child.output[before:])]
    assert shown, child.output
    # At two done, one task in the 0.3 s or more since the first: at most 1 / 0.3 a second.
    rates = [float(rate) for done, rate, *_ in shown if done == "2" and rate != "-"]
    assert rates and all(0 < rate <= 3.4 for rate in rates), shown
    seconds = [int(h) * 3600 + int(m) * 60 + int(s) for _, _, h, m, s in shown]
    assert seconds == sorted(seconds) and 1 <= seconds[-1] < 30, shown


def test_watch_in_a_terminal_exits_1_with_the_reason_when_the_job_fails(
    redis_process: RedisProcess,
) -> None:
    with deployment(redis_process, completion_delay=60) as d:
        job_id, tasks = held_job(d, 2)
        with in_terminal(cli_env(d.api), "watch", job_id) as child:
            child.read_until("decodo")
            finish_tasks(d, tasks, "faulted")
            code = child.finish()
    assert code == 1, child.output
    assert f"job {job_id} failed: every task failed (0 done, 2 failed of 2 tasks)" in child.output


def test_watch_interrupted_exits_130(redis_process: RedisProcess) -> None:
    with deployment(redis_process, completion_delay=60) as d:
        job_id, _ = held_job(d, 1)
        with in_terminal(cli_env(d.api), "watch", job_id) as child:
            child.read_until("0 done 0 failed of 1 tasks")
            child.process.send_signal(signal.SIGINT)
            assert child.finish() == 130


def test_watch_piped_prints_one_line_per_event(redis_target: Target) -> None:
    with deployment(redis_target, completion_delay=60) as d:
        job_id, tasks = held_job(d, 4)
        with piped(cli_env(d.api), "watch", job_id) as child:
            child.read_until(" job.state ")
            finish_tasks(d, tasks[:2], "faulted")
            finish_tasks(d, tasks[2:])
            code = child.finish()
        events = d.events(job_id)
    lines = child.output.splitlines()
    assert re.fullmatch(r"\S+ job\.state running 0/4 tasks failed=0", lines[0]), lines
    assert lines[1:] == [expected_line(e) for e in events[-len(lines) + 1 :]]
    kinds = [line.split()[1] for line in lines]
    assert (kinds.count("task.failed"), kinds.count("task.completed")) == (2, 2)
    assert lines[-1].endswith(" job.completed completed 2/4 tasks failed=2")
    assert code == 0, child.errors
    assert f"job {job_id} completed (2 done, 2 failed of 4 tasks)" in child.errors


def test_watch_piped_exits_1_and_prints_the_reason_when_every_task_fails(
    redis_process: RedisProcess,
) -> None:
    with deployment(redis_process, completion_delay=60) as d:
        job_id, tasks = held_job(d, 1)
        with piped(cli_env(d.api), "watch", job_id) as child:
            child.read_until(" job.state ")
            finish_tasks(d, tasks, "faulted")
            code = child.finish()
    assert code == 1
    assert child.output.splitlines()[-1].endswith(
        'job.failed failed 0/1 tasks failed=1 reason="every task failed"'
    )
    assert f"job {job_id} failed: every task failed" in child.errors


def test_watch_of_an_ended_job_exits_at_once_with_its_outcome(
    redis_process: RedisProcess,
) -> None:
    with deployment(redis_process) as d:
        env = cli_env(d.api)
        done = d.submit({"urls": urls(2)})
        d.wait(done)
        started = time.monotonic()
        watched = run_cli(env, "watch", done)
        assert time.monotonic() - started < 5
        assert watched.returncode == 0, watched.stderr
        assert re.fullmatch(r"\S+ job\.state completed 2/2 tasks failed=0\n", watched.stdout)

        d.configure_sandbox(completion_delay=30)
        running = d.submit({"url": "https://example.com"})
        assert run_cli(env, "cancel", running).returncode == 0
        cancelled = run_cli(env, "watch", running)
        assert cancelled.returncode == 2
        assert "cancelled: cancelled by a user" in cancelled.stderr


def test_watch_refusals_have_their_own_exit_codes(redis_process: RedisProcess) -> None:
    with deployment(redis_process) as d:
        unknown = run_cli(cli_env(d.api), "watch", "nope")
        wrong_token = run_cli(cli_env(d.api, RECEIVER_API_TOKEN="wrong"), "watch", "nope")
    assert unknown.returncode == 4 and "404: no job nope" in unknown.stderr
    assert wrong_token.returncode == 5 and "401" in wrong_token.stderr


def test_watch_resumes_after_drops_with_the_last_event_id() -> None:
    script = Script(
        [
            [SCRIPTED_STATE, scripted_event("2-0", "job.progress", "running", 2), DROP],
            503,
            [scripted_event("3-0", "job.progress", "running", 3)],  # then ends early
            [scripted_event("4-0", "job.completed", "completed", 4)],
        ]
    )
    with stand_in(script) as url:
        watched = run_cli(cli_env(url), "watch", "j1")
    assert watched.returncode == 0, watched.stderr
    assert script.last_ids == [None, "2-0", "2-0", "3-0"]
    assert [line.split()[1:3] for line in watched.stdout.splitlines()] == [
        ["job.state", "running"],
        ["job.progress", "running"],
        ["job.progress", "running"],
        ["job.completed", "completed"],
    ]
    assert watched.stderr.count("reconnecting in") == 3


def test_watch_counts_afresh_after_each_reconnection() -> None:
    """Ten drops of a stream with nothing new: more than --retries, longer than
    --give-up-after in all (each backoff is 0.25 s or more), but a connection each time."""
    completed = scripted_event("4-0", "job.completed", "completed", 4)
    script = Script([[SCRIPTED_STATE, PING, DROP], *[[PING, DROP]] * 9, [completed]])
    with stand_in(script) as url:
        watched = run_cli(cli_env(url), "watch", "j1", "--retries", "1", "--give-up-after", "2")
    assert watched.returncode == 0, watched.stderr
    assert script.last_ids == [None, *["1-0"] * 10]
    assert watched.stderr.count("reconnecting in") == 10
    assert "(try 1/1, no connection for 0 s of 2 s)" in watched.stderr
    assert watched.stdout.splitlines()[-1].endswith(" job.completed completed 4/4 tasks failed=0")


def test_watch_retries_bounds_the_failed_reconnections_in_a_row() -> None:
    script = Script([[SCRIPTED_STATE], 503])  # the state, the end, then 503 from then on
    with stand_in(script) as url:
        watched = run_cli(cli_env(url), "watch", "j1", "--retries", "2")
    assert watched.returncode == 5
    assert "503: try later; gave up after 2 reconnections in a row" in watched.stderr
    assert script.last_ids == [None, "1-0", "1-0"]


def test_watch_gives_up_after_give_up_after_seconds_without_a_connection() -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    watched = run_cli(cli_env(closed), "watch", "j1", "--give-up-after", "2")
    assert time.monotonic() - started >= 2
    assert watched.returncode == 5
    last = watched.stderr.splitlines()[-1]
    assert last.startswith(f"Error: {closed}/jobs/j1/events: ")
    assert last.endswith("; gave up after 2 s without a connection")
    assert watched.stderr.count("reconnecting in") >= 3
    assert "Traceback" not in watched.stderr


def test_watch_keeps_watching_a_job_quiet_for_longer_than_the_heartbeat(
    redis_process: RedisProcess,
) -> None:
    """On the shipped defaults: `receiver run` with RECEIVER_SSE_HEARTBEAT unset (15 s) and
    redis-py's own socket timeout (5 s), and a job with nothing to say for 20 s."""
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    redis = sync_redis.Redis.from_url(redis_process.url)
    redis.flushall()
    with decodo_sandbox_server(completion_delay=600) as sandbox, contextlib.closing(redis):
        env = cli_env(
            api,
            REDIS_URL=redis_process.url,
            RECEIVER_SECRET_KEYS="quiet-key-7f2a9c4e",
            RECEIVER_PUBLIC_URL=api,
            PORT=str(port),
            DECODO_BASE_URL=sandbox,
            DECODO_AUTH=DEFAULT_AUTH,
        )
        with piped(env, "run") as server:
            wait_for_port(port)
            d = Deployment(api, sandbox, redis, Keys())
            job_id, tasks = held_job(d, 1)
            with piped(env, "watch", job_id) as child:
                child.read_until(" job.state ")
                time.sleep(20)  # the job's tasks wait at the sandbox: not one event
                running = child.process.poll() is None
                finish_tasks(d, tasks)
                code = child.finish()
            events = d.events(job_id)
            server.process.terminate()
            assert server.finish() == 0
    assert running, child.errors
    assert code == 0, child.errors
    # Nothing but the outcome on stderr: no reconnection, no traceback.
    assert child.errors == f"job {job_id} completed (1 done, 0 failed of 1 tasks)\n"
    # One snapshot, then the job's events from where it stood, each once: no reconnection.
    state, *lines = child.output.splitlines()
    assert re.fullmatch(r"\S+ job\.state running 0/1 tasks failed=0", state), child.output
    assert lines == [expected_line(e) for e in events[-len(lines) :]], child.output
    assert lines[-1].endswith(" job.completed completed 1/1 tasks failed=0")
    assert "Traceback" not in server.errors, server.errors


def test_watch_without_a_job_follows_every_job_until_ctrl_c(
    redis_process: RedisProcess,
) -> None:
    with deployment(redis_process, completion_delay=60) as d:
        env = cli_env(d.api)
        ended = d.submit({"url": "https://example.com"})
        assert run_cli(env, "cancel", ended).returncode == 0
        first, first_tasks = held_job(d, 2)
        with piped(env, "watch") as child:
            child.read_until(f" job.state {first} decodo running 0/2 tasks failed=0\n")
            finish_tasks(d, first_tasks)
            child.read_until(f" job.completed {first} decodo completed 2/2 tasks failed=0\n")
            second, second_tasks = held_job(d, 1)
            child.read_until(f" job.created {second} decodo ")
            child.process.send_signal(signal.SIGINT)
            assert child.finish() == 0
        assert ended not in child.output
        with in_terminal(env, "watch") as child:
            child.read_until(f"{second[:12]} decodo running")
            finish_tasks(d, second_tasks)
            child.read_until(f"job {second} completed (1 done, 0 failed of 1 tasks)")
            child.process.send_signal(signal.SIGINT)
            assert child.finish() == 0


# -- per provider, end to end ------------------------------------------------------------


def test_watch_piped_counts_a_dify_jobs_documents_in_difys_words() -> None:
    stream = dify_stream()
    script = Script([as_frames(stream)])
    with stand_in(script) as url:
        watched = run_cli(cli_env(url), "watch", dify_snapshot()["id"])
    assert watched.returncode == 1, watched.stderr
    at = [orjson.loads(m.data).get("at") or orjson.loads(m.data)["updated_at"] for m in stream]
    reason = f"{DIFY_DOCS[0]}: Failed to load"
    assert watched.stdout.splitlines() == [
        f'{at[0]} job.state running 0/2 documents failed=0 progress="segments 120/4000"',
        f"{at[1]} job.progress running 0/2 documents failed=1"
        ' progress="segments 1200/4000 · indexing 1"',
        f'{at[2]} job.progress running 1/2 documents failed=1 progress="segments 4000/4000"',
        f'{at[3]} job.failed failed 1/2 documents failed=1 progress="segments 4000/4000"'
        f' reason="{reason}"',
    ]
    job_id = dify_snapshot()["id"]
    assert watched.stderr == f"job {job_id} failed: {reason} (1 done, 1 failed of 2 documents)\n"


def test_watch_in_a_terminal_shows_difys_words_beside_the_bar() -> None:
    first, moved, later, ended = as_frames(dify_stream())
    script = Script([[first, moved, PAUSE, later, PAUSE, ended]])
    with stand_in(script) as url:
        with in_terminal(cli_env(url), "watch", dify_snapshot()["id"], columns=160) as child:
            child.read_until("segments 1200/4000 · indexing 1")
            child.read_until("segments 4000/4000")
            code = child.finish()
    assert code == 1, child.output
    bar = re.compile(r"dify running +━+\S* +0 done 1 failed of 2 documents .* indexing 1")
    assert bar.search(child.output), child.output
    assert "(1 done, 1 failed of 2 documents)" in child.output


def test_show_prints_the_providers_progress_words_and_names_its_items() -> None:
    job = dify_snapshot(
        progress={"completed": 1, "failed": 0, "total": 2},
        stages={"indexing": 1},
        tasks=[
            {"id": DIFY_DOCS[0], "status": "indexing"},
            {"id": DIFY_DOCS[1], "status": "completed"},
        ],
    )
    with stand_in(Script([], job=job)) as url:
        shown = run_cli(cli_env(url), "show", job["id"])
        missing = run_cli(cli_env(url), "show", "nope")
    assert shown.returncode == 0, shown.stderr
    fields = printed_fields(shown.stdout)
    assert fields["progress"] == "1/2 documents · segments 120/4000 · indexing 1"
    assert "documents (2): 1 completed, 1 indexing" in shown.stdout
    assert "tasks (" not in shown.stdout
    assert missing.returncode == 4 and missing.stderr == "Error: 404: no job nope\n"


# -- jobs, show, retry, cancel --------------------------------------------------------------


def _ended_jobs(d: Deployment) -> tuple[str, str, str]:
    """(completed, failed, running) jobs, submitted in this order."""
    done = d.submit({"urls": urls(2)})
    d.wait(done)
    d.configure_sandbox(fault_rate=1.0)
    failed = d.submit({"url": "https://example.com/bad"})
    d.wait(failed)
    d.configure_sandbox(fault_rate=0.0, completion_delay=60)
    running = d.submit({"url": "https://example.com/slow"})
    return done, failed, running


def test_jobs_lists_filters_and_limits(redis_process: RedisProcess) -> None:
    with deployment(redis_process) as d:
        done, failed, running = _ended_jobs(d)
        env = cli_env(d.api)
        listed = run_cli(env, "jobs")
        only_failed = run_cli(env, "jobs", "--status", "failed")
        newest = run_cli(env, "jobs", "--limit", "2", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split()[1:] for line in listed.stdout.splitlines()[1:]}
    assert rows[done][:3] == ["decodo", "completed", "2/2"]
    assert rows[failed][:4] == ["decodo", "failed", "0/1", "(1"]
    assert listed.stdout.splitlines()[0].split() == [
        "id",
        "provider",
        "status",
        "progress",
        "created",
        "(UTC)",
        "error",
    ]
    assert "every task failed" in listed.stdout
    assert [line.split()[0] for line in only_failed.stdout.splitlines()[1:]] == [failed]
    assert [job["id"] for job in orjson.loads(newest.stdout)] == [running, failed]


def test_jobs_filters_by_provider(redis_process: RedisProcess) -> None:
    with polled_deployment(redis_process) as d:
        decodo = d.submit({"urls": urls(2)})
        firecrawl = d.create({"provider": "firecrawl", "urls": urls(2)})
        env = cli_env(d.api)
        only = {p: run_cli(env, "jobs", "--provider", p) for p in ("decodo", "firecrawl", "dify")}
        both = run_cli(env, "jobs", "--json")
        as_json = run_cli(env, "jobs", "--provider", "firecrawl", "--json")
    for answer in (*only.values(), both, as_json):
        assert answer.returncode == 0, answer.stderr
    listed = {p: [line.split()[:2] for line in a.stdout.splitlines()[1:]] for p, a in only.items()}
    assert listed["decodo"] == [[decodo, "decodo"]]
    assert listed["firecrawl"] == [[firecrawl, "firecrawl"]]
    assert listed["dify"] == []
    assert [job["id"] for job in orjson.loads(both.stdout)] == [firecrawl, decodo]
    assert [job["provider"] for job in orjson.loads(as_json.stdout)] == ["firecrawl"]


def test_jobs_follows_the_cursor_up_to_the_limit() -> None:
    script = Script([])
    with stand_in(script) as url:
        listed = run_cli(cli_env(url), "jobs", "--limit", "5", "--status", "completed", "--json")
    assert [job["id"] for job in orjson.loads(listed.stdout)] == [f"job{i}" for i in range(5)]
    assert script.queries == [
        {"status": "completed", "limit": "5"},
        {"status": "completed", "cursor": "2", "limit": "3"},
        {"status": "completed", "cursor": "4", "limit": "1"},
    ]


def test_show_prints_the_job_its_tasks_and_errors(redis_process: RedisProcess) -> None:
    with deployment(redis_process) as d:
        done, failed, _ = _ended_jobs(d)
        env = cli_env(d.api)
        shown = run_cli(env, "show", failed)
        raw = run_cli(env, "show", done, "--json")
        missing = run_cli(env, "show", "nope")
    assert shown.returncode == 0, shown.stderr
    assert (
        printed_fields(shown.stdout).items()
        >= {
            "id": failed,
            "status": "failed",
            "error": "every task failed",
        }.items()
    )
    assert "tasks (1): 1 failed" in shown.stdout
    assert re.search(r"failed\s+https://example.com/bad\s+faulted", shown.stdout)
    job = orjson.loads(raw.stdout)
    assert job["id"] == done and len(job["tasks"]) == 2
    assert not any("error" in task for task in job["tasks"])
    assert missing.returncode == 4 and "404: no job nope" in missing.stderr


def test_show_prints_a_dify_job_with_its_documents_and_the_error(
    redis_process: RedisProcess,
) -> None:
    with polled_deployment(redis_process) as d:
        dataset, batch, docs = d.dify_batch(
            [{"name": "a.txt", "segments": 3}, {"name": "b.pdf", "fail": True}]
        )
        job_id = d.create({"provider": "dify", "dataset_id": dataset, "batch": batch})
        assert d.wait(job_id)["status"] == "failed"
        env = cli_env(d.api)
        shown = run_cli(env, "show", job_id)
        raw = run_cli(env, "show", job_id, "--json")
    assert shown.returncode == 0, shown.stderr
    good, bad = docs
    pdfium = "Failed to load document (PDFium: Data format error)."
    assert (
        printed_fields(shown.stdout).items()
        >= {
            "id": job_id,
            "provider": "dify",
            "status": "failed",
            "progress": "1/2 documents (1 failed) · segments 3/3 · completed 1, error 1",
            "error": f"{bad}: {pdfium}",
            "segments_total": "3",
        }.items()
    )
    assert f'"dataset_id":"{dataset}"' in shown.stdout and f'"batch":"{batch}"' in shown.stdout
    assert "documents (2): 1 completed, 1 error" in shown.stdout
    assert "tasks (" not in shown.stdout  # a Dify job's items are its documents
    rows = shown.stdout[shown.stdout.index("documents (2)") :].splitlines()[2:]
    # The document in error comes first, with its error; the completed one has none.
    assert re.fullmatch(rf"{bad}\s+error\s+{re.escape(pdfium)}", rows[0]), rows
    assert re.fullmatch(rf"{good}\s+completed", rows[1]), rows
    documents = {doc["id"]: doc for doc in orjson.loads(raw.stdout)["tasks"]}
    assert documents[bad]["error"] == pdfium and "error" not in documents[good]


def test_show_prints_a_firecrawl_job(redis_process: RedisProcess) -> None:
    with polled_deployment(redis_process) as d:
        job_id = d.create({"provider": "firecrawl", "urls": urls(3)})
        job = d.wait(job_id)
        assert job["status"] == "completed"
        batch_id = job["external"]["batch_id"]
        shown = run_cli(cli_env(d.api), "show", job_id)
    assert shown.returncode == 0, shown.stderr
    fields = printed_fields(shown.stdout)
    assert (
        fields.items()
        >= {
            "id": job_id,
            "provider": "firecrawl",
            "status": "completed",
            "progress": "3/3 pages · firecrawl completed · documents 3",
            "external": f'{{"batch_id":"{batch_id}"}}',
            "provider_status": "completed",
            "credits_used": "3",
            "invalid_urls": "[]",
        }.items()
    )
    assert "error" not in fields


def test_show_prints_a_firecrawl_jobs_count_of_documents(redis_process: RedisProcess) -> None:
    with polled_deployment(redis_process) as d:
        job_id = d.create({"provider": "firecrawl", "urls": urls(2)})
        assert d.wait(job_id)["documents"] == 2
        shown = run_cli(cli_env(d.api), "show", job_id)
    assert shown.returncode == 0, shown.stderr
    assert printed_fields(shown.stdout)["documents"] == "2", shown.stdout


def test_retry_and_cancel(redis_process: RedisProcess) -> None:
    with deployment(redis_process) as d:
        done, failed, running = _ended_jobs(d)
        env = cli_env(d.api)
        retried = run_cli(env, "retry", failed, "--json")
        refused = [run_cli(env, "retry", job_id) for job_id in (done, running)]
        unknown = run_cli(env, "retry", "nope")
        cancelled = run_cli(env, "cancel", running)
        again = run_cli(env, "cancel", running)
    assert retried.returncode == 0, retried.stderr
    assert orjson.loads(retried.stdout)["status"] in ("submitted", "running")
    for answer in refused:
        assert answer.returncode == 1 and "409" in answer.stderr
    assert unknown.returncode == 4 and "404" in unknown.stderr
    assert cancelled.returncode == 0, cancelled.stderr
    assert (
        printed_fields(cancelled.stdout).items()
        >= {
            "status": "cancelled",
            "error": "cancelled by a user",
        }.items()
    )
    assert again.returncode == 1 and "409" in again.stderr
