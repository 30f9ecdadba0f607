"""Encoder output for known sequences, its state across calls, and round trips."""

from __future__ import annotations

import pytest

from msghub.compact import Decoder, Encoder, Limits, Request, UsageError

HELLO_HEADERS = ((b"Content-Type", b"text/plain"), (b"Accept-Encoding", b"identity"))
OPRA_HEADERS = ((b"Content-Type", b"application/x-opra-quote"), (b"Accept-Encoding", b"identity"))
HTML = ((b"Cookie", b"key=value"), (b"Accept", b"text/html"))
CSS = ((b"Cookie", b"key=value"), (b"Accept", b"text/css,*/*;q=0.1"))


def plain_size(req: Request) -> int:
    """Bytes of ``req`` as an HTTP/1.1 message with Content-Length framing."""
    size = len(req.method) + len(req.target) + len(req.version) + 4
    size += sum(len(n) + len(v) + 4 for n, v in req.headers)
    if req.body or req.method in (b"POST", b"PUT", b"PATCH"):
        size += len(b"Content-Length: %d\r\n" % len(req.body))
    return size + 2 + len(req.body)


def decode(data: bytes, limits: Limits = Limits()) -> list:
    return Decoder(limits).feed(data)


def opra_bodies(n: int) -> list[bytes]:
    return [(b"Q%06d|SPY 260619C00550000|B 12.34x50|A 12.41x75|" % i).ljust(66, b"~") for i in range(n)]


def test_plain_size_of_the_articles_post_example():
    # 'POST /someurl HTTP/1.1', Content-Type, Accept-Encoding, Content-Length: 13, body.
    req = Request(b"POST", b"/someurl", HELLO_HEADERS, b"hello world\r\n")
    plain = (
        b"POST /someurl HTTP/1.1\r\nContent-Type: text/plain\r\nAccept-Encoding: identity\r\n"
        b"Content-Length: 13\r\n\r\nhello world\r\n"
    )
    assert plain_size(req) == len(plain) == 112


# -- the article's sequences ------------------------------------------------------


def test_hello_world_100_copies_cost_20_bytes_each_after_the_first():
    req = Request(b"POST", b"/", HELLO_HEADERS, b"hello world\r\n")
    enc = Encoder()
    first = enc.encode([req])
    assert first == (
        b"H:Content-Type:text/plain\r\nH:Accept-Encoding:identity\r\n+: 13\r\nhello world\r\n"
    )
    rest = [enc.encode([Request(b"POST", b"/", HELLO_HEADERS, b"hello world\r\n")]) for _ in range(99)]
    assert set(rest) == {b"+: 13\r\nhello world\r\n"}
    total = len(first) + sum(map(len, rest))
    assert total == len(first) + 99 * 20
    assert total < 100 * plain_size(req) / 5


def test_opra_costs_7_bytes_per_message_after_the_first():
    bodies = opra_bodies(200)
    enc = Encoder()
    first = enc.encode([Request(b"POST", b"/", OPRA_HEADERS, bodies[0])])
    assert first == (
        b"H:Content-Type:application/x-opra-quote\r\nH:Accept-Encoding:identity\r\n+: 66\r\n" + bodies[0]
    )
    for body in bodies[1:]:
        assert enc.encode([Request(b"POST", b"/", OPRA_HEADERS, body)]) == b"+: 66\r\n" + body


def test_opra_decoded_stream_reencodes_to_7_bytes_per_message():
    bodies = opra_bodies(50)
    head = b"H:Content-Type: application/x-opra-quote\r\nH:Accept-Encoding: identity\r\n"
    requests = decode(head + b"".join(b"+: 66\r\n" + b for b in bodies))
    assert len({id(r.state) for r in requests}) == 1
    out = Encoder().encode(requests)
    first = len(b"H:Content-Type:application/x-opra-quote\r\nH:Accept-Encoding:identity\r\n")
    assert len(out) == first + 50 * (7 + 66)
    assert decode(out) == requests


def test_opra_to_one_target_settles_at_7_bytes_per_message():
    # The article's plain request goes to /receiver: the encoder moves its
    # base there once the target repeats, after which only '+: 66' is sent.
    bodies = opra_bodies(100)
    enc = Encoder()
    out = [enc.encode([Request(b"POST", b"/receiver", OPRA_HEADERS, b)]) for b in bodies]
    assert out[-95:] == [b"+: 66\r\n" + b for b in bodies[-95:]]
    assert decode(b"".join(out)) == [Request(b"POST", b"/receiver", OPRA_HEADERS, b) for b in bodies]


def test_opra_batch_equals_message_at_a_time():
    requests = [Request(b"POST", b"/", OPRA_HEADERS, b) for b in opra_bodies(20)]
    enc = Encoder()
    assert Encoder().encode(requests) == b"".join(enc.encode([r]) for r in requests)


