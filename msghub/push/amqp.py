"""AMQP subscription sources: the only module of msghub.push that imports txamqp.

One consuming connection per hub (a ``ClientService``, separate from the
forwarder's publishing one, so a slow subscriber's flow control can never
hold up publishing) and one channel per subscriber, so that stopping a
subscriber is closing its channel: RabbitMQ then drops its consumer, and for
a binding its exclusive auto-delete queue, at once.

- A binding (``exchange`` + ``binding``) gets an exclusive auto-delete
  server-named queue bound with the binding's key (captures filled in).  Each
  delivery is acknowledged as soon as the subscriber has taken it (written or
  buffered), so the queue never grows at the broker; the subscriber's own
  byte bound and overflow policy apply as for taps.  ``prefetch`` bounds the
  deliveries in flight.
- A stream (``stream``) is consumed from ``Last-Event-ID`` + 1 (else from
  "next").  RabbitMQ 3.10 needs ``basic.qos`` and acks on stream consumers
  (``no_ack`` closes the whole connection with 540), so deliveries are acked
  only once written to the peer's socket buffer: a slow reader stops the
  acks, the broker stops at ``prefetch`` unacked deliveries, and nothing is
  dropped.  The delivered offset is in the ``x-stream-offset`` header; the
  first delivery after an offset the stream no longer holds is preceded by
  ``event: gap`` counting the offsets skipped (RabbitMQ does not number
  truncated segments one offset per message, so it is an upper bound).

Deliveries do not go through txamqp: ``_Protocol.dataReceived`` reads the
frames with ``msghub.forward.amqp_frames`` and gives each consumer the
deliveries of one read in one ``Subscriber.deliver`` call, then acks them
with one ``basic.ack`` (multiple=True) written directly.  Every other frame
(set-up, declarations, channel.close, heartbeats) goes to txamqp whole and
in wire order, after the deliveries read before it.
"""

from __future__ import annotations

import json
import string
import struct
from io import BytesIO
from typing import Any

from twisted.application.internet import ClientService
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from txamqp import spec as txspec
from txamqp.client import TwistedDelegate
from txamqp.codec import Codec
from txamqp.connection import Frame, Header
from txamqp.protocol import AMQClient, GarbageException

from msghub.config_amqp import AmqpConfig
from msghub.config_subscriptions import AmqpSource as AmqpSourceConfig
from msghub.config_subscriptions import SubscriptionConfig
from msghub.forward.amqp import SPEC_PATH, broker_service
from msghub.forward.amqp_frames import MAX_FRAME, Delivery, FrameError, FrameReader, OtherFrame, ack_frame, decode_table
from msghub.push.events import encode_event, encode_gap, field_text
from msghub.push.subscriber import Item, Subscriber

log = Logger()

FIRST_CHANNEL = 1
MAX_CHANNELS = 2047  # RabbitMQ's default channel_max


def stream_offset_problem(text: str) -> str | None:
    return None if text.isdigit() else "Last-Event-ID is not a stream offset"


def gap_item(missed: int | None, first: str | None, last: str | None) -> Item:
    """A gap in the middle of a source's events, in order with them."""
    body = json.dumps({"missed": missed, "from": first, "to": last}).encode()
    return Item("", "gap", body, encode_gap(missed, first, last))


# RabbitMQ's field-table types beyond the four txamqp 0.8 decodes: a stream
# delivery's x-stream-offset header is a signed 64-bit 'l', which txamqp's
# decoder refuses (ValueError: b'l'), dropping the whole connection.
_FIXED = {b"b": ">b", b"B": ">B", b"s": ">h", b"u": ">H", b"I": ">i", b"i": ">I", b"l": ">q", b"f": ">f",
          b"d": ">d", b"T": ">Q"}


