"""Job records: creation, callbacks, submissions, task outcomes, failures, updates, ends.

Every change is one script call (lua/): the job's record, its tasks, the work it queues,
its progress and its event move together or not at all.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import zlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from receiver.store.base import StoreBase, per_partition, text
from receiver.store.batching import Batcher
from receiver.store.codes import Code, JobStatus, Work
from receiver.store.keys import WEBHOOK_SEEN_TTL

log = logging.getLogger("receiver.store")

Callback = tuple[str, str, str]  # job id, task id, done | faulted
# A task's end: job id, task id, stored | failed | expired, results or reason, results TTL.
Outcome = tuple[str, str, str, bytes, int]

# A reason's leading code, as in "stalled: no progress for 600 s".
_CODE = re.compile(r"[a-z_]{1,40}")


def new_job_id() -> str:
    """80 random bits in hex: short, because a job id is in every one of its keys."""
    return secrets.token_hex(10)


def tracked_job_id(provider: str, external_id: str) -> str:
    """The id of the job that tracks a provider's job: derived from the provider's own id
    (80 bits of a hash, as long as a new job's id), so finding it again needs no index."""
    digest = hashlib.blake2b(f"{provider}:{external_id}".encode(), digest_size=10)
    return digest.hexdigest()


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def compress(body: bytes) -> bytes:
    return zlib.compress(body, 1)


def decompress(blob: bytes) -> bytes:
    return zlib.decompress(blob)


def one_line(message: str, most: int = 300) -> str:
    """A message as one line of at most `most` characters: a provider's words can hold
    newlines (an HTML page), which would break a table or a log line."""
    flat = " ".join(message.split())
    return flat if len(flat) <= most else flat[: most - 1] + "…"


def _numbered(job_ids: Iterable[str]) -> dict[str, int]:
    """Each distinct job id and its number (from 1) among the jobs given to a script."""
    numbers: dict[str, int] = {}
    for job_id in job_ids:
        numbers.setdefault(job_id, len(numbers) + 1)
    return numbers


def _first(item: Sequence[Any]) -> str:
    """The job id a batched item starts with."""
    return str(item[0])


class Jobs(StoreBase):
    def _setup_jobs(self) -> None:
        # Results stored within one event-loop turn share one script call, and so do the
        # updates of concurrent steps (a worker's polls).
        self._outcomes: Batcher[Outcome, str] = Batcher(self._apply_outcomes)
        self._updates: Batcher[list[Any], str] = Batcher(self._apply_updates)

    async def create_job(
        self,
        job_id: str,
        provider: str,
        *,
        total: int,
        params: Mapping[str, Any],
        work: str = "",
        submitting: bool = True,
        external: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
        schedule: str = "",
    ) -> bool:
        """Create the job and its `job.created` event, with `work` queued or `schedule`d
        now; False when the id is taken."""
        fields: list[Any] = ["provider", provider]
        if total:
            fields += ["total", total]
        if params:
            fields += ["params", orjson.dumps(params)]
        if submitting:
            fields += ["submitting", 1]
        if external:
            fields += ["external", orjson.dumps(external)]
        for name, value in (extra or {}).items():
            fields += [name, value]
        script = self.scripts.create_job
        args = [work, schedule, *fields]
        created = text(await self._run_on_jobs(script, [job_id], args, acknowledged=True))
        if created == Code.CREATED:
            log.info("job created", extra={"job_id": job_id, "provider": provider})
        return created == Code.CREATED

    async def track_job(
        self,
        provider: str,
        external_id: str,
        external: Mapping[str, Any],
        extra: Mapping[str, Any] | None = None,
    ) -> tuple[str, bool]:
        """A job polling an existing provider job, its first poll due now: (job id, created).
        Tracking the same provider job twice gives the first job back, and so does tracking
        a job we submitted ourselves."""
        submitted = await self._for(self.keys.external(provider)).hget(
            self.keys.external(provider), external_id
        )
        if submitted is not None and await self._of(text(submitted)).exists(
            self.keys.job(text(submitted))
        ):
            return text(submitted), False
        job_id = tracked_job_id(provider, external_id)
        created = await self.create_job(
            job_id,
            provider,
            total=0,
            params={},
            submitting=False,
            external=external,
            extra={"status": JobStatus.RUNNING.value, **(extra or {})},
            schedule=Work.POLL,
        )
        return job_id, created

    async def record_external(self, provider: str, external_id: str, job_id: str) -> None:
        """Index a provider job we submitted ourselves, so its webhooks and a later track
        of it find our job."""
        await self._for(self.keys.external(provider)).hset(
            self.keys.external(provider), external_id, job_id
        )

    async def job_of(self, provider: str, external_id: str) -> str | None:
        """Our job of a provider job: one we submitted, else one that tracks it."""
        found = await self._for(self.keys.external(provider)).hget(
            self.keys.external(provider), external_id
        )
        if found is not None:
            return text(found)
        job_id = tracked_job_id(provider, external_id)
        return job_id if await self._of(job_id).exists(self.keys.job(job_id)) else None

    async def first_delivery(self, delivery_id: str) -> bool:
        """Whether this webhook delivery is seen for the first time (remembered for
        WEBHOOK_SEEN_TTL seconds)."""
        key = self.keys.webhook_seen(delivery_id)
        return bool(await self._for(key).set(key, 1, nx=True, ex=WEBHOOK_SEEN_TTL))

    async def store_documents(
        self, job_id: str, documents: Mapping[str, bytes], ttl: float
    ) -> None:
        """Keep a polled job's result documents, compressed, for `ttl` seconds."""
        if not documents:
            return
        key = self.keys.results(job_id)
        async with self._of(job_id).pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={k: compress(v) for k, v in documents.items()})
            pipe.expire(key, int(ttl))
            await pipe.execute()

    async def record_documents(
        self, job_id: str, statuses: Mapping[str, str], errors: Mapping[str, str]
    ) -> None:
        """A polled job's documents: id -> status, and the errors of the failed ones."""
        async with self._of(job_id).pipeline(transaction=True) as pipe:
            if statuses:
                pipe.hset(self.keys.tasks(job_id), mapping=dict[Any, Any](statuses))
            if errors:
                pipe.hset(self.keys.errors(job_id), mapping=dict[Any, Any](errors))
            await pipe.execute()

    async def apply_callbacks(
        self, callbacks: Sequence[Callback], source: str = "callback"
    ) -> list[str]:
        """Record (job id, task id, done|faulted) callbacks: one script call per partition."""

        async def apply(group: Sequence[Callback]) -> list[str]:
            return await self._apply_callbacks(group, source)

        return await per_partition(self.keys, callbacks, _first, apply)

    async def _apply_callbacks(self, callbacks: Sequence[Callback], source: str) -> list[str]:
        numbers = _numbered(job_id for job_id, _, _ in callbacks)
        args: list[Any] = [source, len(callbacks)]
        for job_id, task_id, status in callbacks:
            args += [numbers[job_id], task_id, status]
        script = self.scripts.callbacks
        codes = await self._run_on_jobs(script, list(numbers), args, acknowledged=True)
        pairs = zip(callbacks, codes, strict=True)
        return [self._note_end(job_id, code) for (job_id, _, _), code in pairs]

    async def record_submission(
        self,
        job_id: str,
        chunk: int,
        tasks: Iterable[tuple[str, str]],
        *,
        last: bool,
        reconcile_after: float,
    ) -> str:
        """A chunk of the job's tasks accepted by its provider: (task id, input) pairs."""
        args: list[Any] = [chunk, "1" if last else "0", reconcile_after]
        for task_id, task_input in tasks:
            args += [task_id, task_input]
        return text(await self._run_on_jobs(self.scripts.record_submission, [job_id], args))

    async def store_results(self, job_id: str, task_id: str, body: bytes, ttl: float) -> str:
        return await self._outcomes.submit((job_id, task_id, "stored", compress(body), int(ttl)))

    async def fail_task(
        self, job_id: str, task_id: str, reason: str, *, expired: bool = False
    ) -> str:
        outcome = "expired" if expired else "failed"
        return await self._outcomes.submit((job_id, task_id, outcome, reason.encode(), 0))

    async def _apply_outcomes(self, outcomes: Sequence[Outcome]) -> list[str]:
        return await per_partition(self.keys, outcomes, _first, self._apply_partition_outcomes)

    async def _apply_partition_outcomes(self, outcomes: Sequence[Outcome]) -> list[str]:
        numbers = _numbered(outcome[0] for outcome in outcomes)
        args: list[Any] = [len(outcomes)]
        for job_id, *rest in outcomes:
            args += [numbers[job_id], *rest]
        codes = await self._run_on_jobs(self.scripts.task_outcomes, list(numbers), args)
        pairs = zip(outcomes, codes, strict=True)
        return [self._note_end(job_id, code) for (job_id, *_), code in pairs]

    def _note_end(self, job_id: str, raw: Any) -> str:
        """A script's code for one change; one that ended its (Decodo) job comes as
        'code:status', and the end is logged."""
        code, _, ended = text(raw).partition(":")
        if ended:
            extra = {"job_id": job_id, "provider": "decodo", "status": ended}
            log.info("job ended", extra=extra)
        return code

    async def record_failure(self, job_id: str, work: str, error: str) -> int:
        """A failed attempt at the job's `work` (`WorkItem.attempt_name`), to be retried:
        its attempts so far (for the backoff); the job shows `error` and its failures in a
        row until some work of it succeeds. 0 when the job has ended."""
        args = [work, one_line(error)]
        return int(await self._run_on_jobs(self.scripts.record_failure, [job_id], args))

    async def count_attempt(self, job_id: str, work: str) -> int:
        """An attempt at the job's `work` that found nothing ready yet (no failure): its
        attempts so far, in the same counter as record_failure's."""
        return int(await self._of(job_id).hincrby(self.keys.attempts(job_id), work, 1))

    async def finish_job(self, job_id: str, status: JobStatus, reason: str = "") -> str:
        """Move a job to a terminal status; 'closed' when it already was terminal. The
        reason is kept on one line: it is shown in tables and logs."""
        args = [status.value, one_line(reason, 1000)]
        outcome = text(await self._run_on_jobs(self.scripts.finish_job, [job_id], args))
        if outcome == Code.FINISHED:
            await self._log_end(job_id, status, reason)
        return outcome

    async def _log_end(self, job_id: str, status: JobStatus, reason: str) -> None:
        # Only the reason's leading code ("stalled", "rejected"...): the rest may quote
        # the provider's answer, which is no log's business.
        provider = text(await self._of(job_id).hget(self.keys.job(job_id), "provider") or b"")
        code = reason.partition(":")[0]
        extra = {"job_id": job_id, "provider": provider, "status": status.value}
        log.info("job ended", extra={**extra, "reason": code if _CODE.fullmatch(code) else ""})

    async def reopen_job(self, job_id: str) -> str:
        """Re-drive an ended job's unfinished work: reopened, not_ended or unknown_job."""
        return text(await self._run_on_jobs(self.scripts.reopen_job, [job_id], []))

    async def update_job(
        self,
        job_id: str,
        fields: Mapping[str, Any] | None = None,
        *,
        event: str = "",
        detail: Mapping[str, Any] | None = None,
    ) -> str:
        update: list[Any] = [job_id, event, orjson.dumps(detail or {}), len(fields or {})]
        for name, value in (fields or {}).items():
            update += [name, value]
        return await self._updates.submit(update)

    async def _apply_updates(self, batch: Sequence[list[Any]]) -> list[str]:
        return await per_partition(self.keys, batch, _first, self._apply_partition_updates)

    async def _apply_partition_updates(self, batch: Sequence[list[Any]]) -> list[str]:
        numbers = _numbered(update[0] for update in batch)
        args: list[Any] = [len(batch)]
        for job_id, *rest in batch:
            args += [numbers[job_id], *rest]
        codes = await self._run_on_jobs(self.scripts.update_jobs, list(numbers), args)
        return [text(code) for code in codes]
