"""An SSE endpoint's messages, resumed with `Last-Event-ID` after every drop."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import httpx

from receiver.backoff import backoff as backoff_delay
from receiver.client.api import ClientError, UnknownJob, api_error
from receiver.client.sse import ServerSentEvent, iter_sse

# Seconds of the longest wait between two reconnections.
_BACKOFF_CAP = 4.0
# Seconds without any connection before `receiver watch` gives up, by default.
GIVE_UP_AFTER = 300.0


class WatchError(ClientError):
    """Watching cannot go on: the receiver refused the stream, or was away for too long."""

    exit_code = 5


class _Unavailable(Exception):
    """The receiver answered 429 or 5xx, or not with an event stream: worth another try."""


_TRANSIENT = (httpx.TransportError, _Unavailable)


@dataclass
class EventSource:
    """The messages of an SSE endpoint, resumed with `Last-Event-ID` after every drop.

    A drop (network error, 429 or 5xx, or the response ending) is followed by a
    reconnection after an exponential backoff with jitter, capped at a few seconds. Every
    stream opened starts the count afresh, however quiet it then stays: WatchError comes
    only after `give_up_after` seconds without a connection (counted from the moment one
    was last up, or from the start), or after `retries` failed reconnections in a row when
    that is set. Refusals (401, 404) raise at once. Iterating never ends by itself: the
    reader stops once it has what it wanted.
    """

    client: httpx.Client
    url: str
    headers: Mapping[str, str]
    give_up_after: float = GIVE_UP_AFTER
    retries: int | None = None  # an extra bound on reconnections in a row; None: no bound
    backoff: float = 0.5  # seconds: the longest first wait (jittered down to half); doubles
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    notify: Callable[[str], None] = lambda message: None
    last_id: str | None = None
    _response: httpx.Response | None = field(default=None, init=False, repr=False)
    _failures: int = field(default=0, init=False, repr=False)  # since a stream last opened
    # clock() when a stream was last up (when it dropped), or when watching began.
    _last_up: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        self._last_up = self.clock()

    def connect(self) -> None:
        """Open the stream unless it is open, so nothing that happens from now on is missed."""
        while self._response is None:
            try:
                self._response = self._open()
            except _TRANSIENT as exc:
                self._pause(_describe(exc))

    def close(self) -> None:
        if self._response is not None:
            self._response.close()
            self._response = None

    def __iter__(self) -> Iterator[ServerSentEvent]:
        while True:
            try:
                self.connect()
                yield from self._drain()
                problem = "the stream ended early"
            except _TRANSIENT as exc:
                problem = _describe(exc)
            self._pause(problem)

    def _drain(self) -> Iterator[ServerSentEvent]:
        response, self._response = self._response, None
        assert response is not None
        try:
            for message in iter_sse(response):
                if message.id:
                    self.last_id = message.id
                yield message
        finally:
            self._last_up = self.clock()  # it was up until now
            response.close()

    def _open(self) -> httpx.Response:
        headers = {**self.headers, "Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if self.last_id:
            headers["Last-Event-ID"] = self.last_id
        request = self.client.build_request("GET", self.url, headers=headers)
        response = self.client.send(request, stream=True)
        if _is_event_stream(response):
            self._failures = 0
            return response
        response.read()
        response.close()
        raise _refusal(response)

    def _pause(self, problem: str) -> None:
        """Wait before the next reconnection, or raise WatchError when it is time to give up."""
        self._failures += 1
        down = self.clock() - self._last_up
        self._give_up_when_due(problem, down)
        delay = backoff_delay(self._failures - 1, self.backoff, _BACKOFF_CAP)
        # The last try comes when the time is up, so giving up does not wait a backoff more.
        delay = min(delay, self.give_up_after - down)
        tries = "" if self.retries is None else f"/{self.retries}"
        self.notify(
            f"{problem}; reconnecting in {delay:.1f} s (try {self._failures}{tries}, "
            f"no connection for {_seconds(down)} of {_seconds(self.give_up_after)})"
        )
        self.sleep(delay)

    def _give_up_when_due(self, problem: str, down: float) -> None:
        if down >= self.give_up_after:
            limit = _seconds(self.give_up_after)
            raise WatchError(f"{self.url}: {problem}; gave up after {limit} without a connection")
        if self.retries is not None and self._failures > self.retries:
            tries = f"{self.retries} reconnection{'' if self.retries == 1 else 's'}"
            raise WatchError(f"{self.url}: {problem}; gave up after {tries} in a row")


def _is_event_stream(response: httpx.Response) -> bool:
    return response.status_code == 200 and _media_type(response) == "text/event-stream"


def _media_type(response: httpx.Response) -> str:
    kind: str = response.headers.get("content-type", "")
    return kind.partition(";")[0].strip().lower()


def _seconds(value: float) -> str:
    """`300 s`, `2.5 s`: a duration as the messages show it."""
    return f"{round(value, 1):g} s"


def _refusal(response: httpx.Response) -> Exception:
    """The error of an answer to a stream request that is not an event stream."""
    if response.status_code < 300:  # a proxy's page, say: as good as no connection
        return _Unavailable(
            f"{response.status_code}: not an event stream but {_media_type(response)!r}"
        )
    code, message = api_error(response)
    text = f"{response.status_code}: {message}"
    if response.status_code == 429 or response.status_code >= 500:
        return _Unavailable(text)
    return UnknownJob(text) if code == "unknown_job" else WatchError(text)


def _describe(exc: Exception) -> str:
    return str(exc) or type(exc).__name__
