"""What `receiver show` and `receiver watch` display of a job, per provider.

Plain functions of a job's fields (as `GET /jobs/{id}` shows them, with the `detail` of
each `job.progress` event merged in: the detail keys are job field names), so the client
side needs no provider code. Each provider's registry entry names its `Display`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Fields = Mapping[str, Any]


@dataclass(frozen=True)
class Display:
    unit: str  # what the progress counts: tasks, pages, documents
    describe: Callable[[Fields], str] = lambda fields: ""  # the provider's own progress words
    fields: tuple[str, ...] = field(default=())  # job fields `show` lists after the head


def retrying(fields: Fields) -> str:
    """`retrying: decodo unreachable: ConnectError (3 in a row)` while work is in retry."""
    failures = _whole(fields.get("consecutive_failures"))
    error = fields.get("last_error")
    if not failures or not isinstance(error, str) or not error:
        return ""
    return f"retrying: {error} ({failures} in a row)"


def joined(*parts: str) -> str:
    return " · ".join(part for part in parts if part)


def decodo(fields: Fields) -> str:
    return retrying(fields)


def firecrawl(fields: Fields) -> str:
    documents = _whole(fields.get("documents"))
    missing = _whole(fields.get("documents_missing"))
    stored = "" if documents is None else f"documents {documents}"
    if missing:
        stored += f" ({missing} missing)"
    status = fields.get("provider_status")
    return joined(
        f"firecrawl {status}" if isinstance(status, str) and status else "",
        stored,
        retrying(fields),
    )


def dify(fields: Fields) -> str:
    done, total = _whole(fields.get("segments_completed")), _whole(fields.get("segments_total"))
    segments = "" if total is None else f"segments {done or 0}/{total}"
    stages = fields.get("stages")
    shown = ""
    if isinstance(stages, Mapping) and stages:
        shown = ", ".join(f"{name} {count}" for name, count in sorted(stages.items()))
    return joined(segments, shown, retrying(fields))


def display(provider: str) -> Display:
    """The provider's display; a generic one for a provider this version does not know."""
    from receiver.registry import PROVIDERS

    entry = PROVIDERS.get(provider)
    return entry.display if entry is not None else Display("items", retrying)


def _whole(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
