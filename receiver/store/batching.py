"""Group commit: the requests that arrive within one event-loop turn share one round trip."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """Queues items and applies them with one call per batch.

    At most `max_inflight` batches are in flight at a time; items arriving meanwhile wait
    for the next one, so under load every call carries many items. Each caller gets its own
    result (or the batch's exception) only once the whole batch has been applied.
    """

    def __init__(
        self,
        apply: Callable[[Sequence[T]], Awaitable[Sequence[R]]],
        max_batch: int = 512,
        max_inflight: int = 1,
    ) -> None:
        self._apply = apply
        self.max_batch = max_batch
        self.max_inflight = max_inflight
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._inflight = 0  # batches being applied
        self._scheduled = False  # a flush is due at the next event-loop turn

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        self._schedule()
        return await future

    def _schedule(self) -> None:
        # At the next turn, so that every item of this turn joins the batch.
        if self._queue and not self._scheduled and self._inflight < self.max_inflight:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._start_flush)

    def _start_flush(self) -> None:
        self._scheduled = False
        if not self._queue or self._inflight >= self.max_inflight:
            return
        batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
        self._inflight += 1
        asyncio.ensure_future(self._run(batch)).add_done_callback(self._finished)
        self._schedule()  # more than max_batch waiting: the next batch may start too

    def _finished(self, task: asyncio.Future[None]) -> None:
        self._inflight -= 1
        _consume_result(task)
        self._schedule()

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
