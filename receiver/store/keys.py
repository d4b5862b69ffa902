"""Every Redis key, stream, channel and lifetime receiver uses, in one place.

Every job belongs to one of `partitions` partitions (`partition_of`: fixed by its id and
the number of partitions, which a deployment records in Redis and keeps). All keys of a
job, and its partition's work stream, schedule, events stream, jobs index and counts by
status, share the partition's hash tag, so every script touches one slot of a Redis
Cluster and stays atomic; the tags are chosen so that the partitions' slots spread evenly
over 16384, and so over every master of a cluster whose slots are split evenly. On one
Redis the same layout works unchanged. What is not a job's (worker heartbeats, the index
of provider ids, webhook deliveries seen, rate limits, the deployment's record) has no tag.

Scripts are given every key they touch in KEYS, in the orders defined here: first the
partition's keys (`shared(p)`, in the order of SHARED_KEYS), then for each job its
`job_keys(job_id)` in the order of JOB_KEYS. The script header (`scripts.header`) is
generated from these names, so Lua and Python spell them once.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import cached_property

from redis.crc import key_slot

from receiver.settings import MOST_PARTITIONS

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
# The names of a partition's keys a script that works on jobs is given, in the order of KEYS.
SHARED_KEYS = ("stats", "events", "work", "jobs", "due")


# Slots of a Redis Cluster.
SLOTS = 16384


def partition_tags(partitions: int) -> tuple[str, ...]:
    """Each partition's hash tag: the first of the short names 0, 1, 2... (base 36) whose
    slot falls in the partition's share of the slots (partition i: slots from i * 16384 /
    n), each name used once. The same in every process."""
    tags: list[str] = []
    for index in range(partitions):
        low, high = index * SLOTS // partitions, (index + 1) * SLOTS // partitions
        candidate = 0
        while (tag := _base36(candidate)) in tags or not low <= key_slot(tag.encode()) < high:
            candidate += 1
        tags.append(tag)
    return tuple(tags)


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    text = ""
    while True:
        number, digit = divmod(number, 36)
        text = digits[digit] + text
        if not number:
            return text


@dataclass(frozen=True)
class Keys:
    prefix: str = "receiver:"
    partitions: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.partitions <= MOST_PARTITIONS:
            raise ValueError(f"partitions must be from 1 to {MOST_PARTITIONS}")

    @cached_property
    def _bases(self) -> tuple[str, ...]:
        return tuple(f"{self.prefix}{{{tag}}}:" for tag in partition_tags(self.partitions))

    def partition_of(self, job_id: str) -> int:
        """The job's partition: fixed by its id and the number of partitions."""
        if self.partitions == 1:
            return 0
        return zlib.crc32(job_id.encode()) % self.partitions

    def base(self, partition: int) -> str:
        """What the names of a partition's keys start with: the prefix and its hash tag."""
        return self._bases[partition]

    # -- a job's keys -------------------------------------------------------------------

    def job(self, job_id: str) -> str:
        """Hash: provider, status, progress counts, external ids, timestamps, error."""
        return f"{self._bases[self.partition_of(job_id)]}job:{job_id}"

    def tasks(self, job_id: str) -> str:
        """Hash: provider task id -> task status (pending, done, stored, failed, expired)."""
        return f"{self._bases[self.partition_of(job_id)]}tasks:{job_id}"

    def inputs(self, job_id: str) -> str:
        """Hash: provider task id -> the URL or query it was submitted for."""
        return f"{self._bases[self.partition_of(job_id)]}inputs:{job_id}"

    def errors(self, job_id: str) -> str:
        """Hash: provider task id (or document id) -> why it failed."""
        return f"{self._bases[self.partition_of(job_id)]}errors:{job_id}"

    def results(self, job_id: str) -> str:
        """Hash: task id -> zlib-compressed JSON results; expires after the results TTL."""
        return f"{self._bases[self.partition_of(job_id)]}results:{job_id}"

    def early(self, job_id: str) -> str:
        """Hash: callbacks that arrived before their task ids were recorded (task id -> status)."""
        return f"{self._bases[self.partition_of(job_id)]}early:{job_id}"

    def attempts(self, job_id: str) -> str:
        """Hash: the job's work (`WorkItem.attempt_name`: fetch:<task>, submit, poll...) ->
        attempts made so far: the one retry counter, reset when the work succeeds."""
        return f"{self._bases[self.partition_of(job_id)]}attempts:{job_id}"

    def job_keys(self, job_id: str, names: tuple[str, ...] = JOB_KEYS) -> list[str]:
        """The job's keys `names` (of JOB_KEYS), in their order. Each is its partition's
        base, what the key holds, then the job's id: whatever the id holds (a `:`, braces),
        no key of one job is a key of another."""
        base = self._bases[self.partition_of(job_id)]
        return [f"{base}{'job' if name == 'hash' else name}:{job_id}" for name in names]

    # -- a partition's keys -------------------------------------------------------------

    def shared(self, partition: int) -> list[str]:
        """The partition's keys a script touches, in the order of SHARED_KEYS."""
        return [
            self.stats(partition),
            self.events(partition),
            self.work(partition),
            self.jobs(partition),
            self.due(partition),
        ]

    def stats(self, partition: int) -> str:
        """Hash: status:<status> -> number of the partition's jobs in it."""
        return f"{self._bases[partition]}stats"

    def events(self, partition: int) -> str:
        """Stream: every event of the partition's jobs, trimmed to about
        Settings.events_maxlen entries."""
        return f"{self._bases[partition]}stream:events"

    def work(self, partition: int) -> str:
        """Stream with the consumer group WORK_GROUP: the partition's work to do now
        (fetch, submit)."""
        return f"{self._bases[partition]}stream:work"

    def jobs(self, partition: int) -> str:
        """Stream: one entry per job of the partition created (field `j`: its id), for
        listing newest first. A stream entry costs about 30 bytes where a sorted-set member
        costs over 100."""
        return f"{self._bases[partition]}stream:jobs"

    def due(self, partition: int) -> str:
        """Sorted set: the partition's scheduled work (`WorkItem.member`: reconcile, retry,
        submit, poll) -> unix time it is due."""
        return f"{self._bases[partition]}due"

    def due_of(self, job_id: str) -> str:
        """The schedule holding the job's scheduled work."""
        return self.due(self.partition_of(job_id))

    # -- the deployment's keys (no tag) -------------------------------------------------

    @property
    def meta(self) -> str:
        """Hash: what the deployment is made of (`partitions`), recorded by its first
        process and checked by every later one."""
        return f"{self.prefix}meta"

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

    def rate(self, name: str) -> str:
        """String: the unix time before which the named rate-limited call may not run."""
        return f"{self.prefix}rate:{name}"
