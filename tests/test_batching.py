from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from receiver.store.batching import Batcher


class Recorder:
    """An apply function that records its batches and holds each until released."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        self.inflight = 0
        self.most_inflight = 0

    async def apply(self, items: Sequence[int]) -> list[int]:
        self.batches.append(list(items))
        self.inflight += 1
        self.most_inflight = max(self.most_inflight, self.inflight)
        await self.release.wait()
        self.inflight -= 1
        return [item * 10 for item in items]


@pytest.mark.anyio
async def test_items_of_one_turn_share_one_batch_and_get_their_own_result() -> None:
    recorder = Recorder()
    recorder.release.set()
    batcher = Batcher(recorder.apply)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(5)))
    assert results == [0, 10, 20, 30, 40]
    assert recorder.batches == [[0, 1, 2, 3, 4]]


@pytest.mark.anyio
@pytest.mark.parametrize("max_inflight", [1, 2])
async def test_no_more_batches_in_flight_than_allowed(max_inflight: int) -> None:
    recorder = Recorder()
    batcher = Batcher(recorder.apply, max_batch=2, max_inflight=max_inflight)
    calls = [asyncio.ensure_future(batcher.submit(i)) for i in range(7)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(recorder.batches) == max_inflight  # the rest wait for a batch to end
    recorder.release.set()
    assert await asyncio.gather(*calls) == [i * 10 for i in range(7)]
    assert recorder.most_inflight == max_inflight
    assert sorted(i for batch in recorder.batches for i in batch) == list(range(7))
    assert all(len(batch) <= 2 for batch in recorder.batches)


@pytest.mark.anyio
async def test_a_failed_batch_fails_its_callers_and_the_next_batch_runs() -> None:
    calls = 0

    async def apply(items: Sequence[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("redis said no")
        return list(items)

    batcher = Batcher(apply)
    first = await asyncio.gather(batcher.submit(1), return_exceptions=True)
    assert isinstance(first[0], RuntimeError)
    assert await batcher.submit(2) == 2
