"""The words the store and its scripts share: statuses, script answers, kinds of work.

Each is spelt once, here: the Lua scripts get them through the header `scripts.header`
generates (`STATUS.completed`, `CODE.accepted`, `WORK.fetch`), whose tables raise an error
on a name they do not hold, so a typo in a script fails rather than compares with nil.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass


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


class Code(enum.StrEnum):
    """What a script answers about one change it was asked for."""

    CREATED = "created"
    EXISTS = "exists"
    RECORDED = "recorded"
    ACCEPTED = "accepted"  # a callback recorded
    DUPLICATE = "duplicate"  # already recorded
    EARLY = "early"  # a callback kept until its task ids are recorded
    CLOSED = "closed"  # the job has ended: nothing changes
    UNKNOWN_JOB = "unknown_job"
    UNKNOWN_TASK = "unknown_task"
    STORED = "stored"
    FAILED = "failed"
    EXPIRED = "expired"
    FINISHED = "finished"
    UPDATED = "updated"
    POLL_NOW = "poll_now"
    REOPENED = "reopened"
    NOT_ENDED = "not_ended"
    DUE = "due"
    FLAGGED = "flagged"
    ALREADY_DUE = "already_due"
    NOT_SCHEDULED = "not_scheduled"


# The codes the callbacks script answers, by their old names.
ACCEPTED, DUPLICATE, EARLY, CLOSED = Code.ACCEPTED, Code.DUPLICATE, Code.EARLY, Code.CLOSED
UNKNOWN_JOB, UNKNOWN_TASK = Code.UNKNOWN_JOB, Code.UNKNOWN_TASK


class Work(enum.StrEnum):
    """Kinds of work: queued in the work stream (fetch, submit) or scheduled (the rest)."""

    FETCH = "fetch"  # a task's results, once it is done
    SUBMIT = "submit"  # a job's request to its provider
    POLL = "poll"  # a polled job's next look at its provider
    RECONCILE = "reconcile"  # a callback job's look at the tasks whose callback is late


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One piece of work of one job: `kind:job[:task]` in the schedule and the attempts
    hash, fields `k`, `j`, `t` in the work stream."""

    kind: str
    job_id: str
    task_id: str = ""

    @property
    def member(self) -> str:
        """Its name in the schedule."""
        if self.task_id:
            return f"{self.kind}:{self.job_id}:{self.task_id}"
        return f"{self.kind}:{self.job_id}"

    @property
    def attempt_name(self) -> str:
        """Its name in the job's attempts hash: the member without the job id."""
        return f"{self.kind}:{self.task_id}" if self.task_id else self.kind

    @property
    def fields(self) -> dict[str, str]:
        """Its fields in the work stream."""
        fields = {"k": self.kind, "j": self.job_id}
        if self.task_id:
            fields["t"] = self.task_id
        return fields

    @classmethod
    def parse(cls, member: str) -> WorkItem:
        kind, _, rest = member.partition(":")
        job_id, _, task_id = rest.partition(":")
        return cls(kind, job_id, task_id)

    @classmethod
    def from_fields(cls, fields: Mapping[bytes, bytes]) -> WorkItem:
        return cls(
            fields.get(b"k", b"").decode(),
            fields.get(b"j", b"").decode(),
            fields.get(b"t", b"").decode(),
        )

    def __str__(self) -> str:
        return self.member


def lua_tables() -> dict[str, Mapping[str, str]]:
    """The tables the script header defines, by their Lua names."""
    return {
        "STATUS": {s.value: s.value for s in JobStatus},
        "TASK": {s.value: s.value for s in TaskStatus},
        "CODE": {c.value: c.value for c in Code},
        "WORK": {w.value: w.value for w in Work},
    }
