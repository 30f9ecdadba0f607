"""Forward to RabbitMQ: the only module that imports txamqp.

One connection and one publishing channel per hub, in confirm mode.  A sink's
batch is written as pre-encoded frames in one ``transport.write`` and its
Deferred fires when the broker has confirmed every message in it.  When the
broker is down, blocked or the confirm window stays full for longer than
``amqp.spool_after``, a route's messages go to the spool (acknowledged on
commit) and a dispatcher publishes them, in order, once the broker is back,
deleting each only after its confirm.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generator, Mapping
from urllib.parse import unquote

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet import defer, endpoints
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.python import log
from txamqp import spec as txspec
from txamqp.client import TwistedDelegate
from txamqp.connection import Frame, Heartbeat
from txamqp.protocol import AMQClient
from zope.interface import implementer

from msghub import __version__
from msghub.config_amqp import AmqpConfig, AmqpRoute, spool_name
from msghub.forward import amqp_wire as wire
from msghub.forward.amqp_dispatch import Dispatcher
from msghub.idle import IdleWaiters, within
from msghub.message import Message, format_id, parse_id
from msghub.sink import ISink, SinkError
from msghub.tls import tls_problem

if TYPE_CHECKING:
    from msghub.spool import Spool

SPEC_PATH = Path(__file__).parent / "spec" / "amqp0-9-1.stripped.extended.xml"
CHANNEL = 1
_HEARTBEAT = Frame(0, Heartbeat())
_CACHE_MAX = 4096
_READ_BYTES = 4 << 20  # a spool without read_bytes (test fakes): the spool's default
# Body bytes of batches waiting for room in the confirm window; past this a
# new batch goes to the spool (or is refused) at once instead of waiting.
WAITING_MAX_BYTES = 64 << 20
STOP_GRACE = 5.0  # on stop, wait this long for confirms in flight, then spool what is unconfirmed



def broker_service(reactor: IReactorTime, config: AmqpConfig, factory: Factory) -> ClientService:
    """A ``ClientService`` that keeps one connection to the broker of ``config`` (TLS for amqps), backing off."""
    endpoint: IStreamClientEndpoint
    if config.tls:
        from msghub.tls import client_options

        endpoint = endpoints.SSL4ClientEndpoint(
            reactor, config.host, config.port, client_options(config.host, config.client_tls), timeout=10
        )
    else:
        endpoint = endpoints.TCP4ClientEndpoint(reactor, config.host, config.port, timeout=10)
    return ClientService(endpoint, factory, retryPolicy=backoffPolicy(initialDelay=0.5, maxDelay=15.0), clock=reactor)


class _Delegate(TwistedDelegate):
    def connection_start(self, ch, msg):
        # txamqp's own start-ok cannot encode the nested capabilities table that
        # makes RabbitMQ send connection.blocked, so this frame is ours.
        client = self.client
        properties = {
            "product": "msghub",
            "version": __version__,
            "capabilities": {"publisher_confirms": True, "connection.blocked": True},
        }
        client.transport.write(wire.start_ok_frame(properties, b"PLAIN", client.plain_response, b"en_US"))

    def basic_return_(self, ch, msg):
        self.client.forwarder.returned(msg)

    def channel_close(self, ch, msg):
        log.msg(f"amqp: broker closed the channel: {msg.reply_code} {msg.reply_text}")
        super().channel_close(ch, msg)
        self.client.transport.loseConnection()

    def connection_close(self, ch, msg):
        log.msg(f"amqp: broker closed the connection: {msg.reply_code} {msg.reply_text}")
        super().connection_close(ch, msg)


class _Protocol(AMQClient):
    """txamqp's client, with confirms and blocked notifications read off the wire first."""

    def __init__(self, forwarder: "AmqpForwarder", spec, config: AmqpConfig, clock) -> None:
        super().__init__(_Delegate(), config.vhost, spec, heartbeat=config.heartbeat, clock=clock)
        self.forwarder = forwarder
        self.plain_response = b"\0" + config.username.encode() + b"\0" + config.password.encode()

    def _unpack_frame(self, data: bytes):
        confirm = wire.parse_confirm(data)
        if confirm is not None and confirm[0] == CHANNEL:
            self.forwarder.confirmed(confirm[1], confirm[2], confirm[3])
            return _HEARTBEAT
        blocked = wire.parse_blocked(data)
        if blocked is not None:
            self.forwarder.set_blocked(blocked)
            return _HEARTBEAT
        return super()._unpack_frame(data)

    def connectionMade(self) -> None:
        super().connectionMade()
        self.forwarder.connection_made(self)

    def connectionLost(self, reason) -> None:
        super().connectionLost(reason)
        self.forwarder.connection_lost(self)


