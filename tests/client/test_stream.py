"""EventSource: reconnections after drops, their backoff, and when it gives up."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from receiver.client.api import ClientError
from receiver.client.sse import ServerSentEvent
from receiver.client.stream import EventSource, WatchError
from tests.client.frames import PING, SCRIPTED_STATE, scripted_event


@dataclass
class FakeTime:
    """A clock that only sleeping moves, for an EventSource whose backoffs take no time,
    and the notes the source wrote for the user meanwhile."""

    now: float = 0.0
    slept: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0 and len(self.slept) < 10_000, "reconnecting forever"
        self.slept.append(seconds)
        self.now += seconds


Answer = Callable[[httpx.Request], httpx.Response]
SOURCE_URL = "http://receiver.test/jobs/j1/events"


def event_source(time: FakeTime, *answers: Answer, **options: Any) -> EventSource:
    """An EventSource on fake time whose connections get `answers` in turn (the last one
    from then on)."""
    calls: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return answers[min(len(calls), len(answers)) - 1](request)

    client = httpx.Client(transport=httpx.MockTransport(answer))
    return EventSource(
        client,
        SOURCE_URL,
        {},
        clock=time.clock,
        sleep=time.sleep,
        notify=time.notes.append,
        **options,
    )


def refused(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def stream_of(*frames: bytes, time: FakeTime | None = None, up_for: float = 0.0) -> Answer:
    """An event stream of `frames` that then ends; with `time`, it stays up `up_for` seconds
    of it first (a quiet stream of heartbeats)."""

    def body() -> Iterator[bytes]:
        if time is not None:
            for _ in range(10):
                time.now += up_for / 10
                yield PING
        yield from frames

    headers = {"content-type": "text/event-stream; charset=utf-8"}
    return lambda request: httpx.Response(200, headers=headers, content=body())


def drain(source: EventSource, count: int) -> list[ServerSentEvent]:
    """The first `count` messages of the source."""
    messages = iter(source)
    return [next(messages) for _ in range(count)]


def test_event_source_gives_up_after_give_up_after_seconds_without_a_connection() -> None:
    time = FakeTime()
    source = event_source(time, refused, give_up_after=60)
    with pytest.raises(WatchError) as raised:
        next(iter(source))
    assert raised.value.exit_code == 5
    assert str(raised.value) == (
        f"{SOURCE_URL}: connection refused; gave up after 60 s without a connection"
    )
    # The last try is when the time is up, not a backoff later.
    assert time.now == pytest.approx(60)
    assert len(time.notes) == len(time.slept) > 10
    assert time.notes[0].startswith("connection refused; reconnecting in ")
    assert time.notes[0].endswith(" s (try 1, no connection for 0 s of 60 s)")


def test_event_source_backs_off_exponentially_with_jitter_up_to_a_cap() -> None:
    time = FakeTime()
    with pytest.raises(WatchError):
        next(iter(event_source(time, refused, give_up_after=120)))
    waits = time.slept[:-1]  # the last one is cut short by the deadline
    for attempt, wait in enumerate(waits):
        ceiling = min(4.0, 0.5 * 2**attempt)
        assert ceiling / 2 <= wait <= ceiling, (attempt, waits)
    assert len(set(waits)) == len(waits)  # jittered: no two clients in step
    assert max(waits) > 2.0


def test_event_source_counts_afresh_from_each_connection() -> None:
    """Ten drops, each after two refused reconnections: more than --retries 3 and longer
    than --give-up-after 10 in all, but never in a row without a connection."""
    time = FakeTime()
    cycle = [stream_of(), refused, refused]
    final = stream_of(scripted_event("4-0", "job.completed", "completed", 4))
    source = event_source(time, *cycle * 10, final, retries=3, give_up_after=10)
    [message] = drain(source, 1)
    assert message.event == "job.completed"
    assert time.now > 10
    assert len(time.slept) == 30
    # Each connection started the backoff afresh: the first wait after a drop is the shortest.
    assert all(wait <= 0.5 for wait in time.slept[::3]), time.slept
    assert all(note.endswith("/3, no connection for 0 s of 10 s)") for note in time.notes[::3])


def test_event_source_counts_the_time_without_a_connection_from_when_it_was_last_up() -> None:
    time = FakeTime()
    up = stream_of(SCRIPTED_STATE, time=time, up_for=1000)
    source = event_source(time, up, refused, give_up_after=60)
    messages = iter(source)
    assert next(messages).event == "job.state"
    with pytest.raises(WatchError, match="gave up after 60 s without a connection"):
        next(messages)
    assert time.now == pytest.approx(1060)
    assert source.last_id == "1-0"
    assert time.notes[0].startswith("the stream ended early; reconnecting in ")


def test_event_source_takes_an_answer_that_is_no_event_stream_for_no_connection() -> None:
    time = FakeTime()
    page = httpx.Response(200, headers={"content-type": "text/html"}, content=b"<p>proxy</p>")
    with pytest.raises(WatchError) as raised:
        next(iter(event_source(time, lambda request: page, give_up_after=5)))
    assert str(raised.value).endswith(
        "200: not an event stream but 'text/html'; gave up after 5 s without a connection"
    )
    assert time.now == pytest.approx(5)


@pytest.mark.parametrize(
    ("status", "body", "code"),
    [
        (401, {"error": "unauthorized", "message": "bad token"}, 5),
        (404, {"error": "unknown_job", "message": "no job j1"}, 4),
    ],
)
def test_event_source_refusals_end_at_once(status: int, body: dict[str, str], code: int) -> None:
    time = FakeTime()
    answer = httpx.Response(status, json=body)
    with pytest.raises(ClientError) as raised:
        next(iter(event_source(time, lambda request: answer)))
    assert raised.value.exit_code == code
    assert str(raised.value) == f"{status}: {body['message']}"
    assert time.slept == []
