"""Provider faults through the sandboxes: jobs of the three providers on one receiver, the
sandboxes' fault knobs on the routes a job keeps calling, and what every job must keep.

The faulty routes: Decodo's results (fetched once a callback says a task is done),
Firecrawl's batch status (polled, and its `next` pages) and Dify's indexing status
(polled). Each sandbox counts at its door every request to each route, faulted or not,
with its arrival time: the counts bound retries, the arrival times the request rate.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from receiver.events import FINAL_TYPES
from receiver.store.keys import WORK_GROUP, Keys
from tests.e2e import PolledDeployment, polled_deployment
from tests.servers import RedisProcess

RESULTS = "GET /v3/task/{task_id}/results"
BATCH = "POST /v3/task/batch"
FIRECRAWL_STATUS = "GET /v2/batch/scrape/{id}"
DIFY_STATUS = "GET /v1/datasets/{dataset_id}/documents/{batch}/indexing-status"
KEYS = Keys()

# Seconds of backoff: the first retry and the cap (as e2e_settings), short so that a test
# is quick; a test about the backoff itself sets its own.
RETRY_BASE = 0.05
RETRY_CAP = 0.5
# Requests per second each polled provider may get (RECEIVER_FIRECRAWL_RPS, _DIFY_RPS):
# well below what five jobs would poll at without it (about 5 a second each, the worker
# looking at its schedule every 0.2 s and poll_min 0.05 s).
RPS = 5.0
# Seconds a request may take between the turn it took at the rate limit and its arrival at
# the sandbox, so a window of arrivals may hold that much more of the rate's turns.
SEND_SLACK = 0.1
# Seconds Decodo's batch submissions are apart, across the workers (the default).
BATCH_INTERVAL = 1.1

# Firecrawl: 5 pages a batch, 10 at once, 3 s each: pages land 0.3 s apart for 1.5 s.
FIRECRAWL = {"scrape_delay": 3.0, "concurrency": 10}
FIRECRAWL_PAGES = 5
# Dify: 2 documents a batch, each step 0.3 s, so a batch indexes for about 1.2 s.
DIFY = {"step_seconds": 0.3, "jitter_seconds": 0.0}
DIFY_DOCUMENTS = 2


@dataclass
class Jobs:
    """The jobs of one test, by provider; the time they were created (monotonic)."""

    decodo: dict[str, int] = field(default_factory=dict)  # job id -> its tasks
    firecrawl: dict[str, int] = field(default_factory=dict)  # job id -> its pages
    dify: dict[str, list[str]] = field(default_factory=dict)  # job id -> its document ids
    started: float = field(default_factory=time.monotonic)

    @property
    def all(self) -> list[str]:
        return [*self.decodo, *self.firecrawl, *self.dify]


@contextlib.contextmanager
def faulty_deployment(redis: RedisProcess, **settings: Any) -> Iterator[PolledDeployment]:
    """The three sandboxes and a receiver (web and worker), polling fast under `RPS`."""
    with polled_deployment(
        redis,
        firecrawl=FIRECRAWL,
        dify=DIFY,
        settings={
            "retry_base": RETRY_BASE,
            "retry_cap": RETRY_CAP,
            "firecrawl_rps": RPS,
            "dify_rps": RPS,
            "decodo_batch_interval": BATCH_INTERVAL,
            **settings,
        },
    ) as d:
        yield d


def inject(d: PolledDeployment, **knobs: Any) -> None:
    """The same fault knobs on each sandbox's faulty route."""
    for sandbox, route in (
        (d.sandbox, RESULTS),
        (d.firecrawl, FIRECRAWL_STATUS),
        (d.dify, DIFY_STATUS),
    ):
        response = httpx.patch(
            f"{sandbox}/_sandbox/config", json={**knobs, "inject_routes": route}, timeout=10
        )
        assert response.status_code == 200, response.text


