"""Real servers' request/response records (tests/data/captures), replayed on httpx.MockTransport.

A record is `{captured_at, request: {method, url, headers, body}, response: {status, headers,
json | text}}`; response headers are `[[name, value], ...]` (Firecrawl) or a mapping (Dify).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx

from tests.data import DATA

CAPTURES = DATA / "captures"

Record = dict[str, Any]

# Headers describing the original bytes on the wire, which a replay does not reproduce.
_WIRE_HEADERS = frozenset({"content-length", "content-encoding", "transfer-encoding", "connection"})


def path_of(provider: str, number: str) -> Path:
    """The capture file `<number>_*.json` of a provider, e.g. ("firecrawl", "003")."""
    matches = sorted((CAPTURES / provider).glob(f"{number}_*.json"))
    assert len(matches) == 1, f"want one {provider} capture {number}, found {matches}"
    return matches[0]


def load(provider: str, number: str) -> Record:
    return load_path(path_of(provider, number))


def load_path(path: Path) -> Record:
    record: Record = json.loads(path.read_text())
    return record


def response_of(record: Record) -> httpx.Response:
    """The captured answer: status, headers and the JSON or text body."""
    answer = record["response"]
    headers = answer["headers"]
    pairs = headers.items() if isinstance(headers, dict) else headers
    kept = [(name, value) for name, value in pairs if name.lower() not in _WIRE_HEADERS]
    if answer.get("json") is not None:
        content = json.dumps(answer["json"]).encode()
    else:
        content = (answer.get("text") or "").encode()
    return httpx.Response(answer["status"], headers=kept, content=content)


def origin_of(record: Record) -> str:
    url = httpx.URL(record["request"]["url"])
    return f"{url.scheme}://{url.netloc.decode()}"


def target_of(record: Record) -> str:
    """Path and query of the captured request."""
    return httpx.URL(record["request"]["url"]).raw_path.decode()


def body_of(record: Record) -> Any:
    return record["request"].get("body")


class Replay:
    """A MockTransport handler: answers each request with the next captured response.

    With `check`, each request must have the captured method, path and query, and the
    captured JSON body when there was one; every request is kept in `seen`.
    """

    def __init__(self, records: Iterable[Record], *, check: bool = True) -> None:
        self.records = list(records)
        self.check = check
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert len(self.seen) < len(self.records), f"unexpected {request.method} {request.url}"
        record = self.records[len(self.seen)]
        self.seen.append(request)
        if self.check:
            assert_matches(request, record)
        return response_of(record)

    @property
    def exhausted(self) -> bool:
        return len(self.seen) == len(self.records)


def assert_matches(request: httpx.Request, record: Record) -> None:
    assert request.method == record["request"]["method"]
    assert request.url.raw_path.decode() == target_of(record)
    captured = body_of(record)
    if isinstance(captured, dict):
        assert json.loads(request.content) == captured
