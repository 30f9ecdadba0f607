"""HTTP/1.1 translation: ``to_http11`` and ``Http11Reader``.

As in the decoder vectors, every stream is read whole, one byte at a time
and split at every position, and must give the same requests each way.
"""

from __future__ import annotations

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msghub.compact import (
    Decoder,
    Encoder,
    Http11Reader,
    Limits,
    Request,
    StreamError,
    UsageError,
    to_http11,
)

OPRA_FIELDS = (
    (b"Host", b"127.0.0.1"),
    (b"Content-Type", b"application/x-opra-quote"),
    (b"Accept-Encoding", b"identity"),
)

ROUND_TRIP = [
    Request(b"GET", b"/"),
    Request(b"GET", b"/a?b=c&d=%20", [(b"Host", b"example.com"), (b"Accept", b"*/*")]),
    Request(b"POST", b"/quotes/opra", OPRA_FIELDS, b"x" * 66),
    Request(b"POST", b"/empty", [(b"Host", b"h")]),
    Request(b"PUT", b"/p", [(b"X-Empty", b"")], b"\r\n\r\nbody with CRLFs\r\n"),
    Request(b"PATCH", b"/p", [], b""),
    Request(b"DELETE", b"/d", [(b"Cookie", b"a=1; b=2")]),
    Request(b"GET", b"/old", [(b"Connection", b"keep-alive")], version=b"HTTP/1.0"),
    Request(b"OPTIONS", b"*"),
    Request(b"GET", b"http://example.com/abs", [(b"X-Obs", b"caf\xc3\xa9")]),
]


def read(chunks, limits: Limits | None = None) -> list[Request]:
    reader = Http11Reader(limits) if limits else Http11Reader()
    out = []
    for chunk in chunks:
        out.extend(reader.feed(chunk))
    assert reader.at_boundary
    reader.close()
    return out


def splits(data: bytes):
    """The stream whole, byte by byte, and cut in two at every position."""
    yield [data]
    yield [data[i : i + 1] for i in range(len(data))]
    for i in range(1, len(data)):
        yield [data[:i], data[i:]]


def read_every_way(data: bytes, limits: Limits | None = None) -> list[Request]:
    results = [read(chunks, limits) for chunks in splits(data)]
    first = results[0]
    for other in results[1:]:
        assert [tuple(r) for r in other] == [tuple(r) for r in first]
    return first


def fail(data: bytes, limits: Limits | None = None, chunks=None) -> StreamError:
    reader = Http11Reader(limits) if limits else Http11Reader()
    with pytest.raises(StreamError) as info:
        for chunk in chunks or [data]:
            reader.feed(chunk)
        reader.close()
    return info.value


# -- to_http11 ------------------------------------------------------------


def test_to_http11_writes_request_line_fields_in_order_and_no_length_for_bodyless_get():
    req = Request(b"GET", b"/a", [(b"Host", b"x"), (b"Accept", b"*/*")])
    assert to_http11(req) == b"GET /a HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n"


def test_to_http11_adds_content_length_after_the_fields_before_the_body():
    req = Request(b"POST", b"/quotes/opra", OPRA_FIELDS, b"q" * 66)
    assert to_http11(req) == (
        b"POST /quotes/opra HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-opra-quote\r\n"
        b"Accept-Encoding: identity\r\nContent-Length: 66\r\n\r\n" + b"q" * 66
    )


@pytest.mark.parametrize("method", [b"POST", b"PUT", b"PATCH"])
def test_to_http11_sends_content_length_0_for_content_methods_with_empty_body(method):
    assert to_http11(Request(method, b"/")) == method + b" / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"


@pytest.mark.parametrize("method", [b"GET", b"DELETE", b"HEAD", b"OPTIONS"])
def test_to_http11_sends_no_content_length_for_other_methods_without_body(method):
    assert to_http11(Request(method, b"/")) == method + b" / HTTP/1.1\r\n\r\n"


def test_to_http11_sends_content_length_for_a_get_with_content():
    assert to_http11(Request(b"GET", b"/", body=b"abc")) == b"GET / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"


def test_to_http11_keeps_http_1_0():
    assert to_http11(Request(b"GET", b"/", version=b"HTTP/1.0")) == b"GET / HTTP/1.0\r\n\r\n"


