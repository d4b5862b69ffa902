"""Text from a receiver or a provider made safe to show on a terminal.

Job data (URLs, queries, provider errors and statuses, even job ids) is shown as it is,
never as rich markup (`[/oops]` would crash, `[link=...]` would disguise a link), and with
every character a terminal could act on or hide spelled out as an escape: C0 and C1
controls (ESC starts colours, cursor moves, hyperlinks), DEL, CR, bidi overrides and other
invisible format characters, separators other than the space.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from rich.text import Text

# Short escapes, as Python writes them; any other character is `\xNN`, `\uNNNN`, `\UNNNNNNNN`.
_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def printable(value: object) -> str:
    """`value` as a string with every character a terminal could act on or hide escaped:
    ESC as `\\x1b`, CR as `\\r`, U+202E as `\\u202e`."""
    text = value if isinstance(value, str) else str(value)
    return _escaped(text, _escape)


def plain(value: object, style: str = "") -> Text:
    """`value` as rich Text, never parsed as markup, its controls escaped (`printable`)."""
    return Text(printable(value), style=style)


def json_text(data: Any, *, indent: bool = False) -> str:
    """JSON of `data` that is safe on a terminal and the same JSON: orjson escapes the C0
    controls, this the rest (C1, DEL, bidi and the like) as `\\uNNNN`."""
    option = orjson.OPT_INDENT_2 if indent else 0
    # Outside strings JSON has nothing but ASCII punctuation, digits, letters, spaces and
    # (indented) newlines: every other unprintable character is inside a string.
    return _escaped(orjson.dumps(data, option=option).decode(), _json_escape)


def _escaped(text: str, escape: Callable[[str], str]) -> str:
    """`text` with each character str.isprintable refuses (categories Cc, Cf, Cs, Co, Cn,
    Zl, Zp, and Zs but the ASCII space) replaced by its escape."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else escape(char) for char in text)


def _escape(char: str) -> str:
    code = ord(char)
    if char in _SHORT:
        return _SHORT[char]
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _json_escape(char: str) -> str:
    if char == "\n":  # orjson escapes it in strings: this one is the indentation's
        return char
    code = ord(char)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000  # a UTF-16 surrogate pair, as JSON spells a character above U+FFFF
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
