"""Shared rate limits: a generic cell rate algorithm on Redis's clock, one key per limit,
so that every process of a deployment keeps to one rate together.

Every caller takes its turns through a `SharedRate`: a turn now (0) or the seconds to wait
(`take`), or a wait for one (`wait`). It takes turns from Redis a tenth of a second's worth
at a time and spends them within that tenth, and the callers that find none left wait for
one refill, not one call each; a limit of fewer than ten a second is asked per turn.
"""

from __future__ import annotations

import asyncio
import time

from receiver.store.base import StoreBase, text


class Rates(StoreBase):
    async def acquire_rate(
        self, name: str, interval: float, burst: int = 1, take: int = 1
    ) -> float:
        """0 when the caller may make `take` calls of the limit `name` now (one every
        `interval` seconds, `burst` at once), else the seconds to wait."""
        args = [interval, burst, take]
        key = self.keys.rate(name)
        return float(text(await self.scripts.acquire_rate([key], args, self._for(key))))


class SharedRate:
    """One turn every `interval` seconds of the limit `name`, across every process, at
    most `burst` at once, taken from Redis `batch` at a time (0 seconds: no limit)."""

    def __init__(
        self, store: Rates, name: str, interval: float, *, burst: int = 1, batch: int = 1
    ) -> None:
        self.store, self.name, self.interval = store, name, interval
        self._burst, self._batch = max(burst, batch), batch
        self._turns = 0  # turns this process may still take before _turns_until
        self._turns_until = 0.0
        self._refill = asyncio.Lock()  # one refill at a time, not one per caller
        self._blocked_until = 0.0  # monotonic time before which the shared limit said wait

    @classmethod
    def per_second(cls, store: Rates, name: str, rate: float) -> SharedRate:
        """`rate` turns a second, a tenth of a second's worth taken at a time, a second's
        worth at most at once."""
        batch = max(1, int(rate / 10))
        return cls(store, name, 1.0 / rate, burst=max(batch, int(rate)), batch=batch)

    async def take(self) -> float:
        """0 when the caller may go now (its turn is taken), else seconds to wait."""
        if self._spend() or self.interval <= 0:
            return 0.0
        async with self._refill:
            if self._spend():
                return 0.0
            blocked = self._blocked_until - time.monotonic()
            if blocked > 0:  # the shared limit said wait: no need to ask it again
                return blocked
            wait = await self.store.acquire_rate(
                self.name, self.interval, burst=self._burst, take=self._batch
            )
            now = time.monotonic()
            if wait > 0:
                self._blocked_until = now + wait
                return wait
            self._turns, self._turns_until = self._batch - 1, now + 0.1
            return 0.0

    async def wait(self) -> None:
        """Wait for a turn (for work that cannot be rescheduled instead)."""
        while (wait := await self.take()) > 0:
            await asyncio.sleep(wait)

    def _spend(self) -> bool:
        if self._turns > 0 and time.monotonic() < self._turns_until:
            self._turns -= 1
            return True
        return False
