"""Decoder test vectors: the article's examples and one or more per opcode.

After h11's ``tests/test_io.py``: every vector is fed whole, one byte at a
time, and followed by trailing bytes (the start of a next line or body) that
must decode to nothing and raise nothing.  Each expected request is checked
field by field, and which requests share one ``State`` object is checked too.
"""

from __future__ import annotations

from msghub.compact import INITIAL_STATE, Decoder, Request

# Incomplete lines and bodies a stream may end with at a read boundary.
TRAILERS = [
    b"-",
    b"-:/next",
    b"+:/next 3",
    b"+:/next 3\r",
    b"+:/next 3\r\n",
    b"+:/next 3\r\nab",
    b"H:X-Next: partial",
    b"<:somewhere",
    b"Q:not an opcode, but not a complete line either\r",
]


def feed_whole(data: bytes) -> tuple[Decoder, list]:
    dec = Decoder()
    return dec, dec.feed(data)


def feed_bytewise(data: bytes) -> tuple[Decoder, list]:
    dec = Decoder()
    out = []
    for i in range(len(data)):
        out.extend(dec.feed(data[i : i + 1]))
    return dec, out


FEEDERS = [feed_whole, feed_bytewise]


def check(got: list, expected: list[tuple], groups: list[int] | None = None) -> None:
    """``expected``: (method, target, version, headers, body, number) per request.

    ``groups`` gives each request a label; requests with equal labels must
    share one ``State`` object and requests with different labels must not.
    """
    assert all(type(r) is Request for r in got)
    actual = [(r.method, r.target, r.version, r.headers, r.body, r.number) for r in got]
    assert actual == expected
    if groups is not None:
        assert len(groups) == len(got)
        first: dict[int, object] = {}
        for label, req in zip(groups, got):
            first.setdefault(label, req.state)
            assert req.state is first[label]
        states = list(first.values())
        assert len({id(s) for s in states}) == len(states)


def run_vector(data: bytes, expected: list[tuple], groups: list[int] | None = None) -> list:
    """Feed ``data`` every way and check the result; return the requests."""
    result = None
    for feeder in FEEDERS:
        dec, got = feeder(data)
        check(got, expected, groups)
        assert dec.buffered == 0
        assert dec.requests_framed == len(expected)
        result = got
    for trailer in TRAILERS:
        for feeder in FEEDERS:
            dec, got = feeder(data + trailer)
            check(got, expected, groups)
            assert dec.buffered == len(trailer)
            assert dec.requests_framed == len(expected)
    # Trailing bytes arriving in a later read than the vector itself.
    dec = Decoder()
    got = dec.feed(data)
    assert dec.feed(b"+:/later 5\r\nab") == []
    check(got, expected, groups)
    return result


# -- the article's examples ------------------------------------------------

HELLO_HEADERS = ((b"Content-Type", b"text/plain"), (b"Accept-Encoding", b"identity"))
HELLO_BODY = b"hello world\r\n"  # the article's Content-Length: 13


def test_article_post_hello_world_once():
    # As printed in the article: '+: 13' has an empty suffix and no B: line
    # precedes it, so the target is '/' (the article leaves its /someurl out).
    data = b"H:Content-Type: text/plain\r\nH:Accept-Encoding: identity\r\n+: 13\r\nhello world\r\n"
    got = run_vector(data, [(b"POST", b"/", b"HTTP/1.1", HELLO_HEADERS, HELLO_BODY, 1)], [0])
    assert got == [Request(b"POST", b"/", HELLO_HEADERS, HELLO_BODY)]


def test_article_post_hello_world_100_copies():
    head = b"H:Content-Type: text/plain\r\nH:Accept-Encoding: identity\r\n"
    data = head + b"+: 13\r\nhello world\r\n" * 100
    # As in the article, every copy after the header lines costs 20 bytes.
    assert len(data) == len(head) + 20 * 100
    expected = [(b"POST", b"/", b"HTTP/1.1", HELLO_HEADERS, HELLO_BODY, n) for n in range(1, 101)]
    got = run_vector(data, expected, [0] * 100)
    assert got[0].state is not INITIAL_STATE


