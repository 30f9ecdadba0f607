"""Forward to RabbitMQ: the policy over one broker connection.

One connection and one publishing channel per hub, in confirm mode.  A
sink's batch is written as pre-encoded frames in one write and its Deferred
fires when the broker has confirmed every message in it.  When the broker is
down, blocked or the confirm window stays full for longer than
``amqp.spool_after``, a route's messages go to the spool (acknowledged on
commit) and a dispatcher publishes them, in order, once the broker is back,
deleting each only after its confirm.

The parts: ``amqp_client`` is the connection (txamqp inside, events out),
``amqp_confirms`` the confirm window's bookkeeping, ``amqp_sink`` a route's
encoding and spooling, ``amqp_dispatch`` a route's spool drain; this module
decides what moves, in one state (``AmqpState``).
"""

from __future__ import annotations

import re
from collections import deque
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Generator, NamedTuple

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet import defer, endpoints
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import ILogObserver, Logger, globalLogPublisher
from txamqp import spec as txspec
from zope.interface import implementer, provider

from msghub.config_amqp import AmqpConfig, AmqpRoute
from msghub.forward.amqp_client import BrokerLink, LinkFactory
from msghub.forward.amqp_confirms import ConfirmWindow, Publish
from msghub.forward.amqp_dispatch import Dispatcher
from msghub.forward.amqp_sink import AmqpSink, spool_name
from msghub.histogram import Histogram
from msghub.idle import IdleWaiters, within
from msghub.message import Message, parse_id
from msghub.sink import SinkError

if TYPE_CHECKING:
    from msghub.spool import Spool

log = Logger()

__all__ = ["AmqpForwarder", "AmqpSink", "AmqpState", "broker_endpoint", "broker_service", "spool_name"]

SPEC_PATH = Path(__file__).parent / "spec" / "amqp0-9-1.stripped.extended.xml"
_READ_BYTES = 4 << 20  # a spool without read_bytes (test fakes): the spool's default
# Body bytes of batches waiting for room in the confirm window; past this a
# new batch goes to the spool (or is refused) at once instead of waiting.
WAITING_MAX_BYTES = 64 << 20
STOP_GRACE = 5.0  # on stop, wait this long for confirms in flight, then spool what is unconfirmed
TICK = 1.0  # a wake-up while running: dispatchers see commits they were not woken for
# Reconnecting: 0.5 s growing 1.5x per failure in a row to 15 s.  The count
# is ours, reset only once a connection is ready: ClientService resets its
# own whenever TCP connects, so a refused login would retry every 0.5 s.
RETRY_INITIAL, RETRY_MAX = 0.5, 15.0


class AmqpState(Enum):
    """The publisher connection's state (the values are what /readyz and msghub_amqp_state say).

    - ``CONNECTING``: a connection is being made or set up (handshake,
      declarations, confirm.select).  From ``start`` and whenever a new
      connection opens after ``DOWN``.
    - ``READY`` ("connected"): publishing.  From CONNECTING (or AUTH_FAILED)
      when setup is done and the broker does not block the connection.
    - ``BLOCKED``: connected, but the broker blocked publishing (a resource
      alarm); what is written is not confirmed until it unblocks.  To READY
      on connection.unblocked.
    - ``DOWN``: no connection, ClientService waits to retry (backing off).
      From any connected state when the connection ends, or when an attempt
      fails.
    - ``AUTH_FAILED``: the broker refused the login (ACCESS_REFUSED).  Kept
      through the retries (the back-off keeps growing) until a login works
      or an attempt fails for another reason (then DOWN).
    - ``STOPPING``: the service stops or has stopped.  Final: nothing new is
      published or scheduled.

    Publishing happens only in READY; spool_after counts in every state but
    READY (and in READY while the confirm window stays full without progress).
    """

    CONNECTING = "connecting"
    READY = "connected"
    BLOCKED = "blocked"
    DOWN = "down"
    AUTH_FAILED = "auth_failed"
    STOPPING = "stopping"


