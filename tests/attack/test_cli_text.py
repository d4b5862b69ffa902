"""Job data shown by the CLI is text: never rich markup, never a terminal's controls.

A user's queries and a provider's document errors and statuses hold markup (`[/oops]` used
to crash `receiver show` with MarkupError, `[link=...]` made a disguised link), escape
sequences (ESC and C1: clear the screen, OSC 8 hyperlinks), CR, NUL, DEL and bidi
overrides. End to end: the real CLI against a real receiver, on a terminal (rich forced to
one, or a pseudo-terminal for watch's bars) and piped, for `show`, `jobs`, `cancel`,
`watch` (bars and lines) and the errors of an unknown job.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.client.frames import sse_frame
from tests.e2e import Deployment, deployment
from tests.servers import RedisProcess, run_cli, serve_app, under_terminal
from tests.test_watch import cli_env, piped

# Hostile texts, and how the CLI shows each outside JSON: as text, controls escaped.
MARKUP = "[/oops] [link=https://evil.example]safe.example[/link]"
ESCAPES = "\x1b[2J\x1b]8;;https://evil.example\x07click\x1b]8;;\x07"
ESCAPES_SHOWN = r"\x1b[2J\x1b]8;;https://evil.example\x07click\x1b]8;;\x07"
C1 = "\x9b2J\x9d8;;https://evil.example\x9c"
C1_SHOWN = r"\x9b2J\x9d8;;https://evil.example\x9c"
HIDDEN = "shown\rhidden \u202etxt.exe \x00\x08\x7f"
HIDDEN_SHOWN = r"shown\rhidden \u202etxt.exe \x00\x08\x7f"
HOSTILE = (MARKUP, ESCAPES, C1, HIDDEN)
SHOWN = (MARKUP, ESCAPES_SHOWN, C1_SHOWN, HIDDEN_SHOWN)
# What must never reach a terminal from job data (rich's own SGR colours may).
RAW = ("\x1b[2J", "\x1b]", "\x9b", "\x9d", "\x9c", "\x07", "\x08", "\x7f", "\x00", "\u202e")
RAW_CR = "shown\rhidden"
# Escape sequences rich writes itself: colours (SGR); on a live display, the cursor hidden
# and shown, a line erased, the cursor moved up.
_RICH = re.compile(r"\x1b\[[0-9;]*m|\x1b\[\?25[lh]|\x1b\[2K|\x1b\[\d*A")
# Rich forced to a terminal, wide enough that no line wraps.
TERMINAL = {"FORCE_COLOR": "1", "COLUMNS": "400"}

DATASET = "8e5c3f0a-2d41-4b8e-9d0c-5a7f1e2b3c4d"
BATCH = "20261201130000000001"
# The stand-in Dify's documents: two in error with hostile messages, two in hostile
# stages (they complete once `settle` is set).
ERRORED = {"doc-markup": MARKUP, "doc-escapes": ESCAPES}
STAGED = {"doc-c1": C1, "doc-hidden": HIDDEN}


def assert_text(output: str, *shown: str) -> None:
    """No raw control of the hostile texts in `output`, no escape sequence but rich's
    own colours, and each of `shown` there as text."""
    for raw in (*RAW, RAW_CR):
        assert raw not in output, (raw, output)
    assert "\x1b" not in _RICH.sub("", output), output
    for text in shown:
        assert text in output, (text, output)


@dataclass
class HostileDify:
    """Dify's indexing-status route, answering documents with hostile errors and stages;
    once `settle` is set, the staged documents complete (and the job fails)."""

    settle: bool = False
    polls: int = 0

    async def indexing_status(self, request: Request) -> JSONResponse:
        self.polls += 1
        data = [_document(doc, "error", error) for doc, error in ERRORED.items()]
        for doc, stage in STAGED.items():
            data.append(_document(doc, "completed" if self.settle else stage, None))
        return JSONResponse({"data": data})


def _document(doc: str, status: str, error: str | None) -> dict[str, object]:
    return {
        "id": doc,
        "indexing_status": status,
        "error": error,
        "completed_segments": 1,
        "total_segments": 1,
        "processing_started_at": 1764590400,
        "completed_at": None,
    }


@contextlib.contextmanager
def hostile_deployment(redis: RedisProcess, dify: HostileDify) -> Iterator[Deployment]:
    """The receiver and a worker, the Decodo sandbox holding its tasks, and Dify as `dify`."""
    path = "/v1/datasets/{dataset}/documents/{batch}/indexing-status"
    app = Starlette(routes=[Route(path, dify.indexing_status)])
    with serve_app(app) as dify_url:
        settings = {
            "dify_base_url": f"{dify_url}/v1",
            "dify_api_key": "dataset-4kQ9vT2mXr7LpW3e",
            "poll_min": 0.05,
            "poll_max": 0.3,
            "dify_rps": 1000.0,
        }
        with deployment(redis, settings=settings, completion_delay=600) as d:
            yield d


def dify_job(d: Deployment, dify: HostileDify) -> str:
    """A Dify job on the stand-in, once its documents' hostile stages are recorded."""
    body = {"provider": "dify", "dataset_id": DATASET, "batch": BATCH}
    created = httpx.post(f"{d.api}/jobs", json=body, headers=d.headers(), timeout=10)
    assert created.status_code == 202, created.text
    job_id: str = created.json()["id"]
    deadline = time.monotonic() + 20
    while set(STAGED.values()) - set(d.job(job_id).get("stages") or {}):
        assert time.monotonic() < deadline, d.job(job_id)
        time.sleep(0.05)
    return job_id