def test_article_post_hello_world_with_base_is_the_plain_request():
    data = b"H:Content-Type: text/plain\r\nH:Accept-Encoding: identity\r\nB:/someurl\r\n+: 13\r\nhello world\r\n"
    got = run_vector(data, [(b"POST", b"/someurl", b"HTTP/1.1", HELLO_HEADERS, HELLO_BODY, 1)], [0])
    assert got == [Request(b"POST", b"/someurl", HELLO_HEADERS, HELLO_BODY)]


OPRA_HEADERS = ((b"Content-Type", b"application/x-opra-quote"), (b"Accept-Encoding", b"identity"))


def opra_bodies(n: int) -> list[bytes]:
    return [(b"Q%04d|SPY 260619C00550000|B 12.34x50|A 12.41x75|" % i).ljust(66, b"~") for i in range(n)]


def test_article_opra_quotes():
    bodies = opra_bodies(5)
    assert {len(b) for b in bodies} == {66}
    head = b"H:Content-Type: application/x-opra-quote\r\nH:Accept-Encoding: identity\r\n"
    data = head + b"".join(b"+: 66\r\n" + b for b in bodies)
    # 7 bytes of overhead per message once the state is set.
    assert len(data) == len(head) + 5 * (7 + 66)
    expected = [(b"POST", b"/", b"HTTP/1.1", OPRA_HEADERS, b, n) for n, b in enumerate(bodies, 1)]
    run_vector(data, expected, [0] * 5)


def test_article_opra_quotes_with_receiver_base():
    bodies = opra_bodies(3)
    data = (
        b"H:Content-Type: application/x-opra-quote\r\nH:Accept-Encoding: identity\r\nB:/receiver\r\n"
        + b"".join(b"+: 66\r\n" + b for b in bodies)
    )
    expected = [(b"POST", b"/receiver", b"HTTP/1.1", OPRA_HEADERS, b, n) for n, b in enumerate(bodies, 1)]
    run_vector(data, expected, [0] * 3)


HTML_ACCEPT = b"HTTP Accept=text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
CSS_ACCEPT = b"text/css,*/*;q=0.1"


def test_article_cookie_accept_with_registers():
    # The article's two GETs: the common Cookie goes into register config1,
    # each request loads it and sets its own Accept.
    data = (
        b"H:Cookie: key=value\r\n"
        b">:config1\r\n"
        b"H:Accept: " + HTML_ACCEPT + b"\r\n"
        b"-:/\r\n"
        b"<:config1\r\n"
        b"H:Accept: " + CSS_ACCEPT + b"\r\n"
        b"-:/style.css\r\n"
    )
    got = run_vector(
        data,
        [
            (b"GET", b"/", b"HTTP/1.1", ((b"Cookie", b"key=value"), (b"Accept", HTML_ACCEPT)), b"", 1),
            (b"GET", b"/style.css", b"HTTP/1.1", ((b"Cookie", b"key=value"), (b"Accept", CSS_ACCEPT)), b"", 2),
        ],
        [0, 1],
    )
    assert got == [
        Request(b"GET", b"/", [(b"Cookie", b"key=value"), (b"Accept", HTML_ACCEPT)]),
        Request(b"GET", b"/style.css", [(b"Accept", CSS_ACCEPT), (b"cookie", b"key=value")]),
    ]


def test_article_cookie_accept_alternating_reuses_states():
    data = (
        b"H:Cookie: key=value\r\n"
        b"H:Accept: " + HTML_ACCEPT + b"\r\n"
        b">:html\r\n"
        b"-:/\r\n"
        b"H:Accept: " + CSS_ACCEPT + b"\r\n"
        b">:css\r\n"
        b"-:/style.css\r\n"
        b"<:html\r\n"
        b"-:/\r\n"
        b"<:css\r\n"
        b"-:/style.css\r\n"
        b"-:/print.css\r\n"
    )
    html = ((b"Cookie", b"key=value"), (b"Accept", HTML_ACCEPT))
    css = ((b"Cookie", b"key=value"), (b"Accept", CSS_ACCEPT))
    run_vector(
        data,
        [
            (b"GET", b"/", b"HTTP/1.1", html, b"", 1),
            (b"GET", b"/style.css", b"HTTP/1.1", css, b"", 2),
            (b"GET", b"/", b"HTTP/1.1", html, b"", 3),
            (b"GET", b"/style.css", b"HTTP/1.1", css, b"", 4),
            (b"GET", b"/print.css", b"HTTP/1.1", css, b"", 5),
        ],
        [0, 1, 0, 1, 1],
    )


