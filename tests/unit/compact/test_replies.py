"""Server reply lines: rendering, and ``ReplyReader`` on every split of a stream."""

from __future__ import annotations

import pytest

from msghub.compact import (
    Ack,
    Error,
    Fatal,
    ReplyReader,
    StreamError,
    UsageError,
    ack_line,
    error_line,
    fatal_line,
)
from msghub.compact.replies import MAX_REPLY_LINE


def test_ack_line():
    assert ack_line(1) == b"A:1\r\n"
    assert ack_line(1234567890123) == b"A:1234567890123\r\n"


def test_error_line():
    assert error_line(3, 413, "body too large") == b"E:3 413 body too large\r\n"
    assert error_line(4, 403, "") == b"E:4 403 \r\n"


def test_fatal_line():
    assert fatal_line(400, "malformed + line") == b"X:400 malformed + line\r\n"


def test_non_ascii_reason_is_replaced():
    assert error_line(1, 400, "caf\u00e9") == b"E:1 400 caf?\r\n"


@pytest.mark.parametrize("reason", ["two\nlines", "cr\rhere", "x" * 201])
def test_reason_must_be_one_short_line(reason):
    with pytest.raises(UsageError):
        error_line(1, 400, reason)
    with pytest.raises(UsageError):
        fatal_line(400, reason)


STREAM = (
    ack_line(1)
    + error_line(2, 413, "body too large")
    + ack_line(5)
    + error_line(6, 403, "")
    + fatal_line(431, "header line too long")
)
EVENTS = [
    Ack(1),
    Error(2, 413, "body too large"),
    Ack(5),
    Error(6, 403, ""),
    Fatal(431, "header line too long"),
]


def test_reader_whole():
    assert ReplyReader().feed(STREAM) == EVENTS


def test_reader_one_byte_at_a_time():
    reader = ReplyReader()
    out = []
    for i in range(len(STREAM)):
        out.extend(reader.feed(STREAM[i : i + 1]))
    assert out == EVENTS


def test_reader_split_at_every_byte():
    for cut in range(len(STREAM) + 1):
        reader = ReplyReader()
        assert reader.feed(STREAM[:cut]) + reader.feed(STREAM[cut:]) == EVENTS, cut


def test_reader_with_trailing_partial_line():
    reader = ReplyReader()
    assert reader.feed(STREAM + b"A:7") == EVENTS
    assert reader.feed(b"\r") == []
    assert reader.feed(b"\n") == [Ack(7)]


def test_reader_fatal_without_reason():
    assert ReplyReader().feed(b"X:500\r\n") == [Fatal(500, "")]


def test_reason_with_spaces_round_trips():
    line = error_line(9, 400, "request-target suffix has spaces or control bytes")
    assert ReplyReader().feed(line) == [Error(9, 400, "request-target suffix has spaces or control bytes")]


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"Z:1",
        b"A",
        b"A:",
        b"A:x",
        b"A:-1",
        b"A:1 ",
        b"a:1",
        b"E:",
        b"E:1",
        b"E:1 413",
        b"E:x 413 r",
        b"E:1 41 r",
        b"E:1 4130 r",
        b"E:1 abc r",
        b"X:",
        b"X:40 r",
        b"X:abc r",
        b"X: 400 r",
    ],
)
def test_garbage_raises_stream_error(line):
    for chunks in ([line + b"\r\n"], [bytes([b]) for b in line + b"\r\n"]):
        reader = ReplyReader()
        with pytest.raises(StreamError) as info:
            for chunk in chunks:
                reader.feed(chunk)
        assert info.value.status == 400


def test_garbage_after_good_lines_raises():
    with pytest.raises(StreamError):
        ReplyReader().feed(ack_line(1) + b"Q:2\r\n")


def test_endless_reply_line_raises():
    reader = ReplyReader()
    assert reader.feed(b"E:1 400 " + b"x" * (MAX_REPLY_LINE - 8)) == []
    with pytest.raises(StreamError):
        reader.feed(b"x")


def test_ids_line_round_trips_and_names_the_ids_of_later_requests():
    from msghub.compact import Ids, ids_line

    line = ids_line(7, 3, 0xFF)
    assert line == b"I:7 3-00000000ff\r\n"
    (ids,) = ReplyReader().feed(line)
    assert ids == Ids(7, "3-00000000ff")
    assert (ids.id_of(7), ids.id_of(9)) == ("3-00000000ff", "3-0000000101")


@pytest.mark.parametrize("line", [b"I:7\r\n", b"I:x 3-ff\r\n", b"I:7 3ff\r\n", b"I:7 3-FG\r\n"])
def test_malformed_ids_lines_are_refused(line):
    with pytest.raises(StreamError):
        ReplyReader().feed(line)