class _Factory(Factory):
    noisy = False  # a reconnecting broker would log "Starting factory <... at 0x...>" every attempt

    def __init__(self, forwarder: "AmqpForwarder") -> None:
        self.forwarder = forwarder

    def buildProtocol(self, addr):
        f = self.forwarder
        return _Protocol(f, f.spec, f.config, f.reactor)


class _Publish:
    """One batch written to the broker, waiting for its confirms."""

    __slots__ = ("sink", "messages", "first", "last", "pending", "upto", "singles", "nacked", "returned",
                 "deferred", "positions", "done")

    def __init__(self, sink, messages, first: int, positions=None) -> None:
        self.sink = sink
        self.messages = messages
        self.first = first
        self.last = first + len(messages) - 1
        self.pending = len(messages)
        self.upto = first - 1  # every tag <= upto is settled
        self.singles: set[int] = set()  # tags settled one by one above upto
        self.nacked: list[int] = []
        self.returned: dict[int, str] = {}  # index in messages -> reply text
        self.deferred: defer.Deferred[dict | None] = defer.Deferred()  # refused ids -> SinkError, or None
        self.positions = positions  # spool positions, for a dispatcher batch
        self.done = False

    def settle(self, tag: int, multiple: bool, nack: bool) -> int:
        """Settle ``tag`` (and, if ``multiple``, every tag before it); return how many were new."""
        if multiple:
            upto = min(tag, self.last)
            if upto <= self.upto:
                return 0
            covered = [t for t in self.singles if t <= upto]
            count = upto - self.upto - len(covered)
            if nack:
                self.nacked.extend(t for t in range(self.upto + 1, upto + 1) if t not in self.singles)
            self.singles.difference_update(covered)
            self.upto = upto
        else:
            if tag <= self.upto or tag in self.singles or not self.first <= tag <= self.last:
                return 0
            self.singles.add(tag)
            count = 1
            if nack:
                self.nacked.append(tag)
        self.pending -= count
        return count


