"""What both ingress protocols share: batching per read, routing, acks in order.

A read becomes one *batch*: its requests are routed (through the
connection's ``DecisionCache``), grouped by route and handed to each route's
sink in one call.  The batch is answered once every sink has said its
messages are safe; batches are answered strictly in arrival order, so an
acknowledgement never overtakes an earlier request that is still in flight.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

from twisted.internet.defer import fail
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import TimeoutMixin
from twisted.python import log
from zope.interface import implementer

from msghub.compact.state import Rejected
from msghub.sink import SinkError
from msghub.message import Message
from msghub.router import DecisionCache

_new = tuple.__new__
_RETRY_AFTER = ((b"Retry-After", b"1"),)


class Batch:
    """One read's requests on their way to being answered.

    ``first``/``last`` are the request numbers it covers; ``errors`` maps a
    request number to ``(status, reason, headers)`` for those refused;
    ``waiting`` counts sinks that have not yet said "safe".
    """

    __slots__ = ("first", "last", "errors", "waiting", "extra")

    def __init__(self, first: int, last: int, errors: dict, waiting: int, extra=None) -> None:
        self.first = first
        self.last = last
        self.errors = errors
        self.waiting = waiting
        self.extra = extra  # per-protocol data (plain HTTP keeps its per-request details here)


@implementer(IHalfCloseableProtocol)
class IngressProtocol(Protocol, TimeoutMixin):
    """Base class: subclasses parse bytes into requests and write answers.

    Half-closeable, so a producer that shuts down its sending side still gets
    the answers to what it sent; idle connections are closed after
    ``limits.idle_timeout`` seconds.
    """

    ingress = "?"

    def __init__(self, hub) -> None:
        self.hub = hub
        self.cache = DecisionCache(hub.router)
        self.batches: deque[Batch] = deque()
        self.inflight = 0  # messages handed to sinks and not yet answered
        self.paused = False
        self.closing = False  # no more input; close once answered
        self.lost = False
        self.draining = False
        self.idle = False
        self.logged = False
        self.held: list[tuple] = []  # (events, first, extra) waiting for a password check

    # -- connection bookkeeping -----------------------------------------------

    def connectionMade(self) -> None:
        self.hub.stats.connection_opened(self.ingress)
        self.hub.connections.add(self)
        self.callLater = self.hub.reactor.callLater  # TimeoutMixin's clock
        self.setTimeout(self.hub.limits.idle_timeout)

    def connectionLost(self, reason=None) -> None:
        self.hub.stats.connection_closed(self.ingress)
        self.hub.connections.discard(self)
        self.setTimeout(None)
        self.closing = True
        self.lost = True

    def readConnectionLost(self) -> None:
        """The producer sent EOF: answer what it sent, then close."""
        self.closing = True
        self.flush()

    def writeConnectionLost(self) -> None:
        self.transport.loseConnection()

    def timeoutConnection(self) -> None:
        if self.batches:  # the silence is ours: a sink still owes answers
            self.setTimeout(self.hub.limits.idle_timeout)  # the fired call is gone: arm a new one
            return
        self.idle = True
        self.closing = True
        self.finish()

    def drain(self) -> None:
        """The hub is stopping: read no more, answer what is in flight, then close."""
        if self.lost:
            return
        if not self.closing:
            self.closing = True
            self.draining = True
            self.transport.pauseProducing()
        self.flush()

    def log_once(self, message: str) -> None:
        """At most one log line per connection, whatever the peer does."""
        if not self.logged:
            self.logged = True
            peer = self.transport.getPeer() if self.transport else None
            log.msg(f"{self.ingress} {getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}: {message}")

    # -- the batch path ---------------------------------------------------------

    def route_batch(self, events: list, first: int, extra=None) -> None:
        """Route ``events`` (requests numbered from ``first``) and hand them to sinks.

        A request whose state carries credentials that need a password hash
        holds it and everything after it (reading pauses) until a worker
        thread has checked them: scrypt must not stall the other producers.
        """
        if self.held:
            self.held.append((events, first, extra))
            return
        hub = self.hub
        cache = self.cache
        errors: dict[int, tuple] = {}
        groups: dict = {}
        last_state = None
        targets: dict = {}
        entry = None
        next_id = hub.reserve_ids(len(events))
        now = hub.reactor.seconds()
        misses = cache.misses
        for req in events:
            if req.__class__ is Rejected:
                errors[req.number] = (req.status, req.reason, ())
                continue
            state = req[3]
            if state is not last_state:
                entry = cache.for_state(state)
                if entry is None:  # credentials need hashing: hold the rest
                    events, rest = self._split(events, req, first, extra)
                    break
                targets = entry[1]
                last_state = state
            decision = targets.get(req[1])
            if decision is None or decision.method != req[0]:
                decision = cache.decide(entry, req[0], req[1])
            if decision.status:
                errors[req[4]] = (decision.status, decision.reason, decision.headers)
                continue
            route = decision.route
            group = groups.get(route)
            if group is None:
                groups[route] = group = []
            # Message's fields in order: id, method, target, headers, body,
            # route, user, captures, received, number.
            group.append(_new(Message, (
                next_id, req[0], req[1], state.headers, req[2], route.name, decision.user, decision.captures,
                now, req[4],
            )))
            next_id += 1
        hub.decision_hits += len(events) - (cache.misses - misses)
        if events:
            self._deliver(events, first, extra, errors, groups)
        self._check_pause()
        self.flush()

    def _split(self, events: list, req, first: int, extra) -> tuple[list, tuple]:
        """Keep ``events`` before ``req`` for now; hold ``req`` and the rest until its credentials are checked."""
        i = next(i for i, e in enumerate(events) if e is req)
        rest = (events[i:], first + i, None if extra is None else extra[i:])
        self.held.append(rest)
        if not self.lost:
            self.transport.pauseProducing()
        header = req[3].header(b"authorization")
        self.hub.verify_later(header).addBoth(self._verified)
        return events[:i], rest

    def _verified(self, _) -> None:
        held, self.held = self.held, []
        for events, first, extra in held:
            self.route_batch(events, first, extra)
        if not self.held and not self.lost and not self.closing and not self.paused:
            self.transport.resumeProducing()

    def _deliver(self, events: list, first: int, extra, errors: dict, groups: dict) -> None:
        if extra is not None:
            extra = extra[: len(events)]
        batch = Batch(first, first + len(events) - 1, errors, len(groups), extra)
        self.batches.append(batch)
        if errors:
            self.hub.stats.rejected(self.ingress, errors)
        for route, messages in groups.items():
            self.inflight += len(messages)
            try:
                result = route.sink.deliver(messages)
            except Exception:  # a sink bug must not take the connection's answers with it
                result = fail()
            if result is None:
                self._sink_done(None, batch, route, messages, flush=False)
            else:
                result.addCallbacks(
                    self._sink_done,
                    self._sink_failed,
                    (batch, route, messages),
                    None,
                    (batch, route, messages),
                )

    def _sink_done(self, refused, batch: Batch, route, messages: list, flush: bool = True) -> None:
        # A sink may refuse some messages of a batch it otherwise took
        # (e.g. unroutable at the broker): ``refused`` maps their ids to SinkErrors.
        accepted = len(messages)
        if refused:
            accepted -= len(refused)
            numbers = {m.id: m.number for m in messages}
            for message_id, error in refused.items():
                headers = _RETRY_AFTER if error.status == 503 else ()
                batch.errors[numbers[message_id]] = (error.status, error.reason, headers)
            self.hub.stats.rejected(self.ingress, {numbers[i]: (e.status,) for i, e in refused.items()})
        route.accepted[self.ingress] = route.accepted.get(self.ingress, 0) + accepted
        self.inflight -= len(messages)
        batch.waiting -= 1
        if flush:
            self.flush()

    def _sink_failed(self, failure, batch: Batch, route, messages: list) -> None:
        error = failure.value
        if not isinstance(error, SinkError):
            log.err(failure, f"sink {route.sink.name} failed")
            error = SinkError(500, "internal error")
        headers = _RETRY_AFTER if error.status == 503 else ()
        for message in messages:
            batch.errors[message.number] = (error.status, error.reason, headers)
        self.hub.stats.rejected(self.ingress, {m.number: (error.status,) for m in messages})
        self.inflight -= len(messages)
        batch.waiting -= 1
        self.flush()

    def _check_pause(self) -> None:
        limit = self.hub.limits.max_inflight
        if not self.paused and self.inflight > limit and self.transport is not None:
            self.paused = True
            self.transport.pauseProducing()
        elif self.paused and self.inflight <= limit // 2:
            self.paused = False
            if not self.lost:
                self.transport.resumeProducing()

    def flush(self) -> None:
        """Answer every finished batch at the head of the queue."""
        batches = self.batches
        done = []
        while batches and batches[0].waiting == 0:
            done.append(batches.popleft())
        if done and not self.lost:
            self.answer(done)
        if self.paused:
            self._check_pause()
        if self.closing and not batches and not self.lost:
            self.finish()

    # -- what subclasses provide ------------------------------------------------

    answer: Callable[[list[Batch]], None]

    def finish(self) -> None:
        """Everything answered and no more input: close."""
        self.transport.loseConnection()
