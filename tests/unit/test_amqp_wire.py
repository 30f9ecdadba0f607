"""The AMQP frames msghub writes and reads itself, checked byte for byte and
against an independent implementation: pika's own frame decoder and encoder."""

from __future__ import annotations

import os

import pika.frame
import pika.spec
import pytest

from msghub.forward import amqp_wire as wire

FRAME_MAX = 4096  # the smallest frame_max a broker may impose (AMQP 0-9-1 4.2.1)


def decode_all(data: bytes) -> list:
    """Every frame in ``data``, decoded by pika; fails on trailing garbage."""
    frames = []
    while data:
        used, frame = pika.frame.decode_frame(data)
        assert used > 0 and frame is not None, f"incomplete frame: {data[:32]!r}"
        frames.append(frame)
        data = data[used:]
    return frames


def server_frame(method, channel: int = 1) -> bytes:
    return pika.frame.Method(channel, method).marshal()


def static(headers=(), method=b"POST", route="orders", user=None, persistent=False) -> wire.StaticProperties:
    return wire.StaticProperties(headers, method, route, user, persistent)


def message_frames(body: bytes, frame_max: int = FRAME_MAX, props: wire.StaticProperties | None = None,
                   target: bytes = b"/orders/x", message_id: bytes = b"1-0000000007",
                   timestamp: int = 1_700_000_000) -> bytes:
    return wire.content_frames(1, frame_max, props or static(), target, message_id, timestamp, body)


# -- method frames ------------------------------------------------------------------


def test_publish_frame_matches_hand_computed_bytes():
    assert wire.publish_frame(1, b"ex", b"rk", True) == (
        b"\x01"  # method frame
        b"\x00\x01"  # channel 1
        b"\x00\x00\x00\x0d"  # payload size 13
        b"\x00\x3c\x00\x28"  # basic.publish (60, 40)
        b"\x00\x00"  # reserved-1
        b"\x02ex"  # exchange
        b"\x02rk"  # routing-key
        b"\x01"  # mandatory=1, immediate=0
        b"\xce"
    )
    assert wire.publish_frame(1, b"", b"", False)[-2:] == b"\x00\xce"


def test_publish_frame_decodes_as_basic_publish_in_pika():
    (frame,) = decode_all(wire.publish_frame(7, b"orders", b"orders.eu.new", True))
    assert frame.channel_number == 7
    method = frame.method
    assert isinstance(method, pika.spec.Basic.Publish)
    assert (method.exchange, method.routing_key, method.mandatory, method.immediate) == (
        "orders", "orders.eu.new", True, False,
    )


def test_method_frame_matches_hand_computed_bytes():
    # connection.close-ok (10, 51) on channel 0: no arguments.
    assert wire.method_frame(0, 10, 51, b"") == b"\x01\x00\x00\x00\x00\x00\x04\x00\x0a\x00\x33\xce"
    (frame,) = decode_all(wire.method_frame(0, 10, 51, b""))
    assert isinstance(frame.method, pika.spec.Connection.CloseOk)


def test_start_ok_carries_the_nested_capabilities_table():
    frame_bytes = wire.start_ok_frame(
        {"product": "msghub", "capabilities": {"publisher_confirms": True, "connection.blocked": True}, "n": 5},
        b"PLAIN", b"\0guest\0guest", b"en_US",
    )
    (frame,) = decode_all(frame_bytes)
    method = frame.method
    assert isinstance(method, pika.spec.Connection.StartOk)
    assert frame.channel_number == 0
    assert method.client_properties == {
        "product": "msghub",
        "capabilities": {"publisher_confirms": True, "connection.blocked": True},
        "n": 5,
    }
    assert (method.mechanism, method.response, method.locale) == ("PLAIN", b"\0guest\0guest", "en_US")


def test_encode_table_matches_hand_computed_bytes():
    assert wire.encode_table({"a": b"xy", "t": False, "n": -2}) == (
        b"\x00\x00\x00\x18"  # 24 bytes of entries
        b"\x01aS\x00\x00\x00\x02xy"  # long string: 9 bytes
        b"\x01tt\x00"  # boolean: 4 bytes
        b"\x01nl\xff\xff\xff\xff\xff\xff\xff\xfe"  # signed 64-bit: 11 bytes
    )


def test_short_strings_longer_than_255_bytes_are_refused():
    assert wire.shortstr(b"x" * 255)[0] == 255
    with pytest.raises(ValueError):
        wire.shortstr(b"x" * 256)
    with pytest.raises(ValueError):
        wire.publish_frame(1, b"ex", b"k" * 256, True)


# -- content header and body frames ---------------------------------------------------


