"""The hub: configuration turned into a router, sinks and ingress factories.

Nothing here touches the global reactor; ``msghub.tap.makeService`` passes it in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred, succeed
from twisted.internet.interfaces import IAddress, IReactorThreads, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.python import log

from msghub.admin.metrics import HubStats
from msghub.admin.tail import tail_tap
from msghub.auth import Authenticator, PasswordVerifier
from msghub.compact.replies import fatal_line
from msghub.compact.state import Limits
from msghub.config import Config, RouteConfig
from msghub.forward.discard import DiscardSink
from msghub.idle import IdleWaiters, within
from msghub.ingress.base import ByteBudget, IngressProtocol
from msghub.ingress.http import render_response
from msghub.push.tap import TappedSink
from msghub.router import Route, Router, compile_template
from msghub.sink import ISink
from msghub.spool import SpoolSink
from msghub.transport import IStreamTransport

if TYPE_CHECKING:
    from msghub.spool import Spool


class IHubReactor(IReactorTime, IReactorThreads):
    """What the hub and its forwarders use of the reactor: its clock and its thread pool."""


class Hub:
    """Everything the ingress protocols share; one per process."""

    def __init__(self, config: Config, reactor: IHubReactor, spool: Spool) -> None:
        self.config = config
        self.reactor = reactor
        self.spool = spool
        self.limits = limits = config.limits
        self.codec_limits = Limits(
            max_line=limits.max_line,
            max_headers=limits.max_headers,
            max_header_bytes=limits.max_header_bytes,
            max_registers=limits.max_registers,
            max_register_name=limits.max_register_name,
            max_body=limits.max_body,
        )
        self.stats = HubStats()
        self.amqp = None
        if config.amqp is not None and any(rc.amqp is not None for rc in config.routes):
            from msghub.forward.amqp import AmqpForwarder

            self.amqp = AmqpForwarder(config.amqp, reactor, spool)
        self.webhooks = None
        if config.webhooks:  # every target, routed or not: its queue may hold rows from a past run
            from msghub.forward.webhook import WebhookForwarder

            self.webhooks = WebhookForwarder(config.webhooks, reactor, spool)
        self.authenticator = Authenticator(config.users, failures_max=limits.password_failures)
        # Its own threads: the reactor's shared pool also resolves webhook host names.
        self.verifier = PasswordVerifier(
            self.authenticator,
            reactor,
            threads=limits.password_threads,
            per_peer=limits.password_checks_per_peer,
            queue_max=limits.password_checks,
        )
        self.push = None  # [[subscriptions]], if any: before the routes, whose sinks their taps wrap
        self.push_amqp = None  # their RabbitMQ consumer connection, if any has an amqp source
        if config.subscriptions:
            from msghub.push.service import PushService

            amqp_source = None
            if any(s.amqp is not None for s in config.subscriptions):
                from msghub.push.amqp import AmqpPush

                assert config.amqp is not None  # config.py requires [amqp] for an amqp source
                self.push_amqp = AmqpPush(config.amqp, reactor)
                amqp_source = self.push_amqp.source
            self.push = PushService(config.subscriptions, self.authenticator, self.verify_later, reactor, amqp_source)
        self.tails: dict = {}  # route name -> the status page's tap of it (msghub.admin.tail)
        self.router = Router([self._route(rc) for rc in config.routes], self.authenticator)
        self.decision_hits = 0
        self.running = False
        self.connections = Connections()  # open ingress protocols, for draining on stop
        self.budget = ByteBudget(limits.max_inflight_bytes)  # bytes all ingress connections hold

    def _route(self, rc: RouteConfig) -> Route:
        sink: ISink
        if rc.discard:
            sink = DiscardSink()
        elif rc.amqp is not None:
            assert self.amqp is not None  # config.py requires [amqp] for an amqp route
            sink = self.amqp.sink(rc.name, compile_template(rc.match), rc.amqp, rc.when_broker_down)
        elif rc.webhooks is not None:
            assert self.webhooks is not None  # config.py requires [webhooks] targets for a webhook route
            sink = self.webhooks.sink(rc.name, rc.webhooks)
        else:
            sink = SpoolSink(self.spool, rc.spool)
        # Every route is tapped, for the status page's tail: one call per batch,
        # and nothing per message while no tap of the route has a reader.
        tail = self.tails[rc.name] = tail_tap(rc.name)
        taps = self.push.taps.get(rc.name, []) if self.push is not None else []
        sink = TappedSink(sink, [*taps, tail])
        return Route(rc.name, rc.match, rc.methods, rc.users, sink)

    def verify_later(self, header: bytes, peer: str = "?") -> Deferred:
        """``PasswordVerifier.verify``: fires with ``None`` (cached now) or a refusal."""
        return self.verifier.verify(header, peer)

    def reserve_ids(self, n: int) -> int:
        return self.spool.reserve_ids(n)

    def auth_cache_hits(self) -> int:
        return self.authenticator.cache_hits + self.decision_hits

    def health_problems(self) -> list[str]:
        problems = []
        if not self.running:
            problems.append("not listening")
        if not self.spool.healthy:
            problems.append("spool not writable")
        return problems


class Connections:
    """The open ingress protocols; ``when_empty`` fires as the last one closes."""

    __slots__ = ("_open", "_empty")

    def __init__(self) -> None:
        self._open: set = set()
        self._empty = IdleWaiters()

    def add(self, protocol) -> None:
        self._open.add(protocol)

    def discard(self, protocol) -> None:
        self._open.discard(protocol)
        if self._empty and not self._open:
            self._empty.fire()

    def __iter__(self):
        return iter(self._open)

    def __len__(self) -> int:
        return len(self._open)

    def when_empty(self) -> Deferred:
        return self._empty.wait() if self._open else succeed(None)


class DrainService(Service):
    """On stop: every open producer connection stops reading, is answered, and closes.

    Added after the spool and before the listeners, so (stopping in reverse
    order, one child at a time) ports close first, connections drain next and
    the spool commits and closes last.
    """

    def __init__(self, hub: Hub, timeout: float = 10.0) -> None:
        self.hub = hub
        self.timeout = timeout

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        hub = self.hub
        for protocol in list(hub.connections):
            protocol.drain()
        return within(hub.connections.when_empty(), self.timeout, hub.reactor)


class SequentialMultiService(MultiService):
    """A MultiService whose children stop one after another, last added first.

    Twisted's MultiService stops them all at once; the hub needs its spool to
    outlive the connections that are still committing into it.
    """

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        children = list(self)
        children.reverse()

        @inlineCallbacks
        def stop_all():
            for child in children:
                try:
                    yield maybeDeferred(child.stopService)
                except Exception:
                    log.err(None, f"stopping {child!r}")

        return stop_all()


class _Refuse(Protocol):
    """Answers a connection over ``limits.max_connections`` with 503 and closes."""

    transport: IStreamTransport  # connected: see msghub.transport

    def __init__(self, message: bytes) -> None:
        self.message = message

    def connectionMade(self) -> None:
        self.transport.write(self.message)
        self.transport.loseConnection()


class IngressFactory(Factory):
    """Builds one ingress protocol per connection, up to the connection limit."""

    protocol: type[IngressProtocol]

    def __init__(self, hub: Hub, protocol: type[IngressProtocol]) -> None:
        self.hub = hub
        self.protocol = protocol

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        hub = self.hub
        if hub.stats.connections.get(self.protocol.ingress, 0) >= hub.limits.max_connections:
            hub.stats.rejected(self.protocol.ingress, {0: (503,)})
            if self.protocol.ingress == "http":
                refusal = render_response(503, "too many connections", ((b"Retry-After", b"1"),), close=True)
            else:
                refusal = fatal_line(503, "too many connections")
            return _Refuse(refusal)
        p = self.protocol(hub)
        p.factory = self
        return p