S = AmqpState
# (state, event) -> next state.  Events: "made" (a connection opened),
# "ready" / "ready_blocked" (setup done), "block" / "unblock", "lost" (a
# connection ended, or an attempt failed), "refused" (it ended with
# ACCESS_REFUSED), "stop".  A pair not listed is a bug.
TRANSITIONS: dict[tuple[AmqpState, str], AmqpState] = {
    (S.DOWN, "made"): S.CONNECTING,
    (S.DOWN, "lost"): S.DOWN,
    (S.DOWN, "refused"): S.AUTH_FAILED,
    (S.CONNECTING, "made"): S.CONNECTING,
    (S.CONNECTING, "ready"): S.READY,
    (S.CONNECTING, "ready_blocked"): S.BLOCKED,
    (S.CONNECTING, "block"): S.CONNECTING,  # the link remembers it for "ready_blocked"
    (S.CONNECTING, "unblock"): S.CONNECTING,
    (S.CONNECTING, "lost"): S.DOWN,
    (S.CONNECTING, "refused"): S.AUTH_FAILED,
    (S.AUTH_FAILED, "made"): S.AUTH_FAILED,
    (S.AUTH_FAILED, "ready"): S.READY,
    (S.AUTH_FAILED, "ready_blocked"): S.BLOCKED,
    (S.AUTH_FAILED, "block"): S.AUTH_FAILED,
    (S.AUTH_FAILED, "unblock"): S.AUTH_FAILED,
    (S.AUTH_FAILED, "lost"): S.DOWN,
    (S.AUTH_FAILED, "refused"): S.AUTH_FAILED,
    (S.READY, "block"): S.BLOCKED,
    (S.READY, "unblock"): S.READY,
    (S.READY, "lost"): S.DOWN,
    (S.READY, "refused"): S.AUTH_FAILED,
    (S.BLOCKED, "block"): S.BLOCKED,
    (S.BLOCKED, "unblock"): S.READY,
    (S.BLOCKED, "lost"): S.DOWN,
    (S.BLOCKED, "refused"): S.AUTH_FAILED,
}
for _state in AmqpState:
    TRANSITIONS[(_state, "stop")] = S.STOPPING
for _event in ("made", "ready", "ready_blocked", "block", "unblock", "lost", "refused"):
    TRANSITIONS[(S.STOPPING, _event)] = S.STOPPING


class _Waiting(NamedTuple):
    """A batch waiting for the broker or for room in the window."""

    sink: AmqpSink
    messages: list[Message]
    deferred: defer.Deferred
    since: float
    size: int


def broker_endpoint(reactor: IReactorTime, config: AmqpConfig) -> IStreamClientEndpoint:
    """The endpoint of ``config``'s broker (TLS for amqps)."""
    if config.tls:
        from msghub.tls import client_options

        return endpoints.SSL4ClientEndpoint(
            reactor, config.host, config.port, client_options(config.host, config.client_tls), timeout=10
        )
    return endpoints.TCP4ClientEndpoint(reactor, config.host, config.port, timeout=10)


@provider(ILogObserver)
def _without_retry_lines(event: dict) -> None:
    """Pass ClientService's events on, but its "Scheduling retry" line per attempt."""
    if not str(event.get("log_format", "")).startswith("Scheduling retry"):
        globalLogPublisher(event)


class _QuietClientService(ClientService):
    """ClientService, minus one log line per reconnect attempt: the forwarder logs once per state change."""

    _log = Logger(namespace="twisted.application.internet.ClientService", observer=_without_retry_lines)


def broker_service(reactor: IReactorTime, config: AmqpConfig, factory: Factory,
                   endpoint: IStreamClientEndpoint | None = None,
                   retry: Callable[[int], float] | None = None) -> ClientService:
    """A ``ClientService`` that keeps one connection to the broker of ``config``, backing off."""
    return _QuietClientService(
        endpoint if endpoint is not None else broker_endpoint(reactor, config), factory,
        retryPolicy=retry or backoffPolicy(initialDelay=RETRY_INITIAL, maxDelay=RETRY_MAX), clock=reactor,
    )


