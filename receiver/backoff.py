"""Exponential backoff with jitter, for retries rescheduled in Redis."""

from __future__ import annotations

import random


def backoff(attempt: int, base: float, cap: float, retry_after: float | None = None) -> float:
    """Seconds before attempt `attempt + 1`: base·2^attempt capped, with full jitter in its
    upper half; never sooner than the provider's own `retry_after`."""
    ceiling = min(cap, base * 2 ** min(attempt, 32))
    delay = random.uniform(ceiling / 2, ceiling)
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return delay
