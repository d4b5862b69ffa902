"""The worker's side of Firecrawl jobs: submit a batch, poll it to the end, collect every
document, and settle a cancel once the pages in flight have landed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from receiver.errors import Permanent, Transient
from receiver.jobs.firecrawl.tally import ending, live_counts, submitted_urls, tally
from receiver.polling import Observation, Poller, fingerprint, last_moved_at, parse_time
from receiver.providers.firecrawl import BatchStatus, FirecrawlClient, PageError, document_key
from receiver.settings import Settings
from receiver.store import JobStatus, Store, Work, WorkItem, iso
from receiver.tokens import PassthroughSigner

log = logging.getLogger(__name__)

# Seconds without a page landing after which a cancelled batch is over although Firecrawl's
# total was not reached: pages in flight at a cancel land within their scrape timeout.
CANCEL_SETTLE = 120.0
# The webhook events we ask Firecrawl for: those that make a poll due (callbacks.py).
WEBHOOK_EVENTS = ("completed", "failed")


class FirecrawlJobs(Poller):
    provider = "firecrawl"

    def __init__(
        self,
        store: Store,
        client: FirecrawlClient,
        settings: Settings,
        signer: PassthroughSigner,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(store, settings, clock)
        self.client = client
        self.signer = signer  # of the token in the webhook URL: the web side checks it

    @property
    def rate(self) -> float:
        return self.settings.firecrawl_rps

    def webhook(self, job_id: str) -> dict[str, Any]:
        """The webhook of a batch we submit: its URL carries the job's signed token, since a
        self-hosted Firecrawl signs nothing (the cloud signs too, with the account secret)."""
        token = self.signer.sign(job_id)
        return {
            "url": f"{self.settings.public_url}/callbacks/firecrawl?token={token}",
            "metadata": {"job_id": job_id},
            "events": list(WEBHOOK_EVENTS),
        }

    async def submit(self, job_id: str) -> float | None:
        """POST /v2/batch/scrape, then the batch is polled like a tracked one."""
        job = await self.store.get_job(job_id)
        if job is None or JobStatus(job["status"]).terminal or job.get("external"):
            return None
        params = job["params"]
        wait = await self._take_turn()  # the POST counts against the provider's rate too
        if wait > 0:
            return self.clock() + wait
        try:
            submitted = await self.client.submit(
                params["urls"], params["options"], self.webhook(job_id)
            )
        except Transient as exc:
            return await self._retry(job_id, exc)
        except Permanent as exc:
            await self._fail(job_id, exc)
            return None
        await self.store.record_external("firecrawl", submitted.id, job_id)
        invalid = submitted.invalid_urls
        fields = {
            "external": orjson.dumps({"batch_id": submitted.id}),
            "status": "running",
            "invalid_urls": orjson.dumps(invalid),
            "failed": len(invalid),
            "consecutive_failures": 0,  # the submission worked: its retries are over
            "last_error": "",
        }
        detail: dict[str, Any] = {"batch_id": submitted.id}
        if invalid:
            detail["invalid_urls"] = invalid
        updated = await self.store.update_job(job_id, fields, event="job.progress", detail=detail)
        if updated == "closed":  # cancelled while the submission was on its way
            await self._cancel_batch(job_id, submitted.id)
            return None
        await self.store.schedule(WorkItem(Work.POLL, job_id).member, self.clock())
        return None

    async def _cancel_batch(self, job_id: str, batch_id: str) -> None:
        """Stop a batch whose job ended before it was submitted: nobody polls it."""
        try:
            await self.cancel_at_firecrawl(batch_id)
        except (Transient, Permanent) as exc:
            log.warning(
                "could not cancel the batch of an ended job",
                extra={"job_id": job_id, "provider": self.provider, "reason": exc.reason},
            )

    async def sync(self, job: Mapping[str, Any]) -> Observation:
        batch = await self.client.status(job["external"]["batch_id"])
        seen = Observation(
            fingerprint=fingerprint(batch.status, batch.completed, batch.total),
            fields={**live_counts(job, batch), "provider_status": batch.status},
            detail={"provider_status": batch.status},
            expires_at=parse_time(batch.expires_at),
        )
        if batch.credits_used is not None:
            seen.fields["credits_used"] = batch.credits_used
        if batch.expires_at:
            seen.fields["expires_at"] = batch.expires_at
        if batch.terminal and (
            batch.status != "cancelled" or self._cancel_settled(job, seen, batch)
        ):
            await self._conclude(job, batch, seen)
        return seen  # a cancelled batch still landing the pages in flight: polled again

    async def _conclude(
        self, job: Mapping[str, Any], batch: BatchStatus, seen: Observation
    ) -> None:
        """The failed pages' reasons, every document stored, and the job's outcome."""
        errors = await self._errors(job, batch)
        documents = await self.client.collect(batch, turn=self._wait_turn)
        await self.store.store_documents(
            job["id"],
            {document_key(d): orjson.dumps(d) for d in documents},
            self.settings.results_ttl,
        )
        counted = tally(job, batch, documents, errors)
        seen.fields |= counted.fields()
        seen.detail |= counted.detail()
        # Never the fingerprint of a poll before: the final counts go out in a job.progress.
        seen.fingerprint = fingerprint(batch.status, batch.completed, batch.total, len(documents))
        seen.final, seen.reason = ending(job, batch, counted)

    async def _errors(self, job: Mapping[str, Any], batch: BatchStatus) -> list[PageError]:
        """The failed pages, from the errors route; none asked for when a submitted batch
        completed whole. A route that refuses us leaves the reasons unknown (logged)."""
        urls = submitted_urls(job)
        if urls is not None and batch.status == "completed":
            valid = len(urls) - len(job.get("invalid_urls") or [])
            if batch.completed >= batch.total >= valid:
                return []
        await self._wait_turn()
        try:
            return await self.client.errors(job["external"]["batch_id"])
        except Permanent as exc:
            log.warning(
                "firecrawl errors route refused; failed pages counted without reasons",
                extra={"job_id": job["id"], "provider": self.provider, "reason": exc.reason},
            )
            return []

    def _cancel_settled(
        self, job: Mapping[str, Any], seen: Observation, batch: BatchStatus
    ) -> bool:
        """A cancelled batch is over once every page it kept has landed, or once none has
        for a while (then the job ends `cancelled`, a little before `stalled` would end it)."""
        if batch.completed >= batch.total:
            return True
        if seen.fingerprint != job.get("fingerprint"):
            return False
        quiet = min(CANCEL_SETTLE, 0.8 * self.stall_after(job))
        return self.clock() - last_moved_at(job) > quiet

    async def cancel(self, job: Mapping[str, Any]) -> str:
        """A user's cancel: DELETE the batch, then poll it until the pages in flight land.
        The cancel counts as progress, so the stall timeout starts over from it."""
        said = await self.cancel_at_firecrawl(job["external"]["batch_id"])
        now = self.clock()
        fields = {"cancel_requested_at": now, "moved_at": now, "provider_status": said}
        detail = {"provider_status": said, "cancel_requested_at": iso(now)}
        await self.store.update_job(job["id"], fields, event="job.progress", detail=detail)
        await self.store.hint_poll(job["id"])  # the pages in flight are looked for at once
        return said

    async def cancel_at_firecrawl(self, batch_id: str) -> str:
        await self._wait_turn()  # a user waits on it: a turn is waited for, not rescheduled
        return await self.client.cancel(batch_id)