def test_alternating_states_are_stored_then_loaded():
    a = Request(b"GET", b"/", HTML)
    b = Request(b"GET", b"/style.css", CSS)
    enc = Encoder()
    out = [enc.encode([r]) for r in (a, b, a, b, a, b, a)]
    assert out == [
        b"H:Cookie:key=value\r\nH:Accept:text/html\r\n-:\r\n",
        b"H:Accept:text/css,*/*;q=0.1\r\n-:/style.css\r\n",
        # The second time a state is built the encoder names it ...
        b"H:Accept:text/html\r\n>:0\r\n-:\r\n",
        b"H:Accept:text/css,*/*;q=0.1\r\n>:1\r\n-:/style.css\r\n",
        # ... and from then on returns to it with one short line.
        b"<:0\r\n-:\r\n",
        b"<:1\r\n-:/style.css\r\n",
        b"<:0\r\n-:\r\n",
    ]
    assert decode(b"".join(out)) == [a, b, a, b, a, b, a]


def test_reset_is_used_to_drop_many_headers():
    many = tuple((b"X-Header-%d" % i, b"value") for i in range(5))
    out = Encoder().encode([Request(b"GET", b"/a", many), Request(b"GET", b"/b")])
    assert out.endswith(b"-:/a\r\n<:\r\n-:/b\r\n")


# -- per-request choices -------------------------------------------------------------


@pytest.mark.parametrize(
    ("req", "expected"),
    [
        (Request(b"GET", b"/"), b"-:\r\n"),
        (Request(b"GET", b"/a"), b"-:/a\r\n"),
        (Request(b"POST", b"/a", body=b"xyz"), b"+:/a 3\r\nxyz"),
        (Request(b"POST", b"/a"), b"+:/a 0\r\n"),
        (Request(b"GET", b"/a", body=b"q"), b"M:GET\r\n+:/a 1\r\nq"),
        (Request(b"PUT", b"/a"), b"M:PUT\r\n-:/a\r\n"),
        (Request(b"PUT", b"/a", body=b"q"), b"M:PUT\r\n+:/a 1\r\nq"),
        (Request(b"GET", b"/a", version=b"HTTP/1.0"), b"V:HTTP/1.0\r\n-:/a\r\n"),
        (Request(b"GET", b"/a", [(b"Host", b"h")]), b"H:Host:h\r\n-:/a\r\n"),
    ],
)
def test_single_request_from_the_initial_state(req, expected):
    out = Encoder().encode([req])
    assert out == expected
    assert decode(out) == [req]


def test_method_returns_to_default_with_empty_m_line():
    enc = Encoder()
    assert enc.encode([Request(b"PUT", b"/a")]) == b"M:PUT\r\n-:/a\r\n"
    assert enc.encode([Request(b"PUT", b"/b", body=b"1")]) == b"+:/b 1\r\n1"
    assert enc.encode([Request(b"GET", b"/c")]) == b"M:\r\n-:/c\r\n"


def test_dropped_header_is_removed_with_a_bare_h_line():
    enc = Encoder()
    enc.encode([Request(b"GET", b"/", [(b"A", b"1"), (b"B", b"2")])])
    assert enc.encode([Request(b"GET", b"/", [(b"A", b"1")])]) == b"H:B\r\n-:\r\n"


def test_changed_header_value_only_sends_that_header():
    enc = Encoder()
    enc.encode([Request(b"GET", b"/", [(b"A", b"1"), (b"B", b"2")])])
    assert enc.encode([Request(b"GET", b"/", [(b"a", b"1"), (b"B", b"3")])]) == b"H:B:3\r\n-:\r\n"


def test_requests_in_one_directory_share_a_base():
    reqs = [Request(b"GET", b"/quotes/%s" % s) for s in (b"AAPL", b"MSFT", b"IBM", b"GOOG")]
    out = Encoder().encode(reqs)
    assert out == b"-:/quotes/AAPL\r\nB:/quotes/\r\n-:MSFT\r\n-:IBM\r\n-:GOOG\r\n"
    assert decode(out) == reqs


def test_method_line_is_priced_once():
    # Back to GET under headers also held in register 0: 'M:' (4 bytes) beats '<:0' (5).
    h1, h2 = [(b"A", b"1")], [(b"A", b"2")]
    enc = Encoder()
    out = [
        enc.encode([r])
        for r in (
            Request(b"GET", b"/a", h1),
            Request(b"GET", b"/b", h2),
            Request(b"GET", b"/c", h1),
            Request(b"PUT", b"/d", h1),
            Request(b"GET", b"/e", h1),
        )
    ]
    assert out[2] == b"H:A:1\r\n>:0\r\n-:/c\r\n"
    assert out[3] == b"M:PUT\r\n-:/d\r\n"
    assert out[4] == b"M:\r\n-:/e\r\n"


# -- state across calls ------------------------------------------------------------


