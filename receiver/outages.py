"""Riding out Redis going away: one log line per outage, and loops that never stay dead.

Every process keeps one `Outages`. A Redis call that fails for a reason that passes (the
server gone, restarting, loading its AOF, out of memory, a replica during a failover) is
reported to it: the first failure logs one WARNING and counts an outage; the first success
after it logs one INFO line with its length. Nothing else is logged per request or per
loop turn, so an outage at night is two lines, not a traceback storm.

`supervise` runs a worker's background loop for the life of the process: an outage makes
it wait (backoff with jitter) and start the loop again; any other exception is logged with
its traceback and the loop restarted the same way; only a fault that no wait can mend
(Redis refuses our password) or a loop that keeps crashing ends the process, non-zero, so
that systemd or Kubernetes restarts it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import Counter, Gauge
from redis.exceptions import (
    AskError,
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    MovedError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from receiver.backoff import backoff
from receiver.errors import ReceiverError

log = logging.getLogger(__name__)

OUTAGES = Counter(
    "receiver_redis_outages_total",
    "Times this process lost Redis, by reason (connection, timeout, loading, oom, readonly).",
    ["reason"],
)
REDIS_UP = Gauge(
    "receiver_redis_up",
    "1 while this process's last Redis call succeeded, 0 during an outage.",
    multiprocess_mode="min",
)
LOOP_RESTARTS = Counter(
    "receiver_loop_restarts_total",
    "Background loops restarted after an error, by loop and reason (redis or crash).",
    ["loop", "reason"],
)

# Seconds of backoff between a loop's restarts: the first, and the cap.
RESTART_BASE = 0.1
RESTART_CAP = 5.0
# A loop that crashes (not an outage) this many times within CRASH_WINDOW seconds is a bug
# that restarting will not mend: the process exits so that its supervisor sees it.
CRASH_LIMIT = 5
CRASH_WINDOW = 60.0


class Fatal(ReceiverError):
    """A fault no retry mends; the process logs it and exits non-zero."""


def raise_if_cancelling() -> None:
    """Raise CancelledError if the current task is being cancelled.

    A cancellation that lands while redis-py (or `asyncio.timeout`) is timing a read can
    come out as a timeout or a connection error: the CancelledError is gone, and a loop
    that retries would never end. Every handler that retries calls this first.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def outage_reason(exc: BaseException) -> str | None:
    """Why Redis is unavailable, when `exc` says it is for now; None for anything else."""
    if isinstance(exc, AuthenticationError | AuthenticationWrongNumberOfArgsError):
        return None
    if isinstance(exc, BusyLoadingError):
        return "loading"
    if isinstance(exc, RedisTimeoutError):
        return "timeout"
    if isinstance(exc, RedisConnectionError):
        return "connection"
    if isinstance(exc, ReadOnlyError):
        return "readonly"
    if isinstance(exc, TryAgainError):
        return "tryagain"
    if isinstance(exc, MovedError | AskError):  # a Redis Cluster's slot moved (a failover)
        return "moved"
    if isinstance(exc, ClusterDownError | MasterDownError):
        return "clusterdown"
    if isinstance(exc, ResponseError) and str(exc).startswith("OOM"):
        return "oom"
    return None


class Outages:
    """Whether Redis is reachable from this process, as its last calls found it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.reason: str | None = None  # why Redis is unavailable; None while it answers
        self.since = 0.0  # when the current outage began (clock time)
        self._ended = asyncio.Event()  # set when an outage ends, for `wait_for_end`
        # Told of every failed call that is an outage (a cluster's router reads its slot
        # map again).
        self.listeners: list[Callable[[BaseException], None]] = []
        REDIS_UP.set(1)

    @property
    def down(self) -> bool:
        return self.reason is not None

    def failed(self, exc: BaseException) -> bool:
        """Note a failed Redis call; True when it is an outage (and not a bug or a refusal)."""
        reason = outage_reason(exc)
        if reason is None:
            return False
        for listener in self.listeners:
            listener(exc)
        if self.reason is None:
            self.reason, self.since = reason, self.clock()
            OUTAGES.labels(reason).inc()
            REDIS_UP.set(0)
            log.warning("redis unavailable", extra={"reason": reason, "error": _brief(exc)})
        return True

    def recovered(self) -> None:
        """Note a Redis call that succeeded."""
        if self.reason is not None:
            seconds = round(self.clock() - self.since, 1)
            self.reason = None
            REDIS_UP.set(1)
            log.info("redis is back", extra={"outage_seconds": seconds})
            self._ended.set()

    async def wait_for_end(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for an outage to end; True if one did since the
        last call that returned True (one caller: the worker's reclaim loop)."""
        try:
            await asyncio.wait_for(self._ended.wait(), timeout)
        except TimeoutError:
            return False
        self._ended.clear()
        return True


def _brief(exc: BaseException) -> str:
    """The error's class and first line, never more (a Redis error can quote a command)."""
    first = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


Loop = Callable[[], Awaitable[None]]
# What a loop's owner does about an error before the loop starts again (e.g. recreate a
# consumer group Redis lost); True when it was handled and the loop may restart at once.
Repair = Callable[[BaseException], Awaitable[bool]]


async def supervise(
    name: str,
    loop: Loop,
    outages: Outages,
    *,
    repair: Repair | None = None,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Run `loop` until cancelled, starting it again after any error but a fatal one."""
    attempt = 0
    crashes: list[float] = []
    while True:
        started = clock()
        try:
            await loop()
            return  # a loop that returns has finished its work
        except asyncio.CancelledError:
            raise
        except Fatal:
            raise
        except AuthenticationError as exc:
            raise Fatal(f"redis refused our credentials: {_brief(exc)}") from None
        except Exception as exc:
            raise_if_cancelling()
            if repair is not None and await _repaired(repair, exc):
                attempt = 0
                continue
            # A loop that ran a while before failing starts its backoff afresh.
            attempt = 1 if clock() - started > 2 * RESTART_CAP else attempt + 1
            if outages.failed(exc):
                LOOP_RESTARTS.labels(name, "redis").inc()
            else:
                LOOP_RESTARTS.labels(name, "crash").inc()
                log.exception("worker loop crashed; restarting", extra={"loop": name})
                now = clock()
                crashes = [at for at in crashes if now - at < CRASH_WINDOW] + [now]
                if len(crashes) >= CRASH_LIMIT:
                    raise Fatal(
                        f"the {name} loop crashed {len(crashes)} times in {CRASH_WINDOW:g} s"
                    ) from exc
            await sleep(backoff(attempt - 1, RESTART_BASE, RESTART_CAP))


async def _repaired(repair: Repair, exc: BaseException) -> bool:
    try:
        return await repair(exc)
    except RedisError:
        return False
