"""Which code runs a piece of work, by its kind and its job's provider."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from receiver.jobs.decodo import DecodoJobs
from receiver.polling import Poller
from receiver.store import Store


class UnknownWork(Exception):
    pass


class Dispatcher:
    def __init__(
        self,
        store: Store,
        decodo: DecodoJobs,
        pollers: Mapping[str, Poller],
        poll_concurrency: int = 50,
    ) -> None:
        self.store = store
        self.decodo = decodo
        self.pollers = dict(pollers)
        # Concurrent polls per provider in this process.
        self._bounds = {name: asyncio.Semaphore(poll_concurrency) for name in self.pollers}

    async def run(self, kind: str, job_id: str, task_id: str = "") -> float | None:
        """Run the work; when to run it again, or None."""
        if kind == "fetch":
            return await self.decodo.fetch(job_id, task_id)
        if kind == "reconcile":
            return await self.decodo.reconcile(job_id)
        job = await self.store.get_job(job_id)
        if job is None:  # the job is gone: nothing left to do
            return None
        name = job["provider"]
        if kind == "submit" and name == "decodo":
            return await self.decodo.submit(job_id)
        poller = self.pollers.get(name)
        if poller is None:
            raise UnknownWork(f"no poller for provider {name!r}")
        if kind == "submit":
            return await poller.submit(job_id)
        if kind == "poll":
            async with self._bounds[name]:
                return await poller.poll(job)
        raise UnknownWork(f"unknown kind of work {kind!r}")