def test_to_http11_refuses_versions_it_cannot_frame():
    with pytest.raises(UsageError, match="HTTP/2.0"):
        to_http11(Request(b"GET", b"/", version=b"HTTP/2.0"))


# -- round trips ------------------------------------------------------------


@pytest.mark.parametrize("req", ROUND_TRIP, ids=lambda r: r.method.decode() + " " + r.target.decode())
def test_request_survives_to_http11_and_back_in_every_split(req):
    data = to_http11(req)
    (got,) = read_every_way(data)
    assert got == req
    assert (got.method, got.target, got.version, got.headers, got.body) == (
        req.method,
        req.target,
        req.version,
        req.headers,
        req.body,
    )
    assert got.number == 1
    assert to_http11(got) == data


def test_pipelined_requests_come_out_in_order_numbered_in_every_split():
    reqs = [r for r in ROUND_TRIP if r.version == b"HTTP/1.1"]
    data = b"".join(map(to_http11, reqs))
    got = read_every_way(data)
    assert got == reqs
    assert [r.number for r in got] == list(range(1, len(reqs) + 1))


def test_requests_with_the_same_fields_share_one_state_object():
    a = to_http11(Request(b"POST", b"/quotes/opra", OPRA_FIELDS, b"1"))
    b = to_http11(Request(b"POST", b"/quotes/other", OPRA_FIELDS, b"2"))
    c = to_http11(Request(b"POST", b"/quotes/opra", OPRA_FIELDS[:2], b"3"))
    got = read([a + b + c + a])
    assert got[0].state is got[1].state
    assert got[2].state is not got[1].state
    assert got[3].state == got[0].state


def test_plain_stream_encodes_to_compact_and_decodes_back_to_the_same_bytes():
    reqs = [Request(b"POST", b"/quotes/opra", OPRA_FIELDS, b"%066d" % i) for i in range(20)]
    data = b"".join(map(to_http11, reqs))
    compact = Encoder().encode(read([data]))
    assert b"".join(map(to_http11, Decoder().feed(compact))) == data


def test_leading_blank_lines_between_requests_are_skipped():
    got = read([b"\r\nGET /a HTTP/1.1\r\n\r\n\r\nGET /b HTTP/1.1\r\n\r\n"])
    assert [r.target for r in got] == [b"/a", b"/b"]


# -- framing -------------------------------------------------------------------


def test_chunked_body_arrives_dechunked_without_framing_fields_in_every_split():
    data = (
        b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nX-After: 1\r\n\r\n"
        b"3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: dropped\r\n\r\n"
        b"GET /next HTTP/1.1\r\n\r\n"
    )
    first, second = read_every_way(data)
    assert first.body == b"abc0123456789abcdef"
    assert first.headers == ((b"Host", b"h"), (b"X-After", b"1"))
    assert second.target == b"/next"


def test_content_length_is_dropped_and_frames_the_body():
    (got,) = read([b"PUT /x HTTP/1.1\r\ncontent-length: 4\r\nA: b\r\n\r\nbody"])
    assert got.headers == ((b"A", b"b"),)
    assert got.body == b"body"


@pytest.mark.parametrize("coding", [b"gzip", b"gzip, chunked", b"compress"])
def test_transfer_codings_other_than_chunked_are_501(coding):
    err = fail(b"POST /x HTTP/1.1\r\nTransfer-Encoding: " + coding + b"\r\n\r\n")
    assert (err.status, err.number) == (501, 1)


def test_upgrade_request_without_body_passes_and_the_stream_reads_on_as_http11():
    data = b"GET /a HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nGET /b HTTP/1.1\r\n\r\n"
    first, second = read_every_way(data)
    assert first.headers == ((b"Connection", b"Upgrade"), (b"Upgrade", b"websocket"))
    assert second.target == b"/b"


def test_a_declined_upgrade_with_a_body_is_read_whole_and_the_stream_reads_on():
    # What curl --http2 sends to an http:// URL: the Upgrade is ignored, the body read.
    data = (
        b"POST /a HTTP/1.1\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\nContent-Length: 5\r\n\r\nhello"
        b"POST /b HTTP/1.1\r\nContent-Length: 2\r\n\r\nab"
    )
    first, second = read_every_way(data)
    assert (first.target, first.body, first.number) == (b"/a", b"hello", 1)
    assert (second.target, second.body, second.number) == (b"/b", b"ab", 2)


