"""AMQP 0-9-1 frames msghub writes and reads itself, without txamqp.

txamqp builds every outgoing frame through a Codec and a DeferredQueue and
dispatches every incoming method through two more Deferreds; at tens of
thousands of messages a second that machinery is the bottleneck.  So the
publish path (basic.publish + content header + body frames) and the confirm
path (basic.ack / basic.nack) are encoded and parsed here with ``struct``,
and txamqp keeps connection setup, channels and declarations.  Pure
functions: no Twisted, no I/O.
"""

from __future__ import annotations

from struct import Struct, pack
from typing import Iterable

FRAME_METHOD, FRAME_HEADER, FRAME_BODY = 1, 2, 3
FRAME_END = b"\xce"
FRAME_OVERHEAD = 8  # type, channel, size, frame-end

BASIC = 60
BASIC_PUBLISH, BASIC_ACK, BASIC_NACK = 40, 80, 120
CONNECTION = 10
CONNECTION_START_OK, CONNECTION_BLOCKED, CONNECTION_UNBLOCKED = 11, 60, 61

# Basic property flags, in wire order (AMQP 0-9-1 4.2.6.1, basic class fields).
CONTENT_TYPE = 1 << 15
CONTENT_ENCODING = 1 << 14
HEADERS = 1 << 13
DELIVERY_MODE = 1 << 12
MESSAGE_ID = 1 << 7
TIMESTAMP = 1 << 6
APP_ID = 1 << 3

_frame_head = Struct(">BHI")
_header_head = Struct(">HHQH")
_long = Struct(">I")
_longlong = Struct(">Q")
_method_head = Struct(">HH")

APP_ID_VALUE = b"msghub"

# Hop-by-hop fields (RFC 9110 7.6.1) and credentials never leave the hub.
NOT_FORWARDED = frozenset(
    (
        b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade",
        b"transfer-encoding", b"content-length", b"authorization", b"proxy-authorization",
        b"cookie", b"content-type", b"content-encoding",
    )
)


def shortstr(data: bytes) -> bytes:
    if len(data) > 255:
        raise ValueError("AMQP short string longer than 255 bytes")
    return bytes((len(data),)) + data


def longstr(data: bytes) -> bytes:
    return _long.pack(len(data)) + data


def table_entry(name: bytes, value: bool | int | dict | str | bytes) -> bytes:
    if isinstance(value, bool):
        return shortstr(name) + (b"t\x01" if value else b"t\x00")
    if isinstance(value, int):
        return shortstr(name) + b"l" + pack(">q", value)
    if isinstance(value, dict):
        return shortstr(name) + b"F" + encode_table(value)
    if isinstance(value, str):
        value = value.encode("utf-8")
    return shortstr(name) + b"S" + longstr(value)


def encode_table(table: dict) -> bytes:
    entries = b"".join(
        table_entry(k.encode("utf-8") if isinstance(k, str) else k, v) for k, v in table.items()
    )
    return _long.pack(len(entries)) + entries


def frame(kind: int, channel: int, payload: bytes) -> bytes:
    return _frame_head.pack(kind, channel, len(payload)) + payload + FRAME_END


def method_frame(channel: int, class_id: int, method_id: int, arguments: bytes) -> bytes:
    return frame(FRAME_METHOD, channel, _method_head.pack(class_id, method_id) + arguments)


def publish_frame(channel: int, exchange: bytes, routing_key: bytes, mandatory: bool) -> bytes:
    # reserved-1 (short 0), exchange, routing-key, bits: mandatory, immediate.
    arguments = b"\x00\x00" + shortstr(exchange) + shortstr(routing_key) + (b"\x01" if mandatory else b"\x00")
    return method_frame(channel, BASIC, BASIC_PUBLISH, arguments)


def start_ok_frame(client_properties: dict, mechanism: bytes, response: bytes, locale: bytes) -> bytes:
    arguments = encode_table(client_properties) + shortstr(mechanism) + longstr(response) + shortstr(locale)
    return method_frame(0, CONNECTION, CONNECTION_START_OK, arguments)


class StaticProperties:
    """The part of a message's properties that is the same for every message of
    one (state, decision): computed once, reused per message."""

    __slots__ = ("flags", "prefix", "entries", "suffix")

    def __init__(
        self, headers: Iterable[tuple[bytes, bytes]], method: bytes, route: str, user: str | None, persistent: bool
    ) -> None:
        flags = HEADERS | MESSAGE_ID | TIMESTAMP | APP_ID
        prefix = b""
        entries = []
        content_type = content_encoding = None
        # Fields the Connection header names are hop-by-hop too (RFC 9110 7.6.1).
        hop = {t.strip().lower() for n, v in headers if n.lower() == b"connection" for t in v.split(b",")}
        for name, value in headers:
            lname = name.lower()
            if lname == b"content-type":
                content_type = value
            elif lname == b"content-encoding":
                content_encoding = value
            elif (
                lname not in NOT_FORWARDED and lname not in hop and len(name) <= 255
                # x-msghub-* are the hub's to set: a producer must not forge x-msghub-user.
                and not lname.startswith(b"x-msghub-")
            ):
                entries.append(table_entry(name, value))
        if content_type is not None and len(content_type) <= 255:
            flags |= CONTENT_TYPE
            prefix += shortstr(content_type)
        if content_encoding is not None and len(content_encoding) <= 255:
            flags |= CONTENT_ENCODING
            prefix += shortstr(content_encoding)
        entries.append(table_entry(b"x-msghub-method", method))
        entries.append(table_entry(b"x-msghub-route", route))
        if user is not None:
            entries.append(table_entry(b"x-msghub-user", user))
        suffix = b""
        if persistent:
            flags |= DELIVERY_MODE
            suffix = b"\x02"
        self.flags = flags
        self.prefix = prefix
        self.entries = b"".join(entries)
        self.suffix = suffix  # delivery-mode comes between headers and message-id


