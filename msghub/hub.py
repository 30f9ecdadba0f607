"""The hub: configuration turned into a router, sinks, an ingress context, and the service tree.

``Hub`` builds every long-lived part once; ``Hub.service`` arranges them in
the order they must stop.  Nothing here touches the global reactor;
``msghub.tap.makeService`` passes it in and adds the listeners.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.logger import Logger

from msghub.admin.health import Health
from msghub.admin.metrics import HubStats
from msghub.admin.tail import tail_tap
from msghub.auth import Authenticator, PasswordVerifier
from msghub.compact.state import Limits
from msghub.config import Config, RouteConfig
from msghub.forward.discard import DiscardSink
from msghub.idle import within
from msghub.ingress.base import ByteBudget
from msghub.ingress.context import Connections, IngressContext
from msghub.push.tap import TappedSink
from msghub.router import Route, Router, compile_template
from msghub.sink import ISink
from msghub.spool import SpoolService, SpoolSink

if TYPE_CHECKING:
    from msghub.spool import Spool

log = Logger()


# Sections a reload leaves as they are: changing them needs a restart.
RESTART_SECTIONS = ("listen", "spool", "limits", "amqp", "status")


def sink_key(rc: RouteConfig) -> tuple:
    """What makes a route's sink: routes with equal keys can share one across a reload."""
    if rc.discard:
        return ("discard",)
    if rc.amqp is not None:
        return ("amqp", rc.match, rc.amqp, rc.when_broker_down)
    if rc.webhooks is not None:
        return ("webhooks", rc.webhooks)
    return ("spool", rc.spool)


def restart_needed(running: Config, new: Config) -> list[str]:
    """One line per section that differs and that a reload does not change."""
    return [
        f"{name}: changed; the running value is kept until a restart"
        for name in RESTART_SECTIONS
        if getattr(running, name) != getattr(new, name)
    ]


class IHubReactor(IReactorTime, IReactorThreads):
    """What the hub and its forwarders use of the reactor: its clock and its thread pool."""


