"""The webhooks of a batch: started, one page event per finished page, then completed (or
failed), sent as the clock passes each page's finish time, in the cloud's style or in the
self-hosted build's (the `webhook_style` knob)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import random
import uuid
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import httpx
import orjson

from receiver.sandbox.common import Stats
from receiver.sandbox.firecrawl.batches import FAILED, Batch, Batches, chance
from receiver.sandbox.firecrawl.config import SELFHOSTED_WEBHOOKS, FirecrawlSandboxConfig
from receiver.sandbox.firecrawl.documents import page_failure, render_document
from receiver.sandbox.firecrawl.validation import Webhook

logger = logging.getLogger(__name__)

BATCH_FAILED = "Batch scrape failed"
# What the self-hosted build's axios sends, besides Host, Content-Length and Connection
# (capture 053); these replace the HTTP client's own.
AXIOS_HEADERS = {
    "Accept": "application/json, text/plain, */*",
    "Content-Type": "application/json",
    "User-Agent": "axios/1.11.0",
    "Accept-Encoding": "gzip, compress, deflate, br",
}


class WebhookSender:
    """Sends each batch's webhooks from a task of its own, on one HTTP client."""

    def __init__(
        self, config: FirecrawlSandboxConfig, batches: Batches, stats: Stats, rng: random.Random
    ) -> None:
        self.config = config
        self.batches = batches
        self.stats = stats
        self.rng = rng
        self.client: httpx.AsyncClient | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def start(self, batch: Batch) -> None:
        if batch.webhook is not None:
            self._spawn(self._send_webhooks(batch))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The client open while the app runs; deliveries still pending are cancelled after."""
        async with httpx.AsyncClient() as client:
            self.client = client
            try:
                yield
            finally:
                await self._cancel_tasks()
                self.client = None

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _cancel_tasks(self) -> None:
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _send_webhooks(self, batch: Batch) -> None:
        """Started, then one page event per finished page, then completed, as time passes."""
        await self._emit(batch, "started", [])
        sent = 0
        while True:
            now = self.batches.clock()
            view = self.batches.view(batch, now)
            if now >= view.expires_at:
                return
            for index in range(sent, view.finished):
                await self._emit_page(batch, index)
            sent = view.finished
            if view.status == "completed":
                await self._emit(batch, "completed", [])
                return
            if view.status == "failed":
                await self._emit(batch, "failed", [], error=BATCH_FAILED)
                return
            if view.status == "cancelled" and view.finished >= batch.pages:
                return
            await self._wait_for_change(batch, self.batches.find_next_change(batch, now), now)

    async def _wait_for_change(self, batch: Batch, wake: float | None, now: float) -> None:
        # Capped, so knob changes and clock shifts are noticed within a second.
        timeout = 1.0 if wake is None else min(max(wake - now, 0.0), 1.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(batch.changed.wait(), timeout)
        batch.changed.clear()

    async def _emit_page(self, batch: Batch, index: int) -> None:
        if batch.outcome(index) == FAILED:
            _, message = page_failure(self.config, index)
            await self._emit(batch, "page", [], error=message)
        else:
            document = render_document(batch, index, self.config.document_bytes)
            await self._emit(batch, "page", [document])

    async def _emit(
        self, batch: Batch, event: str, data: list[Any], error: str | None = None
    ) -> None:
        hook = batch.webhook
        if hook is None or event not in hook.events:
            return
        if chance(self.rng, self.config.webhook_drop_rate):
            self.stats.count("webhook dropped", 0)
            return
        payload: dict[str, Any] = {
            "success": error is None,
            "type": f"batch_scrape.{event}",
            "id": batch.id,
        }
        if not self._selfhosted():
            payload["webhookId"] = str(uuid.uuid4())
        payload["data"] = data
        if error is not None:
            payload["error"] = error
        payload["metadata"] = hook.metadata  # as the webhook object gave it
        await self._deliver(hook, orjson.dumps(payload), payload["type"])

    def _selfhosted(self) -> bool:
        return self.config.webhook_style == SELFHOSTED_WEBHOOKS

    def _headers(self, hook: Webhook, body: bytes) -> dict[str, str]:
        if self._selfhosted():
            return {**AXIOS_HEADERS, **hook.headers}
        headers = {"Content-Type": "application/json", **hook.headers}
        secret = self.config.webhook_secret
        if secret:
            digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
            headers["X-Firecrawl-Signature"] = f"sha256={digest}"
        return headers

    async def _deliver(self, hook: Webhook, body: bytes, kind: str) -> None:
        headers = self._headers(hook, body)
        delivered = await self._post(hook.url, body, headers, kind)
        if chance(self.rng, self.config.webhook_duplicate_rate):
            await self._post(hook.url, body, headers, kind)
        delays = [] if self._selfhosted() else _retry_delays(self.config.webhook_retry_delays)
        if not delivered and delays:
            self._spawn(self._retry(hook.url, body, headers, kind, delays))

    async def _retry(
        self, url: str, body: bytes, headers: dict[str, str], kind: str, delays: list[float]
    ) -> None:
        for delay in delays:
            await asyncio.sleep(delay)
            if await self._post(url, body, headers, kind):
                return

    async def _post(self, url: str, body: bytes, headers: dict[str, str], kind: str) -> bool:
        assert self.client is not None, "webhooks need the app's lifespan to have started"
        try:
            timeout = self.config.webhook_timeout
            response = await self.client.post(url, content=body, headers=headers, timeout=timeout)
        except httpx.HTTPError as exc:
            logger.info("webhook delivery failed", extra={"kind": kind, "error": repr(exc)})
            self.stats.count(f"webhook {kind}", 0)
            return False
        self.stats.count(f"webhook {kind}", response.status_code)
        return response.is_success


def _retry_delays(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]