_TARGET_KEY = shortstr(b"x-msghub-target") + b"S"
_APP_ID = shortstr(APP_ID_VALUE)


def content_frames(
    channel: int,
    frame_max: int,
    static: StaticProperties,
    target: bytes,
    message_id: bytes,
    timestamp: int,
    body: bytes,
) -> bytes:
    """The content header frame and body frames of one message."""
    entries = static.entries + _TARGET_KEY + _long.pack(len(target)) + target
    payload = b"".join(
        (
            _header_head.pack(BASIC, 0, len(body), static.flags),
            static.prefix,
            _long.pack(len(entries)),
            entries,
            static.suffix,
            bytes((len(message_id),)),
            message_id,
            _longlong.pack(timestamp),
            _APP_ID,
        )
    )
    out = _frame_head.pack(FRAME_HEADER, channel, len(payload)) + payload + FRAME_END
    if not body:
        return out
    chunk = frame_max - FRAME_OVERHEAD
    if len(body) <= chunk:
        return out + _frame_head.pack(FRAME_BODY, channel, len(body)) + body + FRAME_END
    parts = [out]
    for start in range(0, len(body), chunk):
        piece = body[start : start + chunk]
        parts.append(_frame_head.pack(FRAME_BODY, channel, len(piece)) + piece + FRAME_END)
    return b"".join(parts)


def parse_confirm(frame_bytes: bytes) -> tuple[int, int, bool, bool] | None:
    """``(channel, delivery_tag, multiple, nack)`` if this is basic.ack/nack, else None."""
    if frame_bytes[0] != FRAME_METHOD or len(frame_bytes) < 20:
        return None
    class_id, method_id = _method_head.unpack_from(frame_bytes, 7)
    if class_id != BASIC or method_id not in (BASIC_ACK, BASIC_NACK):
        return None
    channel = int.from_bytes(frame_bytes[1:3], "big")
    tag = _longlong.unpack_from(frame_bytes, 11)[0]
    return channel, tag, bool(frame_bytes[19] & 1), method_id == BASIC_NACK


def parse_blocked(frame_bytes: bytes) -> bool | None:
    """True for connection.blocked, False for connection.unblocked, else None.

    The RabbitMQ-extended spec txamqp loads predates these methods, so txamqp
    cannot decode them at all.
    """
    if frame_bytes[0] != FRAME_METHOD or len(frame_bytes) < 12:
        return None
    class_id, method_id = _method_head.unpack_from(frame_bytes, 7)
    if class_id == CONNECTION and method_id in (CONNECTION_BLOCKED, CONNECTION_UNBLOCKED):
        return method_id == CONNECTION_BLOCKED
    return None


_END = 0xCE


class Template:
    """The frames of one (properties, target, publish method) with the per-message fields left out.

    What varies per message: the body (and so its length, twice), the
    message id (and so the header frame's length) and the timestamp.  A
    message with a body of 1 .. ``frame_max - 8`` bytes is then two
    ``struct`` packs and a join of five pieces; others (empty, or split over
    several body frames) go through ``content_frames``.
    """

    __slots__ = ("method", "static", "target", "channel", "fixed", "head", "head_args", "tail", "tail_args")

    def __init__(self, channel: int, method: bytes, static: StaticProperties, target: bytes) -> None:
        entries = static.entries + _TARGET_KEY + _long.pack(len(target)) + target
        # Header payload: class, weight, body size, flags, then the properties.
        middle = _header_head.pack(BASIC, 0, 0, static.flags)[12:] + static.prefix + _long.pack(len(entries)) \
            + entries + static.suffix
        self.method = method
        self.static = static
        self.target = target
        self.channel = channel
        # Header payload length without the message id: 14 + properties + id length byte + timestamp + app-id.
        self.fixed = 12 + len(middle) + 1 + 8 + len(_APP_ID)
        lead = method + bytes((FRAME_HEADER,)) + channel.to_bytes(2, "big")
        # lead, payload size, class, weight, body size, flags + properties up to message-id, id length
        self.head = Struct(f">{len(lead)}sIHHQ{len(middle)}sB").pack
        self.head_args = (lead, middle)
        trail = _APP_ID + bytes((_END, FRAME_BODY)) + channel.to_bytes(2, "big")
        # timestamp, app-id, header frame end, body frame type and channel, body size
        self.tail = Struct(f">Q{len(trail)}sI").pack
        self.tail_args = trail

    def frames(self, message_id: bytes, timestamp: int, body: bytes, out: list) -> None:
        """Append the frames of one message with a body of 1 .. frame_max - 8 bytes to ``out``."""
        lead, middle = self.head_args
        n = len(body)
        out += (
            self.head(lead, self.fixed + len(message_id), BASIC, 0, n, middle, len(message_id)),
            message_id,
            self.tail(timestamp, self.tail_args, n),
            body,
            FRAME_END,
        )