class Hub:
    """The process's long-lived parts, built once from the configuration; one per process."""

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
            from msghub.forward.amqp import AmqpForwarder, broker_endpoint

            self.amqp = AmqpForwarder(config.amqp, reactor, spool, broker_endpoint(reactor, config.amqp))
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
            self.push = PushService(
                config.subscriptions, self.authenticator, self.verifier.verify, reactor, amqp_source
            )
        self.tails: dict = {}  # route name -> the status page's tap of it (msghub.admin.tail)
        self._sinks: dict[str, tuple[tuple, TappedSink]] = {}  # route name -> (sink_key, its tapped sink)
        self.router = Router([self._route(rc) for rc in config.routes], self.authenticator)
        self.health = Health(spool)
        # All that the producer ports see of the hub.
        self.ingress = IngressContext(
            clock=reactor,
            router=self.router,
            limits=limits,
            codec_limits=self.codec_limits,
            reserve_ids=spool.reserve_ids,
            verifier=self.verifier,
            stats=self.stats,
            connections=Connections(),  # open ingress protocols, for draining on stop
            budget=ByteBudget(limits.max_inflight_bytes),  # bytes all ingress connections hold
            push=self.push,
        )

    def _route(self, rc: RouteConfig) -> Route:
        return Route(rc.name, rc.match, rc.methods, rc.users, self._sink(rc))

    def _sink(self, rc: RouteConfig) -> ISink:
        """The route's sink, tapped; one per destination, kept across reloads while that is unchanged."""
        key = sink_key(rc)
        taps = self.push.taps.get(rc.name, []) if self.push is not None else []
        kept = self._sinks.get(rc.name)
        if kept is not None and kept[0] == key:
            kept[1].taps = [*taps, self.tails[rc.name]]  # the subscriptions may have changed
            return kept[1]
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
        tail = self.tails.get(rc.name)
        if tail is None:
            tail = self.tails[rc.name] = tail_tap(rc.name)
        sink = TappedSink(sink, [*taps, tail])
        self._sinks[rc.name] = (key, sink)
        return sink

    def reload(self, config: Config) -> list[str]:
        """Apply what ``config`` changes that can change while running; return what needs a restart.

        Users and tokens, webhook targets, route-tap subscriptions, and routes (match, methods,
        users, and any destination but a new or changed AMQP one) change at
        once: producer connections stay open, keep their compact registers,
        and decide their next batch afresh.  For everything else the running value is kept and
        a line says why.
        """
        notes = restart_needed(self.config, config)
        if config.webhooks != self.config.webhooks:
            if self.webhooks is None:  # not in the service tree: a forwarder cannot join it now
                notes.append("webhooks: this run started without targets; the first ones need a restart")
                config = dataclasses.replace(config, webhooks=self.config.webhooks)
            else:
                self.webhooks.reload(config.webhooks)  # before the routes: their sinks name its deliverers
        if config.subscriptions != self.config.subscriptions:
            if self.push is None:  # the ingress context holds no PushService to change
                notes.append("subscriptions: this run started without any; the first ones need a restart")
                config = dataclasses.replace(config, subscriptions=self.config.subscriptions)
            else:  # before the routes too: their sinks feed its taps
                notes.extend(self.push.reload(config.subscriptions))
                config = dataclasses.replace(config, subscriptions=tuple(s.config for s in self.push.subscriptions))
        routes = []
        names = {rc.name for rc in config.routes}
        running = {rc.name: rc for rc in self.config.routes}
        for rc in config.routes:
            old = running.get(rc.name)
            if rc.amqp is not None and (old is None or sink_key(old) != sink_key(rc)):
                notes.append(f"routes: {rc.name}: a new or changed AMQP destination needs a restart")
                if old is None:
                    continue
                rc = old  # the running route stays as it is
            elif rc.webhooks is not None and any(t not in config.webhooks for t in rc.webhooks):
                notes.append(f"routes: {rc.name}: webhook targets new to this run need a restart")
                if old is None:
                    continue
                rc = old
            routes.append(rc)
        for name in running.keys() - names:
            self._sinks.pop(name, None)  # what it spooled stays in the spool for a later run
        self.authenticator.replace_users(config.users)
        self.router.replace([self._route(rc) for rc in routes])
        self.config = dataclasses.replace(config, routes=tuple(routes), **{
            name: getattr(self.config, name) for name in RESTART_SECTIONS
        })
        return notes

    def service(self) -> MultiService:
        """Every part that runs, in stop order: add the listeners to it, then ``RunningService``.

        Children stop one at a time in reverse order: listeners close first,
        open connections are answered and closed, the forwarders spool or
        finish what they hold, the spool commits and closes last.
        """
        top = SequentialMultiService()
        SpoolService(self.spool).setServiceParent(top)
        if self.amqp is not None:
            self.amqp.setServiceParent(top)  # stops after the drain: spools what is unconfirmed
        if self.webhooks is not None:
            self.webhooks.setServiceParent(top)  # stops after the drain, before the spool: last deletes commit
        if self.push_amqp is not None:
            self.push_amqp.setServiceParent(top)  # stops after the drain has closed its subscribers
        self.verifier.setServiceParent(top)  # its threads stop after the drain has answered held requests
        DrainService(self.ingress, self.reactor).setServiceParent(top)
        return top


class DrainService(Service):
    """On stop: every open producer connection stops reading, is answered, and closes.

    Added after the spool and before the listeners, so (stopping in reverse
    order, one child at a time) ports close first, connections drain next and
    the spool commits and closes last.
    """

    def __init__(self, context: IngressContext, clock: IReactorTime, timeout: float = 10.0) -> None:
        self.connections = context.connections
        self.clock = clock
        self.timeout = timeout

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        for protocol in list(self.connections):
            protocol.drain()
        return within(self.connections.when_empty(), self.timeout, self.clock)


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
                    log.failure("stopping {child!r}", child=child)

        return stop_all()