def test_content_frames_match_hand_computed_bytes_for_a_small_message():
    props = static([(b"Content-Type", b"text/plain")], b"POST", "r")
    got = wire.content_frames(1, FRAME_MAX, props, b"/t", b"1-0000000002", 0x6553F100, b"hi")
    table = (
        b"\x0fx-msghub-methodS\x00\x00\x00\x04POST"  # 25
        b"\x0ex-msghub-routeS\x00\x00\x00\x01r"  # 21
        b"\x0fx-msghub-targetS\x00\x00\x00\x02/t"  # 23
    )
    assert len(table) == 69
    payload = (
        b"\x00\x3c"  # class basic
        b"\x00\x00"  # weight
        b"\x00\x00\x00\x00\x00\x00\x00\x02"  # body size
        b"\xa0\xc8"  # content-type, headers, message-id, timestamp, app-id
        b"\x0atext/plain"
        b"\x00\x00\x00\x45" + table
        + b"\x0c1-0000000002"
        b"\x00\x00\x00\x00\x65\x53\xf1\x00"
        b"\x06msghub"
    )
    assert len(payload) == 126
    assert got == (
        b"\x02\x00\x01\x00\x00\x00\x7e" + payload + b"\xce"  # header frame
        + b"\x03\x00\x01\x00\x00\x00\x02hi\xce"  # one body frame
    )


def test_property_flags_and_order_decode_in_pika():
    headers = [
        (b"Content-Type", b"application/json"),
        (b"Content-Encoding", b"gzip"),
        (b"X-Trace", b"abc"),
        (b"Authorization", b"Bearer secret"),
        (b"Cookie", b"session=1"),
        (b"Connection", b"keep-alive"),
        (b"TE", b"trailers"),
        (b"Host", b"hub.example"),
    ]
    props = static(headers, b"PUT", "orders", user="feed", persistent=True)
    header, *_ = decode_all(message_frames(b"{}", props=props, target=b"/orders/7?x=1"))
    assert isinstance(header, pika.frame.Header)
    assert header.body_size == 2
    p = header.properties
    assert p.content_type == "application/json"
    assert p.content_encoding == "gzip"
    assert p.delivery_mode == 2
    assert p.message_id == "1-0000000007"
    assert p.timestamp == 1_700_000_000
    assert p.app_id == "msghub"
    assert p.headers == {
        "X-Trace": "abc",
        "Host": "hub.example",
        "x-msghub-method": "PUT",
        "x-msghub-route": "orders",
        "x-msghub-user": "feed",
        "x-msghub-target": "/orders/7?x=1",
    }
    for absent in ("correlation_id", "reply_to", "expiration", "type", "user_id", "cluster_id", "priority"):
        assert getattr(p, absent) is None


def test_producer_cannot_forge_the_hubs_own_x_msghub_headers():
    headers = [
        (b"X-Msghub-User", b"mallory"),
        (b"x-msghub-route", b"elsewhere"),
        (b"X-MSGHUB-TARGET", b"/forged"),
        (b"x-msghub-extra", b"1"),
        (b"X-Real", b"kept"),
    ]
    data = message_frames(b"x", props=static(headers, route="orders", user=None), target=b"/orders/1")
    header, _ = decode_all(data)
    assert header.properties.headers == {
        "X-Real": "kept",
        "x-msghub-method": "POST",
        "x-msghub-route": "orders",
        "x-msghub-target": "/orders/1",
    }
    # Each key exactly once on the wire (a decoder that keeps the first of a
    # repeated key would otherwise see the forged value).
    assert data.lower().count(b"x-msghub-route") == 1
    assert b"mallory" not in data and b"/forged" not in data


def test_headers_named_in_connection_are_hop_by_hop_and_not_forwarded():
    headers = [(b"Connection", b"keep-alive, X-Hop ,x-other-hop"), (b"X-Hop", b"1"), (b"X-Other-Hop", b"2"),
               (b"X-End", b"3")]
    header, _ = decode_all(message_frames(b"x", props=static(headers)))
    assert {k for k in header.properties.headers if not k.startswith("x-msghub-")} == {"X-End"}


def test_content_encoding_alone_and_non_persistent_leave_other_flags_clear():
    props = static([(b"content-encoding", b"br")], persistent=False)
    header, _ = decode_all(message_frames(b"x", props=props))
    p = header.properties
    assert p.content_type is None
    assert p.content_encoding == "br"
    assert p.delivery_mode is None
    assert p.message_id == "1-0000000007"
    assert p.app_id == "msghub"


def test_content_type_longer_than_a_short_string_is_left_out():
    props = static([(b"Content-Type", b"t/" + b"x" * 300)])
    header, _ = decode_all(message_frames(b"x", props=props))
    assert header.properties.content_type is None
    assert header.properties.message_id == "1-0000000007"


