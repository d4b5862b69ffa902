"""Group commit of callbacks: those that arrive in one event-loop turn share one script call."""

from __future__ import annotations

import asyncio

from receiver.store import Store

Callback = tuple[str, str, str]  # job id, task id, done | faulted


class CallbackCommitter:
    """Queues callbacks and records them with one Redis round trip per batch.

    One batch is in flight at a time; callbacks arriving meanwhile wait for the next one,
    so under load every round trip carries many callbacks. Each caller gets its own code
    (or the batch's exception) only once Redis has applied the whole batch.
    """

    def __init__(self, store: Store, max_batch: int = 512) -> None:
        self.store = store
        self.max_batch = max_batch
        self._queue: list[tuple[Callback, asyncio.Future[str]]] = []
        self._flushing = False

    async def commit(self, callback: Callback) -> str:
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._queue.append((callback, future))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._start_flush)
        return await future

    def _start_flush(self) -> None:
        task = asyncio.ensure_future(self._flush())
        task.add_done_callback(_consume_result)

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
                await self._apply(batch)
        finally:
            self._flushing = False

    async def _apply(self, batch: list[tuple[Callback, asyncio.Future[str]]]) -> None:
        try:
            codes = await self.store.apply_callbacks([callback for callback, _ in batch])
        except Exception as exc:  # Redis unreachable: every caller answers 503
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), code in zip(batch, codes, strict=True):
            if not future.done():
                future.set_result(code)


def _consume_result(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()