class _Codec(Codec):
    def decode_table(self):
        size = self.decode_long()
        start = self.nread
        result = {}
        while self.nread - start < size:
            key = self.decode_shortstr()
            result[key] = self._field(self.read(1))
        return result

    def _field(self, kind: bytes):
        if kind in _FIXED:
            fmt = _FIXED[kind]
            return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]
        if kind == b"S" or kind == b"x":
            return self.decode_longstr()
        if kind == b"t":
            return self.decode_octet() != 0
        if kind == b"F":
            return self.decode_table()
        if kind == b"V":
            return None
        if kind == b"D":
            scale = self.decode_octet()
            return struct.unpack(">i", self.read(4))[0] / 10**scale
        if kind == b"A":
            size = self.decode_long()
            end = self.nread + size
            items = []
            while self.nread < end:
                items.append(self._field(self.read(1)))
            return items
        raise ValueError(f"unknown AMQP field type {kind!r}")


def _decode_header(spec, dec: Codec) -> Header:
    """A content header, its properties read with ``_Codec`` (txamqp's makes a plain Codec)."""
    c = _Codec(BytesIO(dec.decode_longbytes()))
    klass = spec.classes.byid[c.decode_short()]
    weight = c.decode_short()
    size = c.decode_longlong()
    present = []
    while True:
        flags = c.decode_short()
        present += [bool(flags >> bit & 1) for bit in range(15, 0, -1)]
        if not flags & 1:
            break
    properties = {str(f.name): c.decode(f.type) for f, there in zip(klass.fields, present) if there}
    return Header(klass, weight, size, **properties)


class _Delegate(TwistedDelegate):
    def connection_tune(self, ch, msg):
        # txamqp agrees to the broker's frame_max: so does our reader, if larger.
        self.client.reader.max_frame = max(msg.frame_max, MAX_FRAME)
        super().connection_tune(ch, msg)

    def channel_close(self, ch, msg):
        consumer = self.client.by_channel.get(ch.id)
        if consumer is not None:
            log.warn(
                "push amqp: broker closed channel {channel}: {code} {text}",
                channel=ch.id, code=msg.reply_code, text=msg.reply_text,
            )
        super().channel_close(ch, msg)
        if consumer is not None:
            consumer.broker_closed(msg.reply_code, msg.reply_text)


class _Protocol(AMQClient):
    def __init__(self, source: "AmqpPush", spec, config: AmqpConfig, clock) -> None:
        super().__init__(_Delegate(), config.vhost, spec, heartbeat=config.heartbeat, clock=clock)
        self.source = source
        self.by_channel: dict[int, _Consumer] = {}
        self.ready = False
        self.reader = FrameReader()

    def dataReceived(self, data: bytes) -> None:
        try:
            frames = self.reader.feed(data)
        except FrameError as e:
            log.error("push amqp: broker sent bad frames, dropping the connection: {error}", error=e)
            self.transport.loseConnection()
            return
        by_channel = self.by_channel
        batches: dict[_Consumer, list[Delivery]] = {}
        for frame in frames:
            if isinstance(frame, Delivery):
                consumer = by_channel.get(frame.channel)
                if consumer is None:
                    continue  # its consumer closed the channel: the broker requeues (or drops) it
                batch = batches.get(consumer)
                if batch is None:
                    batches[consumer] = [frame]
                else:
                    batch.append(frame)
                continue
            if batches:
                self._hand_over(batches)
                batches = {}
            if not isinstance(frame, OtherFrame):
                continue  # a basic.return: this connection publishes nothing, so none is owed
            self.frame_received(self._unpack_frame(frame.data))
            if self.transport.disconnecting:
                return
        if batches:
            self._hand_over(batches)
            # txamqp counts any frame as proof of life, and saw none of these.
            check = getattr(self, "checkHB", None)
            if check is not None and check.active():
                check.reset(self.heartbeatInterval * self.MAX_UNSEEN_HEARTBEAT)

    @staticmethod
    def _hand_over(batches: dict) -> None:
        for consumer, deliveries in batches.items():
            consumer.delivered(deliveries)

    def _unpack_frame(self, data: bytes):
        # txamqp's own, with a codec that knows every RabbitMQ field type.
        c = _Codec(BytesIO(data))
        frame_type = txspec.pythonize(self.spec.constants.byid[c.decode_octet()].name)
        channel = c.decode_short()
        decoder = Frame.DECODERS[frame_type]
        payload = _decode_header(self.spec, c) if decoder is Header else decoder.decode(self.spec, c)
        if c.decode_octet() != self.FRAME_END:
            raise GarbageException("frame error: bad frame end")
        return Frame(channel, payload)

    def connectionMade(self) -> None:
        super().connectionMade()
        cfg = self.source.config
        response = b"\0" + cfg.username.encode() + b"\0" + cfg.password.encode()
        self.start(response, "PLAIN").addCallbacks(self._started, self._failed)

    def _started(self, _) -> None:
        self.source.connected(self)

    def _failed(self, failure) -> None:
        log.error("push amqp: login failed: {error}", error=failure.getErrorMessage())
        self.transport.loseConnection()

    def connectionLost(self, reason) -> None:
        super().connectionLost(reason)
        self.ready = False
        self.source.disconnected(self)
        for consumer in list(self.by_channel.values()):
            consumer.broker_closed(320, "connection lost")