def test_encoder_is_stateful_across_calls():
    reqs = [
        Request(b"GET", b"/a", HTML),
        Request(b"GET", b"/b", CSS),
        Request(b"POST", b"/c", CSS, b"body"),
        Request(b"GET", b"/d", HTML),
        Request(b"PUT", b"/e", version=b"HTTP/1.0"),
        Request(b"GET", b"/f", CSS),
    ]
    whole = Encoder().encode(reqs)
    enc = Encoder()
    one_by_one = b"".join(enc.encode([r]) for r in reqs)
    enc = Encoder()
    pairs = b"".join(enc.encode(reqs[i : i + 2]) for i in range(0, len(reqs), 2))
    assert whole == one_by_one == pairs
    assert decode(whole) == reqs


def test_second_call_sends_no_state_lines_for_the_same_state():
    enc = Encoder()
    enc.encode([Request(b"GET", b"/x", HTML)])
    assert enc.encode([Request(b"GET", b"/y", HTML)]) == b"-:/y\r\n"


def test_encode_of_nothing_is_empty():
    enc = Encoder()
    assert enc.encode([]) == b""
    assert enc.encode(iter(())) == b""


def test_encode_accepts_any_iterable():
    reqs = [Request(b"GET", b"/a"), Request(b"GET", b"/b")]
    assert Encoder().encode(iter(reqs)) == Encoder().encode(reqs) == Encoder().encode(tuple(reqs))


# -- round trips ---------------------------------------------------------------------


def test_round_trip_of_decoded_requests_keeps_numbers_in_order():
    data = (
        b"H:Cookie: key=value\r\n>:c\r\nH:Accept: text/html\r\n-:/\r\n"
        b"<:c\r\nH:Accept: text/css\r\nB:/static\r\n-:/a.css\r\n-:/b.css\r\n+:/up 3\r\nabc"
        b"<:\r\nM:DELETE\r\nV:HTTP/1.0\r\n-:/gone\r\n"
    )
    requests = decode(data)
    again = decode(Encoder().encode(requests))
    assert again == requests
    assert [r.number for r in again] == list(range(1, len(requests) + 1))
    assert [(r.method, r.target, r.version, r.body) for r in again] == [
        (r.method, r.target, r.version, r.body) for r in requests
    ]


def test_round_trip_with_body_that_looks_like_lines():
    body = b"-:/x\r\n+:/y 1\r\nz\r\nH:A: b\r\n"
    reqs = [Request(b"POST", b"/p", body=body), Request(b"GET", b"/q")]
    assert decode(Encoder().encode(reqs)) == reqs


def test_round_trip_with_few_registers():
    limits = Limits(max_registers=1)
    states = [((b"X", b"%d" % i),) for i in range(4)]
    reqs = [Request(b"GET", b"/%d" % (i % 4), states[i % 4]) for i in range(40)]
    out = Encoder(limits).encode(reqs)
    assert out.count(b">:") >= 2  # the one register is reused
    assert decode(out, limits) == reqs


def test_target_slash_under_a_base_round_trips():
    reqs = [Request(b"GET", b"/dir/a"), Request(b"GET", b"/dir/b"), Request(b"GET", b"/"), Request(b"GET", b"/dir/c")]
    assert decode(Encoder().encode(reqs)) == reqs


# -- misuse --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"headers": [(b"Content-Length", b"3")]},
        {"headers": [(b"transfer-encoding", b"chunked")]},
        {"headers": [(b"A", b"1"), (b"a", b"2")]},
        {"headers": [(b"Bad Name", b"1")]},
        {"headers": [(b"A", b"x\r\ny")]},
        {"headers": [("A", "1")]},
        {"version": b"HTTP/11"},
        {"body": "text"},
    ],
)
def test_request_that_the_compact_form_cannot_carry_is_a_usage_error(kwargs):
    with pytest.raises(UsageError):
        Request(b"GET", b"/", **kwargs)


@pytest.mark.parametrize(
    ("method", "target"),
    [(b"GE T", b"/"), (b"", b"/"), (b"GET", b""), (b"GET", b"/a b"), ("GET", b"/")],
)
def test_bad_method_or_target_is_a_usage_error(method, target):
    with pytest.raises(UsageError):
        Request(method, target)


def test_requests_over_the_decoders_limits_are_refused_not_encoded():
    import pytest

    from msghub.compact import Encoder, Limits, Request, UsageError

    limits = Limits(max_body=10, max_headers=2, max_line=64)
    with pytest.raises(UsageError):
        Encoder(limits).encode([Request(b"POST", b"/a", body=b"x" * 11)])
    with pytest.raises(UsageError):
        Encoder(limits).encode([Request(b"POST", b"/" + b"a" * 60, body=b"x")])
    with pytest.raises(UsageError):
        Encoder(limits).encode([Request(b"POST", b"/a", [(b"A", b"1"), (b"B", b"2"), (b"C", b"3")], b"x")])