def start_jobs(d: PolledDeployment, decodo: int, firecrawl: int, dify: int) -> Jobs:
    """Decodo batch jobs of 4 URLs, tracked Firecrawl batches and tracked Dify batches."""
    jobs = Jobs()
    for index in range(decodo):
        urls = [f"https://decodo.example/{index}/{page}" for page in range(4)]
        jobs.decodo[d.submit({"urls": urls})] = len(urls)
    for index in range(firecrawl):
        urls = [f"https://firecrawl.example/{index}/{page}" for page in range(FIRECRAWL_PAGES)]
        batch = d.firecrawl_batch(urls)
        jobs.firecrawl[d.create({"provider": "firecrawl", "batch_id": batch})] = len(urls)
    for index in range(dify):
        names = [{"name": f"doc-{index}-{n}.txt"} for n in range(DIFY_DOCUMENTS)]
        dataset, batch, documents = d.dify_batch(names)
        body = {"provider": "dify", "dataset_id": dataset, "batch": batch}
        jobs.dify[d.create(body)] = documents
    return jobs


def wait_all(d: PolledDeployment, jobs: Jobs, timeout: float = 40.0) -> dict[str, dict[str, Any]]:
    """Each job as the API shows it once it ended."""
    deadline = time.monotonic() + timeout
    return {job_id: d.wait(job_id, max(deadline - time.monotonic(), 0.1)) for job_id in jobs.all}


def stats(sandbox: str, window: float = 1.0) -> dict[str, int]:
    counts: dict[str, int] = httpx.get(
        f"{sandbox}/_sandbox/stats", params={"window": window}, timeout=10
    ).json()
    return counts


def most_in(sandbox: str, route: str, window: float) -> int:
    """The most requests to `route` the sandbox saw arrive within any `window` seconds."""
    return stats(sandbox, window).get(f"requests {route} max/{window:g}s", 0)


def rate_bound(rps: float, window: float) -> float:
    """The most requests the shared limit lets through in any `window` seconds: its burst
    (a second's worth, polling.Poller._take_turn) and `rps` for each second, give or take
    the send slack."""
    return max(1, int(rps)) + rps * (window + SEND_SLACK)


def most_retries(seconds: float, base: float = RETRY_BASE, cap: float = RETRY_CAP) -> int:
    """The most retries of one piece of work that fit in `seconds`: the k-th waits at least
    half of min(cap, base·2^(k-1)) (backoff's jitter is in the upper half)."""
    retries, spent = 0, 0.0
    while True:
        wait = min(cap, base * 2**retries) / 2
        if spent + wait > seconds:
            return retries
        spent += wait
        retries += 1


def fetch_attempts(d: PolledDeployment, job_id: str) -> dict[str, int]:
    """Task id -> retries of its results fetch the receiver counted."""
    raw: Any = d.redis.hgetall(KEYS.attempts(job_id))
    return {
        k.decode().removeprefix("fetch:"): int(v)
        for k, v in raw.items()
        if k.decode().startswith("fetch:")
    }


# -- the invariants ---------------------------------------------------------------------------


def assert_jobs_kept(d: PolledDeployment, jobs: Jobs, ended: dict[str, dict[str, Any]]) -> None:
    """Every job completed, its results stored once, one final event, nothing left over."""
    problems: list[str] = []
    for job_id, tasks in jobs.decodo.items():
        problems += _decodo_problems(d, job_id, tasks, ended[job_id])
    for job_id, pages in jobs.firecrawl.items():
        problems += _firecrawl_problems(d, job_id, pages, ended[job_id])
    for job_id, documents in jobs.dify.items():
        problems += _dify_problems(d, job_id, documents, ended[job_id])
    for job_id in jobs.all:
        problems += _final_event_problems(d, job_id)
    problems += _leftover_problems(d, jobs)
    assert not problems, "\n".join(problems)