# -- one or more vectors per opcode ------------------------------------------


def test_initial_state_bodyless_request_is_get_slash():
    run_vector(b"-:\r\n", [(b"GET", b"/", b"HTTP/1.1", (), b"", 1)])
    dec, got = feed_whole(b"-:\r\n-:/a\r\n")
    assert got[0].state is INITIAL_STATE and got[1].state is INITIAL_STATE


def test_initial_state_request_with_body_is_post():
    run_vector(b"+:/in 5\r\nhello", [(b"POST", b"/in", b"HTTP/1.1", (), b"hello", 1)], [0])


def test_minus_suffix_is_appended_verbatim():
    run_vector(
        b"-:/a/b?x=1&y=%20#frag\r\n-:*\r\n-:http://example.com/abs\r\n",
        [
            (b"GET", b"/a/b?x=1&y=%20#frag", b"HTTP/1.1", (), b"", 1),
            (b"GET", b"*", b"HTTP/1.1", (), b"", 2),
            (b"GET", b"http://example.com/abs", b"HTTP/1.1", (), b"", 3),
        ],
        [0, 0, 0],
    )


def test_plus_zero_length_body():
    run_vector(b"+:/empty 0\r\n-:/x\r\n", [
        (b"POST", b"/empty", b"HTTP/1.1", (), b"", 1),
        (b"GET", b"/x", b"HTTP/1.1", (), b"", 2),
    ], [0, 0])


def test_plus_body_is_opaque_bytes():
    body = b"-:/not-a-request\r\nH:X: y\r\n\r\n\x00\xff+:"
    data = b"+:/raw %d\r\n%s-:/after\r\n" % (len(body), body)
    run_vector(data, [
        (b"POST", b"/raw", b"HTTP/1.1", (), body, 1),
        (b"GET", b"/after", b"HTTP/1.1", (), b"", 2),
    ], [0, 0])


def test_plus_length_with_leading_zeros():
    run_vector(b"+:/z 003\r\nabc", [(b"POST", b"/z", b"HTTP/1.1", (), b"abc", 1)])


def test_same_line_repeated_decodes_each_time():
    # The second and later copies come from the decoder's per-state line cache.
    data = b"+:/q 2\r\nab+:/q 2\r\ncd-:/q\r\n-:/q\r\n+:/q 2\r\nef"
    run_vector(data, [
        (b"POST", b"/q", b"HTTP/1.1", (), b"ab", 1),
        (b"POST", b"/q", b"HTTP/1.1", (), b"cd", 2),
        (b"GET", b"/q", b"HTTP/1.1", (), b"", 3),
        (b"GET", b"/q", b"HTTP/1.1", (), b"", 4),
        (b"POST", b"/q", b"HTTP/1.1", (), b"ef", 5),
    ], [0] * 5)


def test_long_request_lines_are_not_cached_but_decode():
    suffix = b"/" + b"x" * 300
    data = b"+:%s 3\r\nabc-:%s\r\n+:%s 3\r\ndef" % (suffix, suffix, suffix)
    run_vector(data, [
        (b"POST", suffix, b"HTTP/1.1", (), b"abc", 1),
        (b"GET", suffix, b"HTTP/1.1", (), b"", 2),
        (b"POST", suffix, b"HTTP/1.1", (), b"def", 3),
    ], [0, 0, 0])


def test_many_distinct_lines_overflow_the_line_cache():
    data = b"".join(b"-:/n%d\r\n" % i for i in range(2100)) + b"-:/n0\r\n"
    dec, got = feed_whole(data)
    assert [r.target for r in got] == [b"/n%d" % i for i in range(2100)] + [b"/n0"]
    assert [r.number for r in got] == list(range(1, 2102))
    assert all(r.state is INITIAL_STATE for r in got)


def test_v_sets_version():
    run_vector(b"V:HTTP/1.0\r\n-:/old\r\nV:HTTP/1.1\r\n-:/new\r\n", [
        (b"GET", b"/old", b"HTTP/1.0", (), b"", 1),
        (b"GET", b"/new", b"HTTP/1.1", (), b"", 2),
    ], [0, 1])


