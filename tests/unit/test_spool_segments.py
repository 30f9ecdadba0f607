"""The segment codec: the documented layout, round trips, and how groups are split into segments.

Also the page size of the file that holds them.  Otherwise no SQLite here:
``encode_segment``/``encode_segments`` in, bytes out, and ``decode_segment`` back.  Messages are built the way the compact ingress
builds them (one header tuple, route, user and captures object shared by the
messages of one state and decision) and, for the other encoder path, with
those fields differing from message to message.
"""

from __future__ import annotations

import shutil
import sqlite3
import struct
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from msghub.message import NO_CAPTURES, Message
from msghub.spool import Spool, schema
from msghub.spool.store import PAGE_SIZE, SMALL_CAP

OPRA = ((b"Content-Type", b"application/x-opra-quote"), (b"Accept-Encoding", b"identity"))
OTHER = ((b"Content-Type", b"text/plain"),)
CAPTURES = {"name": "opra"}


def message(i: int, *, headers=OPRA, body: bytes | None = None, target: bytes = b"/spool/opra", route: str = "spool",
            user: str | None = None, captures=CAPTURES, method: bytes = b"POST", number: int = 0) -> Message:
    return Message((1 << 40) + i, method, target, headers, b"Q%012d" % i if body is None else body, route, user,
                   captures, 1.7e9 + i / 8, number)


def stored(m: Message) -> Message:
    """What reading ``m`` back gives: credentials left out, ``number`` 0."""
    headers = tuple(pair for pair in m.headers if pair[0].lower() not in schema.NOT_STORED)
    return m._replace(headers=headers, number=0)


def contexts(data: bytes) -> int:
    return struct.unpack_from("<4sII", data)[2]


def round_trip(messages: list[Message]) -> list[Message]:
    data = schema.encode_segment(messages)
    out = schema.decode_segment(data)
    assert out == [stored(m) for m in messages]
    return out


# -- the documented layout (docs/hub.md, "Segments") ---------------------------


def test_segment_bytes_follow_the_documented_layout():
    messages = [message(0, body=b"ab", number=7), message(1, body=b"", target=b"/spool/x", number=8)]
    ctx = b"".join(struct.pack("<I", len(f)) + f for f in (b"POST", b"spool")) + struct.pack("<I", 0xFFFFFFFF)
    block = b"Content-Type: application/x-opra-quote\r\nAccept-Encoding: identity\r\n"
    ctx += struct.pack("<I", len(block)) + block + struct.pack("<I", 15) + b'{"name":"opra"}'
    expected = (
        b"MHS2" + struct.pack("<II", 2, 1) + ctx
        + struct.pack("<2q", (1 << 40), (1 << 40) + 1) + struct.pack("<2d", 1.7e9, 1.7e9 + 1 / 8)
        + struct.pack("<2I", 0, 0) + struct.pack("<2I", 11, 8) + struct.pack("<2I", 2, 0)
        + b"/spool/opra/spool/x" + b"ab"
    )
    assert schema.encode_segment(messages) == expected


def test_contexts_are_numbered_in_order_of_first_use():
    messages = [message(0, headers=OTHER), message(1), message(2, headers=OTHER)]
    data = schema.encode_segment(messages)
    count = len(messages)
    index_at = len(data) - sum(len(m.target) + len(m.body) for m in messages) - 12 * count
    assert struct.unpack_from(f"<{count}I", data, index_at) == (0, 1, 0)
    assert data.index(b"text/plain") < data.index(b"x-opra-quote")


# -- round trips ----------------------------------------------------------------


def test_one_shared_context_is_stored_once_and_round_trips():
    messages = [message(i) for i in range(1000)]
    data = schema.encode_segment(messages)
    assert contexts(data) == 1
    assert data.count(b"application/x-opra-quote") == 1
    out = round_trip(messages)
    assert all(m.headers is out[0].headers for m in out)  # decoded once per context, shared


def test_an_empty_segment_round_trips():
    data = schema.encode_segment([])
    assert data == b"MHS2" + bytes(8)
    assert schema.decode_segment(data) == []
    assert schema.encode_segments([]) == []


def test_empty_headers_round_trip():
    round_trip([message(i, headers=()) for i in range(3)])


def test_differing_header_blocks_in_one_segment_each_stored_once_in_message_order():
    messages = [message(i, headers=OTHER if i % 3 == 1 else OPRA) for i in range(9)]
    data = schema.encode_segment(messages)
    assert contexts(data) == 2
    assert data.count(b"text/plain") == 1
    out = round_trip(messages)
    assert [m.headers for m in out] == [m.headers for m in messages]


def test_equal_header_tuples_that_are_distinct_objects_share_one_context():
    # Plain HTTP ingress keeps one header tuple per connection: equal, not identical.
    copies = [tuple(list(OPRA)) for _ in range(4)]
    assert copies[0] is not copies[1]
    assert contexts(schema.encode_segment([message(i, headers=copies[i]) for i in range(4)])) == 1
    mixed = [message(i, headers=copies[i], user="feed" if i == 3 else None) for i in range(4)]
    assert contexts(schema.encode_segment(mixed)) == 2
    round_trip(mixed)


def test_users_routes_methods_and_captures_differing_per_message_round_trip():
    messages = [
        message(0),
        message(1, user="feed"),
        message(2, route="other"),
        message(3, method=b"PUT"),
        message(4, captures={"name": "x"}),
        message(5, captures=NO_CAPTURES),
        message(6, user=""),  # an empty user name is not anonymous
        message(7),
    ]
    data = schema.encode_segment(messages)
    assert contexts(data) == 7
    out = round_trip(messages)
    assert out[6].user == "" and out[0].user is None


