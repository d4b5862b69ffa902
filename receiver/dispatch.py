"""Which code runs a piece of work: its job's provider's workflow."""

from __future__ import annotations

from collections.abc import Mapping

from receiver.jobs.base import UnknownWork, Workflow
from receiver.store import Store

__all__ = ["Dispatcher", "UnknownWork"]


class Dispatcher:
    def __init__(self, store: Store, workflows: Mapping[str, Workflow]) -> None:
        self.store = store
        self.workflows = dict(workflows)
        # Kinds of work a workflow runs from the job id alone, without reading the job.
        self._direct = {kind: flow for flow in self.workflows.values() for kind in flow.direct}

    async def run(self, kind: str, job_id: str, task_id: str = "") -> float | None:
        """Run the work; when to run it again, or None."""
        direct = self._direct.get(kind)
        if direct is not None:
            return await direct.run(kind, job_id, task_id, None)
        job = await self.store.get_job(job_id)
        if job is None:  # the job is gone: nothing left to do
            return None
        workflow = self.workflows.get(job["provider"])
        if workflow is None:
            raise UnknownWork(f"no workflow for provider {job['provider']!r}")
        return await workflow.run(kind, job_id, task_id, job)
