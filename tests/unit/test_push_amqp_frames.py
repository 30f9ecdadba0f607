"""The AMQP frame reader of push subscriptions, fed frames encoded by pika (an
independent implementation): each vector whole, one byte at a time, and with
the start of a further frame behind it."""

from __future__ import annotations

import pika.frame
import pika.spec
import pytest

from msghub.forward.amqp_frames import (
    MAX_FRAME, Delivery, FrameError, FrameReader, OtherFrame, Returned, ack_frame, decode_table,
)

FRAME_MAX = 4096


def deliver(tag: int, key: bytes = b"opra.IBM", body: bytes = b"hello", channel: int = 1,
            frame_max: int = FRAME_MAX, **properties) -> bytes:
    """basic.deliver + content header + body frames, as a broker sends them."""
    method = pika.spec.Basic.Deliver(consumer_tag="ctag-1", delivery_tag=tag, redelivered=False,
                                     exchange="push.x", routing_key=key.decode())
    out = pika.frame.Method(channel, method).marshal()
    props = pika.spec.BasicProperties(**properties)
    out += pika.frame.Header(channel, len(body), props).marshal()
    chunk = frame_max - 8
    for start in range(0, len(body), chunk):
        out += pika.frame.Body(channel, body[start : start + chunk]).marshal()
    return out


def method(m, channel: int = 1) -> bytes:
    return pika.frame.Method(channel, m).marshal()


HEARTBEAT = pika.frame.Heartbeat().marshal()
# The start of one more frame: a reader must keep it, and give nothing for it yet.
TRAILING = deliver(99)[:5]


def feed(data: bytes, mode: str) -> tuple[list, FrameReader]:
    reader = FrameReader()
    if mode == "whole":
        return reader.feed(data), reader
    if mode == "bytewise":
        out = []
        for i in range(len(data)):
            out += reader.feed(data[i : i + 1])
        return out, reader
    out = reader.feed(data + TRAILING)
    # The rest of the trailing frame completes it: nothing was lost or doubled.
    tail = reader.feed(deliver(99)[5:])
    assert [d.delivery_tag for d in tail] == [99]
    return out, reader


MODES = ("whole", "bytewise", "trailing")


@pytest.mark.parametrize("mode", MODES)
def test_a_delivery_is_one_event_with_its_key_message_id_and_body(mode):
    out, _ = feed(deliver(7, body=b"q" * 66, message_id="1-0000000007", content_type="text/plain"), mode)
    assert out == [Delivery(1, 7, b"opra.IBM", b"1-0000000007", b"", b"q" * 66)]


@pytest.mark.parametrize("mode", MODES)
def test_a_body_split_over_frames_is_joined(mode):
    body = bytes(range(256)) * 40  # 10 KiB: three body frames at frame_max 4096
    out, _ = feed(deliver(1, body=body), mode)
    assert [d.body for d in out] == [body]


@pytest.mark.parametrize("mode", MODES)
def test_an_empty_body_needs_no_body_frame(mode):
    out, _ = feed(deliver(3, body=b""), mode)
    assert out == [Delivery(1, 3, b"opra.IBM", None, b"", b"")]


@pytest.mark.parametrize("mode", MODES)
def test_other_frames_come_back_whole_and_in_wire_order(mode):
    close = method(pika.spec.Channel.Close(reply_code=406, reply_text="PRECONDITION_FAILED", class_id=0, method_id=0), 2)
    data = deliver(1) + HEARTBEAT + close + deliver(2)
    out, _ = feed(data, mode)
    assert out == [
        Delivery(1, 1, b"opra.IBM", None, b"", b"hello"),
        OtherFrame(0, HEARTBEAT),
        OtherFrame(2, close),
        Delivery(1, 2, b"opra.IBM", None, b"", b"hello"),
    ]


@pytest.mark.parametrize("mode", MODES)
def test_deliveries_on_two_channels_may_interleave(mode):
    one, two = deliver(1, b"a", b"x" * 5000, channel=1), deliver(1, b"b", b"y" * 10, channel=2)
    # Method and header of channel 1, then all of channel 2, then channel 1's bodies.
    split = len(one) - (5000 - 4088) - 8 - (4088 + 8)
    out, _ = feed(one[:split] + two + one[split:], mode)
    assert [(d.channel, d.routing_key, len(d.body)) for d in out] == [(2, b"b", 10), (1, b"a", 5000)]


