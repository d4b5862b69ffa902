"""Text made safe for a terminal: controls spelled out, markup left as it is."""

from __future__ import annotations

import orjson
import pytest

from receiver.client.text import json_text, plain, printable


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("https://example.com/a?b=c", "https://example.com/a?b=c"),
        ("[/oops] [link=https://evil.example]x[/link]", "[/oops] [link=https://evil.example]x[/link]"),
        ("\x1b[2J\x1b]8;;u\x07", r"\x1b[2J\x1b]8;;u\x07"),
        ("a\rb\nc\td", r"a\rb\nc\td"),
        ("\x00\x08\x7f\x9b\x85\xa0\xad", r"\x00\x08\x7f\x9b\x85\xa0\xad"),
        ("\u202etxt.exe\u2066\u200b\u2028", r"\u202etxt.exe\u2066\u200b\u2028"),
        ("\U000e0041\ud800", r"\U000e0041\ud800"),
        ("é 中 ✓ 😀", "é 中 ✓ 😀"),
    ],
)  # fmt: skip
def test_printable_escapes_what_a_terminal_acts_on_or_hides(raw: str, shown: str) -> None:
    assert printable(raw) == shown
    assert plain(raw, "bold").plain == shown


def test_json_text_is_the_same_json_with_every_control_escaped() -> None:
    data = {"q": "\x1b[2J\x9b\x7f\u202e\U000e0041 é", "n": [1, None]}
    for indent in (False, True):
        text = json_text(data, indent=indent)
        assert all(c.isprintable() or c == "\n" for c in text), text
        assert "\\u009b" in text and "\\u202e" in text and "\\udb40\\udc41" in text
        assert orjson.loads(text) == data
