"""Group commit of callbacks: those that arrive in one event-loop turn share one script call."""

from __future__ import annotations

from receiver.batching import Batcher
from receiver.store import Store

Callback = tuple[str, str, str]  # job id, task id, done | faulted

# Batches of callbacks in flight at once. With `appendfsync always` each script call waits
# for Redis's fsync: a second batch in flight is taken while the first one's is on disk.
COMMITS_IN_FLIGHT = 2


class CallbackCommitter(Batcher[Callback, str]):
    """Records callbacks with one Redis round trip per batch; each caller gets its code."""

    def __init__(self, store: Store, max_batch: int = 512) -> None:
        super().__init__(store.apply_callbacks, max_batch, COMMITS_IN_FLIGHT)

    async def commit(self, callback: Callback) -> str:
        return await self.submit(callback)
