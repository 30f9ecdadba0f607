"""Fakes for the RabbitMQ forwarder's unit tests (no sockets, no disk).

A ``MemoryReactorClock`` stands in for the reactor: ``ClientService``'s
connection attempts are recorded there and completed by ``FakeBroker``, which
plays the broker's side of the real txamqp handshake over a
``StringTransport``.  Everything the broker says is encoded, and everything
the forwarder publishes is decoded, with pika's codec, an implementation
independent of ours.  ``MemorySpool`` commits only when the test says so.
"""

from __future__ import annotations

import pika.frame
import pika.spec
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from msghub.auth import NO_CREDENTIALS
from msghub.compact.state import State
from msghub.config_amqp import AmqpConfig, AmqpRoute, ExchangeConfig, QueueConfig
from msghub.forward.amqp import AmqpForwarder, spool_name
from msghub.message import SEQ_BITS, Message, format_id
from msghub.router import Route, Router, compile_template
from msghub.spool import Segment, schema

SPOOL_AFTER = 2.0
ROUTE = "orders"
SPOOL = spool_name(ROUTE)
STATE = State(b"HTTP/1.1", b"", b"POST", ((b"Content-Type", b"text/plain"),))


# -- fakes --------------------------------------------------------------------------


class MemorySpool:
    """The part of ``msghub.spool.Spool`` the forwarder uses; appends commit on ``commit()``.

    Committed messages go through the real segment codec, so what the
    dispatcher reads back is exactly what the real spool would give it.
    """

    def __init__(self) -> None:
        self.segments: dict[str, list[list]] = {}  # name -> [seq, messages, done mask]
        self.pending: list[tuple[str, list, Deferred]] = []
        self.seq = 0
        self.deleted: list[int] = []  # message ids marked done
        self.read_bytes = 4 << 20
        self.reads: list[tuple[int, int, int]] = []  # (after_seq, limit, max_bytes) per read
        self.dones: list[list] = []  # the positions of each done call
        self.hold_reads = False  # True: reads wait in ``held`` until the test fires them
        self.held: list[Deferred] = []

    def append(self, name: str, messages: list) -> Deferred:
        d = Deferred()
        self.pending.append((name, list(messages), d))
        return d

    def commit(self) -> None:
        pending, self.pending = self.pending, []
        for name, messages, d in pending:
            self.seq += 1
            stored = schema.decode_segment(schema.encode_segment(messages))
            self.segments.setdefault(name, []).append([self.seq, stored, 0])
            d.callback(None)

    def _pending(self, name: str):
        for entry in self.segments.get(name, ()):
            seq, messages, done = entry
            for i, m in enumerate(messages):
                if not done >> i & 1:
                    yield entry, i, m

    @property
    def rows(self) -> dict[str, list[Message]]:
        out: dict[str, list[Message]] = {}
        for name in self.segments:
            found = [m for _, _, m in self._pending(name)]
            if found:
                out[name] = found
        return out

    def depth(self, name: str) -> int:
        return sum(1 for _ in self._pending(name))

    def read(self, name: str, after_seq: int = 0, limit: int = 100, max_bytes: int | None = None) -> Deferred:
        """As the real spool reads: whole segments, at most about ``limit`` messages and ``max_bytes``
        of bodies, but at least one segment."""
        max_bytes = self.read_bytes if max_bytes is None else max_bytes
        self.reads.append((after_seq, limit, max_bytes))
        out, taken, size = [], 0, 0
        for seq, messages, done in self.segments.get(name, ()):
            if seq <= after_seq:
                continue
            nbytes = sum(len(m.body) for m in messages)
            if out and (taken + len(messages) > limit or size + nbytes > max_bytes):
                break
            out.append(Segment(seq, list(messages), done, {}))
            taken += len(messages) - done.bit_count()
            size += nbytes
        if not self.hold_reads:
            return succeed(out)
        d = Deferred()
        self.held.append(d)
        d.addCallback(lambda _: out)
        return d

    def release_reads(self) -> None:
        held, self.held = self.held, []
        for d in held:
            d.callback(None)

    def done(self, name: str, positions) -> Deferred:
        self.dones.append(list(positions))
        marked = 0
        for entry in self.segments.get(name, ()):
            for seq, index in positions:
                if entry[0] == seq and not entry[2] >> index & 1:
                    entry[2] |= 1 << index
                    marked += 1
                    self.deleted.append(entry[1][index].id)
        return succeed(marked)

    def ids(self, name: str = SPOOL) -> list[int]:
        return [m.id for _, _, m in self._pending(name)]


def server(method, channel: int = 1) -> bytes:
    return pika.frame.Method(channel, method).marshal()


class CountingTransport(StringTransport):
    """A StringTransport that also counts ``write`` calls."""

    writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)


