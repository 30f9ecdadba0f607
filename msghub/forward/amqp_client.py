"""The publisher's broker connection: the only module of the forwarder that imports txamqp.

A ``BrokerLink`` is one TCP connection.  txamqp does the handshake, opens
the publishing channel, declares what the conf declares and selects confirm
mode; then the link reports itself ready.  From then on the link only
writes the bytes it is given and reports what the broker says, through a
``BrokerEvents`` object it was built with (the forwarder's policy): confirms,
returns, blocked/unblocked, and the connection's end with its error.  It
holds no other reference and decides nothing.

Incoming bytes are split into frames by ``FrameReader`` (the reader the push
consumer uses): basic.ack / basic.nack, basic.return with its content and
connection.blocked / unblocked are settled here without txamqp, whose
per-frame machinery (two ``inlineCallbacks``, a ``DeferredLock`` and a
heartbeat reschedule per frame) cost ~20 us per ack frame, a fifth of the
hub's time per message (docs/benchmarks.md, AMQP).  Every other frame goes
to txamqp's own ``dataReceived``, whole and in order.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from txamqp.client import TwistedDelegate
from txamqp.protocol import AMQClient

from msghub import __version__
from msghub.config_amqp import AmqpConfig
from msghub.forward import amqp_wire as wire
from msghub.forward.amqp_frames import FrameError, FrameReader, OtherFrame, Returned
from msghub.tls import tls_problem

log = Logger()

CHANNEL = 1
ACCESS_REFUSED = 403  # connection.close reply code for a refused login
FRAME_MAX_DEFAULT = 131072  # what the broker's tune offers when it sets no limit (0): RabbitMQ's default
_ACK = bytes((0, wire.BASIC, 0, wire.BASIC_ACK))
_NACK = bytes((0, wire.BASIC, 0, wire.BASIC_NACK))



def _why(failure: Failure) -> str:
    """A failure as an operator reads it: what TLS said, else the error message."""
    why = tls_problem(failure)
    if why is None:
        return failure.getErrorMessage()
    if "certificate verify failed" in why:
        why += " (the broker's certificate: [amqp] ca_file names the CA that signed it)"
    return why

class BrokerEvents(Protocol):
    """What a link reports, as it happens (implemented by the forwarder)."""

    def link_made(self, link: BrokerLink) -> None:
        """A connection opened; setup begins."""

    def link_ready(self, link: BrokerLink) -> None:
        """Declarations done and confirm mode on: ``link.write`` publishes from now on."""

    def link_lost(self, link: BrokerLink) -> None:
        """The connection ended (``link.error`` says why; ``link.access_refused`` for a refused login)."""

    def link_blocked(self, link: BrokerLink) -> None:
        """``link.blocked`` changed (connection.blocked / unblocked)."""

    def confirmed(self, tag: int, multiple: bool, nack: bool) -> None:
        """basic.ack (``nack`` False) or basic.nack on the publishing channel."""

    def returned(self, message_id: bytes | None, reply_code: int, reply_text: bytes) -> None:
        """basic.return: an unroutable mandatory message; its confirm follows."""


class _Delegate(TwistedDelegate):
    def connection_start(self, ch, msg):
        # txamqp's own start-ok cannot encode the nested capabilities table that
        # makes RabbitMQ send connection.blocked and say why a login failed.
        link = self.client
        properties = {
            "product": "msghub",
            "version": __version__,
            "capabilities": {
                "publisher_confirms": True,
                "connection.blocked": True,
                "authentication_failure_close": True,
            },
        }
        link.transport.write(wire.start_ok_frame(properties, b"PLAIN", link.plain_response, b"en_US"))

    def channel_close(self, ch, msg):
        self.client.note_error(f"the broker closed the channel: {msg.reply_code} {msg.reply_text}")
        super().channel_close(ch, msg)
        self.client.transport.loseConnection()

    def connection_close(self, ch, msg):
        self.client.note_error(f"{msg.reply_code} {msg.reply_text}", msg.reply_code == ACCESS_REFUSED)
        super().connection_close(ch, msg)


class BrokerLink(AMQClient):
    """One connection to the broker, as the forwarder sees it: ``write``, ``frame_max``, ``blocked``, ``error``."""

    def __init__(self, events: BrokerEvents, spec, config: AmqpConfig, clock: IReactorTime) -> None:
        super().__init__(_Delegate(), config.vhost, spec, heartbeat=config.heartbeat, clock=clock)
        self.events = events
        self.config = config
        self.plain_response = b"\0" + config.username.encode() + b"\0" + config.password.encode()
        self.reader = FrameReader()
        self.frame_max = FRAME_MAX_DEFAULT
        self.ready = False
        self.blocked = False
        self.blocked_reason = ""
        self.error = ""  # the first reason the connection failed, for /readyz and the log
        self.access_refused = False

    def note_error(self, text: str, access_refused: bool = False) -> None:
        if not self.error:
            self.error = text
            self.access_refused = access_refused

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    # -- life cycle -----------------------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        self.events.link_made(self)
        self._setup().addCallbacks(self._set_up, self._setup_failed)

    @defer.inlineCallbacks
    def _setup(self):
        cfg = self.config
        yield self.start(self.plain_response, "PLAIN")
        channel = yield self.channel(CHANNEL)
        yield channel.channel_open()
        for exchange in cfg.exchanges:
            yield channel.exchange_declare(
                exchange=exchange.name, type=exchange.type, durable=exchange.durable, auto_delete=exchange.auto_delete
            )
        for queue in cfg.queues:
            yield channel.queue_declare(queue=queue.name, durable=queue.durable)
            for source, key in queue.bind:
                yield channel.queue_bind(queue=queue.name, exchange=source, routing_key=key)
        yield channel.confirm_select()

    def _set_up(self, _: object) -> None:
        self.frame_max = self.MAX_LENGTH or FRAME_MAX_DEFAULT  # 0 means "no limit": split as RabbitMQ does
        self.ready = True
        self.events.link_ready(self)

    def _setup_failed(self, failure: Failure) -> None:
        self.note_error(f"setting up the connection failed: {_why(failure)}")
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason) -> None:
        self.note_error(_why(reason))
        super().connectionLost(reason)
        self.ready = False
        self.events.link_lost(self)

    # -- reading --------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        try:
            frames = self.reader.feed(data)
        except FrameError as e:
            self.note_error(f"the broker sent bad frames: {e}")
            log.error("amqp: the broker sent bad frames, dropping the connection: {error}", error=e)
            self.transport.loseConnection()
            return
        events = self.events
        others = []
        for frame in frames:
            if type(frame) is OtherFrame:
                raw = frame.data
                head = raw[7:11]
                if (head == _ACK or head == _NACK) and frame.channel == CHANNEL and len(raw) == 21:
                    events.confirmed(int.from_bytes(raw[11:19], "big"), bool(raw[19] & 1), head == _NACK)
                    continue
                blocked = wire.parse_blocked(raw)
                if blocked is not None:
                    self.blocked = blocked
                    if blocked:
                        self.blocked_reason = _shortstr(raw, 11)
                    events.link_blocked(self)
                    continue
                others.append(raw)
            elif type(frame) is Returned:
                events.returned(frame.message_id, frame.reply_code, frame.reply_text)
            # A Delivery: nothing consumes on this connection, so none is owed; dropped.
        if others:
            super().dataReceived(b"".join(others))
        elif self.heartbeatInterval > 0 and not self.closed:
            # txamqp counts any frame as proof of life, and saw none of these.
            check = getattr(self, "checkHB", None)
            if check is not None and check.active():
                check.reset(self.heartbeatInterval * self.MAX_UNSEEN_HEARTBEAT)


def _shortstr(raw: bytes, p: int) -> str:
    n = raw[p] if len(raw) > p else 0
    return raw[p + 1 : p + 1 + n].decode("utf-8", "replace")


class LinkFactory(Factory):
    """Builds a ``BrokerLink`` per connection, each reporting to ``events``."""

    noisy = False

    def __init__(self, events: BrokerEvents, spec, config: AmqpConfig, clock: IReactorTime) -> None:
        self.events = events
        self.spec = spec
        self.config = config
        self.clock = clock

    def buildProtocol(self, addr) -> BrokerLink:
        return BrokerLink(self.events, self.spec, self.config, self.clock)
