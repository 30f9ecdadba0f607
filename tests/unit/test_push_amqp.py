"""AMQP subscription sources over a StringTransport: the broker's side is spoken with pika's codec."""

from __future__ import annotations

import pika.frame
import pika.spec
from twisted.internet.testing import MemoryReactorClock, StringTransport

from msghub.config_amqp import AmqpConfig
from msghub.config_subscriptions import AmqpSource as AmqpSourceConfig
from msghub.config_subscriptions import SubscriptionConfig
from msghub.push.amqp import AmqpPush, _Factory

from test_push_amqp_frames import deliver, method


class FakeSubscriber:
    """What a source sees of a subscriber: each ``deliver`` call's events, in order."""

    def __init__(self) -> None:
        self.on_close = self.flow = None
        self.lossless = self.paused = False
        self.opened = False
        self.batches: list[list] = []
        self.failed = None

    def ready(self, replay=(), gap=None) -> None:
        self.opened = True

    def deliver(self, items) -> None:
        self.batches.append([(item.id, item.event, item.body) for item in items])

    def fail(self, status: int, reason: str) -> None:
        self.failed = (status, reason)

    def close(self) -> None:
        if self.on_close is not None:
            self.on_close()


def written(transport: StringTransport) -> list:
    data = transport.value()
    transport.clear()
    out = []
    while data:
        used, frame = pika.frame.decode_frame(data)
        data = data[used:]
        out.append(frame)
    return out


def consuming(amqp: AmqpSourceConfig, heartbeat: int = 0, reactor=None):
    """A connected source with one subscriber consuming on its own channel."""
    push = AmqpPush(AmqpConfig(heartbeat=heartbeat), reactor or MemoryReactorClock())
    source = push.source(SubscriptionConfig(name="s", match="/s", amqp=amqp))
    proto = _Factory(push).buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(method(pika.spec.Connection.Start(server_properties={}, mechanisms=b"PLAIN",
                                                         locales=b"en_US"), 0))
    proto.dataReceived(method(pika.spec.Connection.Tune(channel_max=2047, frame_max=131072, heartbeat=heartbeat), 0))
    proto.dataReceived(method(pika.spec.Connection.OpenOk(), 0))
    if amqp.stream is not None:
        proto.dataReceived(method(pika.spec.Channel.OpenOk()))
        proto.dataReceived(method(pika.spec.Queue.DeclareOk(queue=amqp.stream, message_count=0, consumer_count=0)))
        proto.dataReceived(method(pika.spec.Channel.CloseOk()))
    assert proto.ready
    subscriber = FakeSubscriber()
    source.subscribe(subscriber, {}, None)
    channel = max(proto.by_channel)
    proto.dataReceived(method(pika.spec.Channel.OpenOk(), channel))
    proto.dataReceived(method(pika.spec.Basic.QosOk(), channel))
    if amqp.stream is None:
        proto.dataReceived(method(pika.spec.Queue.DeclareOk(queue="amq.gen-1", message_count=0, consumer_count=0),
                                  channel))
        proto.dataReceived(method(pika.spec.Queue.BindOk(), channel))
    proto.dataReceived(method(pika.spec.Basic.ConsumeOk(consumer_tag="ctag-1"), channel))
    assert subscriber.opened
    transport.clear()
    return proto, transport, subscriber, channel


BINDING = AmqpSourceConfig(exchange="push.x", binding="opra.IBM")


def test_the_deliveries_of_one_read_reach_the_subscriber_in_one_call_and_are_acked_once():
    proto, transport, subscriber, channel = consuming(BINDING)
    proto.dataReceived(b"".join(deliver(tag, body=b"q%d" % tag, channel=channel, message_id=f"1-{tag:010d}")
                                for tag in (1, 2, 3)))
    assert subscriber.batches == [[(f"1-{t:010d}", "opra.IBM", b"q%d" % t) for t in (1, 2, 3)]]
    [ack] = written(transport)
    assert ack.channel_number == channel and isinstance(ack.method, pika.spec.Basic.Ack)
    assert (ack.method.delivery_tag, ack.method.multiple) == (3, True)


def test_a_delivery_split_across_reads_is_delivered_and_acked_when_complete():
    proto, transport, subscriber, channel = consuming(BINDING)
    data = deliver(1, body=b"x" * 10000, channel=channel)
    proto.dataReceived(data[:5000])
    assert subscriber.batches == [] and transport.value() == b""
    proto.dataReceived(data[5000:])
    assert subscriber.batches == [[("1", "opra.IBM", b"x" * 10000)]]  # no message-id: the delivery tag
    assert [f.method.delivery_tag for f in written(transport)] == [1]


def test_a_stream_delivery_is_not_acked_while_the_reader_is_paused_and_is_once_it_reads():
    proto, transport, subscriber, channel = consuming(AmqpSourceConfig(stream="log", prefetch=20))
    subscriber.paused = True
    proto.dataReceived(deliver(1, b"log", b"a", channel=channel, headers={"x-stream-offset": 40})
                       + deliver(2, b"log", b"b", channel=channel, headers={"x-stream-offset": 41}))
    assert subscriber.batches == [[("40", "log", b"a"), ("41", "log", b"b")]]
    assert transport.value() == b""
    subscriber.paused = False
    subscriber.flow(True)
    [ack] = written(transport)
    assert (ack.method.delivery_tag, ack.method.multiple) == (2, True)


def test_after_the_subscriber_closes_its_channel_is_closed_and_late_deliveries_are_dropped():
    proto, transport, subscriber, channel = consuming(BINDING)
    subscriber.close()
    [close] = written(transport)
    assert isinstance(close.method, pika.spec.Channel.Close)
    proto.dataReceived(deliver(1, channel=channel))
    assert subscriber.batches == [] and transport.value() == b""


def test_bad_framing_from_the_broker_drops_the_connection():
    proto, transport, subscriber, channel = consuming(BINDING)
    proto.dataReceived(b"\x01\x00\x01\x00\x00\x00\x04abcd\x00")
    assert transport.disconnecting


def test_deliveries_alone_keep_the_broker_connection_alive():
    # txamqp gives up after three heartbeat intervals without a frame it saw;
    # deliveries no longer pass through it, yet they prove the broker alive.
    reactor = MemoryReactorClock()
    proto, transport, subscriber, channel = consuming(BINDING, heartbeat=10, reactor=reactor)
    for tag in range(1, 11):
        reactor.advance(10)
        proto.dataReceived(deliver(tag, channel=channel))
    assert not transport.disconnecting and len(subscriber.batches) == 10
    reactor.advance(31)
    assert transport.disconnecting  # and silence still ends it


def test_the_reader_accepts_frames_as_large_as_the_broker_tuned_for():
    push = AmqpPush(AmqpConfig(heartbeat=0), MemoryReactorClock())
    proto = _Factory(push).buildProtocol(None)
    proto.makeConnection(StringTransport())
    proto.dataReceived(method(pika.spec.Connection.Start(server_properties={}, mechanisms=b"PLAIN",
                                                         locales=b"en_US"), 0))
    proto.dataReceived(method(pika.spec.Connection.Tune(channel_max=2047, frame_max=4 << 20, heartbeat=0), 0))
    assert proto.reader.max_frame == 4 << 20