@implementer(ISink)
class AmqpSink:
    """A route's AMQP destination: exchange, routing-key template, broker-down policy."""

    def __init__(
        self, forwarder: AmqpForwarder, route_name: str, pattern: re.Pattern[bytes], amqp: AmqpRoute, policy: str
    ) -> None:
        self.forwarder = forwarder
        self.name = f"amqp:{route_name}"
        self.route_name = route_name
        self.pattern = pattern
        self.exchange = amqp.exchange.encode()
        self.routing_key = amqp.routing_key
        self.fixed_key = None if "{" in amqp.routing_key else amqp.routing_key.encode()
        self.mandatory = amqp.mandatory
        exchange = forwarder.config.exchange(amqp.exchange)
        # Not declared by us: the default or an amq.* exchange, all durable.
        self.persistent = exchange.durable if exchange is not None else True
        self.policy = policy
        self.spool_name = spool_name(route_name)
        self.spooling = False  # set from the spool's depth when the forwarder starts
        self.appends = 0  # spool appends not yet committed
        self.committed = 0  # spool appends committed, so a read can tell it missed one
        self.dispatcher: Dispatcher  # set by AmqpForwarder.sink, which builds it around this sink
        self._methods: dict[bytes, bytes] = {}  # target path -> publish method frame
        self._statics: dict[tuple, wire.StaticProperties] = {}  # (headers, method, user) -> properties

    def deliver(self, messages: list[Message]) -> defer.Deferred:
        return self.forwarder.submit(self, messages)

    # -- encoding -------------------------------------------------------------

    def method_frame(self, target: bytes, captures: Mapping[str, str]) -> bytes:
        frame = self._methods.get(target)
        if frame is None:
            if self.fixed_key is not None:
                key = self.fixed_key
            else:
                try:
                    text = self.routing_key.format(**captures)
                except KeyError:  # spooled by a msghub that kept no captures: match again
                    m = self.pattern.fullmatch(target.split(b"?", 1)[0])
                    # Decoded exactly as the router decodes the route's captures.
                    found = {k: unquote(v.decode("latin-1")) for k, v in (m.groupdict() if m else {}).items()}
                    text = self.routing_key.format_map(_Blank(found))
                key = text.encode("utf-8")[:255]
            frame = wire.publish_frame(CHANNEL, self.exchange, key, self.mandatory)
            if len(self._methods) >= _CACHE_MAX:
                self._methods.clear()
            self._methods[target] = frame
        return frame

    def encode(self, messages: list[Message], frame_max: int) -> bytes:
        """Frames for ``messages``, live or read back from the spool alike."""
        statics = self._statics
        out = []
        last_headers = last_method = last_user = static = None
        for m in messages:
            headers, method, user = m.headers, m.method, m.user
            # Messages of one state share the headers tuple: an identity test
            # instead of hashing it per message.
            if headers is not last_headers or method is not last_method or user != last_user or static is None:
                key = (headers, method, user)
                static = statics.get(key)
                if static is None:
                    static = wire.StaticProperties(headers, method, self.route_name, user, self.persistent)
                    if len(statics) >= _CACHE_MAX:
                        statics.clear()
                    statics[key] = static
                last_headers, last_method, last_user = headers, method, user
            out.append(self.method_frame(m.target, m.captures))
            out.append(
                wire.content_frames(
                    CHANNEL, frame_max, static, m.target, format_id(m.id).encode(), int(m.received), m.body,
                )
            )
        return b"".join(out)

    # -- the broker-down path ------------------------------------------------------

    def divert(self, messages: list[Message]) -> defer.Deferred:
        """Spool ``messages`` (acknowledged on commit) or refuse them, per policy."""
        if self.policy == "reject":
            return defer.fail(SinkError(503, "broker unavailable"))
        self.spooling = True
        self.appends += 1
        d = self.forwarder.spool.append(self.spool_name, messages)

        def committed(result):
            self.appends -= 1
            self.committed += 1
            self.forwarder.wake()
            return result

        return d.addBoth(committed)


