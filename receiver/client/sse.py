"""Server-Sent Events read from a streaming HTTP response, as the WHATWG HTML standard parses them.

    with client.stream("GET", url, headers={"Accept": "text/event-stream"}) as response:
        for message in iter_sse(response):
            print(message.id, message.event, message.data)

httpx's own `iter_lines()` is not used: it splits like `str.splitlines()`, so a JSON string
holding U+2028 (which JSON does not escape) would be cut in two. SSE lines end at CRLF, LF or CR.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import httpx

_LINE_END = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True)
class ServerSentEvent:
    id: str | None  # the last event id when this message was dispatched; None before any
    event: str  # the `event:` field, "message" when the message had none
    data: str  # the `data:` lines joined with "\n"


def iter_sse(response: httpx.Response) -> Iterator[ServerSentEvent]:
    """The messages of a streaming response, as they arrive; comments (heartbeats) skipped."""
    return parse_events(split_lines(response.iter_bytes()))


def split_lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """Complete lines (UTF-8, without their ending) of a byte stream cut anywhere."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        # A CR at the end may be the first half of a CRLF: wait for the next chunk.
        held = b"\r" if pending.endswith(b"\r") else b""
        *lines, rest = _LINE_END.split(pending[: len(pending) - len(held)])
        pending = rest + held
        for line in lines:
            yield line.decode("utf-8", "replace")
    if pending.endswith(b"\r"):
        yield pending[:-1].decode("utf-8", "replace")


def parse_events(lines: Iterable[str]) -> Iterator[ServerSentEvent]:
    """The messages of an event stream's lines; an unfinished last message is dropped."""
    parser = _Parser()
    for index, line in enumerate(lines):
        message = parser.feed(line.removeprefix("\ufeff") if index == 0 else line)
        if message is not None:
            yield message


@dataclass
class _Parser:
    last_id: str | None = None  # kept from one message to the next, as the standard says
    event: str = ""
    data: list[str] = field(default_factory=list)

    def feed(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if not line.startswith(":"):
            name, colon, value = line.partition(":")
            self._field(name, value[1:] if colon and value.startswith(" ") else value)
        return None

    def _field(self, name: str, value: str) -> None:
        if name == "data":
            self.data.append(value)
        elif name == "event":
            self.event = value
        elif name == "id" and "\0" not in value:
            self.last_id = value
        # `retry` and unknown fields are ignored.

    def _dispatch(self) -> ServerSentEvent | None:
        message = None
        if self.data:
            message = ServerSentEvent(self.last_id, self.event or "message", "\n".join(self.data))
        self.event, self.data = "", []
        return message