class _Factory(Factory):
    noisy = False  # a reconnecting broker would log "Starting factory <... at 0x...>" every attempt

    def __init__(self, source: "AmqpPush") -> None:
        self.source = source

    def buildProtocol(self, addr):
        s = self.source
        return _Protocol(s, s.spec, s.config, s.reactor)


class _Consumer:
    """One subscriber's channel and consumer (states: opening, consuming, closed)."""

    def __init__(self, push: "AmqpPush", proto: _Protocol, channel_id: int, sub: SubscriptionConfig,
                 subscriber: Subscriber, captures, last_id: str | None) -> None:
        self.push = push
        self.proto = proto
        self.channel_id = channel_id
        self.config = sub
        self.subscriber = subscriber
        self.captures = captures
        self.source = _amqp_of(sub)
        self.stream = self.source.stream
        self.next_offset = None if last_id is None else int(last_id) + 1
        self.state = "opening"
        self.channel: Any = None  # txamqp's channel, once open
        self.unacked: int | None = None  # highest delivery tag not yet acked
        self.events: dict[bytes, tuple[str, bytes]] = {}  # routing key -> (text, field_text), bounded below
        proto.by_channel[channel_id] = self
        subscriber.on_close = self.close
        if self.stream is not None:
            subscriber.flow = self.flow
            subscriber.lossless = True

    @defer.inlineCallbacks
    def start(self):
        cfg = self.source
        channel = yield self.proto.channel(self.channel_id)
        self.channel = channel
        yield channel.channel_open()
        yield channel.basic_qos(prefetch_count=cfg.prefetch)
        arguments = {}
        if self.stream is not None:
            queue = self.stream  # declared (or found) once per connection
            arguments["x-stream-offset"] = "next" if self.next_offset is None else self.next_offset
        else:
            ok = yield channel.queue_declare(queue="", exclusive=True, auto_delete=True)
            queue = ok.queue
            assert cfg.binding is not None  # an exchange source always has one (config_subscriptions)
            key = string.Formatter().vformat(cfg.binding, (), dict(self.captures))
            yield channel.queue_bind(queue=queue, exchange=cfg.exchange, routing_key=key)
        if self.state == "closed":
            return
        yield channel.basic_consume(queue=queue, no_ack=False, arguments=arguments)
        if self.state == "closed":
            return
        self.state = "consuming"
        self.subscriber.ready()

    def delivered(self, deliveries: list[Delivery]) -> None:
        """The deliveries of one read, in order: one hand-over, then one ack."""
        if self.state != "consuming":
            return
        events = self.events
        items = []
        for d in deliveries:
            key = d.routing_key
            event = events.get(key)
            if event is None:
                if len(events) > 1024:
                    events.clear()
                text = key.decode("utf-8", "replace")
                event = events[key] = (text, field_text(text))
            if self.stream is not None:
                found = decode_table(d.headers).get("x-stream-offset")
                offset = found if isinstance(found, int) else -1
                if self.next_offset is not None and offset > self.next_offset:
                    # Retention removed what came after the client's last id.  Only
                    # the first delivery is checked: the broker sends everything
                    # it holds after that, and its offsets may skip numbers.
                    items.append(gap_item(offset - self.next_offset, str(self.next_offset), str(offset - 1)))
                self.next_offset = None
                event_id = str(offset)
            else:
                event_id = d.message_id.decode("latin-1") if d.message_id else str(d.delivery_tag)
            items.append(Item(event_id, event[0], d.body, encode_event(event_id, event[1], d.body)))
        self.subscriber.deliver(items)
        self.unacked = deliveries[-1].delivery_tag
        if self.stream is None or not self.subscriber.paused:
            self._ack()

    def _ack(self) -> None:
        # Written directly: txamqp's basic_ack costs an inlineCallbacks and a
        # DeferredQueue, and its writer is idle between frames, so order holds.
        if self.unacked is not None and self.state == "consuming":
            self.proto.transport.write(ack_frame(self.channel_id, self.unacked))
            self.unacked = None

    def flow(self, reading: bool) -> None:
        """Streams: ack (and so let the broker send more) only while the peer reads."""
        if reading:
            self._ack()

    def close(self) -> None:
        """The subscriber went away: closing the channel ends the consumer and its queue."""
        if self.state == "closed":
            return
        was = self.state
        self.state = "closed"
        proto = self.proto
        proto.by_channel.pop(self.channel_id, None)

        def reusable(_=None) -> None:
            # txamqp keeps a closed channel object under its id: forget it
            # before the id serves another subscriber.
            if proto.channels.get(self.channel_id) is self.channel or self.channel is None:
                proto.channels.pop(self.channel_id, None)
            if proto is self.push.proto:
                self.push.free_channel(self.channel_id)

        if self.channel is not None and proto.ready and was != "broker-closed":
            self.channel.channel_close(reply_code=200, reply_text="subscriber gone").addBoth(reusable)
        else:
            reusable()

    def broker_closed(self, code: int, text: str) -> None:
        if self.state == "closed":
            return
        starting = self.state == "opening"
        self.state = "broker-closed"
        if starting:
            self.subscriber.fail(503, f"broker refused the subscription: {code} {text}")
        else:
            self.subscriber.close()
        self.close()