def test_empty_body_has_a_header_frame_and_no_body_frame():
    (header,) = decode_all(message_frames(b""))
    assert isinstance(header, pika.frame.Header) and header.body_size == 0


@pytest.mark.parametrize(
    "size, frames",
    [
        (1, 1),
        (FRAME_MAX - 8, 1),
        (FRAME_MAX - 7, 2),
        (3 * FRAME_MAX, 4),
        ((1 << 20) + 1, -(-((1 << 20) + 1) // (FRAME_MAX - 8))),
    ],
)
def test_body_is_split_into_frames_no_larger_than_frame_max(size, frames):
    body = os.urandom(size)
    data = message_frames(body)
    header, *bodies = decode_all(data)
    assert header.body_size == size
    assert len(bodies) == frames
    assert all(isinstance(b, pika.frame.Body) and b.channel_number == 1 for b in bodies)
    assert all(len(b.fragment) + 8 <= FRAME_MAX for b in bodies)
    assert all(len(b.fragment) == FRAME_MAX - 8 for b in bodies[:-1])
    assert b"".join(b.fragment for b in bodies) == body


def test_body_frames_follow_the_negotiated_frame_max():
    body = os.urandom(3 * 131072)
    header, *bodies = decode_all(message_frames(body, frame_max=131072))
    assert [len(b.fragment) for b in bodies] == [131064, 131064, 131064, 24]
    assert b"".join(b.fragment for b in bodies) == body


# -- frames from the broker ---------------------------------------------------------------


def test_parse_confirm_reads_ack_and_nack_with_multiple_flag():
    assert wire.parse_confirm(server_frame(pika.spec.Basic.Ack(delivery_tag=5, multiple=True))) == (1, 5, True, False)
    assert wire.parse_confirm(server_frame(pika.spec.Basic.Ack(delivery_tag=1 << 40), 3)) == (3, 1 << 40, False, False)
    assert wire.parse_confirm(server_frame(pika.spec.Basic.Nack(delivery_tag=9, multiple=False, requeue=True))) == (
        1, 9, False, True,
    )
    assert wire.parse_confirm(server_frame(pika.spec.Basic.Nack(delivery_tag=9, multiple=True))) == (1, 9, True, True)


def test_parse_confirm_ignores_every_other_frame():
    assert wire.parse_confirm(server_frame(pika.spec.Basic.QosOk())) is None
    assert wire.parse_confirm(server_frame(pika.spec.Channel.CloseOk())) is None
    assert wire.parse_confirm(server_frame(pika.spec.Basic.Return(312, "NO_ROUTE", "ex", "rk"))) is None
    assert wire.parse_confirm(pika.frame.Heartbeat().marshal()) is None
    assert wire.parse_confirm(pika.frame.Body(1, b"\x00" * 40).marshal()) is None
    assert wire.parse_confirm(pika.frame.Header(1, 3, pika.spec.BasicProperties()).marshal()) is None


def test_parse_blocked_reads_blocked_and_unblocked_only():
    assert wire.parse_blocked(server_frame(pika.spec.Connection.Blocked(reason="low on memory"), 0)) is True
    assert wire.parse_blocked(server_frame(pika.spec.Connection.Unblocked(), 0)) is False
    assert wire.parse_blocked(server_frame(pika.spec.Connection.CloseOk(), 0)) is None
    assert wire.parse_blocked(server_frame(pika.spec.Basic.Ack(delivery_tag=1))) is None
    assert wire.parse_blocked(pika.frame.Heartbeat().marshal()) is None


@pytest.mark.parametrize("body_size", [1, 66, FRAME_MAX - 9, FRAME_MAX - 8])  # one body frame: what a template is for
@pytest.mark.parametrize("message_id", [b"3-0000000001", b"ffffff-ffffffffff"])
@pytest.mark.parametrize("persistent, headers", [(False, ()), (True, ((b"Content-Type", b"text/plain"),
                                                                      (b"X-Trace", b"t-1")))])
def test_a_template_writes_exactly_the_frames_content_frames_does(body_size, message_id, persistent, headers):
    props = static(headers, persistent=persistent, user="feed")
    method = wire.publish_frame(1, b"ex", b"orders.new", True)
    template = wire.Template(1, method, props, b"/orders/new?x=1")
    body = os.urandom(body_size)
    out: list[bytes] = []
    template.frames(message_id, 1700000000, body, out)
    expected = method + wire.content_frames(1, FRAME_MAX, props, b"/orders/new?x=1", message_id, 1700000000, body)
    assert b"".join(out) == expected
    assert template.method == method
