"""Group commit: the requests that arrive within one event-loop turn share one round trip."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """Queues items and applies them with one call per batch.

    One batch is in flight at a time; items arriving meanwhile wait for the next one, so
    under load every call carries many items. Each caller gets its own result (or the
    batch's exception) only once the whole batch has been applied.
    """

    def __init__(
        self, apply: Callable[[Sequence[T]], Awaitable[Sequence[R]]], max_batch: int = 512
    ) -> None:
        self._apply = apply
        self.max_batch = max_batch
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._flushing = False

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._queue.append((item, future))
        if not self._flushing:
            self._flushing = True
            loop.call_soon(self._start_flush)
        return await future

    def _start_flush(self) -> None:
        asyncio.ensure_future(self._flush()).add_done_callback(_consume_result)

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
                await self._run(batch)
        finally:
            self._flushing = False

    async def _run(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._apply([item for item, _ in batch])
        except Exception as exc:  # every caller of the batch sees the failure
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)


def _consume_result(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()