def _completed_problems(job_id: str, job: dict[str, Any], count: int) -> list[str]:
    progress = job["progress"]
    seen = (job["status"], progress["completed"], progress["total"])
    if seen != ("completed", count, count):
        return [f"{job_id}: status, completed, total {seen}, expected {count}: {job.get('error')}"]
    return []


def _decodo_problems(
    d: PolledDeployment, job_id: str, tasks: int, job: dict[str, Any]
) -> list[str]:
    problems = _completed_problems(job_id, job, tasks)
    statuses = Counter(task["status"] for task in job["tasks"])
    if statuses != Counter({"stored": tasks}):
        problems.append(f"{job_id}: tasks by status {dict(statuses)}")
    stored = sorted(k.decode() for k in d.redis.hkeys(KEYS.results(job_id)))  # type: ignore[union-attr]
    if stored != sorted(task["id"] for task in job["tasks"]):
        problems.append(f"{job_id}: {len(stored)} results stored for {tasks} tasks")
    completed = Counter(
        e["detail"].get("task_id") for e in d.events(job_id) if e["type"] == "task.completed"
    )
    if len(completed) != tasks or set(completed.values()) != {1}:
        problems.append(f"{job_id}: task.completed events by task {dict(completed)}")
    return problems


def _firecrawl_problems(
    d: PolledDeployment, job_id: str, pages: int, job: dict[str, Any]
) -> list[str]:
    problems = _completed_problems(job_id, job, pages)
    documents = d.results(job_id)["results"]
    sources = Counter(doc["metadata"]["sourceURL"] for doc in documents.values())
    if len(sources) != pages or set(sources.values()) != {1} or job.get("documents") != pages:
        problems.append(f"{job_id}: documents {dict(sources)}, job says {job.get('documents')}")
    return problems


def _dify_problems(
    d: PolledDeployment, job_id: str, documents: list[str], job: dict[str, Any]
) -> list[str]:
    problems = _completed_problems(job_id, job, len(documents))
    raw: Any = d.redis.hgetall(KEYS.tasks(job_id))
    statuses = {k.decode(): v.decode() for k, v in raw.items()}
    if statuses != dict.fromkeys(documents, "completed"):
        problems.append(f"{job_id}: documents {statuses}, expected {documents} completed")
    return problems


def _final_event_problems(d: PolledDeployment, job_id: str) -> list[str]:
    finals = [e for e in d.events(job_id) if e["type"] in FINAL_TYPES]
    if [e["type"] for e in finals] != ["job.completed"]:
        return [f"{job_id}: final events {[e['type'] for e in finals]}"]
    named = d.redis.hget(KEYS.job(job_id), "final_event")
    if named is None or named.decode() != finals[0]["id"]:  # type: ignore[union-attr]
        return [f"{job_id}: the job names final event {named!r}, the stream has {finals[0]['id']}"]
    return []


def _leftover_problems(d: PolledDeployment, jobs: Jobs) -> list[str]:
    """Work read and never acknowledged, or retries still scheduled for ended jobs."""
    problems: list[str] = []
    deadline = time.monotonic() + 10
    while (left := _work_left(d)) != (0, 0) and time.monotonic() < deadline:
        time.sleep(0.05)  # the last acknowledgements are batched
    if left != (0, 0):
        problems.append(f"work stream: {left[0]} entries, {left[1]} read and unacknowledged")
    due: Any = d.redis.zrange(KEYS.due(0), 0, -1)
    members = [m.decode() for m in due]
    for job_id in jobs.all:
        held = [m for m in members if m.startswith((f"fetch:{job_id}", f"poll:{job_id}"))]
        if held:
            problems.append(f"{job_id}: still scheduled after its end: {held}")
    return problems


def _work_left(d: PolledDeployment) -> tuple[int, int]:
    length = int(d.redis.xlen(KEYS.work(0)))
    pending: Any = d.redis.xpending(KEYS.work(0), WORK_GROUP)
    return length, int(pending["pending"])