@pytest.mark.parametrize("mode", MODES)
def test_stream_offsets_and_rabbitmq_field_types_are_decoded(mode):
    headers = {"x-stream-offset": 12345678901, "s": "text", "t": True, "nested": {"n": 1}, "list": [1, "a"]}
    out, _ = feed(deliver(5, headers=headers), mode)
    table = decode_table(out[0].headers)
    assert table == {"x-stream-offset": 12345678901, "s": b"text", "t": True, "nested": {"n": 1}, "list": [1, b"a"]}


def test_a_bad_frame_end_is_a_frame_error():
    data = bytearray(deliver(1))
    data[pika.frame.Method(1, pika.spec.Basic.Deliver(
        consumer_tag="ctag-1", delivery_tag=1, exchange="push.x", routing_key="opra.IBM")).marshal().__len__() - 1] = 0
    with pytest.raises(FrameError) as e:
        FrameReader().feed(bytes(data))
    assert e.value.reply_code == 501


def test_a_frame_longer_than_the_maximum_is_refused_before_it_is_buffered():
    reader = FrameReader()
    with pytest.raises(FrameError) as e:
        reader.feed(b"\x03\x00\x01" + (MAX_FRAME + 1).to_bytes(4, "big") + b"x")
    assert e.value.reply_code == 501


def test_a_method_frame_in_the_middle_of_a_delivery_is_unexpected():
    data = deliver(1)
    head_len = len(data) - len(pika.frame.Body(1, b"hello").marshal())
    with pytest.raises(FrameError) as e:
        FrameReader().feed(data[:head_len] + method(pika.spec.Basic.Ack(delivery_tag=1)))
    assert e.value.reply_code == 505


def test_a_body_longer_than_its_header_announced_is_a_frame_error():
    m = method(pika.spec.Basic.Deliver(consumer_tag="c", delivery_tag=1, exchange="x", routing_key="k"))
    header = pika.frame.Header(1, 5, pika.spec.BasicProperties()).marshal()
    with pytest.raises(FrameError):
        FrameReader().feed(m + header + pika.frame.Body(1, b"hello more").marshal())


def test_a_content_header_whose_properties_run_past_the_frame_is_a_frame_error():
    m = method(pika.spec.Basic.Deliver(consumer_tag="c", delivery_tag=1, exchange="x", routing_key="k"))
    # class 60, weight 0, size 1, flags: message-id present, but no property bytes.
    payload = b"\x00\x3c\x00\x00" + (1).to_bytes(8, "big") + b"\x00\x80"
    header = b"\x02\x00\x01" + len(payload).to_bytes(4, "big") + payload + b"\xce"
    with pytest.raises(FrameError):
        FrameReader().feed(m + header)


def test_an_ack_frame_acks_everything_up_to_its_tag():
    used, frame = pika.frame.decode_frame(ack_frame(3, 2**40))
    assert used == len(ack_frame(3, 2**40))
    assert frame.channel_number == 3
    assert isinstance(frame.method, pika.spec.Basic.Ack)
    assert (frame.method.delivery_tag, frame.method.multiple) == (2**40, True)


def returned(body: bytes = b"lost", channel: int = 1, **properties) -> bytes:
    """basic.return + content, as RabbitMQ sends an unroutable mandatory publish back."""
    m = pika.spec.Basic.Return(reply_code=312, reply_text="NO_ROUTE", exchange="ex", routing_key="nowhere")
    out = method(m, channel)
    out += pika.frame.Header(channel, len(body), pika.spec.BasicProperties(**properties)).marshal()
    if body:
        out += pika.frame.Body(channel, body).marshal()
    return out


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("body", [b"lost", b""])
def test_a_return_and_its_content_come_out_as_one_returned(mode, body):
    ack = method(pika.spec.Basic.Ack(delivery_tag=7))
    out, _ = feed(returned(body, message_id="3-0000000001") + ack, mode)
    assert out[0] == Returned(1, 312, b"NO_ROUTE", b"3-0000000001")
    assert isinstance(out[1], OtherFrame) and out[1].data == ack


def test_a_return_whose_arguments_run_past_the_frame_is_a_frame_error():
    frame = method(pika.spec.Basic.Return(reply_code=312, reply_text="NO_ROUTE", exchange="ex", routing_key="k"))
    size = int.from_bytes(frame[3:7], "big") - 3  # cut the routing key short
    cut = frame[:3] + size.to_bytes(4, "big") + frame[7 : 7 + size] + b"\xce"
    with pytest.raises(FrameError) as e:
        FrameReader().feed(cut)
    assert e.value.reply_code == 501
