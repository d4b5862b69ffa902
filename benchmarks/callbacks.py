"""Decodo callbacks to post: one prepared job, its task ids, and the seed's callback body;
and finished tasks in the Decodo sandbox, for the worker to fetch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx
import orjson

from benchmarks.common import CALLBACK_PATH, SECRET_KEY, say
from benchmarks.loadgen import LoadResult, Spec
from receiver.sandbox.decodo import DEFAULT_AUTH, SEED_CALLBACK
from receiver.store import Store, new_job_id
from receiver.tokens import PassthroughSigner

# Task ids look like Decodo's: 19 digits. Task i of a prepared job is FIRST_TASK_ID + i.
FIRST_TASK_ID = 7_100_000_000_000_000_000
# Task ids recorded per RECORD_SUBMISSION script call.
_CHUNK = 5000
# Decodo's most items in one batch.
_BATCH = 3000
_PLACEHOLDER = "__TASK_ID__"


def task_id(index: int) -> str:
    return str(FIRST_TASK_ID + index)


def callback_body(task: str, token: str) -> dict[str, object]:
    """The seed's callback for a finished task, as Decodo posts it."""
    return {**SEED_CALLBACK, "id": task, "passthrough": token}


@dataclass
class PreparedJob:
    """A running Decodo job with `tasks` pending tasks, and a cursor over unused task ids."""

    job_id: str
    token: str
    tasks: int
    used: int = 0

    def take(self, count: int) -> int:
        """Reserve `count` task ids never posted before; the index of the first."""
        if self.used + count > self.tasks:
            raise ValueError(f"the job has {self.tasks - self.used} unused tasks, not {count}")
        first, self.used = self.used, self.used + count
        return first

    def spec(
        self, port: int, count: int, *, connections: int, duration: float, rate: float = 0.0
    ) -> Spec:
        """A load of `count` distinct callbacks of this job."""
        body = orjson.dumps(callback_body(_PLACEHOLDER, self.token)).decode()
        head, tail = body.split(_PLACEHOLDER)
        first = FIRST_TASK_ID + self.take(count)
        return Spec(port, CALLBACK_PATH, head, tail, first, count, connections, duration, rate)


async def prepare_job(store: Store, tasks: int) -> PreparedJob:
    """Create the job in Redis with `tasks` pending task ids, as a submission would."""
    started = time.monotonic()
    job_id = await record_job(store, [task_id(i) for i in range(tasks)])
    say(f"prepared job {job_id} with {tasks} pending tasks in {time.monotonic() - started:.1f} s")
    return PreparedJob(job_id, sign(job_id), tasks)


def sign(job_id: str) -> str:
    """The job's passthrough token, as the receiver's submission puts in its batch."""
    return PassthroughSigner([SECRET_KEY], 48 * 3600.0).sign(job_id)


async def record_job(store: Store, task_ids: Sequence[str]) -> str:
    """A running Decodo job in Redis whose submission recorded these pending tasks; its id."""
    job_id = new_job_id()
    await store.create_job(job_id, "decodo", total=len(task_ids), params={}, work="")
    chunks = range(0, len(task_ids), _CHUNK)
    for number, start in enumerate(chunks):
        pairs = [(task, "https://ip.decodo.com") for task in task_ids[start : start + _CHUNK]]
        await store.record_submission(
            job_id, number, pairs, last=number == len(chunks) - 1, reconcile_after=86400
        )
    return job_id


async def create_tasks(base_url: str, count: int) -> list[str]:
    """Finished tasks in the Decodo sandbox (no callback_url, so it sends none); their ids."""
    headers = {"Authorization": f"Basic {DEFAULT_AUTH}"}
    ids: list[str] = []
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60) as http:
        for start in range(0, count, _BATCH):
            urls = [
                f"https://ip.decodo.com/?n={i}" for i in range(start, min(start + _BATCH, count))
            ]
            response = await http.post("/v3/task/batch", json={"url": urls, "target": "universal"})
            response.raise_for_status()
            ids += [str(task["id"]) for task in response.json()["queries"]]
    await asyncio.sleep(0.5)  # past the sandbox's completion delay: every task is done
    return ids


async def count_done(store: Store, job: PreparedJob) -> int:
    """Tasks recorded `done` (HVALS of the job's task hash, on the node that holds it)."""
    key = store.keys.tasks(job.job_id)
    values = await store.router.of(key).hvals(key)
    return sum(1 for value in values if value == b"done")


async def count_missing(store: Store, job: PreparedJob, loads: Sequence[LoadResult]) -> int:
    """Callbacks answered 2xx whose task is not `done` in Redis: what was acknowledged, lost.

    Each task id was posted at most once, so the `done` tasks are among the posted ones; the
    posted ones left without a 2xx (unanswered, refused) are looked up one by one."""
    acknowledged = sum(load.accepted for load in loads)
    unacknowledged = [str(i) for load in loads for i in (*load.unanswered, *load.refused)]
    done = await count_done(store, job)
    if unacknowledged:
        key = store.keys.tasks(job.job_id)
        states = await store.router.of(key).hmget(key, unacknowledged)
        done -= sum(1 for state in states if state == b"done")
    return max(0, acknowledged - done)
