"""Reads of job records: one job, its tasks and results, lists of jobs, counts by status."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from receiver.store import cursors
from receiver.store.base import StoreBase, text
from receiver.store.batching import Batcher
from receiver.store.jobs import decompress

# Job hash fields that hold integers.
_INT_FIELDS = (
    "total",
    "completed",
    "failed",
    "received",
    "expired",
    "chunks",
    "documents",
    "segments_completed",
    "segments_total",
    "paused",
    "credits_used",
    "consecutive_failures",
    "documents_missing",
)
# Job hash fields that hold JSON.
_JSON_FIELDS = ("params", "external", "invalid_urls", "stages", "failures", "missing_urls")
# Job hash fields that hold seconds: unix times or durations.
_FLOAT_FIELDS = (
    "created_at",
    "updated_at",
    "submitted_at",
    "finished_at",
    "polled_at",
    "moved_at",
    "last_error_at",
    "poll_interval",
    "stall_after",
    "cancel_requested_at",  # a user's cancel of a Firecrawl batch, which ends once it settles
)


def decode_job(job_id: str, raw: Mapping[Any, Any]) -> dict[str, Any]:
    job: dict[str, Any] = {text(k): text(v) for k, v in raw.items()}
    job["id"] = job_id
    for name in _INT_FIELDS:
        if name in job:
            job[name] = int(job[name])
    for name in _JSON_FIELDS:
        if name in job:
            job[name] = orjson.loads(job[name])
    for name in _FLOAT_FIELDS:
        if name in job:
            job[name] = float(job[name])
    job["progress"] = {
        "completed": job.get("completed", 0),
        "failed": job.get("failed", 0),
        "total": job.get("total", 0),
    }
    job["submitting"] = "submitting" in job
    job.setdefault("updated_at", job.get("created_at"))
    job.setdefault("params", {})
    return job


class Reads(StoreBase):
    def _setup_reads(self) -> None:
        # Reads of concurrent steps (a worker's polls) share one pipelined round trip per
        # event-loop turn.
        self._reads: Batcher[str, dict[Any, Any]] = Batcher(self._read_jobs)

    async def get_job(self, job_id: str) -> dict[str, Any] | None:
        raw = await self._reads.submit(job_id)
        if not raw:
            return None
        return decode_job(job_id, raw)

    async def _read_jobs(self, job_ids: Sequence[str]) -> list[dict[Any, Any]]:
        keys = [self.keys.job(job_id) for job_id in job_ids]
        rows: list[dict[Any, Any]] = [{}] * len(keys)
        for client, positions in self._by_node(keys):
            async with client.pipeline(transaction=False) as pipe:
                for index in positions:
                    pipe.hgetall(keys[index])
                for index, row in zip(positions, await pipe.execute(), strict=True):
                    rows[index] = row
        return rows

    async def get_state(self, job_id: str) -> dict[str, Any] | None:
        """The few fields hot paths need (status, provider, times), without the request."""
        names = ("status", "provider", "created_at", "submitted_at")
        values = await self._of(job_id).hmget(self.keys.job(job_id), names)
        if values[0] is None:
            return None
        state: dict[str, Any] = {"id": job_id}
        for name, value in zip(names, values, strict=True):
            if value is not None:
                state[name] = float(value) if name.endswith("_at") else text(value)
        return state

    async def get_tasks(self, job_id: str) -> dict[str, str]:
        raw = await self._of(job_id).hgetall(self.keys.tasks(job_id))
        return {text(k): text(v) for k, v in raw.items()}

    async def get_task_details(self, job_id: str) -> list[dict[str, Any]]:
        async with self._of(job_id).pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.tasks(job_id))
            pipe.hgetall(self.keys.inputs(job_id))
            pipe.hgetall(self.keys.errors(job_id))
            tasks, inputs, errors = await pipe.execute()
        details = []
        for key, status in tasks.items():
            task: dict[str, Any] = {"id": text(key), "status": text(status)}
            if key in inputs:
                task["input"] = text(inputs[key])
            if key in errors:
                task["error"] = text(errors[key])
            details.append(task)
        return details

    async def get_results(self, job_id: str) -> dict[str, Any]:
        raw: dict[Any, Any] = await self._of(job_id).hgetall(self.keys.results(job_id))
        return {text(k): orjson.loads(decompress(v)) for k, v in raw.items()}

    async def jobs_by_status(self) -> dict[str, int]:
        """Jobs by status, over every partition."""
        counts: dict[str, int] = {}
        for partition in range(self.keys.partitions):
            raw: dict[Any, Any] = await self._at(partition).hgetall(self.keys.stats(partition))
            for name, value in raw.items():
                if text(name).startswith("status:"):
                    status = text(name).removeprefix("status:")
                    counts[status] = counts.get(status, 0) + int(value)
        return counts

    async def list_jobs(
        self,
        *,
        status: str | None = None,
        provider: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        scan: int = 10_000,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Jobs newest first (by their entries in the partitions' jobs indexes, merged),
        filtered; and the cursor after the last one looked at (`cursors.render`: an entry
        id per partition), None at the end.

        Looks at `scan` jobs at most per call, so a rare status never makes one call slow:
        then fewer than `limit` come back, with a cursor to carry on from.
        """
        positions = cursors.parse(cursor, self.keys.partitions, top=True)
        found: list[dict[str, Any]] = []
        looked = 0
        while len(found) < limit and looked < scan:
            page = await self._index_page(positions, min(500, scan - looked))
            if not page:
                return found, None
            looked += len(page)
            states = await self._statuses([job_id for _, _, job_id in page])
            for (partition, entry_id, job_id), (job_status, job_provider) in zip(
                page, states, strict=True
            ):
                positions[partition] = entry_id
                if (status in (None, job_status)) and (provider in (None, job_provider)):
                    job = await self.get_job(job_id)
                    if job is not None:
                        found.append(job)
                    if len(found) == limit:
                        break
        return found, cursors.render(positions)

    async def _index_page(self, positions: list[str], count: int) -> list[tuple[int, str, str]]:
        """The next `count` entries below the positions of every partition's jobs index,
        newest first: (partition, entry id, job id)."""
        entries: list[tuple[tuple[int, int], int, str, str]] = []
        for partition, position in enumerate(positions):
            if cursors.at_start(position):
                continue  # nothing comes before the first id (and Redis refuses it)
            top = "+" if position == cursors.TOP else f"({position}"
            raw: Any = await self._at(partition).xrevrange(
                self.keys.jobs(partition), top, "-", count=count
            )
            for entry_id, fields in raw:
                entry = text(entry_id)
                entries.append((cursors.order(entry), partition, entry, text(fields[b"j"])))
        entries.sort(reverse=True)
        return [(partition, entry, job_id) for _, partition, entry, job_id in entries[:count]]

    async def _statuses(self, job_ids: list[str]) -> list[tuple[str, str]]:
        keys = [self.keys.job(job_id) for job_id in job_ids]
        rows: list[Any] = [None] * len(keys)
        for client, positions in self._by_node(keys):
            async with client.pipeline(transaction=False) as pipe:
                for index in positions:
                    pipe.hmget(keys[index], ["status", "provider"])
                for index, row in zip(positions, await pipe.execute(), strict=True):
                    rows[index] = row
        return [(text(row[0] or b""), text(row[1] or b"")) for row in rows]

    async def results_page(
        self, job_id: str, cursor: int = 0, count: int = 100
    ) -> tuple[dict[str, Any], int]:
        """One page of a job's results (HSCAN: `count` is a hint) and the next cursor, 0 at
        the end."""
        reply: Any = await self._of(job_id).hscan(
            self.keys.results(job_id), cursor=cursor, count=count
        )
        next_cursor, raw = reply
        page = {text(k): orjson.loads(decompress(v)) for k, v in raw.items()}
        return page, int(next_cursor)
