"""The SSE parser: messages as the WHATWG HTML standard parses them, lines cut anywhere."""

from __future__ import annotations

from receiver.client.sse import ServerSentEvent, parse_events, split_lines


def test_sse_parser_follows_the_standard() -> None:
    body = (
        "\ufeff: a comment\n"
        "retry: 3000\n"
        'id: 1-0\nevent: job.progress\ndata: {"a": 1}\n\n'  # a whole message
        "data:first\ndata: second\n\n"  # no space after the colon; two lines; id kept
        "id\ndata\n\n"  # fields without a colon: the id resets, the data is one empty line
        "event: ignored\n\n"  # no data: nothing dispatched, and the event type is reset
        "id: 2\0\ndata: x\n\n"  # an id with NUL is ignored
        "data: never finished\n"
    )
    messages = list(parse_events(split_lines([body.encode()])))
    assert messages == [
        ServerSentEvent("1-0", "job.progress", '{"a": 1}'),
        ServerSentEvent("1-0", "message", "first\nsecond"),
        ServerSentEvent("", "message", ""),
        ServerSentEvent("", "message", "x"),
    ]


def test_sse_lines_end_at_crlf_lf_or_cr_wherever_the_chunks_are_cut() -> None:
    body = 'id: 7-1\r\nevent: e\rdata: {"text": "a\u2028b\u0085c"}\r\n\r\ndata: z\r\r'.encode()
    expected = [
        ServerSentEvent("7-1", "e", '{"text": "a\u2028b\u0085c"}'),
        ServerSentEvent("7-1", "message", "z"),
    ]
    for cut in range(len(body) + 1):
        for second in range(cut, len(body) + 1):
            chunks = [body[:cut], body[cut:second], body[second:]]
            assert list(parse_events(split_lines(chunks))) == expected, (cut, second)


def test_sse_ending_in_a_lone_cr_still_ends_the_line() -> None:
    assert list(split_lines([b"a\r", b"b\r"])) == ["a", "b"]
    assert list(split_lines([b"a\r", b"\nb"])) == ["a"]
