from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import pytest
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    ReadOnlyError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from receiver.outages import (
    CRASH_LIMIT,
    LOOP_RESTARTS,
    OUTAGES,
    Fatal,
    Outages,
    outage_reason,
    supervise,
)


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def failing(*errors: BaseException) -> tuple[list[int], Callable[[], Awaitable[None]]]:
    """A loop that raises each error in turn, then returns; and its count of starts."""
    starts = [0]

    async def loop() -> None:
        starts[0] += 1
        if starts[0] <= len(errors):
            raise errors[starts[0] - 1]

    return starts, loop


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (RedisConnectionError("Connection closed by server."), "connection"),
        (RedisTimeoutError("Timeout reading from socket"), "timeout"),
        (BusyLoadingError("Redis is loading the dataset in memory"), "loading"),
        (ReadOnlyError("You can't write against a read only replica."), "readonly"),
        (ResponseError("OOM command not allowed when used memory > 'maxmemory'."), "oom"),
        (ResponseError("WRONGTYPE Operation against a key"), None),
        (AuthenticationError("invalid password"), None),
        (ValueError("a bug"), None),
    ],
)
def test_outage_reason_names_passing_faults_only(error: BaseException, reason: str | None) -> None:
    assert outage_reason(error) == reason


def test_outages_log_once_per_outage_and_once_when_back(caplog: pytest.LogCaptureFixture) -> None:
    time = FakeTime()
    outages = Outages(clock=time.clock)
    before = OUTAGES.labels("connection")._value.get()
    caplog.set_level(logging.INFO, logger="receiver.outages")
    for _ in range(50):
        assert outages.failed(RedisConnectionError("Connection refused"))
    time.now += 12.5
    outages.recovered()
    outages.recovered()
    messages = [record.getMessage() for record in caplog.records]
    assert messages == ["redis unavailable", "redis is back"]
    assert caplog.records[1].outage_seconds == 12.5  # type: ignore[attr-defined]
    assert OUTAGES.labels("connection")._value.get() == before + 1
    assert not outages.down


def test_outages_leave_bugs_to_the_caller(caplog: pytest.LogCaptureFixture) -> None:
    outages = Outages()
    assert not outages.failed(ResponseError("WRONGTYPE Operation against a key"))
    assert not outages.down
    assert not caplog.records


@pytest.mark.anyio
async def test_supervise_restarts_a_loop_after_an_outage_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    time = FakeTime()
    errors = [RedisConnectionError("Connection refused")] * 4
    starts, loop = failing(*errors)
    before = LOOP_RESTARTS.labels("consume", "redis")._value.get()
    await supervise("consume", loop, Outages(), sleep=time.sleep, clock=time.clock)
    assert starts[0] == 5
    assert len(time.slept) == 4 and all(0 < wait <= 5 for wait in time.slept)
    assert LOOP_RESTARTS.labels("consume", "redis")._value.get() == before + 4
    assert not [r for r in caplog.records if r.exc_info]


@pytest.mark.anyio
async def test_supervise_logs_a_crash_and_restarts_the_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    time = FakeTime()
    starts, loop = failing(KeyError("a bug"))
    await supervise("due", loop, Outages(), sleep=time.sleep, clock=time.clock)
    assert starts[0] == 2
    crashed = [r for r in caplog.records if r.getMessage() == "worker loop crashed; restarting"]
    assert len(crashed) == 1 and crashed[0].exc_info


@pytest.mark.anyio
async def test_supervise_gives_up_on_a_loop_that_keeps_crashing() -> None:
    time = FakeTime()
    starts, loop = failing(*[KeyError("a bug")] * (CRASH_LIMIT + 5))
    with pytest.raises(Fatal, match="crashed 5 times"):
        await supervise("due", loop, Outages(), sleep=time.sleep, clock=time.clock)
    assert starts[0] == CRASH_LIMIT


@pytest.mark.anyio
async def test_supervise_ends_on_a_refused_password() -> None:
    time = FakeTime()
    starts, loop = failing(AuthenticationError("invalid username-password pair"))
    with pytest.raises(Fatal, match="credentials"):
        await supervise("heartbeat", loop, Outages(), sleep=time.sleep, clock=time.clock)
    assert starts[0] == 1


@pytest.mark.anyio
async def test_supervise_restarts_at_once_what_repair_mended() -> None:
    time = FakeTime()
    starts, loop = failing(ResponseError("NOGROUP No such key or consumer group"))
    repaired: list[BaseException] = []

    async def repair(exc: BaseException) -> bool:
        repaired.append(exc)
        return True

    await supervise(
        "consume",
        loop,
        Outages(),
        repair=repair,
        sleep=time.sleep,
        clock=time.clock,
    )
    assert starts[0] == 2 and len(repaired) == 1 and time.slept == []


@pytest.mark.anyio
async def test_supervise_ends_when_cancelled_even_if_the_cancel_came_out_as_a_redis_error() -> None:
    """A cancellation that lands in a timed read can come out as a timeout: the loop is
    not restarted for it, or the task would never end."""
    started = asyncio.Event()
    converted: list[bool] = []

    async def loop() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if converted:  # only the first cancel is lost, so a failing test still ends
                raise
            converted.append(True)
            raise RedisTimeoutError("Timeout reading from socket") from None

    task = asyncio.create_task(supervise("consume", loop, Outages()))
    await started.wait()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    if not done:
        task.cancel()
    assert done and task.cancelled() and converted == [True]


@pytest.mark.anyio
async def test_wait_for_end_wakes_once_per_ended_outage() -> None:
    outages = Outages()
    assert not await outages.wait_for_end(0.01)
    outages.failed(RedisConnectionError("Connection refused"))
    outages.recovered()  # ended before anyone waited: still seen
    assert await outages.wait_for_end(0.01)
    assert not await outages.wait_for_end(0.01)  # seen once
