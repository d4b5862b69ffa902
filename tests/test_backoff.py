"""The retry delay: exponential growth, jitter, the cap, and the provider's Retry-After."""

from __future__ import annotations

import random

import pytest

from receiver.backoff import RETRY_AFTER_CAP, backoff


@pytest.fixture(autouse=True)
def seeded() -> None:
    random.seed(1234)


def delays(attempt: int, base: float = 1.0, cap: float = 300.0, **kw: float) -> list[float]:
    return [backoff(attempt, base, cap, **kw) for _ in range(500)]


def test_backoff_grows_exponentially_with_the_attempt() -> None:
    for attempt in range(6):
        ceiling = 0.5 * 2**attempt
        found = delays(attempt, base=0.5)
        assert ceiling / 2 <= min(found) and max(found) <= ceiling
    assert min(delays(4)) > max(delays(2))  # no overlap two attempts apart


def test_backoff_jitter_spreads_over_the_upper_half() -> None:
    found = delays(3)  # ceiling 8 s
    assert all(4.0 <= d <= 8.0 for d in found)
    assert len(set(found)) > 400  # jittered, not one fixed value
    assert min(found) < 4.5 and max(found) > 7.5  # spread across the whole half


def test_backoff_is_capped() -> None:
    found = delays(40, cap=300.0)  # 2^40 s uncapped; the exponent itself is bounded too
    assert all(150.0 <= d <= 300.0 for d in found)


def test_backoff_never_sooner_than_retry_after() -> None:
    assert all(d >= 3600.0 for d in delays(0, retry_after=3600.0))
    assert all(d >= 30.0 for d in delays(0, cap=5.0, retry_after=30.0))


def test_backoff_retry_after_below_the_backoff_changes_nothing() -> None:
    found = delays(5, retry_after=1.0)  # ceiling 32 s
    assert all(16.0 <= d <= 32.0 for d in found)


def test_backoff_retry_after_has_its_own_cap() -> None:
    week = 7 * 24 * 3600.0
    assert max(delays(0, retry_after=week)) == RETRY_AFTER_CAP == 3600.0
    assert max(delays(0, retry_after=week, retry_after_cap=60.0)) == 60.0
