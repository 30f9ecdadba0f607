"""Decoder errors: every malformed line and every limit, with its status.

Each bad stream is fed whole, one byte at a time, and with trailing bytes
after the bad line; each way must raise the same ``StreamError`` (status and
request number), report the requests decoded before the bad line, and leave
the decoder dead.
"""

from __future__ import annotations

import pytest

from msghub.compact import Decoder, Limits, Rejected, Request, StreamError, UsageError

TWO_REQUESTS = b"-:/one\r\n+:/two 3\r\nabc"
BEFORE = [Request(b"GET", b"/one"), Request(b"POST", b"/two", body=b"abc")]


def feed_all(dec: Decoder, chunks) -> tuple[list, StreamError | None]:
    """Feed ``chunks`` in order; return every event and the error, if one was raised."""
    events: list = []
    for chunk in chunks:
        try:
            events.extend(dec.feed(chunk))
        except StreamError as e:
            events.extend(e.events)
            return events, e
    return events, None


def ways(data: bytes):
    """The stream whole, one byte at a time, and with bytes after it."""
    yield "whole", [data]
    yield "bytewise", [data[i : i + 1] for i in range(len(data))]
    yield "trailing", [data + b"-:/after\r\n+:/after 2\r\nxy"]
    yield "trailing-partial", [data + b"-:/aft"]


def expect_error(
    data: bytes,
    status: int,
    number: int | None,
    before: list | None = None,
    limits: Limits | None = None,
) -> StreamError:
    """Check that every way of feeding ``data`` raises ``status`` for ``number``."""
    before = [] if before is None else before
    error = None
    for how, chunks in ways(data):
        dec = Decoder() if limits is None else Decoder(limits)
        events, error = feed_all(dec, chunks)
        assert error is not None, how
        assert (error.status, error.number) == (status, number), (how, error.reason)
        assert isinstance(error.reason, str) and error.reason
        assert "\r" not in error.reason and "\n" not in error.reason
        assert events == before, how
        assert [e.number for e in events] == list(range(1, len(before) + 1)), how
        # Dead: every later feed raises the same error, even an empty one.
        for later in (b"", b"-:/\r\n", b"x"):
            with pytest.raises(StreamError) as again:
                dec.feed(later)
            assert again.value is error
    return error


# -- malformed request lines: 400, with the request's number ------------------


@pytest.mark.parametrize(
    "line",
    [
        b"+:/x abc",
        b"+:/x -1",
        b"+:/x 1_0",
        b"+:/x +1",
        b"+:/x 1.0",
        b"+:/x 0x10",
        b"+:/x \xd9\xa3",  # a non-ASCII digit
        b"+:/x",
        b"+:",
        b"+:/x ",
        b"+:/x 12345678901234567890",
        b"+:/x 1 ",
    ],
)
def test_malformed_plus_line_is_400_with_number(line):
    expect_error(TWO_REQUESTS + line + b"\r\n", 400, 3, BEFORE)


@pytest.mark.parametrize(
    "line",
    [
        b"-:/a b",
        b"-:/a\tb",
        b"-:/a\x00",
        b"-:/a\x7f",
        b"-:/caf\xc3\xa9",
        b"-:/a\rb",
        b"-:/a\nb",
        b"+:/a\x01 3",
        b"+:/a  3",
        b"+:/a\xff 3",
    ],
)
def test_control_or_space_in_suffix_is_400_with_number(line):
    expect_error(TWO_REQUESTS + line + b"\r\n", 400, 3, BEFORE)


def test_bad_request_line_number_counts_rejected_requests():
    data = b"-:/one\r\n+:/big 5\r\nhello+:/x y\r\n"
    events = [Request(b"GET", b"/one"), Rejected(2, 413, "body too large")]
    expect_error(data, 400, 3, events, Limits(max_body=4))


# -- malformed state lines: 400, no request number ----------------------------


@pytest.mark.parametrize(
    "line",
    [
        b"Q:x",  # unknown opcode
        b"h:X: y",  # opcodes are case-sensitive
        b"-/x",  # missing colon
        b"+/x 3",
        b"H X: y",
        b"V HTTP/1.1",
        b"",  # empty line
        b"-",
        b"\x00:x",
        b" -:/x",
    ],
)
def test_unknown_opcode_or_missing_colon_is_400(line):
    expect_error(TWO_REQUESTS + line + b"\r\n", 400, None, BEFORE)