@implementer(IStreamClientEndpoint)
class _ReportingEndpoint:
    """An endpoint that tells the forwarder why a connection attempt failed (ClientService keeps it to itself)."""

    def __init__(self, endpoint: IStreamClientEndpoint, failed: Callable[[str], None], name: str = "") -> None:
        self._endpoint = endpoint
        self._failed = failed
        self._name = name

    def __repr__(self) -> str:  # ClientService names it in its "Scheduling retry" lines
        return f"<the broker {self._name}>"

    def connect(self, factory):
        d = self._endpoint.connect(factory)

        def failed(failure):
            self._failed(failure.getErrorMessage())
            return failure

        return d.addErrback(failed)


class AmqpForwarder(Service):
    """The policy: what to publish, hold, spool or refuse, by ``state`` (see ``AmqpState``)."""

    def __init__(self, config: AmqpConfig, reactor: IReactorTime, spool: Spool,
                 endpoint: IStreamClientEndpoint | None = None) -> None:
        self.config = config
        self.reactor = reactor
        self.spool = spool
        self.endpoint = endpoint if endpoint is not None else broker_endpoint(reactor, config)
        self.spec = txspec.load(str(SPEC_PATH))
        self.sinks: list[AmqpSink] = []
        self.state = AmqpState.DOWN
        self.last_error = ""  # why the last connection or attempt failed ("" once one is ready)
        self.link: BrokerLink | None = None  # the connection, once set up (READY or BLOCKED)
        self.window = ConfirmWindow()
        self.waiting: deque[_Waiting] = deque()
        self.waiting_bytes = 0
        self.stalled_since: float | None = reactor.seconds()  # when the broker last stopped taking messages
        self.failures = 0  # connection attempts failed in a row: the back-off's count
        self.failed_attempts = 0  # every one, for /metrics (nothing is logged per attempt)
        self._reported: tuple[AmqpState, str] | None = None  # the failure last logged, until a connection is ready
        self._backoff = backoffPolicy(initialDelay=RETRY_INITIAL, maxDelay=RETRY_MAX)
        self._expire_call: IDelayedCall | None = None
        self._tick_call: IDelayedCall | None = None
        self._settled = IdleWaiters()  # the stop's grace wait: nothing unconfirmed, or no connection
        self.service: ClientService | None = None
        self.confirms = 0  # messages settled (acks and nacks), for metrics
        self.returns = 0
        self.nacks = 0
        self.confirm_seconds = Histogram()  # from a batch's write to its last confirm

    def sink(self, route_name: str, pattern: re.Pattern[bytes], amqp: AmqpRoute, policy: str) -> AmqpSink:
        exchange = self.config.exchange(amqp.exchange)
        # Not declared by us: the default or an amq.* exchange, all durable.
        persistent = exchange.durable if exchange is not None else True
        sink = AmqpSink(route_name, pattern, amqp, policy, persistent, self.submit, self.spool, self.wake)
        sink.dispatcher = Dispatcher(
            sink, self.spool, lambda messages, positions: self._publish(sink, messages, positions),
            self._dispatch_room, self.config.confirm_window, getattr(self.spool, "read_bytes", _READ_BYTES),
            self.reactor,
        )
        self.sinks.append(sink)
        return sink

    # -- state ----------------------------------------------------------------------

    def _move(self, event: str) -> AmqpState:
        self.state = TRANSITIONS[(self.state, event)]
        return self.state

    def _call_later(self, delay: float, f: Callable[[], None]) -> IDelayedCall | None:
        """Every timer of the policy: none is armed once stopping."""
        if self.state is AmqpState.STOPPING:
            return None
        return self.reactor.callLater(delay, f)

    def _retry_delay(self, attempt: int) -> float:
        # ClientService's ``attempt`` restarts at 1 after every TCP connect; ours does not.
        self.failures += 1
        self.failed_attempts += 1
        return self._backoff(self.failures)

    # -- connection management (the link's events) -------------------------------------

    def startService(self) -> None:
        super().startService()
        for sink in self.sinks:  # the spool is open now: resume draining what a past run spooled
            depth = self.spool.depth(sink.spool_name)
            sink.spooling = depth > 0
            if depth:
                log.info("amqp route {route}: {depth} message(s) spooled by a past run; draining them first",
                         route=sink.route_name, depth=depth)
        self.state = AmqpState.CONNECTING
        scheme = "amqps" if self.config.tls else "amqp"
        name = f"{scheme}://{self.config.host}:{self.config.port}"
        endpoint = _ReportingEndpoint(self.endpoint, self._attempt_failed, name)
        factory = LinkFactory(self, self.spec, self.config, self.reactor)
        self.service = broker_service(self.reactor, self.config, factory, endpoint, self._retry_delay)
        self.service.startService()
        self._tick_call = self._call_later(TICK, self._tick)

    def _attempt_failed(self, error: str) -> None:
        self._lost(error, access_refused=False)

    def link_made(self, link: BrokerLink) -> None:
        self._move("made")

    def link_ready(self, link: BrokerLink) -> None:
        if self._move("ready_blocked" if link.blocked else "ready") is AmqpState.STOPPING:
            link.transport.loseConnection()
            return
        self.link = link
        self.failures = 0
        self.last_error = ""
        self._reported = None
        self.window.reset()
        cfg = self.config
        blocked = f"; the broker blocks publishing: {link.blocked_reason}" if link.blocked else ""
        log.info("amqp: connected to {host}:{port} vhost {vhost!r}{blocked}",
                 host=cfg.host, port=cfg.port, vhost=cfg.vhost, blocked=blocked)
        if link.blocked:
            self._stall()
            self._arm_expire()
        self.wake()

    def link_blocked(self, link: BrokerLink) -> None:
        if link is not self.link:
            self._move("block" if link.blocked else "unblock")  # setting up: the link remembers
            return
        if link.blocked:
            log.warn("amqp: broker blocked publishing: {reason}", reason=link.blocked_reason)
        else:
            log.info("amqp: broker unblocked publishing")
        if self._move("block" if link.blocked else "unblock") is AmqpState.BLOCKED:
            self._stall()
            self._arm_expire()  # what was written before the block may have to be spooled
        self.wake()

    def link_lost(self, link: BrokerLink) -> None:
        was_ours = link is self.link
        if was_ours:
            self.link = None
        self._lost(link.error or "connection lost", link.access_refused)
        if was_ours:
            self._drop_unconfirmed()

    def _lost(self, error: str, access_refused: bool) -> None:
        before = self.state
        state = self._move("refused" if access_refused else "lost")
        self.last_error = error
        self._stall()
        if state is AmqpState.STOPPING:
            return
        if (state, error) != self._reported:  # once per change, not once per retry
            self._reported = (state, error)
            if state is AmqpState.AUTH_FAILED:
                log.error("amqp: the broker refused the login of user {user!r}: {error}; retrying with back-off",
                          user=self.config.username, error=error)
            elif before in (AmqpState.READY, AmqpState.BLOCKED):
                log.warn("amqp: connection lost ({error}); publishing resumes after reconnect", error=error)
            else:
                log.warn("amqp: connecting to {host}:{port} failed: {error}",
                         host=self.config.host, port=self.config.port, error=error)
        if self.waiting:
            self._arm_expire()

    def _drop_unconfirmed(self) -> None:
        # Nothing unconfirmed is safe: live batches are spooled (or refused),
        # dispatcher batches stay in the spool and are read again.
        for record in self.window.abandon(live_only=False):
            if record.positions is not None:
                record.sink.dispatcher.lost(record.messages, record.positions, record.confirmed_indices())
            else:
                record.sink.divert(record.messages).chainDeferred(record.waiter)
        self.window.reset()
        self._check_settled()

    def _stall(self) -> None:
        if self.stalled_since is None:
            self.stalled_since = self.reactor.seconds()

    @defer.inlineCallbacks
    def stopService(self) -> Generator[defer.Deferred, object, None]:
        super().stopService()
        self._move("stop")
        for call in (self._expire_call, self._tick_call):
            if call is not None and call.active():
                call.cancel()
        self._expire_call = self._tick_call = None
        while self.waiting:  # never written: nothing to wait for
            entry = self._pop_waiting()
            entry.sink.divert(entry.messages).chainDeferred(entry.deferred)
        # Give confirms in flight a moment, then spool whatever is still unconfirmed.
        yield within(self._when_settled(), STOP_GRACE, self.reactor)
        for sink in self.sinks:
            sink.dispatcher.stop()
        self.link = None
        self._drop_unconfirmed()
        if self.service is not None:
            yield self.service.stopService()

    def _is_settled(self) -> bool:
        return self.link is None or not (self.window.unconfirmed or self.waiting)

    def _when_settled(self) -> defer.Deferred:
        """Fires once nothing is unconfirmed or waiting, or the connection is gone."""
        return defer.succeed(None) if self._is_settled() else self._settled.wait()

    def _check_settled(self) -> None:
        if self._settled and self._is_settled():
            self._settled.fire()

    # -- publishing -------------------------------------------------------------------

    def available(self) -> bool:
        return self.state is AmqpState.READY and self.window.unconfirmed < self.config.confirm_window

    def submit(self, sink: AmqpSink, messages: list[Message]) -> defer.Deferred:
        if sink.spooling or self.state is AmqpState.STOPPING:
            return self._divert_behind_waiting(sink, messages)
        if not self.waiting and self.available():
            return self._publish(sink, messages).waiter
        now = self.reactor.seconds()
        stalled = self.stalled_since
        if stalled is not None and now - stalled >= self.config.spool_after:
            return self._divert_behind_waiting(sink, messages)
        size = sum([len(m.body) for m in messages])
        if self.waiting_bytes + size > WAITING_MAX_BYTES:
            return self._divert_behind_waiting(sink, messages)
        d: defer.Deferred[dict | None] = defer.Deferred()
        self._stall()  # the spool_after clock starts, unless it runs already
        self.waiting.append(_Waiting(sink, messages, d, now, size))
        self.waiting_bytes += size
        self._arm_expire()
        return d

    def _divert_behind_waiting(self, sink: AmqpSink, messages: list[Message]) -> defer.Deferred:
        # Older batches of this route still waiting go to the spool first, so
        # that the spool (and so the dispatcher) keeps acceptance order.
        if self.waiting and sink.policy == "spool":
            kept: deque[_Waiting] = deque()
            for entry in self.waiting:
                if entry.sink is sink:
                    self.waiting_bytes -= entry.size
                    sink.divert(entry.messages).chainDeferred(entry.deferred)
                else:
                    kept.append(entry)
            self.waiting = kept
            self._check_settled()
        return sink.divert(messages)

    def _pop_waiting(self) -> _Waiting:
        entry = self.waiting.popleft()
        self.waiting_bytes -= entry.size
        return entry

    def _publish(self, sink: AmqpSink, messages: list[Message], positions: list | None = None) -> Publish:
        link = self.link
        assert link is not None  # callers publish only while available()
        waiter: defer.Deferred[dict | None] | None = defer.Deferred() if positions is None else None
        record = self.window.add(sink, messages, positions, waiter, self.reactor.seconds())
        link.write(sink.encode(messages, link.frame_max))
        return record

    def confirmed(self, tag: int, multiple: bool, nack: bool) -> None:
        if self.link is None:
            return  # a confirm during setup or after giving up: nothing of ours
        settled, complete = self.window.settle(tag, multiple, nack)
        self.confirms += settled
        if complete:
            now = self.reactor.seconds()
            for record in complete:
                self.confirm_seconds.observe(now - record.written_at)
                self._complete(record)
        if settled and self.state is AmqpState.READY:
            # The broker is making progress: a full window is load, not an
            # outage, so the spool_after clock starts again (the in-flight
            # limit and TCP backpressure slow the producers instead).
            self.stalled_since = None
        self.wake()

    def returned(self, message_id: bytes | None, reply_code: int, reply_text: bytes) -> None:
        """basic.return: an unroutable mandatory message; its ack follows."""
        self.returns += 1
        try:
            found = parse_id((message_id or b"").decode("ascii"))
        except ValueError:
            return
        self.window.returned(found, f"unroutable: {reply_text.decode('utf-8', 'replace')}")

    def _complete(self, record: Publish) -> None:
        sink = record.sink
        nacked = record.nacked_indices()
        self.nacks += len(nacked)
        if record.positions is not None:
            sink.dispatcher.settled(record.messages, record.positions, nacked, record.returned)
            return
        refused: dict[int, Any] = {}
        for index, reason in record.returned.items():
            refused[record.messages[index].id] = SinkError(404, reason)
        if nacked:
            retry = [m for i, m in enumerate(record.messages) if i in nacked and i not in record.returned]
            if sink.policy == "spool":
                # Published again by the dispatcher, after its back-off: never at once.
                sink.dispatcher.refused()
                log.warn("amqp: the broker refused {count} message(s) of {route}; spooled, "
                         "publishing them again in {backoff:g} s",
                         count=len(retry), route=sink.route_name, backoff=sink.dispatcher.backoff)
                d = sink.divert(retry)
                d.addCallback(lambda _: refused or None)
                d.chainDeferred(record.waiter)
                return
            for message in retry:
                refused[message.id] = SinkError(503, "broker refused the message")
        record.waiter.callback(refused or None)

    # -- waiting, diverting, dispatching -----------------------------------------------

    def wake(self) -> None:
        """Something changed (a confirm, a reconnect, a commit): move what can move."""
        if self.state is AmqpState.STOPPING:
            self._check_settled()
            return
        while self.waiting and self.available():
            entry = self._pop_waiting()
            if entry.sink.spooling:
                entry.sink.divert(entry.messages).chainDeferred(entry.deferred)
            else:
                self._publish(entry.sink, entry.messages).waiter.chainDeferred(entry.deferred)
        if self.available() and not self.waiting:
            self.stalled_since = None
        elif self.waiting:
            self._arm_expire()
        for sink in self.sinks:  # reads ahead even while the window is full
            sink.dispatcher.pump()
        self._check_settled()

    def _dispatch_room(self) -> int:
        """Spooled messages the window takes now: none while stopping or unavailable."""
        if self.waiting or not self.available():
            return 0
        return self.config.confirm_window - self.window.unconfirmed

    def _arm_expire(self) -> None:
        if self._expire_call is None or not self._expire_call.active():
            self._expire_call = self._call_later(min(self.config.spool_after, 0.5) or 0.1, self._expire)

    def _expire(self) -> None:
        """Batches that waited longer than spool_after go to the spool (or are refused)."""
        self._expire_call = None
        if self.available():
            self.wake()
            return
        now = self.reactor.seconds()
        limit = self.config.spool_after
        self._stall()
        assert self.stalled_since is not None
        stalled = now - self.stalled_since >= limit
        if stalled and self.state is AmqpState.BLOCKED:
            self._divert_written()
        while stalled and self.waiting and now - self.waiting[0].since >= limit:
            entry = self._pop_waiting()
            entry.sink.divert(entry.messages).chainDeferred(entry.deferred)
        if self.waiting or (self.state is AmqpState.BLOCKED and any(
                not r.done and r.positions is None for r in self.window.records)):
            self._arm_expire()
        self._check_settled()

    def _divert_written(self) -> None:
        """Spool (or refuse) live batches written but unconfirmed while the broker blocks.

        RabbitMQ sends connection.blocked only when a publish arrives after the
        alarm, then stops reading: those batches wait for the alarm to clear.
        Their late confirms are ignored (the records are done); the spooled
        copies are published again, so a consumer may see a duplicate, same id.
        """
        for record in self.window.abandon(live_only=True):
            record.sink.divert(record.messages).chainDeferred(record.waiter)

    def _tick(self) -> None:
        self._tick_call = self._call_later(TICK, self._tick)
        self.wake()