def test_equal_captures_in_distinct_dicts_are_merged_into_one_context():
    messages = [message(0, user="a", captures={"name": "x"}), message(1, captures={"name": "x"}),
                message(2, captures={"name": "x"})]
    assert contexts(schema.encode_segment(messages)) == 2
    round_trip(messages)


def test_zero_length_bodies_round_trip():
    round_trip([message(i, body=b"") for i in range(5)])
    round_trip([message(0, body=b""), message(1, body=b"x"), message(2, body=b"")])


def test_large_bodies_round_trip():
    big = bytes(range(256)) * (4 << 12)  # 4 MiB
    out = round_trip([message(0, body=big), message(1, body=b"small"), message(2, body=big[::-1])])
    assert len(out[0].body) == 4 << 20


def test_differing_targets_round_trip():
    round_trip([message(i, target=b"/spool/%d?q=%s" % (i, b"x" * i)) for i in range(20)])


def test_credentials_are_not_stored():
    headers = (*OPRA, (b"Authorization", b"Basic Zm9vOmJhcg=="), (b"proxy-authorization", b"x"))
    data = schema.encode_segment([message(0, headers=headers), message(1, headers=headers, user="feed")])
    assert b"Zm9v" not in data and b"roxy" not in data
    assert schema.decode_segment(data)[0].headers == OPRA


def test_the_header_cache_is_filled_and_used():
    cache: dict = {}
    schema.encode_segment([message(0)], cache)
    assert cache == {OPRA: b"Content-Type: application/x-opra-quote\r\nAccept-Encoding: identity\r\n"}
    cache[OPRA] = b"X-Cached: yes\r\n"  # proves the encoder takes the block from the cache
    assert schema.decode_segment(schema.encode_segment([message(1)], cache))[0].headers == ((b"X-Cached", b"yes"),)


field_value = st.binary(max_size=12).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"").strip())
header_blocks = st.lists(st.tuples(st.sampled_from([b"A", b"B-C", b"X-Seq"]), field_value), max_size=3).map(tuple)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([OPRA, OTHER, ()]) | header_blocks, st.sampled_from([None, "feed", "u"]),
                          st.binary(max_size=40), st.sampled_from([CAPTURES, NO_CAPTURES])), max_size=30))
def test_any_mix_of_contexts_and_bodies_round_trips(specs):
    round_trip([message(i, headers=h, user=u, body=b, captures=c) for i, (h, u, b, c) in enumerate(specs)])


# -- splitting a commit group into segments --------------------------------------


def test_a_small_group_is_one_segment_with_its_count_and_body_bytes():
    messages = [message(i, body=b"x" * i) for i in range(10)]
    [(count, size, data)] = schema.encode_segments(messages)
    assert (count, size) == (10, sum(range(10)))
    assert data == schema.encode_segment(messages)


def test_a_group_is_split_by_count_and_by_body_bytes_like_split_segments():
    by_count = [message(i, body=b"") for i in range(2 * schema.SEGMENT_MAX_COUNT + 5)]
    body = b"b" * (schema.SEGMENT_MAX_BYTES // 3 + 1)
    by_bytes = [message(i, body=body) for i in range(7)]
    huge = [message(0, body=b"a"), message(1, body=b"h" * (schema.SEGMENT_MAX_BYTES + 1)), message(2, body=b"c")]
    for group in (by_count, by_bytes, huge):
        parts = schema.encode_segments(group)
        split = list(schema.split_segments(group))
        assert [count for count, _, _ in parts] == [len(p) for p in split]
        assert [size for _, size, _ in parts] == [schema.segment_bytes(p) for p in split]
        assert [data for _, _, data in parts] == [schema.encode_segment(p) for p in split]
        assert [m for _, _, data in parts for m in schema.decode_segment(data)] == [stored(m) for m in group]
    assert [len(p) for p in schema.split_segments(by_count)] == [schema.SEGMENT_MAX_COUNT] * 2 + [5]
    assert [len(p) for p in schema.split_segments(by_bytes)] == [2, 2, 2, 1]
    assert [len(p) for p in schema.split_segments(huge)] == [1, 1, 1]  # an oversized body gets a segment alone


def test_bodies_that_fill_a_segment_exactly_stay_together():
    half = b"h" * (schema.SEGMENT_MAX_BYTES // 2)
    assert [len(p) for p in schema.split_segments([message(i, body=half) for i in range(3)])] == [2, 1]


# -- the file's page size ---------------------------------------------------------


def page_size(path: Path, max_bytes: int | None = None) -> int:
    s = Spool(str(path), Clock(), max_bytes=max_bytes)
    s.open()
    try:
        return s._conn.execute("PRAGMA page_size").fetchone()[0]
    finally:
        s.close()  # nothing queued: closes at once


def test_a_new_spool_file_gets_larger_pages_unless_its_cap_is_small(tmp_path):
    assert PAGE_SIZE > 4096
    assert page_size(tmp_path / "new.db") == PAGE_SIZE
    assert page_size(tmp_path / "capped.db", max_bytes=SMALL_CAP) == PAGE_SIZE
    assert page_size(tmp_path / "small.db", max_bytes=SMALL_CAP - 1) == 4096


def test_an_existing_spool_file_keeps_its_page_size(tmp_path):
    path = tmp_path / "v1.db"
    shutil.copy(Path(__file__).parent.parent / "fixtures" / "spool_v1.db", path)
    conn = sqlite3.connect(path)
    before = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    assert before != PAGE_SIZE
    assert page_size(path) == before  # migrated in place, pages as they were
