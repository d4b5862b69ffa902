"""Job records in Redis: statuses, atomic transitions and reads."""

from __future__ import annotations

import enum
import hashlib
import logging
import re
import secrets
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from redis.asyncio import BlockingConnectionPool, Redis

from receiver import scripts
from receiver.batching import Batcher
from receiver.errors import NotConfirmed
from receiver.events import at_ms, iso_ms
from receiver.keys import DUE_LEASE, WORK_GROUP, Keys
from receiver.settings import Settings

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Callback = tuple[str, str, str]  # job id, task id, done | faulted

# Seconds any one Redis command may take before the call fails (and counts as an outage),
# chosen here rather than inherited from redis-py (5 s in 8.x). Every blocking read asks
# for less than this (events.read_events and the worker block for at most half of it).
REDIS_TIMEOUT = 10.0
# Seconds to open a connection to Redis.
REDIS_CONNECT_TIMEOUT = 5.0
# Batches of callbacks in flight at once. With `appendfsync always` each script call waits
# for Redis's fsync: a second batch in flight is taken while the first one's is on disk.
COMMITS_IN_FLIGHT = 2


class JobStatus(enum.StrEnum):
    SUBMITTED = "submitted"  # created; the provider has not accepted it yet
    RUNNING = "running"  # the provider has it; waiting for callbacks, results or polls
    COMPLETED = "completed"  # every task or document ended, and some have results
    FAILED = "failed"  # every task failed, or the provider refused the job
    CANCELLED = "cancelled"  # cancelled by a user
    EXPIRED = "expired"  # the provider no longer keeps the results

    @property
    def terminal(self) -> bool:
        return self not in (JobStatus.SUBMITTED, JobStatus.RUNNING)


class TaskStatus(enum.StrEnum):
    PENDING = "pending"  # submitted; no callback or poll has said it is done
    DONE = "done"  # the provider says done; the results fetch is queued
    STORED = "stored"  # results fetched and kept
    FAILED = "failed"  # faulted at the provider, or its results cannot be had
    EXPIRED = "expired"  # done too long ago: the provider dropped its results


# A task's end: job id, task id, stored | failed | expired, results or reason, results TTL.
Outcome = tuple[str, str, str, bytes, int]

# Codes the callbacks script answers per callback.
ACCEPTED, DUPLICATE, EARLY, CLOSED = "accepted", "duplicate", "early", "closed"
UNKNOWN_JOB, UNKNOWN_TASK = "unknown_job", "unknown_task"

# A reason's leading code, as in "stalled: no progress for 600 s".
_CODE = re.compile(r"[a-z_]{1,40}")

# The lowest id a stream entry can have, in any spelling.
_STREAM_START = re.compile(r"0+-0+")
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


