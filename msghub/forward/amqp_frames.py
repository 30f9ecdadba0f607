"""AMQP 0-9-1 frames read off the wire without txamqp: bytes in, deliveries, returns and frames out.

txamqp runs every incoming frame through an ``inlineCallbacks`` dispatch,
two DeferredQueues and its ``Codec``: ~170 us of CPU per delivery
(docs/benchmarks.md, "Push").  A consuming connection receives almost
nothing but ``basic.deliver`` + content header + body frames, so this
reader splits the bytes into frames itself, assembles each delivery into
one ``Delivery``, and hands every other frame back whole, in order, for
txamqp to decode.  The publisher (``msghub.forward.amqp_client``) reads its
connection with the same reader: a ``basic.return`` and its content come
out as one ``Returned``, and it settles the basic.ack / basic.nack frames
itself instead of handing them to txamqp.  The push consumer
(``msghub.push.amqp``) uses it for deliveries; it sits here, beside the
encoder (``amqp_wire``), as the one reader of the AMQP wire format.
``ack_frame`` is the one frame the consumer writes per read, built with the
publisher's encoder.  No Twisted, no I/O.
"""

from __future__ import annotations

from struct import Struct
from typing import NamedTuple

from msghub.forward.amqp_wire import (  # the encoder's structs: one definition of the frame layout
    BASIC,
    BASIC_ACK,
    FRAME_BODY,
    FRAME_HEADER,
    FRAME_METHOD,
    _frame_head,
    _header_head,
    _long,
    _longlong,
    method_frame,
)

FRAME_END = 0xCE
_DELIVER = b"\x00\x3c\x00\x3c"  # class basic (60), method deliver (60)
_RETURN = b"\x00\x3c\x00\x32"  # class basic (60), method return (50)

# RabbitMQ's default frame_max is 128 KiB; a frame announcing more than this
# is garbage, not a frame we could ever have agreed to.
MAX_FRAME = 1 << 20
# RabbitMQ refuses messages larger than this (max_message_size, 3.8+);
# a content header announcing more is garbage too.
MAX_BODY = 128 << 20


def ack_frame(channel: int, delivery_tag: int) -> bytes:
    """basic.ack of every delivery up to ``delivery_tag`` (multiple=True)."""
    return method_frame(channel, BASIC, BASIC_ACK, _longlong.pack(delivery_tag) + b"\x01")


class FrameError(Exception):
    """The broker sent bytes that are not the frames AMQP allows here.

    ``reply_code`` is AMQP's own: 501 frame-error (bad framing) or 505
    unexpected-frame (a frame out of its place in a delivery).  It ends the
    connection, never the process.
    """

    def __init__(self, reply_code: int, text: str) -> None:
        super().__init__(f"{reply_code} {text}")
        self.reply_code = reply_code
        self.text = text


class Delivery(NamedTuple):
    """One ``basic.deliver`` with its content, as the consumer needs it."""

    channel: int
    delivery_tag: int
    routing_key: bytes
    message_id: bytes | None  # None when the property is absent
    headers: bytes  # the raw field table, length prefix included; b"" when absent (see decode_table)
    body: bytes


class Returned(NamedTuple):
    """One ``basic.return`` (an unroutable mandatory publish) with what the publisher needs of its content."""

    channel: int
    reply_code: int
    reply_text: bytes
    message_id: bytes | None


class OtherFrame(NamedTuple):
    """A whole frame (type byte to frame-end) that is not part of a delivery."""

    channel: int
    data: bytes


class _Partial:
    """A delivery whose content is still arriving (per channel, so at most one per channel)."""

    __slots__ = ("tag", "key", "message_id", "headers", "size", "got", "parts", "header_seen", "is_return")

    def __init__(self, tag: int, key: bytes, is_return: bool = False) -> None:
        self.tag = tag  # a return's reply code
        self.key = key  # a return's reply text
        self.is_return = is_return
        self.message_id: bytes | None = None
        self.headers = b""
        self.size = 0
        self.got = 0
        self.parts: list[bytes] = []
        self.header_seen = False

    def finish(self, channel: int, body: bytes) -> Delivery | Returned:
        if self.is_return:
            return Returned(channel, self.tag, self.key, self.message_id)
        return Delivery(channel, self.tag, self.key, self.message_id, self.headers, body)