class FakeBroker:
    """The broker end of the forwarder's connections, spoken with pika's codec."""

    def __init__(self, reactor: MemoryReactorClock, config: AmqpConfig) -> None:
        self.reactor = reactor
        self.config = config
        self.attempts = 0  # connection attempts answered so far
        self.protocol = None
        self.transport: CountingTransport | None = None

    def connect(self, handshake: bool = True) -> None:
        """Accept the forwarder's latest connection attempt and (by default) complete setup."""
        assert len(self.reactor.tcpClients) > self.attempts, "the forwarder is not trying to connect"
        factory = self.reactor.tcpClients[self.attempts][2]
        self.attempts += 1
        self.protocol = factory.buildProtocol(None)
        self.transport = CountingTransport()
        self.protocol.makeConnection(self.transport)
        if not handshake:
            return
        self.feed(server(pika.spec.Connection.Start(server_properties={}, mechanisms=b"PLAIN", locales=b"en_US"), 0))
        self.feed(server(pika.spec.Connection.Tune(channel_max=2047, frame_max=131072, heartbeat=0), 0))
        self.feed(server(pika.spec.Connection.OpenOk(), 0))
        self.feed(server(pika.spec.Channel.OpenOk()))
        for _ in self.config.exchanges:
            self.feed(server(pika.spec.Exchange.DeclareOk()))
        for queue in self.config.queues:
            self.feed(server(pika.spec.Queue.DeclareOk(queue=queue.name, message_count=0, consumer_count=0)))
            for _ in queue.bind:
                self.feed(server(pika.spec.Queue.BindOk()))
        self.transport.clear()  # what the forwarder writes from here on is publishes
        self.transport.writes = 0
        self.feed(server(pika.spec.Confirm.SelectOk()))

    def feed(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def published(self) -> list[tuple]:
        """``(basic.publish, properties, body)`` for every message written since the last call."""
        data = self.transport.value()
        self.transport.clear()
        out: list[list] = []
        while data:
            used, frame = pika.frame.decode_frame(data)
            assert used, "incomplete frame written"
            data = data[used:]
            if isinstance(frame, pika.frame.Method):
                assert isinstance(frame.method, pika.spec.Basic.Publish), frame.method
                out.append([frame.method, None, b""])
            elif isinstance(frame, pika.frame.Header):
                out[-1][1] = frame.properties
            else:
                out[-1][2] += frame.fragment
        return [tuple(m) for m in out]

    def published_ids(self) -> list[str]:
        return [props.message_id for _, props, _ in self.published()]

    def ack(self, tag: int, multiple: bool = False) -> None:
        self.feed(server(pika.spec.Basic.Ack(delivery_tag=tag, multiple=multiple)))

    def nack(self, tag: int, multiple: bool = False) -> None:
        self.feed(server(pika.spec.Basic.Nack(delivery_tag=tag, multiple=multiple, requeue=False)))

    def lose(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionDone()))

    def refuse_login(self) -> None:
        """Accept the next connection and refuse its login as RabbitMQ does with authentication_failure_close."""
        self.connect(handshake=False)
        self.feed(server(pika.spec.Connection.Start(server_properties={}, mechanisms=b"PLAIN", locales=b"en_US"), 0))
        self.feed(server(pika.spec.Connection.Close(
            reply_code=403, reply_text="ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN",
            class_id=0, method_id=0), 0))
        self.lose()

    def fail_attempt(self) -> None:
        """The forwarder's latest connection attempt fails before TCP connects (nobody listening)."""
        factory = self.reactor.tcpClients[self.attempts][2]
        self.attempts += 1
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError("nobody listening")))


class Harness:
    """One forwarder with one route, ``/orders/{kind}`` -> exchange ``ex``, key ``orders.{kind}``."""

    def __init__(self, policy: str = "spool", confirm_window: int = 10_000, spool_after: float = SPOOL_AFTER,
                 exchange: str = "ex", heartbeat: int = 0) -> None:
        self.reactor = MemoryReactorClock()
        self.config = AmqpConfig(
            heartbeat=heartbeat, confirm_window=confirm_window, spool_after=spool_after,
            exchanges=(ExchangeConfig("ex"), ExchangeConfig("plain", durable=False)),
            queues=(QueueConfig("q", bind=(("ex", "orders.#"),)),),
        )
        self.spool = MemorySpool()
        self.forwarder = AmqpForwarder(self.config, self.reactor, self.spool)
        pattern = compile_template("/orders/{kind}")
        self.sink = self.forwarder.sink(ROUTE, pattern, AmqpRoute(exchange, "orders.{kind}", True), policy)
        self.route = Route(ROUTE, "/orders/{kind}", [b"POST"], None, self.sink)
        self.broker = FakeBroker(self.reactor, self.config)
        self.next_id = (3 << SEQ_BITS) + 1
        self.number = 0

    def start(self, connect: bool = True) -> "Harness":
        self.forwarder.startService()
        if connect:
            self.broker.connect()
        return self

    def messages(self, n: int, kind: bytes = b"new") -> list[Message]:
        out = []
        target = b"/orders/" + kind
        captures = Router([self.route], None).decide(NO_CREDENTIALS, b"POST", target).captures  # as ingress does
        for _ in range(n):
            self.number += 1
            out.append(Message(self.next_id, b"POST", target, STATE.headers, b"body %d" % self.number,
                               ROUTE, None, captures, self.reactor.seconds(), self.number))
            self.next_id += 1
        return out

    def deliver(self, n: int, kind: bytes = b"new") -> tuple[list[Message], Deferred]:
        messages = self.messages(n, kind)
        return messages, self.sink.deliver(messages)


def ids(messages) -> list[str]:
    return [format_id(m.id) for m in messages]


_PENDING = object()


def result(d: Deferred):
    """The Deferred's result now (a Failure's exception for a failure), or _PENDING."""
    out = []
    d.addBoth(out.append)
    if not out:
        return _PENDING
    value = out[0]
    return value.value if isinstance(value, Failure) else value