def test_b_sets_base_and_suffix_is_appended():
    run_vector(b"B:/api/v1\r\n-:/users\r\n-:\r\n+:?q=1 1\r\nx", [
        (b"GET", b"/api/v1/users", b"HTTP/1.1", (), b"", 1),
        (b"GET", b"/api/v1", b"HTTP/1.1", (), b"", 2),
        (b"POST", b"/api/v1?q=1", b"HTTP/1.1", (), b"x", 3),
    ], [0, 0, 0])


def test_b_empty_restores_empty_base():
    run_vector(b"B:/a\r\n-:/b\r\nB:\r\n-:\r\n-:/c\r\n", [
        (b"GET", b"/a/b", b"HTTP/1.1", (), b"", 1),
        (b"GET", b"/", b"HTTP/1.1", (), b"", 2),
        (b"GET", b"/c", b"HTTP/1.1", (), b"", 3),
    ], [0, 1, 1])


def test_b_unchanged_keeps_state_object():
    run_vector(b"B:/a\r\n-:/1\r\nB:/a\r\n-:/2\r\n", [
        (b"GET", b"/a/1", b"HTTP/1.1", (), b"", 1),
        (b"GET", b"/a/2", b"HTTP/1.1", (), b"", 2),
    ], [0, 0])


def test_m_sets_method_for_both_request_opcodes():
    run_vector(b"M:PUT\r\n-:/a\r\n+:/b 2\r\nhi", [
        (b"PUT", b"/a", b"HTTP/1.1", (), b"", 1),
        (b"PUT", b"/b", b"HTTP/1.1", (), b"hi", 2),
    ], [0, 0])


def test_m_empty_restores_opcode_defaults():
    run_vector(b"M:DELETE\r\n-:/a\r\nM:\r\n-:/a\r\n+:/a 0\r\n", [
        (b"DELETE", b"/a", b"HTTP/1.1", (), b"", 1),
        (b"GET", b"/a", b"HTTP/1.1", (), b"", 2),
        (b"POST", b"/a", b"HTTP/1.1", (), b"", 3),
    ], [0, 1, 1])


def test_m_get_with_body_and_post_without():
    run_vector(b"M:GET\r\n+:/g 1\r\nx-:/g\r\nM:POST\r\n-:/p\r\n", [
        (b"GET", b"/g", b"HTTP/1.1", (), b"x", 1),
        (b"GET", b"/g", b"HTTP/1.1", (), b"", 2),
        (b"POST", b"/p", b"HTTP/1.1", (), b"", 3),
    ], [0, 0, 1])


def test_m_change_invalidates_cached_lines():
    # '-:/a' is cached under the first state; after M: it must not decode as GET.
    run_vector(b"-:/a\r\nM:HEAD\r\n-:/a\r\nM:\r\n-:/a\r\n", [
        (b"GET", b"/a", b"HTTP/1.1", (), b"", 1),
        (b"HEAD", b"/a", b"HTTP/1.1", (), b"", 2),
        (b"GET", b"/a", b"HTTP/1.1", (), b"", 3),
    ], [0, 1, 2])


def test_h_sets_headers_in_order_of_first_appearance():
    run_vector(b"H:Host: example.com\r\nH:X-A:1\r\nH:x-b:\t2 \r\n-:/\r\n", [
        (b"GET", b"/", b"HTTP/1.1", ((b"Host", b"example.com"), (b"X-A", b"1"), (b"x-b", b"2")), b"", 1),
    ])


def test_h_value_keeps_inner_whitespace_and_obs_text():
    run_vector(b"H:X-V:  a \t b\xe9  \r\n-:/\r\n", [
        (b"GET", b"/", b"HTTP/1.1", ((b"X-V", b"a \t b\xe9"),), b"", 1),
    ])


def test_h_empty_value():
    run_vector(b"H:X-Empty:\r\nH:X-Blank:   \r\n-:/\r\n", [
        (b"GET", b"/", b"HTTP/1.1", ((b"X-Empty", b""), (b"X-Blank", b"")), b"", 1),
    ])


def test_h_replacing_a_header_keeps_its_position_and_takes_the_new_name():
    run_vector(b"H:A: 1\r\nH:B: 2\r\n-:/\r\nH:a: 3\r\n-:/\r\n", [
        (b"GET", b"/", b"HTTP/1.1", ((b"A", b"1"), (b"B", b"2")), b"", 1),
        (b"GET", b"/", b"HTTP/1.1", ((b"a", b"3"), (b"B", b"2")), b"", 2),
    ], [0, 1])