class FrameReader:
    """One per connection.  ``feed(data)`` returns what the bytes completed, in wire order.

    Buffers: at most one incomplete frame (``MAX_FRAME`` + 8 bytes), and per
    channel one delivery whose body is still arriving (``MAX_BODY``).
    """

    def __init__(self, max_frame: int = MAX_FRAME, max_body: int = MAX_BODY) -> None:
        self.max_frame = max_frame
        self.max_body = max_body
        self._buffer = b""
        self._partial: dict[int, _Partial] = {}

    def feed(self, data: bytes) -> list[Delivery | Returned | OtherFrame]:
        if self._buffer:
            data = self._buffer + data
        out: list[Delivery | Returned | OtherFrame] = []
        partial = self._partial
        max_frame = self.max_frame
        pos, end = 0, len(data)
        while end - pos >= 8:
            kind, channel, size = _frame_head.unpack_from(data, pos)
            if size > max_frame:
                raise FrameError(501, f"a frame of {size} bytes, more than {max_frame}")
            start = pos + 7
            stop = start + size  # the frame-end octet
            if stop >= end:
                break
            if data[stop] != FRAME_END:
                raise FrameError(501, f"frame end {data[stop]:#x}, not 0xce")
            current = partial.get(channel) if partial else None
            if current is None:
                if kind == FRAME_METHOD and data[start : start + 4] == _DELIVER:
                    tag, key = _deliver(data, start + 4, stop)
                    # The usual case: header and one body frame follow in this read.
                    whole = self._whole(data, stop + 1, end, channel, tag, key)
                    if whole is not None:
                        out.append(whole[0])
                        pos = whole[1]
                        continue
                    partial[channel] = _Partial(tag, key)
                elif kind == FRAME_METHOD and data[start : start + 4] == _RETURN:
                    code, text = _return(data, start + 4, stop)
                    partial[channel] = _Partial(code, text, True)
                else:
                    out.append(OtherFrame(channel, data[pos : stop + 1]))
            elif not current.header_seen:
                if kind != FRAME_HEADER:
                    raise FrameError(505, f"frame type {kind} on channel {channel}, expected a content header")
                current.message_id, current.headers, current.size = self._header(data, start, stop)
                current.header_seen = True
                if current.size == 0:
                    del partial[channel]
                    out.append(current.finish(channel, b""))
            else:
                if kind != FRAME_BODY:
                    raise FrameError(505, f"frame type {kind} on channel {channel}, expected a content body")
                current.got += size
                if current.got > current.size:
                    raise FrameError(501, f"content body longer than the {current.size} bytes announced")
                current.parts.append(data[start:stop])
                if current.got == current.size:
                    del partial[channel]
                    body = current.parts[0] if len(current.parts) == 1 else b"".join(current.parts)
                    out.append(current.finish(channel, body))
            pos = stop + 1
        self._buffer = data[pos:] if pos < end else b""
        return out

    def _whole(self, data: bytes, p: int, end: int, channel: int, tag: int, key: bytes):
        """``(Delivery, next position)`` if a header and a single body frame for it follow, else None.

        None leaves everything to the frame-by-frame path, which also finds
        any error in them.
        """
        if end - p < 22:
            return None
        kind, ch, size = _frame_head.unpack_from(data, p)
        stop = p + 7 + size
        if kind != FRAME_HEADER or ch != channel or size > self.max_frame or stop >= end or data[stop] != FRAME_END:
            return None
        message_id, headers, body_size = self._header(data, p + 7, stop)
        if body_size == 0:
            return Delivery(channel, tag, key, message_id, headers, b""), stop + 1
        p = stop + 1
        if end - p < 8:
            return None
        kind, ch, size = _frame_head.unpack_from(data, p)
        stop = p + 7 + size
        if kind != FRAME_BODY or ch != channel or size != body_size or stop >= end or data[stop] != FRAME_END:
            return None
        return Delivery(channel, tag, key, message_id, headers, data[p + 7 : stop]), stop + 1

    def _header(self, data: bytes, start: int, stop: int) -> tuple[bytes | None, bytes, int]:
        """A basic content header: ``(message_id, raw headers table, body size)``."""
        if stop - start < 14:
            raise FrameError(501, "content header too short")
        class_id, _weight, size, flags = _header_head.unpack_from(data, start)
        if class_id != BASIC:
            raise FrameError(505, f"content header of class {class_id} for basic.deliver")
        if size > self.max_body:
            raise FrameError(501, f"a body of {size} bytes, more than {self.max_body}")
        p = start + 14
        last = flags
        while last & 1:  # further flag words (basic has 14 properties: never in practice)
            last = int.from_bytes(data[p : p + 2], "big")
            p += 2
        message_id = None
        headers = b""
        try:
            # Property order: content-type, content-encoding, headers,
            # delivery-mode, priority, correlation-id, reply-to, expiration,
            # message-id, ...; the ones after message-id are not needed.
            if flags & 0xC000:
                if flags & 0x8000:
                    p += 1 + data[p]
                if flags & 0x4000:
                    p += 1 + data[p]
            if flags & 0x2000:
                n = 4 + _long.unpack_from(data, p)[0]
                headers = data[p : p + n]
                p += n
            if flags & 0x1F00:
                if flags & 0x1000:
                    p += 1
                if flags & 0x0800:
                    p += 1
                if flags & 0x0400:
                    p += 1 + data[p]
                if flags & 0x0200:
                    p += 1 + data[p]
                if flags & 0x0100:
                    p += 1 + data[p]
            if flags & 0x0080:
                n = data[p]
                message_id = data[p + 1 : p + 1 + n]
                p += 1 + n
        except (IndexError, ValueError) as e:
            raise FrameError(501, "content header properties run past the frame") from e
        if p > stop:
            raise FrameError(501, "content header properties run past the frame")
        return message_id, headers, size


