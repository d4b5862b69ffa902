"""Jobs shown to people: rich tables on a terminal, plain aligned text when piped.

Every value of a job is shown as text (`receiver.client.text.plain`): never as markup, its
control characters escaped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from rich import box
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from receiver.client.text import plain, printable
from receiver.display import Display, display

STATUS_STYLES = {
    "submitted": "dim",
    "running": "cyan",
    "completed": "green",
    "failed": "red",
    "cancelled": "yellow",
    "expired": "magenta",
}
# Columns of piped output: wide enough that a job id and a timestamp never wrap.
_PIPED_WIDTH = 200
# Job fields `show` puts first, in this order; the others follow as they come.
_HEAD = ("id", "provider", "status", "progress", "error", "created_at", "updated_at")
_ITEMS = ("tasks", "documents")


def make_console() -> Console:
    """A console that parses no markup and makes no emoji of a string printed to it."""
    console = Console(markup=False, emoji=False, highlight=False)
    if console.is_terminal:
        return console
    return Console(width=_PIPED_WIDTH, markup=False, emoji=False, highlight=False)


def print_jobs(console: Console, jobs: Sequence[Mapping[str, Any]]) -> None:
    table = _table(console, "id", "provider", "status", "progress", "created (UTC)", "error")
    for job in jobs:
        table.add_row(
            plain(job.get("id", "")),
            plain(job.get("provider", "")),
            _status(job.get("status")),
            plain(format_progress(job.get("progress"))),
            plain(format_time(job.get("created_at"))),
            plain(job.get("error") or ""),
        )
    emit(console, table)


def print_job(console: Console, job: Mapping[str, Any], most: int | None = 50) -> None:
    """One job: its fields, then its items (tasks, pages, documents: the provider's unit),
    the failed ones first. The progress line ends with the provider's own words on it."""
    shown = display(str(job.get("provider", "")))
    # A list under an item name is printed as a table below; anything else (a Firecrawl
    # job's count of documents) is a field like the others.
    keys = [
        k
        for k in (*_HEAD, *shown.fields, *job)
        if k in job and not (k in _ITEMS and isinstance(job[k], list))
    ]
    width = max((len(printable(key)) for key in keys), default=0)
    for key in dict.fromkeys(keys):
        value = _progress_line(job, shown) if key == "progress" else _field(key, job[key])
        emit(console, Text.assemble(plain(printable(key).ljust(width), "bold"), "  ", value))
    for key in _ITEMS:
        items = job.get(key)
        if isinstance(items, list) and items:
            _print_items(console, shown.unit, items, most)


def _progress_line(job: Mapping[str, Any], shown: Display) -> Text:
    """`120/400 documents (2 failed) · segments 1200/4000 · indexing 1`."""
    parts = (format_progress(job["progress"], shown.unit), shown.describe(job))
    return plain(" · ".join(part for part in parts if part))


def _print_items(console: Console, name: str, items: list[Any], most: int | None) -> None:
    rows = [item for item in items if isinstance(item, Mapping)]
    counts: dict[str, int] = {}
    for item in rows:
        counts[str(item.get("status"))] = counts.get(str(item.get("status")), 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    emit(console, Text.assemble("\n", plain(name, "bold"), plain(f" ({len(rows)}): {summary}")))
    rows.sort(key=lambda item: not item.get("error"))  # stable: errors first, else as given
    table = _table(console, "id", "status", "input", "error")
    for item in rows[:most]:
        table.add_row(
            plain(item.get("id", "")),
            _status(item.get("status")),
            plain(item.get("input") or ""),
            plain(item.get("error") or ""),
        )
    emit(console, table)
    if most is not None and len(rows) > most:
        more = f"... and {len(rows) - most} more {name} (--all lists them, --json too)"
        emit(console, plain(more))


def emit(console: Console, renderable: RenderableType) -> None:
    """Print; piped, without the spaces rich pads lines with."""
    if console.is_terminal:
        console.print(renderable)
        return
    with console.capture() as capture:
        console.print(renderable)
    console.file.write("".join(line.rstrip() + "\n" for line in capture.get().splitlines()))


def _table(console: Console, *columns: str) -> Table:
    plain = not console.is_terminal
    table = Table(
        box=None if plain else box.SIMPLE_HEAD,
        pad_edge=False,
        show_edge=False,
        header_style="" if plain else "bold",
    )
    for column in columns:
        wraps = column in ("error", "input")
        table.add_column(column, no_wrap=not wraps, overflow="fold" if wraps else "ellipsis")
    return table


def _status(status: object) -> Text:
    return plain(status or "", STATUS_STYLES.get(str(status), ""))


def _field(key: str, value: Any) -> Text:
    if key == "status":
        return _status(value)
    if key == "progress":
        return plain(format_progress(value))
    if isinstance(value, dict | list):
        return plain(orjson.dumps(value).decode())
    return plain(value)


def format_progress(progress: object, unit: str = "") -> str:
    """`7/10` (`7/10 pages` with a unit) and `(1 failed)` when some failed: done and failed
    count toward the total."""
    if not isinstance(progress, Mapping):
        return ""
    completed, failed = progress.get("completed", 0), progress.get("failed", 0)
    shown = f"{completed}/{progress.get('total', 0)}" + (f" {unit}" if unit else "")
    return f"{shown} ({failed} failed)" if failed else shown


def format_time(value: object) -> str:
    """An ISO 8601 time as `2026-11-22 21:40:56` in UTC; anything else as it is."""
    if not isinstance(value, str):
        return "" if value is None else str(value)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")
