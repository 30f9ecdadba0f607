"""Properties of the codec, checked with hypothesis.

* Round trip: any request sequence, encoded in any batches and decoded from
  any split of the stream, comes back equal, numbered 1..n.
* Size: for the traffic the encoding is for (a few request templates with
  varying targets and bodies, each template sent at least three times) the
  compact stream is never larger than the same requests as plain HTTP/1.1.
  It is not true of every sequence: the counterexamples are pinned below.
* Fuzz: random and mutated streams, in any split, raise nothing but
  ``StreamError``, and decode the same however they are split.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from msghub.compact import Decoder, Encoder, Limits, Rejected, Request, StreamError

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies ---------------------------------------------------------------

TCHARS = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
VCHARS = bytes(range(0x21, 0x7F))
FIELD_CHARS = b" \t" + VCHARS + bytes(range(0x80, 0x100))


def byte_strings(alphabet: bytes, min_size: int = 0, max_size: int = 12) -> st.SearchStrategy[bytes]:
    return st.lists(st.sampled_from(alphabet), min_size=min_size, max_size=max_size).map(bytes)


tokens = byte_strings(TCHARS, 1, 8)
methods = st.one_of(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"HEAD"]), tokens)
versions = st.one_of(
    st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]),
    st.tuples(st.integers(0, 9), st.integers(0, 9)).map(lambda v: b"HTTP/%d.%d" % v),
)
header_names = st.one_of(
    st.sampled_from([b"Host", b"Content-Type", b"Accept", b"Cookie", b"X-Id", b"accept"]), tokens
).filter(lambda n: n.lower() not in (b"content-length", b"transfer-encoding"))
header_values = byte_strings(FIELD_CHARS, 0, 16).map(lambda v: v.strip(b" \t"))


@st.composite
def header_sets(draw, max_size: int = 5) -> tuple:
    fields = draw(st.lists(st.tuples(header_names, header_values), max_size=max_size))
    seen: dict[bytes, tuple[bytes, bytes]] = {}
    for name, value in fields:
        seen.setdefault(name.lower(), (name, value))
    return tuple(seen.values())


targets = st.one_of(
    st.sampled_from([b"/", b"/a", b"/a/b", b"/quotes/opra", b"/quotes/AAPL", b"/quotes/", b"*", b"/x?y=1"]),
    st.builds(lambda d, f: b"/" + d + b"/" + f, byte_strings(VCHARS, 0, 6), byte_strings(VCHARS, 0, 6)),
    byte_strings(VCHARS, 1, 20),
)
bodies = st.one_of(
    st.just(b""),
    st.binary(max_size=40),
    st.sampled_from([b"\r\n", b"-:/x\r\n", b"+:/y 1\r\nz", b"H:A: 1\r\n\r\n"]),
)


@st.composite
def templates(draw, max_headers: int = 5) -> tuple:
    """The unchanging part of a kind of request: method, version, headers."""
    return (draw(methods), draw(versions), draw(header_sets(max_headers)))


@st.composite
def requests(draw) -> Request:
    method, version, headers = draw(templates())
    return Request(method, draw(targets), headers, draw(bodies), version)


@st.composite
def template_sequences(draw, pool=None, max_size: int = 25) -> list[Request]:
    """Requests drawn from a small pool of templates, varying in target and body."""
    pool = draw(st.lists(templates(), min_size=1, max_size=4)) if pool is None else draw(pool)
    picks = draw(st.lists(st.tuples(st.integers(0, len(pool) - 1), targets, bodies), min_size=1, max_size=max_size))
    return [Request(pool[i][0], target, pool[i][2], body, pool[i][1]) for i, target, body in picks]


request_sequences = st.one_of(
    st.lists(requests(), max_size=12),
    template_sequences(),
)


def cuts(data: st.DataObject, length: int) -> list[int]:
    points = data.draw(st.lists(st.integers(0, length), max_size=8))
    return sorted(points)


def split(stream: bytes, points: list[int]) -> list[bytes]:
    edges = [0, *points, len(stream)]
    return [stream[a:b] for a, b in zip(edges, edges[1:])]


def decode_chunks(chunks: list[bytes], limits: Limits = Limits()) -> list:
    dec = Decoder(limits)
    out = []
    for chunk in chunks:
        out.extend(dec.feed(chunk))
    assert dec.buffered == 0
    return out


def plain_size(req: Request) -> int:
    """Bytes of ``req`` as HTTP/1.1: request line, fields, Content-Length, blank line, body."""
    size = len(req.method) + len(req.target) + len(req.version) + 4
    size += sum(len(n) + len(v) + 4 for n, v in req.headers)
    if req.body or req.method in (b"POST", b"PUT", b"PATCH"):
        size += len(b"Content-Length: %d\r\n" % len(req.body))
    return size + 2 + len(req.body)


# -- (a) round trip ----------------------------------------------------------------


@SETTINGS
@given(request_sequences, st.integers(1, 64), st.data())
def test_round_trip_in_any_batches_and_splits(reqs, max_registers, data):
    limits = Limits(max_registers=max_registers)
    enc = Encoder(limits)
    batch_points = cuts(data, len(reqs))
    edges = [0, *batch_points, len(reqs)]
    stream = b"".join(enc.encode(reqs[a:b]) for a, b in zip(edges, edges[1:]))
    assert stream == Encoder(limits).encode(reqs)
    got = decode_chunks(split(stream, cuts(data, len(stream))), limits)
    assert got == reqs
    assert [r.number for r in got] == list(range(1, len(reqs) + 1))
    assert [(r.method, r.target, r.version, r.body) for r in got] == [
        (r.method, r.target, r.version, r.body) for r in reqs
    ]


@SETTINGS
@given(template_sequences(), st.data())
def test_decoded_requests_reencode_to_the_same_requests(reqs, data):
    # Decoded requests share State objects, which sends them down the encoder's fast path.
    first = Decoder().feed(Encoder().encode(reqs))
    stream = Encoder().encode(first)
    got = decode_chunks(split(stream, cuts(data, len(stream))))
    assert got == reqs


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from([b"", b"/dir/", b"/other"]), targets), min_size=1, max_size=20))
def test_round_trip_of_decoded_requests_with_bases(pairs):
    stream = b"".join(
        b"B:%s\r\n-:%s\r\n" % (base, target) if target.startswith(b"/") else b"-:%s\r\n" % target
        for base, target in pairs
    )
    first = Decoder().feed(stream)
    assert Decoder().feed(Encoder().encode(first)) == first


# -- (b) size ----------------------------------------------------------------------


@st.composite
def repeated_template_sequences(draw, times: int = 3) -> list[Request]:
    """Template traffic in which every template used is used at least ``times`` times."""
    pool = draw(st.lists(templates(max_headers=10), min_size=1, max_size=4))
    picks = draw(st.lists(st.tuples(st.integers(0, len(pool) - 1), targets, bodies), min_size=1, max_size=30))
    counts = Counter(i for i, _, _ in picks)
    for i, n in counts.items():
        picks += [(i, draw(targets), draw(bodies)) for _ in range(times - n)]
    picks = draw(st.permutations(picks))
    return [Request(pool[i][0], target, pool[i][2], body, pool[i][1]) for i, target, body in picks]


@SETTINGS
@given(repeated_template_sequences(times=4))
def test_template_traffic_is_never_larger_than_plain_http(reqs):
    # The first uses of a template pay for its state lines (an H: line is one
    # byte longer than its HTTP/1.1 field line; V: and M: have no plain
    # counterpart), so this holds once each template has been sent four
    # times; see the next three tests for why not before.
    assert len(Encoder().encode(reqs)) <= sum(map(plain_size, reqs))


def test_three_uses_per_template_can_still_cost_more_than_plain_http():
    # Found by the property above when it asked for three uses: two tiny
    # templates alternating over two targets.  The encoder stores a register
    # only on a template's third use, and a base change costs a B: line.
    a = (b"GET", [(b"Host", b"")], b"HTTP/1.1")
    d = (b"DELETE", [], b"HTTP/0.0")
    reqs = [Request(m, t, h, b"", v) for t in (b"/", b"/!!/", b"/") for m, h, v in (a, d)]
    assert len(Encoder().encode(reqs)) == 151 > sum(map(plain_size, reqs)) == 147
    more = [Request(m, b"/", h, b"", v) for m, h, v in (a, d)]
    assert len(Encoder().encode(reqs + more)) <= sum(map(plain_size, reqs + more))


def test_one_off_request_can_cost_more_than_plain_http():
    # "compact <= plain for any sequence" is false, so it is no property test
    # here.  The minimal counterexample hypothesis found: one request whose
    # version and method both need a state line.
    req = Request(b"DELETE", b"/", version=b"HTTP/1.0")
    assert plain_size(req) == len(b"DELETE / HTTP/1.0\r\n\r\n") == 21
    assert Encoder().encode([req]) == b"V:HTTP/1.0\r\nM:DELETE\r\n-:\r\n"  # 26 bytes
    # HTTP/1.1 too, once the extra byte per H: line outweighs the request line.
    fields = [(name, b"") for name in (b"Host", b"Content-Type", b"Accept", b"Cookie", b"X-Id", b"!", b"!!")]
    req = Request(b"DELETE", b"/a", fields)
    assert len(Encoder().encode([req])) == plain_size(req) + 1 == 86


def test_template_used_twice_can_cost_more_than_plain_http():
    # Two templates alternating, each used twice: the second use of each still
    # sends its state lines (and the >: that names it), 90 bytes against 84.
    a = Request(b"!", b"/", version=b"HTTP/1.0")
    b = Request(b"GET", b"/", [(b"Host", b"")])
    reqs = [a, b, a, b]
    assert len(Encoder().encode(reqs)) > sum(map(plain_size, reqs))
    assert len(Encoder().encode(reqs + [a, b])) <= sum(map(plain_size, reqs + [a, b]))


# -- (c) fuzz ----------------------------------------------------------------------

small_limits = st.builds(
    Limits,
    max_line=st.integers(4, 64),
    max_headers=st.integers(1, 4),
    max_header_bytes=st.integers(8, 80),
    max_registers=st.integers(1, 3),
    max_register_name=st.integers(1, 4),
    max_body=st.integers(1, 16),
)
any_limits = st.one_of(st.just(Limits()), small_limits)

# Lines close enough to the grammar to reach past the opcode check.
fuzz_lines = st.one_of(
    st.tuples(st.sampled_from([b"V:", b"B:", b"M:", b"H:", b">:", b"<:", b"-:", b"+:", b"Q:", b"", b"H"]),
              st.binary(max_size=12)).map(b"".join),
    st.builds(lambda s, n: b"+:%s %s" % (s, n), byte_strings(VCHARS, 0, 5),
              st.sampled_from([b"0", b"3", b"20", b"-1", b"1_0", b"x", b"", b"99999999999999999999"])),
    st.sampled_from([b"H:A: 1", b"H:a", b"H:Content-Length: 1", b">:r", b"<:r", b"<:", b"V:HTTP/1.0", b"M:PUT", b"M:"]),
)
fuzz_streams = st.one_of(
    st.binary(max_size=200),
    st.lists(st.tuples(fuzz_lines, st.sampled_from([b"\r\n", b"\r\n", b"\n", b"\r", b""]), st.binary(max_size=6)),
             max_size=12).map(lambda parts: b"".join(b"".join(p) for p in parts)),
)


@st.composite
def mutated_streams(draw) -> bytes:
    stream = bytearray(Encoder().encode(draw(st.lists(requests(), min_size=1, max_size=6))))
    for _ in range(draw(st.integers(1, 4))):
        if not stream:
            break
        at = draw(st.integers(0, len(stream) - 1))
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "repeat"]))
        if kind == "flip":
            stream[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            stream[at:at] = draw(st.sampled_from([b"\r\n", b":", b" ", b"0", b"\x00", b"H:", b"<:x\r\n"]))
        elif kind == "delete":
            del stream[at : at + draw(st.integers(1, 4))]
        elif kind == "truncate":
            del stream[at:]
        else:
            end = draw(st.integers(at, len(stream)))
            stream[end:end] = stream[at:end]
    return bytes(stream)


def run_to_end(chunks: list[bytes], limits: Limits) -> tuple[list, tuple | None]:
    """Feed every chunk; any exception other than StreamError fails the test."""
    dec = Decoder(limits)
    events: list = []
    for chunk in chunks:
        try:
            events.extend(dec.feed(chunk))
        except StreamError as e:
            events.extend(e.events)
            assert 400 <= e.status <= 499
            with pytest.raises(StreamError):
                dec.feed(b"-:/\r\n")
            return events, (e.status, e.number)
    return events, None


def check_events(events: list) -> None:
    numbers = []
    for event in events:
        assert type(event) in (Request, Rejected)
        if type(event) is Rejected:
            assert event.status == 413
        numbers.append(event.number)
    assert numbers == list(range(1, len(numbers) + 1))


@settings(SETTINGS, max_examples=400)
@given(st.one_of(fuzz_streams, mutated_streams()), any_limits, st.data())
@example(b"+:/x 5\r\nhello-:/y\r\n", Limits(max_body=4), None)
@example(b"H:" + b"x" * 70 + b"\r\n", Limits(max_line=64), None)
@example(b"B\x00\x00\x00\x00\x00\n", Limits(max_line=4), None)  # a bare LF past max_line: too long, split or not
def test_fuzzed_streams_raise_only_stream_error_whatever_the_split(stream, limits, data):
    whole = run_to_end([stream], limits)
    check_events(whole[0])
    bytewise = run_to_end([stream[i : i + 1] for i in range(len(stream))], limits)
    assert bytewise == whole
    if data is not None:
        assert run_to_end(split(stream, cuts(data, len(stream))), limits) == whole