def _deliver(data: bytes, p: int, stop: int) -> tuple[int, bytes]:
    """basic.deliver's arguments: consumer-tag, delivery-tag, redelivered, exchange, routing-key."""
    try:
        p += 1 + data[p]  # consumer-tag: one consumer per channel, the channel says whose
        (tag,) = _longlong.unpack_from(data, p)
        p += 9  # delivery-tag, redelivered
        p += 1 + data[p]  # exchange
        n = data[p]
        key = data[p + 1 : p + 1 + n]
        p += 1 + n
    except (IndexError, ValueError) as e:
        raise FrameError(501, "basic.deliver arguments run past the frame") from e
    if p > stop:
        raise FrameError(501, "basic.deliver arguments run past the frame")
    return tag, key


def _return(data: bytes, p: int, stop: int) -> tuple[int, bytes]:
    """basic.return's arguments: reply-code, reply-text, exchange, routing-key (the last two not needed)."""
    if stop - p < 5:
        raise FrameError(501, "basic.return arguments run past the frame")
    code = int.from_bytes(data[p : p + 2], "big")
    p += 2
    fields = []
    for _ in range(3):  # reply-text, exchange, routing-key: short strings
        end = p + 1 + data[p] if p < stop else stop + 1
        if end > stop:
            raise FrameError(501, "basic.return arguments run past the frame")
        fields.append(data[p + 1 : end])
        p = end
    return code, fields[0]


# Field-table value types: RabbitMQ's (which differ from AMQP 0-9-1's own
# table for 's', 'I'/'i' and 'l'), fixed-size ones by struct format.
_FIXED = {
    ord(k): Struct(f) for k, f in (
        ("b", ">b"), ("B", ">B"), ("s", ">h"), ("u", ">H"), ("I", ">i"), ("i", ">I"), ("l", ">q"),
        ("f", ">f"), ("d", ">d"), ("T", ">Q"),
    )
}


def decode_table(raw: bytes) -> dict[str, object]:
    """A ``Delivery.headers`` field table as a dict (keys as text, strings as bytes)."""
    if not raw:
        return {}
    try:
        table, _ = _table(raw, 0)
    except (IndexError, ValueError, KeyError) as e:
        raise FrameError(501, "malformed field table") from e
    return table


def _table(data: bytes, p: int) -> tuple[dict, int]:
    (size,) = _long.unpack_from(data, p)
    p += 4
    end = p + size
    if end > len(data):
        raise ValueError("table longer than its frame")
    out = {}
    while p < end:
        n = data[p]
        key = data[p + 1 : p + 1 + n].decode("utf-8", "replace")
        out[key], p = _value(data, p + 1 + n)
    return out, p


def _value(data: bytes, p: int) -> tuple[object, int]:
    kind = data[p]
    p += 1
    fixed = _FIXED.get(kind)
    if fixed is not None:
        return fixed.unpack_from(data, p)[0], p + fixed.size
    if kind in b"Sx":
        (n,) = _long.unpack_from(data, p)
        return data[p + 4 : p + 4 + n], p + 4 + n
    if kind == ord("t"):
        return data[p] != 0, p + 1
    if kind == ord("F"):
        return _table(data, p)
    if kind == ord("V"):
        return None, p
    if kind == ord("D"):
        scale = data[p]
        return int.from_bytes(data[p + 1 : p + 5], "big", signed=True) / 10**scale, p + 5
    if kind == ord("A"):
        (n,) = _long.unpack_from(data, p)
        p += 4
        end = p + n
        items = []
        while p < end:
            item, p = _value(data, p)
            items.append(item)
        return items, p
    raise ValueError(f"unknown field type {kind!r}")
