"""Exponential backoff with jitter, for retries rescheduled in Redis."""

from __future__ import annotations

import random

# Seconds: the most a provider's Retry-After may hold work back, so a silly header cannot
# park it for days.
RETRY_AFTER_CAP = 3600.0


def backoff(
    attempt: int,
    base: float,
    cap: float,
    retry_after: float | None = None,
    retry_after_cap: float = RETRY_AFTER_CAP,
) -> float:
    """Seconds before attempt `attempt + 1`: base·2^attempt capped at `cap`, with full jitter
    in its upper half; never sooner than the provider's own `retry_after`, which only
    `retry_after_cap` bounds."""
    ceiling = min(cap, base * 2 ** min(attempt, 32))
    delay = random.uniform(ceiling / 2, ceiling)
    if retry_after is not None:
        delay = max(delay, min(retry_after, retry_after_cap))
    return delay