def test_h_without_colon_removes_header_any_case():
    run_vector(b"H:A: 1\r\nH:B: 2\r\n-:/1\r\nH:a\r\n-:/2\r\nH:B\r\n-:/3\r\n", [
        (b"GET", b"/1", b"HTTP/1.1", ((b"A", b"1"), (b"B", b"2")), b"", 1),
        (b"GET", b"/2", b"HTTP/1.1", ((b"B", b"2"),), b"", 2),
        (b"GET", b"/3", b"HTTP/1.1", (), b"", 3),
    ], [0, 1, 2])


def test_h_removing_absent_header_keeps_state_object():
    run_vector(b"H:A: 1\r\n-:/1\r\nH:Nope\r\n-:/2\r\n", [
        (b"GET", b"/1", b"HTTP/1.1", ((b"A", b"1"),), b"", 1),
        (b"GET", b"/2", b"HTTP/1.1", ((b"A", b"1"),), b"", 2),
    ], [0, 0])


def test_h_resetting_same_value_keeps_state_object():
    run_vector(b"H:A: 1\r\n-:/1\r\nH:A:1\r\nH:A:   1\r\n-:/2\r\n", [
        (b"GET", b"/1", b"HTTP/1.1", ((b"A", b"1"),), b"", 1),
        (b"GET", b"/2", b"HTTP/1.1", ((b"A", b"1"),), b"", 2),
    ], [0, 0])


def test_h_removing_and_readding_header_gives_equal_but_new_state():
    dec, got = feed_whole(b"H:A: 1\r\n-:/\r\nH:A\r\nH:A: 1\r\n-:/\r\n")
    assert got[0] == got[1]
    assert got[0].state == got[1].state
    assert got[0].state is not got[1].state


def test_store_does_not_change_state_object():
    run_vector(b"H:A: 1\r\n-:/1\r\n>:r\r\n-:/2\r\n>:s\r\n-:/3\r\n", [
        (b"GET", b"/1", b"HTTP/1.1", ((b"A", b"1"),), b"", 1),
        (b"GET", b"/2", b"HTTP/1.1", ((b"A", b"1"),), b"", 2),
        (b"GET", b"/3", b"HTTP/1.1", ((b"A", b"1"),), b"", 3),
    ], [0, 0, 0])


def test_load_restores_version_base_method_and_headers():
    data = (
        b"V:HTTP/1.0\r\nB:/base\r\nM:PUT\r\nH:A: 1\r\n>:full\r\n-:/1\r\n"
        b"<:\r\n-:/2\r\n"
        b"<:full\r\n-:/3\r\n+:/4 1\r\nz"
    )
    run_vector(data, [
        (b"PUT", b"/base/1", b"HTTP/1.0", ((b"A", b"1"),), b"", 1),
        (b"GET", b"/2", b"HTTP/1.1", (), b"", 2),
        (b"PUT", b"/base/3", b"HTTP/1.0", ((b"A", b"1"),), b"", 3),
        (b"PUT", b"/base/4", b"HTTP/1.0", ((b"A", b"1"),), b"z", 4),
    ], [0, 1, 0, 0])


def test_load_then_modify_does_not_change_the_register():
    data = b"H:A: 1\r\n>:r\r\nH:A: 2\r\nH:B: 3\r\n-:/1\r\n<:r\r\n-:/2\r\n"
    got = run_vector(data, [
        (b"GET", b"/1", b"HTTP/1.1", ((b"A", b"2"), (b"B", b"3")), b"", 1),
        (b"GET", b"/2", b"HTTP/1.1", ((b"A", b"1"),), b"", 2),
    ], [0, 1])
    assert got[1].state.header(b"a") == b"1"


def test_store_overwrites_register():
    data = b"H:A: 1\r\n>:r\r\nH:A: 2\r\n>:r\r\n<:\r\n<:r\r\n-:/\r\n"
    run_vector(data, [(b"GET", b"/", b"HTTP/1.1", ((b"A", b"2"),), b"", 1)])


