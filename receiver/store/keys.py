"""Every Redis key, stream, channel and lifetime receiver uses, in one place.

All keys of one job share the hash tag `{<job_id>}`, so the per-job keys of a job land on
one slot of a Redis Cluster.

Scripts are given every key they touch in KEYS, in the orders defined here: first a
group's shared keys (`shared()`: the counts by status, the events stream, the work stream,
the jobs index, the job's schedule), then for each job its `job_keys(job_id)` in the order
of JOB_KEYS. The script header (`scripts.header`) is generated from these names, so Lua
and Python spell them once.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

# Consumer group of the workers on the work stream.
WORK_GROUP = "workers"
# Seconds a claimed due entry stays leased to one worker before another may take it.
DUE_LEASE = 120.0
# Seconds a webhook delivery is remembered, so that a second delivery of it is a duplicate.
WEBHOOK_SEEN_TTL = 24 * 3600
# Worker heartbeats older than this many heartbeat intervals are dropped from their set.
HEARTBEATS_KEPT = 10

# The names scripts know a job's keys by, in the order they are given in KEYS.
JOB_KEYS = ("hash", "tasks", "inputs", "errors", "results", "early", "attempts")
# The names of the shared keys of a script that works on jobs, in the order given in KEYS.
SHARED_KEYS = ("stats", "events", "work", "jobs", "due")


@dataclass(frozen=True)
class Keys:
    prefix: str = "receiver:"
    # Shards of the schedule: a job's scheduled work all lives in the shard of its id.
    due_shards: int = 1

    def job(self, job_id: str) -> str:
        """Hash: provider, status, progress counts, external ids, timestamps, error."""
        return f"{self.prefix}job:{{{job_id}}}"

    def tasks(self, job_id: str) -> str:
        """Hash: provider task id -> task status (pending, done, stored, failed, expired)."""
        return f"{self.prefix}job:{{{job_id}}}:tasks"

    def inputs(self, job_id: str) -> str:
        """Hash: provider task id -> the URL or query it was submitted for."""
        return f"{self.prefix}job:{{{job_id}}}:inputs"

    def errors(self, job_id: str) -> str:
        """Hash: provider task id (or document id) -> why it failed."""
        return f"{self.prefix}job:{{{job_id}}}:errors"

    def results(self, job_id: str) -> str:
        """Hash: task id -> zlib-compressed JSON results; expires after the results TTL."""
        return f"{self.prefix}job:{{{job_id}}}:results"

    def early(self, job_id: str) -> str:
        """Hash: callbacks that arrived before their task ids were recorded (task id -> status)."""
        return f"{self.prefix}job:{{{job_id}}}:early"

    def attempts(self, job_id: str) -> str:
        """Hash: the job's work (`WorkItem.attempt_name`: fetch:<task>, submit, poll...) ->
        attempts made so far: the one retry counter, reset when the work succeeds."""
        return f"{self.prefix}job:{{{job_id}}}:attempts"

    def job_keys(self, job_id: str) -> list[str]:
        """The job's keys in the order of JOB_KEYS."""
        base = f"{self.prefix}job:{{{job_id}}}"
        return [base, *(f"{base}:{name}" for name in JOB_KEYS[1:])]

    def shared(self, job_id: str) -> list[str]:
        """The shared keys a script on this job touches, in the order of SHARED_KEYS."""
        return [self.stats, self.events, self.work, self.jobs, self.due_of(job_id)]

    @property
    def jobs(self) -> str:
        """Stream: one entry per job created (field `j`: its id), for listing newest first.

        A stream entry costs about 30 bytes where a sorted-set member costs over 100."""
        return f"{self.prefix}stream:jobs"

    @property
    def due(self) -> str:
        """Sorted set: scheduled work (`WorkItem.member`) -> unix time it is due.

        The first shard; with more, `due_shard(i)` names the others."""
        return f"{self.prefix}due"

    def due_shard(self, index: int) -> str:
        return self.due if index == 0 else f"{self.prefix}due:{{{index}}}"

    def due_shards_all(self) -> list[str]:
        return [self.due_shard(index) for index in range(max(1, self.due_shards))]

    def due_of(self, job_id: str) -> str:
        """The shard holding the job's scheduled work: stable for the job, spread over the
        shards."""
        shards = max(1, self.due_shards)
        return self.due_shard(zlib.crc32(job_id.encode()) % shards if shards > 1 else 0)

    @property
    def work(self) -> str:
        """Stream with the consumer group WORK_GROUP: work to do now (fetch, submit)."""
        return f"{self.prefix}stream:work"

    @property
    def events(self) -> str:
        """Stream: every event, trimmed to about Settings.events_maxlen entries."""
        return f"{self.prefix}stream:events"

    @property
    def channel(self) -> str:
        """Pub/sub channel of every event; `channel_of(job)` carries one job's."""
        return f"{self.prefix}events"

    def channel_of(self, job_id: str) -> str:
        return f"{self.prefix}events:{job_id}"

    @property
    def heartbeats(self) -> str:
        """Sorted set: worker id -> unix time of its last heartbeat."""
        return f"{self.prefix}workers"

    def external(self, provider: str) -> str:
        """Hash: the provider's id of a batch we submitted -> our job id. (A tracked job
        needs no entry: its id derives from the provider's id, `store.tracked_job_id`.)"""
        return f"{self.prefix}external:{provider}"

    def webhook_seen(self, delivery_id: str) -> str:
        """String with the TTL WEBHOOK_SEEN_TTL: a webhook delivery already handled."""
        return f"{self.prefix}webhook:{delivery_id}"

    @property
    def stats(self) -> str:
        """Hash: status:<status> -> number of jobs in it."""
        return f"{self.prefix}stats"

    def rate(self, name: str) -> str:
        """String: the unix time before which the named rate-limited call may not run."""
        return f"{self.prefix}rate:{name}"