@pytest.mark.parametrize(
    "line",
    [b"V:", b"V:HTTP/1", b"V:HTTP/1.10", b"V:http/1.1", b"V:HTTP/1.1 ", b"V: HTTP/1.1", b"V:HTTP/2", b"V:HTTPS/1.1"],
)
def test_bad_version_is_400(line):
    expect_error(TWO_REQUESTS + line + b"\r\n", 400, None, BEFORE)


@pytest.mark.parametrize("line", [b"M:GE T", b"M:GET/", b"M:G\x00T", b"M:(GET)", b"M: GET", b"M:G\xc3\xa9T"])
def test_non_token_method_is_400(line):
    expect_error(TWO_REQUESTS + line + b"\r\n", 400, None, BEFORE)


@pytest.mark.parametrize(
    "line",
    [b"H:", b"H:: x", b"H:Bad Name: x", b"H:X(y): z", b"H:X/y: z", b"H: X: y", b"H:X\x00: y", b"H:Bad Name"],
)
def test_non_token_header_name_is_400(line):
    expect_error(TWO_REQUESTS + line + b"\r\n", 400, None, BEFORE)


@pytest.mark.parametrize(
    "line",
    [b"H:X: a\x00b", b"H:X: a\rb", b"H:X: a\nb", b"H:X: \x7f", b"H:X: a\x1bb", b"H:X: a\x0bb"],
)
def test_control_bytes_in_header_value_is_400(line):
    expect_error(TWO_REQUESTS + line + b"\r\n", 400, None, BEFORE)


@pytest.mark.parametrize("line", [b"B:/a b", b"B:/\x00", b"B:/a\tb", b"B:/\x7f", b"B:/\xc3\xa9"])
def test_control_bytes_or_space_in_base_is_400(line):
    expect_error(TWO_REQUESTS + line + b"\r\n", 400, None, BEFORE)


@pytest.mark.parametrize(
    "line",
    [
        b"H:Content-Length: 3",
        b"H:content-length:3",
        b"H:CONTENT-LENGTH: 0",
        b"H:Transfer-Encoding: chunked",
        b"H:transfer-encoding: identity",
    ],
)
def test_framing_header_via_h_is_400(line):
    expect_error(TWO_REQUESTS + line + b"\r\n", 400, None, BEFORE)


def test_unknown_register_is_400():
    expect_error(TWO_REQUESTS + b"<:nope\r\n", 400, None, BEFORE)


def test_register_stored_under_another_name_is_unknown():
    expect_error(TWO_REQUESTS + b">:Reg\r\n<:reg\r\n", 400, None, BEFORE)


@pytest.mark.parametrize("line", [b">:", b">:a b", b">:a/b", b">:a:b", b">:\xc3\xa9", b">:a\x00"])
def test_bad_register_name_is_400(line):
    expect_error(TWO_REQUESTS + line + b"\r\n", 400, None, BEFORE)


def test_events_before_the_error_in_the_same_read_are_on_the_exception():
    dec = Decoder()
    assert dec.feed(b"-:/a\r\n") != []
    with pytest.raises(StreamError) as info:
        dec.feed(b"-:/b\r\n+:/c 1\r\nxQ:bad\r\n-:/d\r\n")
    assert info.value.events == [Request(b"GET", b"/b"), Request(b"POST", b"/c", body=b"x")]
    assert [r.number for r in info.value.events] == [2, 3]


# -- limits ---------------------------------------------------------------------

SMALL_LINE = Limits(max_line=16)


@pytest.mark.parametrize(
    ("line", "status", "number"),
    [
        (b"H:X-Long: 678901", 431, None),
        (b"B:/3456789012345", 414, None),
        (b"-:/3456789012345", 414, 3),
        (b"+:/345678901 123", 414, 3),
        (b"V:HTTP/1.1......", 400, None),
        (b"M:34567890123456", 400, None),
        (b">:34567890123456", 400, None),
        (b"<:34567890123456", 400, None),
        (b"Q:34567890123456", 400, None),
    ],
)
def test_line_one_byte_too_long(line, status, number):
    assert len(line) == SMALL_LINE.max_line
    bad = line[:2] + b"x" + line[2:]
    expect_error(TWO_REQUESTS + bad + b"\r\n", status, number, BEFORE, SMALL_LINE)