def test_a_stream_that_ends_inside_a_declined_upgrade_body_is_not_at_a_boundary():
    reader = Http11Reader()
    assert reader.feed(b"POST /a HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: x\r\nContent-Length: 3\r\n\r\nab") == []
    assert not reader.at_boundary
    (got,) = reader.feed(b"c")
    assert got.body == b"abc" and reader.at_boundary


def test_upgrade_request_with_a_chunked_body_is_501():
    err = fail(b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n3\r\nabc")
    assert (err.status, err.number) == (501, 1)


def test_connect_is_passed_on_as_a_request():
    first, second = read([b"CONNECT example.com:443 HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n"])
    assert (first.method, first.target) == (b"CONNECT", b"example.com:443")
    assert second.target == b"/b"


def test_version_comes_from_the_request_line():
    (got,) = read([b"GET / HTTP/1.0\r\n\r\n"])
    assert got.version == b"HTTP/1.0"


@pytest.mark.parametrize("version", [b"HTTP/0.9", b"HTTP/2.0"])
def test_versions_other_than_1_0_and_1_1_are_505(version):
    assert fail(b"GET / " + version + b"\r\n\r\n").status == 505


def test_the_http2_connection_preface_is_505_in_any_split():
    # curl --http2-prior-knowledge: llhttp stops with "Pause on PRI/Upgrade", which was answered 400 in its words.
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    data = b"GET /a HTTP/1.1\r\n\r\n" + preface
    for chunks in splits(data):
        reader = Http11Reader()
        got = []
        with pytest.raises(StreamError) as info:
            for chunk in chunks:
                got.extend(reader.feed(chunk))
        error = info.value
        assert (error.status, error.reason) == (505, "HTTP/2 connection preface not supported (HTTP/1.x only)")
        assert [r.target for r in got + error.events] == [b"/a"]


@pytest.mark.parametrize(
    "closing", [b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\n", b"GET /a HTTP/1.0\r\n\r\n"]
)
def test_nothing_after_a_request_that_closes_the_connection_is_read(closing):
    for chunks in splits(closing + b"GET /b HTTP/1.1\r\n\r\n\x00garbage"):
        reader = Http11Reader()
        got = [r.target for chunk in chunks for r in reader.feed(chunk)]
        assert got == [b"/a"] and reader.done
        reader.close()


def test_http_1_0_with_keep_alive_reads_on():
    data = b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\n\r\n"
    reader = Http11Reader()
    assert [r.target for r in reader.feed(data)] == [b"/a", b"/b"] and reader.done


def test_requests_alternating_between_header_blocks_keep_sharing_their_states():
    a = b"POST /a HTTP/1.1\r\nX-A: 1\r\nContent-Length: 1\r\n\r\nx"
    b = b"POST /a HTTP/1.1\r\nX-B: 2\r\nContent-Length: 1\r\n\r\ny"
    got = Http11Reader().feed((a + b) * 3)
    assert len({id(r.state) for r in got}) == 2


def test_content_length_over_max_body_is_413_before_the_body_arrives():
    err = fail(b"POST /a HTTP/1.1\r\nContent-Length: 101\r\n\r\n", Limits(max_body=100))
    assert (err.status, err.number) == (413, 1)


# -- repeated fields -------------------------------------------------------------


def test_repeated_fields_are_combined_in_order_of_first_appearance():
    data = b"GET / HTTP/1.1\r\nAccept: a\r\nHost: h\r\naccept: b\r\nCookie: x=1\r\nCookie: y=2\r\nAccept: c\r\n\r\n"
    (got,) = read_every_way(data)
    assert got.headers == ((b"Accept", b"a, b, c"), (b"Host", b"h"), (b"Cookie", b"x=1; y=2"))


def test_one_set_cookie_is_kept():
    (got,) = read([b"GET / HTTP/1.1\r\nSet-Cookie: a=1\r\n\r\n"])
    assert got.headers == ((b"Set-Cookie", b"a=1"),)


def test_repeated_set_cookie_is_400_caused_by_the_usage_error():
    err = fail(b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\n\r\n")
    assert (err.status, err.number) == (400, 2)
    assert "Set-Cookie" in err.reason
    assert isinstance(err.__cause__, UsageError)
    assert len(err.events) == 1


def test_field_value_whitespace_is_stripped():
    (got,) = read([b"GET / HTTP/1.1\r\nA:   spaced out \t \r\n\r\n"])
    assert got.headers == ((b"A", b"spaced out"),)


# -- garbage ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"Q:junk\r\n",
        b"get / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nNo colon\r\n\r\n",
        b"GET / HTTP/1.1\r\nName : v\r\n\r\n",
        b"GET / HTTP/1.1\r\nA: 1\r\n folded\r\n\r\n",
        b"GET /\x01 HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\nHost: bare-lf\n\n",
        b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_garbage_is_400_translated_from_httptools(data):
    err = fail(data)
    assert err.status == 400
    assert err.number == 1
    assert isinstance(err.__cause__, httptools.HttpParserError)
    assert err.reason.isprintable() and len(err.reason) <= 100


def test_garbage_after_good_requests_carries_them_and_numbers_the_bad_one():
    good = b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n"
    err = fail(good + b"Q:junk\r\n")
    assert err.number == 3
    assert [r.target for r in err.events] == [b"/1", b"/2"]


def test_reader_is_dead_after_an_error():
    reader = Http11Reader()
    with pytest.raises(StreamError) as first:
        reader.feed(b"Q:junk\r\n")
    with pytest.raises(StreamError) as again:
        reader.feed(b"GET / HTTP/1.1\r\n\r\n")
    assert again.value is first.value
    assert not reader.at_boundary


# -- stream end ------------------------------------------------------------------


def test_at_boundary_tells_whether_the_stream_stopped_inside_a_request():
    reader = Http11Reader()
    assert reader.at_boundary
    reader.feed(b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\na")
    assert not reader.at_boundary
    assert [r.body for r in reader.feed(b"b")] == [b"ab"]
    assert reader.at_boundary
    reader.close()


@pytest.mark.parametrize("tail", [b"G", b"GET / HTTP/1.1\r\nHost: h\r\n", b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab"])
def test_close_inside_a_request_is_400(tail):
    err = fail(b"", chunks=[b"GET / HTTP/1.1\r\n\r\n", tail])
    assert (err.status, err.number) == (400, 2)


def test_feed_after_close_is_a_usage_error():
    reader = Http11Reader()
    reader.close()
    with pytest.raises(UsageError):
        reader.feed(b"GET / HTTP/1.1\r\n\r\n")


# -- limits -----------------------------------------------------------------------

SMALL = Limits(max_line=100, max_headers=3, max_header_bytes=120, max_body=10)


def test_target_at_the_limit_is_read_and_the_compact_decoder_accepts_its_encoding():
    # '+:' target ' 10' is the compact line: 5 bytes besides the target.
    target = b"/" + b"t" * 94
    data = to_http11(Request(b"POST", target, body=b"0123456789"))
    (got,) = read([data], SMALL)
    assert Decoder(SMALL).feed(Encoder(SMALL).encode([got])) == [got]


def test_target_over_the_limit_is_414():
    target = b"/" + b"t" * 95
    assert fail(to_http11(Request(b"POST", target, body=b"0123456789")), SMALL).status == 414


def test_endless_target_is_414_before_it_ends():
    reader = Http11Reader(SMALL)
    reader.feed(b"GET /")
    with pytest.raises(StreamError) as info:
        for _ in range(200):
            reader.feed(b"t")
    assert info.value.status == 414


def test_field_lines_over_max_header_bytes_are_431():
    fields = [(b"A", b"x" * 50), (b"B", b"x" * 50)]  # 55 + 55 = 110: fits
    (got,) = read([to_http11(Request(b"GET", b"/", fields))], SMALL)
    assert Decoder(SMALL).feed(Encoder(SMALL).encode([got])) == [got]
    fields.append((b"C", b"x" * 6))  # + 11 = 121
    assert fail(to_http11(Request(b"GET", b"/", fields)), SMALL).status == 431


def test_more_distinct_fields_than_max_headers_are_431():
    fields = [(b"A", b"1"), (b"B", b"2"), (b"C", b"3")]
    read([to_http11(Request(b"GET", b"/", fields))], SMALL)
    fields.append((b"D", b"4"))
    assert fail(to_http11(Request(b"GET", b"/", fields)), SMALL).status == 431


def test_combined_field_too_long_for_one_compact_line_is_431():
    limits = Limits(max_line=40)
    data = b"GET / HTTP/1.1\r\nA: " + b"x" * 20 + b"\r\nA: " + b"y" * 20 + b"\r\n\r\n"
    assert fail(data, limits).status == 431


def feed_until_refused(reader: Http11Reader, piece: bytes, most: int = 10_000) -> tuple[StreamError, int]:
    """Feed ``piece`` until the reader refuses; the error and the bytes fed, the refused read included."""
    fed = 0
    with pytest.raises(StreamError) as info:
        while fed < most:
            fed += len(piece)
            reader.feed(piece)
    return info.value, fed


def test_endless_field_line_is_431_within_one_chunk_of_the_budget():
    limits = Limits(max_line=100, max_header_bytes=100)  # raw head budget 1224
    reader = Http11Reader(limits)
    reader.feed(b"GET / HTTP/1.1\r\nX: ")
    error, fed = feed_until_refused(reader, b"x" * 64)
    assert error.status == 431
    head = len(b"GET / HTTP/1.1\r\nX: ") + fed  # the read that began the head counts too
    assert 1224 < head <= 1224 + 64


def test_a_head_over_the_budget_in_the_read_that_began_it_is_431_at_once():
    # It used to wait for more (head_timeout) when a single read held it all.
    limits = Limits(max_line=100, max_header_bytes=100)  # raw head budget 1224
    for lead in (b"", b"\r\n\r\n"):
        assert fail(lead + b"GET / HTTP/1.1\r\nX: " + b"x" * 1300, limits).status == 431
    reader = Http11Reader(limits)
    assert reader.feed(b"\r\n" * 2000 + b"GET / HTTP/1.1\r\nX: " + b"x" * 1000) == []  # blank lines are no head


def test_an_endless_trailer_line_is_431_within_one_read_of_the_budget():
    # httptools keeps an unfinished trailer line to itself: it used to grow without end.
    limits = Limits(max_line=100, max_header_bytes=100)  # trailer budget 1124
    reader = Http11Reader(limits)
    reader.feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nT: ")
    error, fed = feed_until_refused(reader, b"v" * 64)
    assert (error.status, error.reason) == (431, "trailer section too large")
    assert 1124 < fed <= 1124 + 64


def test_a_slow_chunked_body_is_not_taken_for_a_trailer():
    limits = Limits(max_line=100, max_header_bytes=100, max_body=100_000)
    reader = Http11Reader(limits)
    reader.feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(50):
        reader.feed(b"40\r\n")
        for _ in range(64):
            reader.feed(b"x")
        reader.feed(b"\r\n")
    (got,) = reader.feed(b"0\r\nT: v\r\n\r\n")
    assert got.body == b"x" * 3200


def test_endless_run_of_short_fields_is_431():
    reader = Http11Reader(SMALL)
    reader.feed(b"GET / HTTP/1.1\r\n")
    with pytest.raises(StreamError) as info:
        for i in range(1000):
            reader.feed(b"A: 1\r\n")
    assert info.value.status == 431


@pytest.mark.parametrize(
    "data",
    [
        b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n01234567890",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n012345\r\n5\r\n67890\r\n0\r\n\r\n",
    ],
)
def test_body_over_max_body_is_413(data):
    err = fail(data, SMALL)
    assert (err.status, err.number) == (413, 1)


def test_body_at_max_body_is_read():
    (got,) = read([b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789"], SMALL)
    assert got.body == b"0123456789"


def test_trailer_section_over_max_header_bytes_is_431():
    data = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nT: " + b"x" * 200 + b"\r\n\r\n"
    assert fail(data, SMALL).status == 431


@pytest.mark.parametrize("length", [b"0", b"00"])
def test_upgrade_request_with_zero_content_length_passes(length):
    data = b"POST /a HTTP/1.1\r\nContent-Length: " + length + b"\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n"
    (got,) = read([data + b"GET /b HTTP/1.1\r\n\r\n"])[:1]
    assert (got.method, got.body) == (b"POST", b"")


PIECES = [
    b"GET ", b"POST ", b"/a", b" HTTP/1.1\r\n", b" HTTP/1.0\r\n", b"Host: h\r\n", b"Content-Length: 3\r\n",
    b"Transfer-Encoding: chunked\r\n", b"Set-Cookie: a\r\n", b"Connection: upgrade\r\nUpgrade: x\r\n",
    b"\r\n", b"abc", b"3\r\nabc\r\n", b"0\r\n\r\n", b":", b" ", b"\x00", b"\xff", b"\n",
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(PIECES) | st.binary(max_size=8), max_size=30), st.integers(0, 200))
def test_any_input_gives_requests_or_a_stream_error_and_never_anything_else(pieces, cut):
    data = b"".join(pieces)
    reader = Http11Reader(SMALL)
    try:
        got = reader.feed(data[:cut]) + reader.feed(data[cut:])
        reader.close()
    except StreamError as e:
        assert 400 <= e.status <= 505
        got = e.events
    for req in got:  # every request read can be encoded and decoded under the same limits
        assert Decoder(SMALL).feed(Encoder(SMALL).encode([req])) == [req]


def test_a_declined_upgrade_that_closes_the_connection_stops_the_stream_after_its_body():
    data = b"POST /a HTTP/1.1\r\nConnection: close, upgrade\r\nUpgrade: x\r\nContent-Length: 2\r\n\r\nabGET /b HTTP/1.1\r\n\r\n"
    for chunks in splits(data):
        reader = Http11Reader()
        got = [r.body for chunk in chunks for r in reader.feed(chunk)]
        assert got == [b"ab"] and reader.done


def test_expectation_names_the_request_waiting_for_100_continue_once_and_expect_is_consumed():
    reader = Http11Reader()
    head = b"POST /a HTTP/1.1\r\nX: 1\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n"
    assert reader.feed(head) == []
    waiting = reader.expectation()
    assert (waiting.method, waiting.target, waiting.number, waiting.headers) == (b"POST", b"/a", 1, ((b"X", b"1"),))
    assert reader.expectation() is None
    (got,) = reader.feed(b"abc")
    assert got.body == b"abc" and got.state is waiting.state


def test_no_expectation_once_the_body_came_in_the_same_feed_or_without_a_body():
    reader = Http11Reader()
    reader.feed(b"POST /a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx")
    assert reader.expectation() is None
    reader.feed(b"GET /a HTTP/1.1\r\nExpect: 100-continue\r\n\r\n")
    assert reader.expectation() is None


@pytest.mark.parametrize("chunks", [[b"GET /\r\n"], [b"GET /", b"\r\n"], [b"\r\nGET /x\r\n"], [b"GE", b"T /\n"]])
def test_an_http_0_9_request_line_is_400_at_once(chunks):
    err = fail(b"", chunks=chunks + [b"never"])
    assert (err.status, err.number) == (400, 1)
    reader = Http11Reader()
    with pytest.raises(StreamError):
        for chunk in chunks:
            reader.feed(chunk)


def test_in_head_and_in_body_tell_where_the_bytes_end():
    reader = Http11Reader()
    reader.feed(b"POST /a HTTP/1.1\r\nContent-Le")
    assert reader.in_head and not reader.in_body
    reader.feed(b"ngth: 3\r\n\r\na")
    assert reader.in_body and not reader.in_head
    reader.feed(b"bc")
    assert not reader.in_body and not reader.in_head


def test_reads_that_repeat_the_last_head_give_what_the_parser_gives():
    one = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n"
    reads = [one + b"abc", one + b"xyz", (one + b"123") * 3 + one[:10], one[10:] + b"777",
             one.replace(b"3\r\n", b"4\r\n") + b"four", one + b"abc", b"\r\n" + one + b"def",
             one + b"ab", b"c", b"GET /b HTTP/1.1\r\n\r\n"]
    fast, slow = Http11Reader(), Http11Reader()
    got_fast = [r for chunk in reads for r in fast.feed(chunk)]
    slow._remember = lambda data, request: None  # the parser for every read
    got_slow = [r for chunk in reads for r in slow.feed(chunk)]
    assert [tuple(r) for r in got_fast] == [tuple(r) for r in got_slow]
    assert [r.number for r in got_fast] == list(range(1, 12))
    assert fast._repeat is not None and fast.at_boundary


def test_a_repeated_head_after_a_closing_or_expecting_one_is_parsed_again():
    close = b"POST /a HTTP/1.1\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx"
    reader = Http11Reader()
    assert len(reader.feed(close)) == 1 and reader.done and reader.feed(close) == []
    expect = b"POST /a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx"
    reader = Http11Reader()
    reader.feed(expect)
    assert reader._repeat is None