class AmqpPush(Service):
    """Subscription sources served from RabbitMQ; ``source(config)`` is one per subscription."""

    def __init__(self, config: AmqpConfig, reactor) -> None:
        self.config = config
        self.reactor = reactor
        self.spec = txspec.load(str(SPEC_PATH))
        self.proto: _Protocol | None = None
        self.service: ClientService | None = None
        self.free: list[int] = []
        self.next_channel = FIRST_CHANNEL
        self.waiting: list[list] = []  # subscribe() calls held while (re)connecting
        self.streams: list[str] = []  # stream queues to look up or declare on each connect

    WAIT = 5.0  # seconds a subscriber waits for the broker connection before 503

    def source(self, sub: SubscriptionConfig) -> "AmqpSource":
        stream = _amqp_of(sub).stream
        if stream is not None and stream not in self.streams:
            self.streams.append(stream)
        return AmqpSource(self, sub)

    def startService(self) -> None:
        super().startService()
        self.service = broker_service(self.reactor, self.config, _Factory(self))
        self.service.startService()

    def stopService(self):
        super().stopService()
        if self.service is not None:
            return self.service.stopService()
        return None

    @defer.inlineCallbacks
    def _declare_streams(self, proto: _Protocol):
        """Each stream source's queue: left as it is if it exists, else declared a plain durable stream.

        A declare must repeat an existing queue's arguments exactly (406
        otherwise), and retention is the owner's choice, so look first.
        """
        for stream in self.streams:
            channel = yield proto.channel(self.take_channel())
            yield channel.channel_open()
            try:
                yield channel.queue_declare(queue=stream, passive=True)
            except Exception:  # 404: the broker closed that channel; declare on a new one
                channel = yield proto.channel(self.take_channel())
                yield channel.channel_open()
                yield channel.queue_declare(queue=stream, durable=True, arguments={"x-queue-type": "stream"})
            yield channel.channel_close(reply_code=200, reply_text="declared")

    def connected(self, proto: _Protocol) -> None:
        self.proto = proto
        self.free = []
        self.next_channel = FIRST_CHANNEL

        def failed(failure) -> None:
            log.error("push amqp: declaring streams failed: {error}", error=failure.getErrorMessage())
            proto.transport.loseConnection()

        self._declare_streams(proto).addCallbacks(lambda _: self._ready(proto), failed)

    def _ready(self, proto: _Protocol) -> None:
        proto.ready = True
        log.info("push amqp: connected")
        waiting, self.waiting = self.waiting, []
        for source, subscriber, captures, last_id, timer in waiting:
            if timer.active():
                timer.cancel()
                source.subscribe(subscriber, captures, last_id)

    def wait(self, source: "AmqpSource", subscriber: Subscriber, captures, last_id: str | None) -> None:
        """Hold a subscriber (an EventSource does not retry after a 503) until connected, briefly."""
        entry: list = [source, subscriber, captures, last_id]

        def give_up() -> None:
            if entry in self.waiting:
                self.waiting.remove(entry)
            subscriber.fail(503, "broker unavailable")

        entry.append(self.reactor.callLater(self.WAIT, give_up))
        self.waiting.append(entry)
        def forget() -> None:
            if entry in self.waiting:
                self.waiting.remove(entry)

        subscriber.on_close = forget

    def disconnected(self, proto: _Protocol) -> None:
        if self.proto is proto:
            self.proto = None

    def take_channel(self) -> int | None:
        if self.free:
            return self.free.pop()
        if self.next_channel > MAX_CHANNELS:
            return None
        self.next_channel += 1
        return self.next_channel - 1

    def free_channel(self, channel_id: int) -> None:
        self.free.append(channel_id)