def test_line_at_the_limit_is_accepted():
    limits = Limits(max_line=16)
    data = b"H:X-Long: 678901\r\nB:/3456789012345\r\n-:/3456789012345\r\n"
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        events, error = feed_all(Decoder(limits), chunks)
        assert error is None
        assert [r.target for r in events] == [b"/3456789012345/3456789012345"]


@pytest.mark.parametrize(
    ("start", "status", "number"),
    [(b"H:", 431, None), (b"B:", 414, None), (b"-:", 414, 3), (b"+:", 414, 3), (b"V:", 400, None), (b"Z", 400, None)],
)
def test_too_long_line_detected_before_its_end_arrives(start, status, number):
    limits = Limits(max_line=16)
    dec = Decoder(limits)
    dec.feed(TWO_REQUESTS)
    partial = start + b"x" * (limits.max_line - len(start))
    # max_line bytes and a CR may still be a valid line; one more byte cannot.
    assert dec.feed(partial) == []
    assert dec.feed(b"\r") == []
    with pytest.raises(StreamError) as info:
        dec.feed(b"y")
    assert (info.value.status, info.value.number) == (status, number)
    assert info.value.events == []
    with pytest.raises(StreamError):
        dec.feed(b"\n")


def test_endless_line_is_refused_in_one_read():
    with pytest.raises(StreamError) as info:
        Decoder().feed(TWO_REQUESTS + b"-:/" + b"a" * 100_000)
    assert (info.value.status, info.value.number) == (414, 3)
    assert info.value.events == BEFORE


def test_too_many_headers_is_431():
    limits = Limits(max_headers=2)
    expect_error(TWO_REQUESTS + b"H:A: 1\r\nH:B: 2\r\nH:C: 3\r\n", 431, None, BEFORE, limits)


def test_replacing_or_removing_headers_at_the_header_limit_is_accepted():
    limits = Limits(max_headers=2)
    data = b"H:A: 1\r\nH:B: 2\r\nH:a: 9\r\nH:B\r\nH:C: 3\r\n-:/\r\n"
    events, error = feed_all(Decoder(limits), [data])
    assert error is None
    assert events[0].headers == ((b"a", b"9"), (b"C", b"3"))


def test_header_bytes_over_limit_is_431():
    # Each field counts len(name) + len(value) + 4 (": " and CRLF), as in HTTP/1.1.
    limits = Limits(max_header_bytes=20)
    ok = b"H:A: 123456789012345\r\n-:/\r\n"  # 1 + 15 + 4 = 20
    events, error = feed_all(Decoder(limits), [ok])
    assert error is None and events[0].headers == ((b"A", b"123456789012345"),)
    expect_error(TWO_REQUESTS + b"H:A: 1234567890123456\r\n", 431, None, BEFORE, limits)
    expect_error(TWO_REQUESTS + b"H:A: 12345678\r\nH:B: 1234\r\n", 431, None, BEFORE, limits)


def test_header_bytes_limit_counts_a_replaced_value_once():
    limits = Limits(max_header_bytes=20)
    data = b"H:A: 123456789012345\r\nH:A: 543210987654321\r\nH:A: 1\r\nH:B: 123456789\r\n-:/\r\n"
    events, error = feed_all(Decoder(limits), [data])
    assert error is None
    assert events[0].headers == ((b"A", b"1"), (b"B", b"123456789"))


def test_too_many_registers_is_400():
    limits = Limits(max_registers=2)
    expect_error(TWO_REQUESTS + b">:a\r\n>:b\r\n>:c\r\n", 400, None, BEFORE, limits)


def test_overwriting_a_register_at_the_register_limit_is_accepted():
    limits = Limits(max_registers=2)
    data = b">:a\r\nH:X: 1\r\n>:b\r\nH:X: 2\r\n>:a\r\n<:a\r\n-:/\r\n"
    events, error = feed_all(Decoder(limits), [data])
    assert error is None and events[0].headers == ((b"X", b"2"),)


def test_register_name_too_long_is_400():
    limits = Limits(max_register_name=3)
    events, error = feed_all(Decoder(limits), [b">:abc\r\n<:abc\r\n"])
    assert error is None
    expect_error(TWO_REQUESTS + b">:abcd\r\n", 400, None, BEFORE, limits)


