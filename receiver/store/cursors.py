"""Cursors over the partitions' streams: an entry id per partition.

With one partition a cursor is the entry id itself, as a stream gives it; with more, the
ids of every partition joined by commas, in the partitions' order. `TOP` is a position
not yet moved from the newest end (the jobs index, read newest first).
"""

from __future__ import annotations

import re

# An entry id of a Redis stream: two numbers below 2**64.
STREAM_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
# The lowest id a stream entry can have, in any spelling.
_STREAM_START = re.compile(r"0+-0+")
TOP = "+"


def order(entry_id: str) -> tuple[int, int]:
    """An entry id as the numbers Redis orders it by."""
    millis, _, sequence = entry_id.partition("-")
    return int(millis), int(sequence or 0)


def valid_id(text: str) -> bool:
    """An entry id Redis takes (each part a 64-bit unsigned number)."""
    return bool(STREAM_ID.fullmatch(text)) and all(int(p) < 2**64 for p in text.split("-"))


def at_start(entry_id: str) -> bool:
    return bool(_STREAM_START.fullmatch(entry_id))


def parse(raw: str | None, partitions: int, *, top: bool = False) -> list[str]:
    """The position in each partition a cursor holds; with `top`, None is the newest end
    of every partition and a position may be TOP. ValueError for anything else."""
    if raw is None:
        if not top:
            raise ValueError("no cursor")
        return [TOP] * partitions
    parts = raw.split(",")
    if len(parts) != partitions or not all(valid_id(p) or (top and p == TOP) for p in parts):
        raise ValueError(f"not a cursor of {partitions} partition(s): {raw[:100]!r}")
    return parts


def render(positions: list[str]) -> str:
    return ",".join(positions)