def test_load_register_shares_state_object_with_earlier_requests():
    data = b"H:A: 1\r\n-:/1\r\n>:r\r\nH:A: 2\r\n-:/2\r\n<:r\r\n-:/3\r\n<:r\r\n-:/4\r\n"
    run_vector(data, [
        (b"GET", b"/1", b"HTTP/1.1", ((b"A", b"1"),), b"", 1),
        (b"GET", b"/2", b"HTTP/1.1", ((b"A", b"2"),), b"", 2),
        (b"GET", b"/3", b"HTTP/1.1", ((b"A", b"1"),), b"", 3),
        (b"GET", b"/4", b"HTTP/1.1", ((b"A", b"1"),), b"", 4),
    ], [0, 1, 0, 0])


def test_load_empty_name_resets_to_initial_state_object():
    data = b"V:HTTP/1.0\r\nB:/b\r\nM:PUT\r\nH:A: 1\r\n-:/1\r\n<:\r\n-:/2\r\n+:/3 1\r\nx"
    got = run_vector(data, [
        (b"PUT", b"/b/1", b"HTTP/1.0", ((b"A", b"1"),), b"", 1),
        (b"GET", b"/2", b"HTTP/1.1", (), b"", 2),
        (b"POST", b"/3", b"HTTP/1.1", (), b"x", 3),
    ], [0, 1, 1])
    assert got[1].state is INITIAL_STATE


def test_register_names_may_use_unreserved_characters():
    data = b"H:A: 1\r\n>:Az09._~-\r\n<:\r\n<:Az09._~-\r\n-:/\r\n"
    run_vector(data, [(b"GET", b"/", b"HTTP/1.1", ((b"A", b"1"),), b"", 1)])


def test_state_lines_alone_decode_to_nothing():
    data = b"V:HTTP/1.0\r\nB:/x\r\nM:PUT\r\nH:A: 1\r\n>:r\r\n<:r\r\n<:\r\n"
    run_vector(data, [])
    dec, _ = feed_whole(data)
    assert dec.state is INITIAL_STATE


def test_decoder_state_property_tracks_lines():
    dec = Decoder()
    dec.feed(b"V:HTTP/1.0\r\nB:/x\r\nM:PUT\r\nH:A: 1\r\n")
    state = dec.state
    assert (state.version, state.base, state.method, state.headers) == (b"HTTP/1.0", b"/x", b"PUT", ((b"A", b"1"),))
    assert dec.feed(b"-:/y\r\n")[0].state is state


def test_state_object_shared_across_feed_calls():
    dec = Decoder()
    a = dec.feed(b"H:A: 1\r\n-:/1\r\n+:/2 3\r\nab")
    b = dec.feed(b"c-:/3\r\n")
    c = dec.feed(b"-:/1\r\n")
    assert [r.number for r in a + b + c] == [1, 2, 3, 4]
    assert [len(a), len(b), len(c)] == [1, 2, 1]
    assert b[0].body == b"abc"
    assert len({id(r.state) for r in a + b + c}) == 1


def test_body_split_across_reads_in_every_place():
    data = b"+:/s 10\r\n0123456789-:/t\r\n"
    for cut in range(len(data) + 1):
        for cut2 in range(cut, len(data) + 1):
            dec = Decoder()
            got = dec.feed(data[:cut]) + dec.feed(data[cut:cut2]) + dec.feed(data[cut2:])
            check(got, [
                (b"POST", b"/s", b"HTTP/1.1", (), b"0123456789", 1),
                (b"GET", b"/t", b"HTTP/1.1", (), b"", 2),
            ], [0, 0])


def test_decoded_request_equality_is_semantic():
    dec, got = feed_whole(b"H:A: 1\r\nH:b: 2\r\n-:/x\r\n")
    assert got[0] == Request(b"GET", b"/x", [(b"B", b"2"), (b"a", b"1")])
    assert got[0] != Request(b"GET", b"/x", [(b"A", b"1")])
    assert got[0] != Request(b"GET", b"/x", [(b"A", b"1"), (b"B", b"2")], version=b"HTTP/1.0")
    assert hash(got[0]) == hash(Request(b"GET", b"/x", [(b"b", b"2"), (b"A", b"1")]))


def test_crlf_split_between_reads():
    # A CR at the end of one read and its LF at the start of the next.
    dec = Decoder()
    assert dec.feed(b"-:/a\r") == []
    assert [r.target for r in dec.feed(b"\n-:/b\r")] == [b"/a"]
    assert [r.target for r in dec.feed(b"\n")] == [b"/b"]