@pytest.mark.parametrize("bad", [{"max_line": 0}, {"max_body": -1}, {"max_headers": 1.5}, {"max_registers": None}])
def test_limits_must_be_positive_integers(bad):
    with pytest.raises(UsageError):
        Limits(**bad)


# -- body over max_body: a Rejected event, and the stream goes on ---------------


def events_every_way(data: bytes, limits: Limits) -> list[list]:
    results = []
    for how, chunks in ways(data):
        if how.startswith("trailing"):
            continue
        events, error = feed_all(Decoder(limits), chunks)
        assert error is None, error
        results.append(events)
    # And in three reads cut at every pair of places.
    for i in range(0, len(data) + 1, 3):
        for j in range(i, len(data) + 1, 5):
            events, error = feed_all(Decoder(limits), [data[:i], data[i:j], data[j:]])
            assert error is None
            results.append(events)
    return results


def test_body_over_max_body_is_rejected_and_the_stream_continues():
    limits = Limits(max_body=4)
    data = b"-:/one\r\n+:/big 5\r\nhello+:/ok 4\r\nabcd+:/big 6\r\n-:/x\r\n-:/two\r\n"
    expected = [
        Request(b"GET", b"/one"),
        Rejected(2, 413, "body too large"),
        Request(b"POST", b"/ok", body=b"abcd"),
        Rejected(4, 413, "body too large"),
        Request(b"GET", b"/two"),
    ]
    for events in events_every_way(data, limits):
        assert events == expected
        assert [e.number for e in events] == [1, 2, 3, 4, 5]
        assert events[0].state is events[2].state is events[4].state


def test_rejected_body_bytes_are_never_parsed_as_lines():
    limits = Limits(max_body=8)
    body = b"Q:bad\r\nH:Content-Length: 1\r\n"
    data = b"+:/big %d\r\n%s-:/after\r\n" % (len(body), body)
    for events in events_every_way(data, limits):
        assert events == [Rejected(1, 413, "body too large"), Request(b"GET", b"/after")]
        assert events[1].number == 2


def test_rejected_body_skipped_across_many_reads():
    limits = Limits(max_body=10)
    dec = Decoder(limits)
    assert dec.feed(b"+:/big 1000\r\n") == [Rejected(1, 413, "body too large")]
    for _ in range(99):
        assert dec.feed(b"0123456789") == []
    assert dec.feed(b"01234567") == []
    assert dec.feed(b"89-:/") == []
    assert dec.feed(b"next\r\n") == [Request(b"GET", b"/next")]
    assert dec.requests_framed == 2


def test_body_at_max_body_is_accepted():
    limits = Limits(max_body=4)
    events, error = feed_all(Decoder(limits), [b"+:/x 4\r\nabcd"])
    assert error is None and events == [Request(b"POST", b"/x", body=b"abcd")]


def test_rejected_then_malformed_line():
    limits = Limits(max_body=4)
    data = b"+:/big 5\r\nhelloH:Content-Length: 5\r\n"
    expect_error(data, 400, None, [Rejected(1, 413, "body too large")], limits)


def test_stream_error_is_a_compact_error_with_status_text():
    error = expect_error(b"Q:\r\n", 400, None)
    assert str(error).startswith("400 ")


BARE_LF = "bare LF; lines end with CRLF"


@pytest.mark.parametrize(
    "line, number",
    [(b"-:/typed\n", 3), (b"H:Content-Type: text/plain\n", None), (b"+:/typed 2\n", 3), (b"\n", None)],
)
def test_bare_lf_is_refused_at_once(line, number):
    # A human at nc/telnet types LF-terminated lines: no CRLF will ever come,
    # so the answer must not wait for one (or for max_line).
    error = expect_error(TWO_REQUESTS + line, 400, number, BEFORE)
    assert error.reason == BARE_LF


def test_bare_lf_inside_a_crlf_line_is_refused_with_the_same_reason():
    error = expect_error(TWO_REQUESTS + b"H:A: 1\nH:B: 2\r\n", 400, None, BEFORE)
    assert error.reason == BARE_LF


def test_lf_in_a_body_and_cr_lf_split_across_reads_are_fine():
    dec = Decoder()
    assert dec.feed(b"+:/a 3\r\n\n\n\n-:/b\r") == [Request(b"POST", b"/a", body=b"\n\n\n")]
    assert dec.feed(b"\n") == [Request(b"GET", b"/b")]