class Store:
    """Reads and atomic writes of jobs, tasks, results, events and scheduled work."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys | None = None,
        *,
        events_maxlen: int = 8_640_000,
        due_shards: int = 1,
        clock: Clock = time.time,
        confirm: str = "",
        confirm_timeout: float = 1.0,
    ) -> None:
        self.redis = redis
        # The command that confirms an acknowledged write on its own connection, if any
        # (receiver.durability): WAITAOF 1 0 <ms>, or WAIT 1 <ms>.
        self._confirm: tuple[Any, ...] = _confirm_command(confirm, confirm_timeout)
        self.keys = keys or Keys()
        self.events_maxlen = events_maxlen
        self.due_shards = max(1, due_shards)
        self._next_shard = 0
        self.clock = clock
        self._callbacks = redis.register_script(scripts.CALLBACKS)
        self._create_job = redis.register_script(scripts.CREATE_JOB)
        self._record_submission = redis.register_script(scripts.RECORD_SUBMISSION)
        self._task_outcomes = redis.register_script(scripts.TASK_OUTCOMES)
        # Results stored within one event-loop turn share one script call.
        self._outcomes: Batcher[Outcome, str] = Batcher(self._apply_outcomes)
        self._finish_job = redis.register_script(scripts.FINISH_JOB)
        self._record_failure = redis.register_script(scripts.RECORD_FAILURE)
        self._update_jobs = redis.register_script(scripts.UPDATE_JOBS)
        # Reads, updates and schedule changes of concurrent steps (a worker's polls) share
        # one pipelined round trip per event-loop turn.
        self._reads: Batcher[str, dict[Any, Any]] = Batcher(self._read_jobs)
        self._updates: Batcher[list[Any], str] = Batcher(self._apply_updates)
        self._moves: Batcher[tuple[str, float | None], None] = Batcher(self._apply_moves)
        self._claim_due = redis.register_script(scripts.CLAIM_DUE)
        self._renew_leases = redis.register_script(scripts.RENEW_LEASES)
        self._reopen_job = redis.register_script(scripts.REOPEN_JOB)
        self._acquire_rate = redis.register_script(scripts.ACQUIRE_RATE)
        self._hint_poll = redis.register_script(scripts.HINT_POLL)

    async def _acknowledged(self, write: Callable[[Any], Awaitable[Any]]) -> Any:
        """The answer of a write we acknowledge to a caller (a 202, a 201), once it is as
        durable as RECEIVER_DURABILITY asks: the confirmation runs on the write's own
        connection, in one round trip with it. NotConfirmed when it did not come in time."""
        if not self._confirm:
            return await write(self.redis)
        async with self.redis.pipeline(transaction=False) as pipe:
            await write(pipe)
            pipe.execute_command(*self._confirm)
            answer, confirmed = await pipe.execute()
        if not _confirmed(confirmed):
            raise NotConfirmed("the write was not confirmed durable in time; retry")
        return answer

    def _common(self) -> list[Any]:
        now = self.clock()
        return [self.keys.prefix, repr(now), iso_ms(at_ms(now)), self.events_maxlen]

    # -- writes -------------------------------------------------------------------------

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
    ) -> bool:
        """Create the job and its `job.created` event; False when the id is taken."""
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
        args = [*self._common(), job_id, work, *fields]
        created = _text(
            await self._acknowledged(lambda client: self._create_job(args=args, client=client))
        )
        if created == "created":
            log.info("job created", extra={"job_id": job_id, "provider": provider})
        return created == "created"

    async def track_job(
        self,
        provider: str,
        external_id: str,
        external: Mapping[str, Any],
        extra: Mapping[str, Any] | None = None,
    ) -> tuple[str, bool]:
        """A job polling an existing provider job: (job id, created). Tracking the same
        provider job twice gives the first job back, and so does tracking a job we
        submitted ourselves."""
        submitted = await self.redis.hget(self.keys.external(provider), external_id)
        if submitted is not None and await self.redis.exists(self.keys.job(_text(submitted))):
            return _text(submitted), False
        job_id = tracked_job_id(provider, external_id)
        created = await self.create_job(
            job_id,
            provider,
            total=0,
            params={},
            submitting=False,
            external=external,
            extra={"status": JobStatus.RUNNING.value, **(extra or {})},
        )
        if created:
            member = f"poll:{job_id}"
            await self._acknowledged(
                lambda client: client.zadd(self.due_key(member), {member: self.clock()})
            )
        return job_id, created

    async def record_external(self, provider: str, external_id: str, job_id: str) -> None:
        """Index a provider job we submitted ourselves, so its webhooks and a later track
        of it find our job."""
        await self.redis.hset(self.keys.external(provider), external_id, job_id)

    async def job_of(self, provider: str, external_id: str) -> str | None:
        """Our job of a provider job: one we submitted, else one that tracks it."""
        found = await self.redis.hget(self.keys.external(provider), external_id)
        if found is not None:
            return _text(found)
        job_id = tracked_job_id(provider, external_id)
        return job_id if await self.redis.exists(self.keys.job(job_id)) else None

    async def store_documents(
        self, job_id: str, documents: Mapping[str, bytes], ttl: float
    ) -> None:
        """Keep a polled job's result documents, compressed, for `ttl` seconds."""
        if not documents:
            return
        key = self.keys.results(job_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={k: compress(v) for k, v in documents.items()})
            pipe.expire(key, int(ttl))
            await pipe.execute()

    async def record_documents(
        self, job_id: str, statuses: Mapping[str, str], errors: Mapping[str, str]
    ) -> None:
        """A polled job's documents: id -> status, and the errors of the failed ones."""
        async with self.redis.pipeline(transaction=True) as pipe:
            if statuses:
                pipe.hset(self.keys.tasks(job_id), mapping=dict[Any, Any](statuses))
            if errors:
                pipe.hset(self.keys.errors(job_id), mapping=dict[Any, Any](errors))
            await pipe.execute()

    async def apply_callbacks(
        self, callbacks: Sequence[tuple[str, str, str]], source: str = "callback"
    ) -> list[str]:
        """Record (job id, task id, done|faulted) callbacks in one script call."""
        args: list[Any] = [*self._common(), source, len(callbacks)]
        for callback in callbacks:
            args.extend(callback)
        codes = await self._acknowledged(lambda client: self._callbacks(args=args, client=client))
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
        due = self.keys.due_for(f"reconcile:{job_id}", self.due_shards)
        args: list[Any] = [
            *self._common(),
            job_id,
            chunk,
            "1" if last else "0",
            reconcile_after,
            due,
        ]
        for task_id, task_input in tasks:
            args += [task_id, task_input]
        return _text(await self._record_submission(args=args))

    async def store_results(self, job_id: str, task_id: str, body: bytes, ttl: float) -> str:
        return await self._outcomes.submit((job_id, task_id, "stored", compress(body), int(ttl)))

    async def fail_task(
        self, job_id: str, task_id: str, reason: str, *, expired: bool = False
    ) -> str:
        outcome = "expired" if expired else "failed"
        return await self._outcomes.submit((job_id, task_id, outcome, reason.encode(), 0))

    async def _apply_outcomes(self, outcomes: Sequence[Outcome]) -> list[str]:
        args: list[Any] = [*self._common(), len(outcomes)]
        for outcome in outcomes:
            args.extend(outcome)
        codes = await self._task_outcomes(args=args)
        pairs = zip(outcomes, codes, strict=True)
        return [self._note_end(job_id, code) for (job_id, *_), code in pairs]

    def _note_end(self, job_id: str, raw: Any) -> str:
        """A script's code for one change; one that ended its (Decodo) job comes as
        'code:status', and the end is logged."""
        code, _, ended = _text(raw).partition(":")
        if ended:
            extra = {"job_id": job_id, "provider": "decodo", "status": ended}
            log.info("job ended", extra=extra)
        return code

    async def record_failure(self, job_id: str, work: str, error: str) -> int:
        """A failed attempt at the job's `work`, to be retried: its attempts so far (for the
        backoff); the job shows `error` and its failures in a row until some work of it
        succeeds. 0 when the job has ended."""
        args = [*self._common(), job_id, work, one_line(error)]
        return int(await self._record_failure(args=args))

    async def finish_job(self, job_id: str, status: JobStatus, reason: str = "") -> str:
        """Move a job to a terminal status; 'closed' when it already was terminal. The
        reason is kept on one line: it is shown in tables and logs."""
        args = [*self._common(), job_id, status.value, one_line(reason, 1000)]
        outcome = _text(await self._finish_job(args=args))
        if outcome == "finished":
            await self._log_end(job_id, status, reason)
        return outcome

    async def _log_end(self, job_id: str, status: JobStatus, reason: str) -> None:
        # Only the reason's leading code ("stalled", "rejected"...): the rest may quote
        # the provider's answer, which is no log's business.
        provider = _text(await self.redis.hget(self.keys.job(job_id), "provider") or b"")
        code = reason.partition(":")[0]
        extra = {"job_id": job_id, "provider": provider, "status": status.value}
        log.info("job ended", extra={**extra, "reason": code if _CODE.fullmatch(code) else ""})

    async def reopen_job(self, job_id: str) -> str:
        """Re-drive an ended job's unfinished work: reopened, not_ended or unknown_job."""
        due_poll = self.due_key(f"poll:{job_id}")
        due_reconcile = self.due_key(f"reconcile:{job_id}")
        args = [*self._common(), job_id, due_poll, due_reconcile]
        return _text(await self._reopen_job(args=args))

    async def jobs_by_status(self) -> dict[str, int]:
        raw: dict[Any, Any] = await self.redis.hgetall(self.keys.stats)
        return {
            _text(k).removeprefix("status:"): int(v)
            for k, v in raw.items()
            if _text(k).startswith("status:")
        }

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
        args: list[Any] = [*self._common(), len(batch)]
        for update in batch:
            args += update
        return [_text(code) for code in await self._update_jobs(args=args)]

    # -- scheduling ---------------------------------------------------------------------

    def due_key(self, member: str) -> str:
        return self.keys.due_for(member, self.due_shards)

    async def schedule(self, member: str, at: float) -> None:
        await self._moves.submit((member, at))

    async def unschedule(self, member: str) -> None:
        await self._moves.submit((member, None))

    async def _apply_moves(self, batch: Sequence[tuple[str, float | None]]) -> list[None]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for member, at in batch:
                if at is None:
                    pipe.zrem(self.due_key(member), member)
                else:
                    pipe.zadd(self.due_key(member), {member: at})
            await pipe.execute()
        return [None] * len(batch)

    async def due_at(self, member: str) -> float | None:
        score = await self.redis.zscore(self.due_key(member), member)
        return None if score is None else float(score)

    async def claim_due(self, limit: int, lease: float = DUE_LEASE) -> list[str]:
        """Up to `limit` due members, each leased to the caller for `lease` seconds."""
        members, _ = await self.claim_due_leased(limit, lease)
        return members

    async def claim_due_leased(
        self, limit: int, lease: float = DUE_LEASE
    ) -> tuple[list[str], float]:
        """The claimed members, and the lease end they were given (to renew them by)."""
        now = self.clock()
        lease_end = now + lease
        claimed: list[str] = []
        first = self._next_shard
        self._next_shard = (first + 1) % self.due_shards  # no shard waits behind another
        for offset in range(self.due_shards):
            if len(claimed) >= limit:
                break
            key = self.keys.due_shard((first + offset) % self.due_shards)
            args: list[Any] = [repr(now), limit - len(claimed), repr(lease_end)]
            claimed += [_text(m) for m in await self._claim_due(keys=[key], args=args)]
        return claimed, lease_end

    async def renew_leases(self, leases: Mapping[str, float], lease: float) -> dict[str, float]:
        """Extend the leases still held (due time unchanged since we set it): member -> new
        lease end. A member rescheduled meanwhile is left alone."""
        if not leases:
            return {}
        new_end = self.clock() + lease
        args: list[Any] = [repr(new_end)]
        for member, held in leases.items():
            args += [self.due_key(member), member, repr(held)]
        renewed = await self._renew_leases(args=args)
        return {m: new_end for m, ok in zip(leases, renewed, strict=True) if int(ok)}

    async def acquire_rate(
        self, name: str, interval: float, burst: int = 1, take: int = 1
    ) -> float:
        """0 when the caller may make `take` rate-limited calls now, else seconds to wait."""
        args = [interval, burst, take]
        wait = await self._acquire_rate(keys=[self.keys.rate(name)], args=args)
        return float(_text(wait))

    async def hint_poll(self, job_id: str) -> str:
        """Make a job's poll due now, unless a worker holds it: then its holder polls again
        at once (see scripts.HINT_POLL). 'due', 'flagged', 'already_due' or 'not_scheduled'."""
        member = f"poll:{job_id}"
        keys = [self.due_key(member), self.keys.job(job_id)]
        return _text(await self._hint_poll(keys=keys, args=[member, repr(self.clock())]))

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.keys.work, WORK_GROUP, id="0", mkstream=True)
        except Exception as exc:  # the group exists already
            if "BUSYGROUP" not in str(exc):
                raise

    async def enqueue(self, kind: str, job_id: str, task_id: str = "") -> None:
        fields = {"k": kind, "j": job_id}
        if task_id:
            fields["t"] = task_id
        await self.redis.xadd(self.keys.work, fields)  # type: ignore[arg-type]

    # -- reads --------------------------------------------------------------------------

    async def get_job(self, job_id: str) -> dict[str, Any] | None:
        raw = await self._reads.submit(job_id)
        if not raw:
            return None
        return decode_job(job_id, raw)

    async def _read_jobs(self, job_ids: Sequence[str]) -> list[dict[Any, Any]]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(self.keys.job(job_id))
            rows: list[dict[Any, Any]] = await pipe.execute()
        return rows

    async def get_state(self, job_id: str) -> dict[str, Any] | None:
        """The few fields hot paths need (status, provider, times), without the request."""
        names = ("status", "provider", "created_at", "submitted_at")
        values = await self.redis.hmget(self.keys.job(job_id), names)
        if values[0] is None:
            return None
        state: dict[str, Any] = {"id": job_id}
        for name, value in zip(names, values, strict=True):
            if value is not None:
                state[name] = float(value) if name.endswith("_at") else _text(value)
        return state

    async def get_tasks(self, job_id: str) -> dict[str, str]:
        raw = await self.redis.hgetall(self.keys.tasks(job_id))
        return {_text(k): _text(v) for k, v in raw.items()}

    async def get_task_details(self, job_id: str) -> list[dict[str, Any]]:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.tasks(job_id))
            pipe.hgetall(self.keys.inputs(job_id))
            pipe.hgetall(self.keys.errors(job_id))
            tasks, inputs, errors = await pipe.execute()
        details = []
        for key, status in tasks.items():
            task: dict[str, Any] = {"id": _text(key), "status": _text(status)}
            if key in inputs:
                task["input"] = _text(inputs[key])
            if key in errors:
                task["error"] = _text(errors[key])
            details.append(task)
        return details

    async def get_results(self, job_id: str) -> dict[str, Any]:
        raw: dict[Any, Any] = await self.redis.hgetall(self.keys.results(job_id))
        return {_text(k): orjson.loads(decompress(v)) for k, v in raw.items()}

    async def list_jobs(
        self,
        *,
        status: str | None = None,
        provider: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        scan: int = 10_000,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Jobs newest first, filtered; and the cursor (an entry id of the jobs stream) after
        the last one looked at.

        Looks at `scan` jobs at most per call, so a rare status never makes one call slow:
        then fewer than `limit` come back, with a cursor to carry on from.
        """
        found: list[dict[str, Any]] = []
        looked = 0
        while len(found) < limit and looked < scan:
            if cursor is not None and _STREAM_START.fullmatch(cursor):
                return found, None  # nothing comes before the first id (and Redis refuses it)
            top = "+" if cursor is None else f"({cursor}"
            raw: Any = await self.redis.xrevrange(
                self.keys.jobs, top, "-", count=min(500, scan - looked)
            )
            if not raw:
                return found, None
            looked += len(raw)
            page = [(_text(entry_id), _text(fields[b"j"])) for entry_id, fields in raw]
            states = await self._pipeline_hmget([job_id for _, job_id in page])
            for (entry_id, job_id), (job_status, job_provider) in zip(page, states, strict=True):
                cursor = entry_id
                if (status in (None, job_status)) and (provider in (None, job_provider)):
                    job = await self.get_job(job_id)
                    if job is not None:
                        found.append(job)
                    if len(found) == limit:
                        break
        return found, cursor

    async def _pipeline_hmget(self, job_ids: list[str]) -> list[tuple[str, str]]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hmget(self.keys.job(job_id), ["status", "provider"])
            rows = await pipe.execute()
        return [(_text(row[0] or b""), _text(row[1] or b"")) for row in rows]

    async def results_page(
        self, job_id: str, cursor: int = 0, count: int = 100
    ) -> tuple[dict[str, Any], int]:
        """One page of a job's results (HSCAN: `count` is a hint) and the next cursor, 0 at
        the end."""
        reply: Any = await self.redis.hscan(self.keys.results(job_id), cursor=cursor, count=count)
        next_cursor, raw = reply
        page = {_text(k): orjson.loads(decompress(v)) for k, v in raw.items()}
        return page, int(next_cursor)


def _confirm_command(confirm: str, timeout: float) -> tuple[Any, ...]:
    milliseconds = max(1, int(timeout * 1000))
    if confirm == "waitaof":
        return ("WAITAOF", 1, 0, milliseconds)
    if confirm == "wait":
        return ("WAIT", 1, milliseconds)
    return ()


def _confirmed(reply: Any) -> bool:
    """WAIT answers the replicas that have the write; WAITAOF [local, replicas] fsynced."""
    if isinstance(reply, list | tuple):
        return int(reply[0]) >= 1
    return int(reply) >= 1


def decode_job(job_id: str, raw: Mapping[Any, Any]) -> dict[str, Any]:
    job: dict[str, Any] = {_text(k): _text(v) for k, v in raw.items()}
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


def one_line(text: str, most: int = 300) -> str:
    """A message as one line of at most `most` characters: a provider's words can hold
    newlines (an HTML page), which would break a table or a log line."""
    flat = " ".join(text.split())
    return flat if len(flat) <= most else flat[: most - 1] + "…"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def open_redis(settings: Settings) -> Redis:
    """A client whose pool waits for a free connection rather than failing when busy, with
    every timeout chosen: a command, a connection, and the wait for a pooled connection."""
    pool = BlockingConnectionPool.from_url(
        settings.redis_url or "",
        max_connections=2 * settings.fetch_concurrency + 2 * settings.poll_concurrency + 64,
        timeout=REDIS_TIMEOUT,
        socket_timeout=REDIS_TIMEOUT,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT,
        socket_keepalive=True,
        health_check_interval=30,
    )
    return Redis.from_pool(pool)  # closing the client closes the pool too


def open_store(settings: Settings, redis: Redis) -> Store:
    return Store(
        redis,
        Keys(settings.key_prefix),
        events_maxlen=settings.events_maxlen,
        due_shards=settings.due_shards,
        confirm=settings.durability_confirm,
        confirm_timeout=settings.durability_timeout,
    )


def callback_committer(store: Store, max_batch: int = 512) -> Batcher[Callback, str]:
    """Group commit of callbacks: those that arrive in one event-loop turn share one script
    call (one Redis round trip per batch); each caller gets its code."""
    return Batcher(store.apply_callbacks, max_batch, COMMITS_IN_FLIGHT)