@dataclass
class RawTerminal:
    """A child under a pseudo-terminal, its output kept byte for byte."""

    process: subprocess.Popen[bytes]
    fd: int
    raw: bytes = b""

    @property
    def text(self) -> str:
        """The output without rich's own escape sequences."""
        return _RICH.sub("", self.raw.decode("utf-8", "replace"))

    def read_until(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.text:
            left = deadline - time.monotonic()
            assert self._read(left), f"{text!r} never came; output so far:\n{self.text}"

    def finish(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while self._read(deadline - time.monotonic()):
            pass
        return self.process.wait(max(deadline - time.monotonic(), 1))

    def _read(self, left: float) -> bool:
        if left <= 0 or not select.select([self.fd], [], [], left)[0]:
            return False
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the child closed its terminal
            return False
        self.raw += data
        return bool(data)


@contextlib.contextmanager
def raw_terminal(env: dict[str, str], *args: str, columns: int = 400) -> Iterator[RawTerminal]:
    with under_terminal(env, *args, columns=columns) as (process, main):
        yield RawTerminal(process, main)


def quoted_values(line: str, name: str) -> list[str]:
    """The JSON strings of `name="..."` fields in a watch line, decoded."""
    return [orjson.loads(found) for found in re.findall(rf'{name}=("(?:[^"\\]|\\.)*")', line)]


# -- show, jobs, cancel -------------------------------------------------------------------


def test_show_jobs_and_cancel_print_hostile_queries_and_stages_as_text(
    redis_process: RedisProcess,
) -> None:
    dify = HostileDify()
    with hostile_deployment(redis_process, dify) as d:
        job_id = d.submit({"queries": list(HOSTILE)})
        deadline = time.monotonic() + 10
        while len(d.job(job_id).get("tasks", [])) < len(HOSTILE):
            assert time.monotonic() < deadline, d.job(job_id)
            time.sleep(0.05)
        staged = dify_job(d, dify)
        env = cli_env(d.api)
        on_terminal = run_cli({**env, **TERMINAL}, "show", job_id)
        shown_piped = run_cli(env, "show", job_id)
        listed = run_cli({**env, **TERMINAL}, "jobs")
        as_json = run_cli(env, "show", job_id, "--json")
        cancelled = run_cli({**env, **TERMINAL}, "cancel", staged)
    for answer in (on_terminal, shown_piped, listed, as_json, cancelled):
        assert answer.returncode == 0, answer.stderr
        assert_text(answer.stdout + answer.stderr)
    # The queries, in the tasks' table; the stages, in the progress line and `stages`.
    for answer in (on_terminal, shown_piped):
        assert_text(answer.stdout, *SHOWN)
    assert_text(cancelled.stdout, "cancelled", C1_SHOWN, HIDDEN_SHOWN)
    assert job_id in listed.stdout and staged in listed.stdout
    # --json is the same data, every control as a JSON escape.
    inputs = [task["input"] for task in orjson.loads(as_json.stdout)["tasks"]]
    assert sorted(inputs) == sorted(HOSTILE)


def test_show_and_jobs_print_a_providers_hostile_errors_and_stages_as_text(
    redis_process: RedisProcess,
) -> None:
    dify = HostileDify()
    with hostile_deployment(redis_process, dify) as d:
        job_id = dify_job(d, dify)
        env = cli_env(d.api)
        running = run_cli({**env, **TERMINAL}, "show", job_id)
        dify.settle = True
        assert d.wait(job_id)["status"] == "failed"
        ended = run_cli({**env, **TERMINAL}, "show", job_id)
        listed = run_cli({**env, **TERMINAL}, "jobs")
        listed_piped = run_cli(env, "jobs", "--status", "failed")
    for answer in (running, ended, listed, listed_piped):
        assert answer.returncode == 0, answer.stderr
        assert_text(answer.stdout + answer.stderr)
    # The stages, in the progress line and the documents' table; the errors in both shows.
    assert_text(running.stdout, C1_SHOWN, HIDDEN_SHOWN, MARKUP, ESCAPES_SHOWN)
    assert_text(ended.stdout, f"doc-markup: {MARKUP}; doc-escapes: {ESCAPES_SHOWN}")
    assert_text(listed.stdout, f"doc-markup: {MARKUP}; doc-escapes: {ESCAPES_SHOWN}")


# -- watch ---------------------------------------------------------------------------------


def test_watch_piped_prints_a_providers_hostile_words_as_json_strings(
    redis_process: RedisProcess,
) -> None:
    dify = HostileDify()
    with hostile_deployment(redis_process, dify) as d:
        job_id = dify_job(d, dify)
        with piped(cli_env(d.api), "watch", job_id) as child:
            child.read_until(" job.state ")
            dify.settle = True
            code = child.finish()
    assert code == 1, child.errors
    assert_text(child.output + child.errors)
    first, *_, last = child.output.splitlines()
    # The words and the reason are JSON strings that decode to exactly what Dify said.
    (words,) = quoted_values(first, "progress")
    assert all(f"{stage} 1" in words for stage in STAGED.values()), words
    assert quoted_values(last, "reason") == [f"doc-markup: {MARKUP}; doc-escapes: {ESCAPES}"]
    assert_text(child.errors, f"failed: doc-markup: {MARKUP}; doc-escapes: {ESCAPES_SHOWN}")


def test_watch_in_a_terminal_shows_a_providers_hostile_words_as_text(
    redis_process: RedisProcess,
) -> None:
    dify = HostileDify()
    with hostile_deployment(redis_process, dify) as d:
        job_id = dify_job(d, dify)
        with raw_terminal(cli_env(d.api), "watch", job_id) as child:
            child.read_until(C1_SHOWN)
            dify.settle = True
            code = child.finish()
    assert code == 1, child.text
    assert_text(child.raw.decode("utf-8", "replace"))
    assert_text(child.text, C1_SHOWN, HIDDEN_SHOWN)
    outcome = f"job {job_id} failed: doc-markup: {MARKUP}; doc-escapes: {ESCAPES_SHOWN}"
    assert outcome in child.text


# -- errors --------------------------------------------------------------------------------


def test_errors_quote_a_hostile_job_id_as_text(redis_process: RedisProcess) -> None:
    # No "/" in it: the path of /jobs/{id} would not match, and the 404 would be routing's.
    job_id = "\x1b[2J\x9b2J[b]\u202e\r\x07"
    with hostile_deployment(redis_process, HostileDify()) as d:
        env = cli_env(d.api)
        answers = {
            command: run_cli({**env, **TERMINAL}, command, job_id)
            for command in ("show", "cancel", "retry", "watch")
        }
    for command, answer in answers.items():
        assert answer.returncode == 4, (command, answer.stderr)
        assert_text(answer.stderr, r"404: no job \x1b[2J\x9b2J[b]\u202e\r\x07")


def test_watch_tells_a_refusal_it_retries_as_text() -> None:
    """A 503 whose message is hostile, then the job's end: the reconnection line on
    stderr quotes the message as text."""
    answers: list[Response] = [
        JSONResponse({"error": "unavailable", "message": ESCAPES}, 503),
        Response(
            sse_frame(
                "1-0",
                "job.state",
                {"id": "j1", "provider": "decodo", "status": "completed", "progress": {}},
            ),
            media_type="text/event-stream",
        ),
    ]

    async def events(request: Request) -> Response:
        return answers.pop(0)

    app = Starlette(routes=[Route("/jobs/{job_id}/events", events)])
    with serve_app(app) as url:
        watched = run_cli({**cli_env(url), **TERMINAL}, "watch", "j1")
    assert watched.returncode == 0, watched.stderr
    assert_text(watched.stderr, f"503: {ESCAPES_SHOWN}; reconnecting in")