class AmqpSource:
    """One subscription's source: a consumer per subscriber."""

    def __init__(self, push: AmqpPush, config: SubscriptionConfig) -> None:
        self.push = push
        self.config = config
        if _amqp_of(config).stream is not None:
            self.last_id_problem = stream_offset_problem

    def subscribe(self, subscriber: Subscriber, captures, last_id: str | None) -> None:
        proto = self.push.proto
        if proto is None or not proto.ready:
            self.push.wait(self, subscriber, captures, last_id)
            return
        channel_id = self.push.take_channel()
        if channel_id is None:
            subscriber.fail(503, "too many subscribers on the broker connection")
            return
        if _amqp_of(self.config).stream is None:
            last_id = None  # a fresh queue holds nothing from before
        consumer = _Consumer(self.push, proto, channel_id, self.config, subscriber, captures, last_id)

        def failed(failure) -> None:
            if consumer.state == "opening":
                log.warn("push amqp: subscribing failed: {error}", error=failure.getErrorMessage())
                consumer.broker_closed(503, failure.getErrorMessage())

        consumer.start().addErrback(failed)


def _amqp_of(sub: SubscriptionConfig) -> AmqpSourceConfig:
    """The AMQP source of a subscription this module serves (never a tap)."""
    assert sub.amqp is not None, sub
    return sub.amqp