class AmqpForwarder(Service):
    """The connection to RabbitMQ and everything published over it."""

    def __init__(self, config: AmqpConfig, reactor: IReactorTime, spool: Spool) -> None:
        self.config = config
        self.reactor = reactor
        self.spool = spool
        self.spec = txspec.load(str(SPEC_PATH))
        self.sinks: list[AmqpSink] = []
        self.proto: _Protocol | None = None  # set once declarations and confirm.select are done
        self.frame_max = 131072
        self.blocked = False
        self.next_tag = 1
        self.outstanding: deque[_Publish] = deque()
        self.outstanding_count = 0
        self.waiting: deque[tuple] = deque()  # (sink, messages, deferred, since, bytes)
        self.waiting_bytes = 0
        self.unavailable_since: float | None = reactor.seconds()
        self._timer: IDelayedCall | None = None
        self._wake_call: IDelayedCall | None = None
        self._settled = IdleWaiters()  # the stop's grace wait: nothing outstanding or waiting, or no connection
        self.service: ClientService | None = None
        self.confirms = 0  # messages confirmed, for metrics
        self.returns = 0
        self.nacks = 0

    def sink(self, route_name: str, pattern: re.Pattern[bytes], amqp: AmqpRoute, policy: str) -> AmqpSink:
        sink = AmqpSink(self, route_name, pattern, amqp, policy)
        sink.dispatcher = Dispatcher(
            sink, self.spool, lambda messages, positions: self._publish(sink, messages, positions),
            self._dispatch_room, self.config.confirm_window, getattr(self.spool, "read_bytes", _READ_BYTES),
            self.reactor,
        )
        self.sinks.append(sink)
        return sink

    # -- connection management ---------------------------------------------------

    def startService(self) -> None:
        super().startService()
        for sink in self.sinks:  # the spool is open now: resume draining what a past run spooled
            sink.spooling = self.spool.depth(sink.spool_name) > 0
        self.service = broker_service(self.reactor, self.config, _Factory(self))
        self.service.startService()
        self._wake_loop = self.reactor.callLater(1.0, self._tick)

    @defer.inlineCallbacks
    def stopService(self) -> Generator[defer.Deferred, object, None]:
        super().stopService()
        if self._wake_loop.active():
            self._wake_loop.cancel()
        # Give confirms in flight a moment, then spool whatever is still unconfirmed.
        yield within(self._when_settled(), STOP_GRACE, self.reactor)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self.proto = None
        for sink in self.sinks:
            sink.dispatcher.stop()
        self._divert_all()
        if self.service is not None:
            yield self.service.stopService()

    def _is_settled(self) -> bool:
        return self.proto is None or not (self.outstanding or self.waiting)

    def _when_settled(self) -> defer.Deferred:
        """Fires once nothing is outstanding or waiting, or the connection is gone."""
        return defer.succeed(None) if self._is_settled() else self._settled.wait()

    def _check_settled(self) -> None:
        if self._settled and self._is_settled():
            self._settled.fire()

    def connection_made(self, proto: _Protocol) -> None:
        self._setup(proto).addErrback(self._setup_failed, proto)

    @defer.inlineCallbacks
    def _setup(self, proto: _Protocol):
        cfg = self.config
        yield proto.start(proto.plain_response, "PLAIN")
        self.frame_max = proto.MAX_LENGTH or 131072  # 0 means "no limit": split as RabbitMQ does by default
        channel = yield proto.channel(CHANNEL)
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
        self.proto = proto
        self.next_tag = 1
        self.unavailable_since = None if not self.blocked else self.reactor.seconds()
        log.msg(f"amqp: connected to {cfg.host}:{cfg.port} vhost {cfg.vhost!r}")
        self.wake()

    def _setup_failed(self, failure, proto: _Protocol) -> None:
        why = tls_problem(failure)
        if why is None:
            why = failure.getErrorMessage()
        elif "certificate verify failed" in why:
            why += " (the broker's certificate: [amqp] ca_file names the CA that signed it)"
        log.msg(f"amqp: setting up the connection failed: {why}")
        if proto.transport is not None:
            proto.transport.loseConnection()

    def connection_lost(self, proto: _Protocol) -> None:
        if self.proto is not proto:
            return
        self.proto = None
        self.blocked = False
        self.unavailable_since = self.reactor.seconds()
        log.msg("amqp: connection lost; publishing resumes after reconnect")
        # Nothing unconfirmed is safe: live batches are spooled (or refused),
        # dispatcher batches stay in the spool and are read again.
        records, self.outstanding = list(self.outstanding), deque()
        self.outstanding_count = 0
        for record in records:
            if record.done:
                continue
            record.done = True
            if record.positions is not None:
                nacked = set(record.nacked)
                confirmed = [i for i, tag in enumerate(range(record.first, record.last + 1))
                             if (tag <= record.upto or tag in record.singles) and tag not in nacked]
                record.sink.dispatcher.lost(record.messages, record.positions, confirmed)
            else:
                d = record.sink.divert(record.messages)
                d.chainDeferred(record.deferred)
        self._arm_timer()
        self._check_settled()

    def set_blocked(self, blocked: bool) -> None:
        log.msg(f"amqp: broker {'blocked' if blocked else 'unblocked'} publishing")
        self.blocked = blocked
        if blocked:
            self.unavailable_since = self.unavailable_since or self.reactor.seconds()
            self._arm_timer()
        else:
            self.wake()

    # -- publishing -------------------------------------------------------------------

    def available(self) -> bool:
        return self.proto is not None and not self.blocked and self.outstanding_count < self.config.confirm_window

    def submit(self, sink: AmqpSink, messages: list[Message]) -> defer.Deferred:
        if sink.spooling:
            return self._divert_behind_waiting(sink, messages)
        if not self.waiting and self.available():
            return self._publish(sink, messages).deferred
        down_since = self.unavailable_since
        if down_since is not None and self.reactor.seconds() - down_since >= self.config.spool_after:
            return self._divert_behind_waiting(sink, messages)
        size = sum([len(m.body) for m in messages])
        if self.waiting_bytes + size > WAITING_MAX_BYTES:
            return self._divert_behind_waiting(sink, messages)
        d: defer.Deferred[dict | None] = defer.Deferred()
        if self.unavailable_since is None:
            self.unavailable_since = self.reactor.seconds()  # the spool_after clock starts
        self.waiting.append((sink, messages, d, self.reactor.seconds(), size))
        self.waiting_bytes += size
        self._arm_timer()
        return d

    def _divert_behind_waiting(self, sink: AmqpSink, messages: list):
        # Older batches of this route still waiting go to the spool first, so
        # that the spool (and so the dispatcher) keeps acceptance order.
        if self.waiting and sink.policy == "spool":
            kept: deque[tuple] = deque()
            for entry in self.waiting:
                if entry[0] is sink:
                    self.waiting_bytes -= entry[4]
                    sink.divert(entry[1]).chainDeferred(entry[2])
                else:
                    kept.append(entry)
            self.waiting = kept
            self._check_settled()
        return sink.divert(messages)

    def _pop_waiting(self) -> tuple:
        sink, messages, d, since, size = self.waiting.popleft()
        self.waiting_bytes -= size
        return sink, messages, d, since

    def _publish(self, sink: AmqpSink, messages: list, positions=None) -> _Publish:
        record = _Publish(sink, messages, self.next_tag, positions)
        self.next_tag += len(messages)
        self.outstanding.append(record)
        self.outstanding_count += len(messages)
        assert self.proto is not None  # callers publish only while available()
        self.proto.transport.write(sink.encode(messages, self.frame_max))
        return record

    def confirmed(self, tag: int, multiple: bool, nack: bool) -> None:
        settled = 0
        # A snapshot: completing a record may publish (a dispatcher's done mark can fire at once).
        for record in tuple(self.outstanding):
            if record.first > tag:
                break
            if record.done:
                continue
            if multiple or record.first <= tag <= record.last:
                settled += record.settle(tag, multiple, nack)
                if record.pending == 0:
                    self._complete(record)
        self.outstanding_count -= settled
        self.confirms += settled
        if settled and not self.blocked:
            # The broker is making progress: a full window is load, not an
            # outage, so the spool_after clock starts again (the in-flight
            # limit and TCP backpressure slow the producers instead).
            self.unavailable_since = None
        outstanding = self.outstanding
        while outstanding and outstanding[0].done:
            outstanding.popleft()
        self.wake()

    def returned(self, msg: Any) -> None:  # a txamqp Message
        """basic.return: an unroutable mandatory message; its ack follows."""
        self.returns += 1
        properties = msg.content.properties if msg.content is not None else {}
        text = properties.get("message-id") or ""
        try:
            message_id = parse_id(text.decode() if isinstance(text, bytes) else text)
        except ValueError:
            return
        reason = f"unroutable: {msg.reply_text}"
        for record in self.outstanding:
            ids = [m.id for m in record.messages]
            index = bisect_right(ids, message_id) - 1
            if index >= 0 and ids[index] == message_id:
                record.returned[index] = reason
                return

    def _complete(self, record: _Publish) -> None:
        record.done = True
        sink = record.sink
        nacked = {tag - record.first for tag in record.nacked}
        self.nacks += len(nacked)
        if record.positions is not None:
            sink.dispatcher.settled(record.messages, record.positions, nacked, record.returned)
            return
        refused = {}
        for index, reason in record.returned.items():
            refused[record.messages[index].id] = SinkError(404, reason)
        if nacked:
            retry = [m for i, m in enumerate(record.messages) if i in nacked and i not in record.returned]
            if sink.policy == "spool":
                d = sink.divert(retry)
                d.addCallback(lambda _: refused or None)
                d.chainDeferred(record.deferred)
                return
            for message in retry:
                refused[message.id] = SinkError(503, "broker refused the message")
        record.deferred.callback(refused or None)

    # -- waiting, diverting, dispatching -----------------------------------------------

    def wake(self) -> None:
        """Something changed (a confirm, a reconnect, a commit): move what can move."""
        while self.waiting and self.available():
            sink, messages, d, _ = self._pop_waiting()
            if sink.spooling:
                sink.divert(messages).chainDeferred(d)
            else:
                self._publish(sink, messages).deferred.chainDeferred(d)
        if self.available() and not self.waiting:
            self.unavailable_since = None
        elif self.waiting:
            self._arm_timer()
        for sink in self.sinks:  # reads ahead even while the window is full
            sink.dispatcher.pump()
        self._check_settled()

    def _dispatch_room(self) -> int:
        """Spooled messages the window takes now: none while stopping or unavailable."""
        if not self.running or self.waiting or not self.available():
            return 0
        return self.config.confirm_window - self.outstanding_count

    def _arm_timer(self) -> None:
        if self._timer is None or not self._timer.active():
            self._timer = self.reactor.callLater(min(self.config.spool_after, 0.5) or 0.1, self._expire)

    def _expire(self) -> None:
        """Batches that waited longer than spool_after go to the spool (or are refused)."""
        now = self.reactor.seconds()
        limit = self.config.spool_after
        if self.available():
            self.wake()
            return
        if self.unavailable_since is None:
            self.unavailable_since = now
        if self.blocked and now - self.unavailable_since >= limit:
            self._divert_written()
        stalled = now - self.unavailable_since >= limit
        while stalled and self.waiting and now - self.waiting[0][3] >= limit:
            sink, messages, d, _ = self._pop_waiting()
            sink.divert(messages).chainDeferred(d)
        if self.waiting or self.blocked:
            self._arm_timer()
        self._check_settled()

    def _divert_written(self) -> None:
        """Spool (or refuse) live batches written but unconfirmed while the broker blocks.

        RabbitMQ sends connection.blocked only when a publish arrives after the
        alarm, then stops reading: those batches wait for the alarm to clear.
        Their late confirms are ignored (the records are done); the spooled
        copies are published again, so a consumer may see a duplicate, same id.
        """
        for record in self.outstanding:
            if not record.done and record.positions is None:
                record.done = True
                self.outstanding_count -= record.pending
                record.sink.divert(record.messages).chainDeferred(record.deferred)

    def _divert_all(self) -> None:
        while self.waiting:
            sink, messages, d, _ = self._pop_waiting()
            sink.divert(messages).chainDeferred(d)
        records, self.outstanding = list(self.outstanding), deque()
        self.outstanding_count = 0
        for record in records:
            if not record.done and record.positions is None:
                record.done = True
                record.sink.divert(record.messages).chainDeferred(record.deferred)

    def _tick(self) -> None:
        self.wake()
        self._wake_loop = self.reactor.callLater(1.0, self._tick)


class _Blank(dict):
    """Formats a missing capture as an empty string."""

    def __missing__(self, key: str) -> str:
        return ""
