"""What both ingress protocols share: batching per read, routing, acks in order.

A read becomes one *batch*: its requests are routed (through the
connection's ``DecisionCache``), grouped by route and handed to each route's
sink in one call.  The batch is answered once every sink has said its
messages are safe; batches are answered strictly in arrival order, so an
acknowledgement never overtakes an earlier request that is still in flight.

Memory is bounded in bytes.  Each batch carries the bytes of the reads that
made it (the reads' length, plus a fixed ``MESSAGE_OVERHEAD`` per message for
the objects it becomes: counted per batch, not per message) until it is
answered; answers the transport could not send because the peer does
not read count too.  A connection over ``limits.max_connection_bytes``, or
any connection adding to a hub over ``limits.max_inflight_bytes``, stops
reading (``pauseProducing``) and resumes once answering has brought the
count back to half.  The protocol is its transport's streaming producer, so a
peer that never reads its answers makes the hub stop reading from it as soon
as the transport's write buffer is full.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Callable

from twisted.internet.defer import fail
from twisted.internet.interfaces import IDelayedCall, IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from msghub.compact.state import Rejected
from msghub.message import Message
from msghub.router import DecisionCache, StateDecisions
from msghub.sink import SinkError
from msghub.transport import IStreamTransport

if TYPE_CHECKING:
    from msghub.ingress.context import IngressContext

log = Logger()

_new = tuple.__new__
_RETRY_AFTER = ((b"Retry-After", b"1"),)
# What one small message costs in memory beyond its wire bytes (its Message and
# Request tuples, target and body objects, its slot in a sink's queue), so a
# budget of N bytes holds about N bytes of objects, not 5 N, for tiny messages.
MESSAGE_OVERHEAD = 256
# Where a read left the current request (IngressProtocol.progress).
HEAD, BODY = 1, 2


class Batch:
    """One read's requests on their way to being answered.

    ``first``/``last`` are the request numbers it covers; ``errors`` maps a
    request number to ``(status, reason, headers)`` for those refused;
    ``waiting`` counts sinks that have not yet said "safe".  The message id
    of request ``n`` (when accepted) is ``ids + n``.
    """

    __slots__ = ("first", "last", "errors", "waiting", "size", "ids")

    def __init__(self, first: int, last: int, errors: dict, waiting: int, size: int = 0, ids: int = 0) -> None:
        self.first = first
        self.last = last
        self.errors = errors
        self.waiting = waiting
        self.size = size
        self.ids = ids  # bytes read for it, held against the budgets until it is answered


class ByteBudget:
    """The hub-wide count of bytes its ingress connections hold (``limits.max_inflight_bytes``).

    A connection that would read while the count is over ``limit`` waits
    here instead; all waiting connections are woken when releases bring the
    count down to half, so a budget freed a little at a time does not wake
    and stop them again on every answer.
    """

    __slots__ = ("limit", "used", "waiting")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.waiting: set[IngressProtocol] = set()

    def release(self, size: int) -> None:
        self.used -= size
        if self.waiting and self.used <= self.limit >> 1:
            waiting, self.waiting = self.waiting, set()
            for protocol in waiting:
                protocol.update_reading()


@implementer(IHalfCloseableProtocol, IPushProducer)
class IngressProtocol(Protocol, TimeoutMixin):
    """Base class: subclasses parse bytes into requests and write answers.

    Half-closeable, so a producer that shuts down its sending side still gets
    the answers to what it sent; idle connections are closed after
    ``limits.idle_timeout`` seconds.  Its transport's producer: the transport
    pauses it when its write buffer is full and resumes it when that is empty.
    """

    transport: IStreamTransport  # connected: see msghub.transport

    ingress = "?"

    def __init__(self, context: IngressContext) -> None:
        self.context = context
        self.stats = context.stats
        self.cache = DecisionCache(context.router)
        self.batches: deque[Batch] = deque()
        self.inflight = 0  # messages handed to sinks and not yet answered
        limits = context.limits
        self.max_inflight = limits.max_inflight
        self.max_bytes = limits.max_connection_bytes
        self.budget: ByteBudget = context.budget
        self.reading = True  # the transport is reading (not paused by us)
        self.unbatched = 0  # bytes read that no batch holds yet (a request in progress)
        self.held_bytes = 0  # sizes of the batches not yet answered
        self.unsent = 0  # answer bytes written while the transport's buffer was full
        self.write_full = False  # the transport asked us to pause: the peer is not reading
        self.registered = False  # we are the transport's producer
        self.closing = False  # no more input; close once answered
        self.lost = False
        self.draining = False
        self.idle = False
        self.logged = False
        self.held: list[tuple] = []  # (events, first) waiting for a password check
        self.held_state = None  # the state whose credentials are being checked
        self.refusal: tuple | None = None  # (state, error) while its held requests are answered
        self.verifying = False  # _verify_held is on the stack
        # The slow-request deadlines (limits.head_timeout, limits.body_timeout):
        # one timer per connection, armed when a read ends inside a request and
        # re-armed lazily when it fires, so reads cost no timer work.
        self.slow_kind = 0  # where the last read ended: 0 between requests, HEAD or BODY
        self.slow_key = -1  # which head (its request number, or where its line began)
        self.slow_since = 0.0  # when that head began, or the body last grew
        self.slow_call: IDelayedCall | None = None
        self.seconds = context.clock.seconds
        self.last_activity = 0.0  # when the peer last sent or read something (see resetTimeout)

    # -- connection bookkeeping -----------------------------------------------

    def callLater(self, period: float, func: Callable[[], object]) -> IDelayedCall:
        """TimeoutMixin's clock: the context's."""
        return self.context.clock.callLater(period, func)

    def connectionMade(self) -> None:
        self.stats.connection_opened(self.ingress)
        self.context.connections.add(self)
        self.last_activity = self.seconds()
        self.setTimeout(self.context.limits.idle_timeout)
        self.transport.registerProducer(self, True)
        self.registered = True

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.slow_call is not None:
            self.slow_call.cancel()
            self.slow_call = None
        self.stats.connection_closed(self.ingress)
        self.context.connections.discard(self)
        self.setTimeout(None)
        self.closing = True
        self.lost = True
        # Unsent answers die with the socket; batches still at a sink keep
        # their bytes until the sink lets go of them (flush releases those).
        self.budget.waiting.discard(self)
        if self.unsent:
            self.budget.release(self.unsent)
            self.unsent = 0

    def close(self) -> None:
        """Close once the transport has written what it holds."""
        if self.registered:
            # A registered producer that the transport paused would be
            # resumed instead of the connection closed: let go of it first.
            self.registered = False
            self.transport.unregisterProducer()
        self.transport.loseConnection()

    # -- IPushProducer: the transport's write buffer ------------------------------

    def pauseProducing(self) -> None:
        """The transport holds more than its buffer size of answers: read no more for now."""
        self.write_full = True
        self.update_reading()

    def resumeProducing(self) -> None:
        """The transport has written everything: the peer reads again."""
        self.write_full = False
        if self.unsent:
            self.budget.release(self.unsent)
            self.unsent = 0
        if not self.lost:
            self.resetTimeout()  # the peer is making progress
        self.update_reading()

    def stopProducing(self) -> None:
        """The connection is gone; ``connectionLost`` does the bookkeeping."""

    def write(self, data: bytes) -> None:
        """Write answers; those the transport cannot send yet count against the budgets."""
        self.transport.write(data)
        if self.write_full:
            # The first 64 KiB or so (the transport's buffer size) go uncounted:
            # a small, fixed amount per connection.
            size = len(data)
            self.unsent += size
            self.budget.used += size

    def readConnectionLost(self) -> None:
        """The producer sent EOF: answer what it sent, then close."""
        self.closing = True
        self.flush()

    def writeConnectionLost(self) -> None:
        self.close()

    def resetTimeout(self) -> None:
        """The peer is active: note when, for the idle timer to look at when it fires.

        ``TimeoutMixin`` moves its ``DelayedCall`` on every read (~280 ns
        here); noting the clock costs ~165 ns, at tens of thousands of reads a
        second under wrk (docs/benchmarks.md, "Per-read costs").
        """
        self.last_activity = self.seconds()

    def timeoutConnection(self) -> None:
        idle_timeout = self.context.limits.idle_timeout
        left = self.last_activity + idle_timeout - self.seconds()
        if left > 0:  # active since the timer was armed: wait out the rest of the period
            self.setTimeout(left)
            return
        if self.write_full:
            # Its answers have waited idle_timeout seconds for the peer to
            # read them: it never will, and a graceful close would wait forever.
            self.log_once("not reading its answers: connection aborted")
            self.transport.abortConnection()
            return
        if self.batches or self.held:  # the silence is ours: a sink or a password check owes answers
            self.setTimeout(idle_timeout)  # the fired call is gone: arm a new one
            return
        self.idle = True
        self.closing = True
        self.finish()

    # -- slow requests ------------------------------------------------------------

    def progress(self, kind: int, key: int = 0) -> None:
        """Where a read left the current request: ``kind`` 0 (between requests), HEAD or BODY.

        A head must be complete within ``limits.head_timeout`` seconds of its
        first byte, whatever arrives meanwhile (``key`` tells one head from the
        next); a body must grow at least every ``limits.body_timeout`` seconds.
        Time while the hub itself is not reading does not count.
        """
        if kind == 0:
            self.slow_kind = 0
            return
        if kind == HEAD and self.slow_kind == HEAD and self.slow_key == key:
            return  # the same head goes on: its deadline stands
        self.slow_kind = kind
        self.slow_key = key
        self.slow_since = self.last_activity  # noted by resetTimeout for this read
        if self.slow_call is None:
            limits = self.context.limits
            self.slow_call = self.context.clock.callLater(
                limits.head_timeout if kind == HEAD else limits.body_timeout, self._slow_check
            )

    def _slow_check(self) -> None:
        self.slow_call = None
        if self.slow_kind == 0 or self.closing or self.lost:
            return
        clock = self.context.clock
        now = clock.seconds()
        if not self.reading:  # the hub stopped reading: the peer cannot make progress
            self.slow_since = now
        limits = self.context.limits
        limit = limits.head_timeout if self.slow_kind == HEAD else limits.body_timeout
        left = self.slow_since + limit - now
        if left > 0:
            self.slow_call = clock.callLater(left, self._slow_check)
            return
        what = "request head not complete" if self.slow_kind == HEAD else "request body stalled"
        self.request_timeout(f"{what} within {limit} s")
        self.flush()

    def request_timeout(self, reason: str) -> None:
        """A head or a body too slow: end the stream with the port's 408 once what came before is answered."""
        raise NotImplementedError

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
            log.info(
                "{ingress} {host}:{port}: {message}", ingress=self.ingress, host=getattr(peer, "host", "?"),
                port=getattr(peer, "port", "?"), message=message,
            )

    def internal_error(self, error: BaseException) -> None:
        """Our own exception while reading or routing: a bug, logged with its traceback and counted as such.

        Reading stops and the peer is answered 500 (``fail_internal`` sets the
        subclass's fatal answer) once what came before is answered, never a
        4xx that would blame its bytes.
        """
        self.stats.internal_error(self.ingress)
        self.logged = True  # the traceback is this connection's log line
        log.failure("{ingress}: internal error while reading", Failure(error), ingress=self.ingress)
        self.fail_internal()
        if not self.lost:
            self.closing = True
            self.transport.pauseProducing()

    def route_read(self, events: list, first: int) -> None:
        """``route_batch``, with an exception of ours handled as the bug it is."""
        try:
            self.route_batch(events, first)
        except Exception as e:
            self.internal_error(e)
            self.flush()

    # -- the batch path ---------------------------------------------------------

    def route_batch(self, events: list, first: int) -> None:
        """Route ``events`` (requests numbered from ``first``) and hand them to sinks.

        A request whose state carries credentials that need a password hash
        holds it and everything after it (reading pauses) until a worker
        thread has checked them: scrypt must not stall the other producers.
        A closing connection closes only once those are answered too.
        """
        if self.held:
            self.held.append((events, first))
            return
        context = self.context
        cache = self.cache
        errors: dict[int, tuple] = {}
        groups: dict = {}
        last_state = last_method = None
        targets: dict = {}
        entry: StateDecisions  # of last_state; set by the first request (last_state starts as None)
        # Request n's message id is ids + n: one id per request read, so an
        # answer can name the id of the message it accepted.
        ids = context.reserve_ids(len(events)) - first
        now = self.seconds()
        misses = cache.misses
        for req in events:
            if req.__class__ is Rejected:
                errors[req.number] = (req.status, req.reason, ())
                continue
            state = req[3]
            method = req[0]
            # Both readers hand out shared method objects (the state's, or
            # GET/POST constants), so ``is`` holds while the method is unchanged.
            if state is not last_state or method is not last_method:
                if state is not last_state:
                    found = cache.for_state(state)
                    if found is None:
                        refusal = self.refusal
                        if refusal is not None and refusal[0] is state:
                            # Its check was refused or failed: answer that, never check again in a loop.
                            errors[req[4]] = refusal[1]
                            continue
                        # Credentials need hashing: hold the rest.
                        events = self._split(events, req, first)
                        break
                    entry = found
                    last_state = state
                targets = entry.methods.get(method) or cache.targets(entry, method)
                last_method = method
            decision = targets.get(req[1])
            if decision is None:
                decision = cache.decide(entry, method, req[1])
            route = decision.route
            if decision.status:
                errors[req[4]] = (decision.status, decision.reason, decision.headers)
                if route is not None:
                    self.stats.route_rejected(route.name, 1)
                continue
            assert route is not None  # status 0: a route accepted it
            group = groups.get(route)
            if group is None:
                groups[route] = group = []
            # Message's fields in order: id, method, target, headers, body,
            # route, user, captures, received, number.
            group.append(_new(Message, (
                ids + req[4], req[0], req[1], state.headers, req[2], route.name, decision.user, decision.captures,
                now, req[4],
            )))
        self.stats.decision_hits += len(events) - (cache.misses - misses)
        if events:
            self._deliver(events, first, errors, groups, ids)
        if self.held and self.held_state is None:
            self._verify_held()  # after delivering what came before: a refusal may answer at once
        # Answer first: batches a sink took at once (discard) free their bytes
        # here, so a read of many small messages does not stop and restart reading.
        self.flush()
        self.update_reading()

    def _split(self, events: list, req, first: int) -> list:
        """Keep ``events`` before ``req`` for now; hold ``req`` and the rest until its credentials are checked."""
        i = next(i for i, e in enumerate(events) if e is req)
        self.held.append((events[i:], first + i))
        self.update_reading()
        return events[:i]

    def _verify_held(self) -> None:
        """Ask for the first held request's check; refusals that come at once are answered in a loop.

        A refusal routes the held requests, which may hold again on the next
        header and be refused again: nested, a read of distinct refused headers
        would recurse once per request.
        """
        if self.verifying:
            return  # called from a refusal being answered below: the loop there goes on
        self.verifying = True
        peer = getattr(self.transport.getPeer(), "host", "?")
        try:
            while self.held and self.held_state is None:
                self.held_state = state = self.held[0][0][0][3]
                d = self.context.verifier.verify(state.header(b"authorization"), peer)
                if not d.called:
                    d.addCallback(self._verified)
                    return
                outcome: list = []
                d.addCallback(outcome.append)
                self._verified(outcome[0])
        finally:
            self.verifying = False

    def _verified(self, refusal: tuple | None) -> None:
        """The held state's check is done: route what it held (a refusal answers its requests)."""
        held, self.held = self.held, []
        state, self.held_state = self.held_state, None
        if self.lost:
            return  # nobody to answer: commit nothing
        previous = self.refusal
        if refusal is not None:
            self.refusal = (state, refusal)
        try:
            for events, first in held:
                self.route_batch(events, first)
        except Exception as e:
            self.internal_error(e)
            self.flush()
        finally:
            self.refusal = previous
        self.update_reading()

    def _deliver(self, events: list, first: int, errors: dict, groups: dict, ids: int) -> None:
        n = len(events)
        # The reads that made these requests (and the start of the next one).
        size = self.unbatched + n * MESSAGE_OVERHEAD
        self.unbatched = 0
        batch = Batch(first, first + n - 1, errors, len(groups), size, ids)
        self.batches.append(batch)
        self.held_bytes += size
        self.budget.used += size
        stats = self.stats
        if errors:
            stats.rejected(self.ingress, errors)
        for route, messages in groups.items():
            self.inflight += len(messages)
            try:
                result = route.sink.deliver(messages)
            except Exception:  # a sink bug must not take the connection's answers with it
                result = fail()
            if result is None:
                # Taken whole at once (discard): _sink_done's work without a
                # refusal, inline, since this runs once per read at wrk's pace.
                stats.route_accepted(route.name, self.ingress, len(messages))
                self.inflight -= len(messages)
                batch.waiting -= 1
            else:
                result.addCallbacks(
                    self._sink_done,
                    self._sink_failed,
                    (batch, route, messages),
                    None,
                    (batch, route, messages),
                )

    def _sink_done(self, refused, batch: Batch, route, messages: list) -> None:
        # A sink may refuse some messages of a batch it otherwise took
        # (e.g. unroutable at the broker): ``refused`` maps their ids to SinkErrors.
        accepted = len(messages)
        if refused:
            accepted -= len(refused)
            numbers = {m.id: m.number for m in messages}
            for message_id, error in refused.items():
                headers = _RETRY_AFTER if error.status == 503 else ()
                batch.errors[numbers[message_id]] = (error.status, error.reason, headers)
            self.stats.rejected(self.ingress, {numbers[i]: (e.status,) for i, e in refused.items()})
            self.stats.route_rejected(route.name, len(refused))
        self.stats.route_accepted(route.name, self.ingress, accepted)
        self.inflight -= len(messages)
        batch.waiting -= 1
        self.flush()

    def _sink_failed(self, failure, batch: Batch, route, messages: list) -> None:
        error = failure.value
        if not isinstance(error, SinkError):
            log.failure("sink {sink} failed", failure, sink=route.sink.name)
            error = SinkError(500, "internal error")
        headers = _RETRY_AFTER if error.status == 503 else ()
        for message in messages:
            batch.errors[message.number] = (error.status, error.reason, headers)
        self.stats.rejected(self.ingress, {m.number: (error.status,) for m in messages})
        self.stats.route_rejected(route.name, len(messages))
        self.inflight -= len(messages)
        batch.waiting -= 1
        self.flush()

    def update_reading(self) -> None:
        """Stop or resume reading from the peer, as the limits say.

        Reading stops while a password check holds requests, while the
        transport's write buffer is full, when messages in flight exceed
        ``max_inflight``, when this connection's bytes exceed ``max_bytes``
        (only while it has batches to answer, since answering them is what
        frees those bytes) or when the hub's budget is over.  It resumes once
        all of these are at or below half (the write buffer: empty).
        """
        if self.lost or self.closing:
            return  # closing paused reading for good (or the peer sent EOF)
        budget = self.budget
        if self.reading:
            if (
                self.write_full
                or self.held
                or self.inflight > self.max_inflight
                or (self.batches and self.held_bytes + self.unsent > self.max_bytes)
            ):
                self.reading = False
                self.transport.pauseProducing()
            elif budget.used > budget.limit:
                self.reading = False
                self.transport.pauseProducing()
                budget.waiting.add(self)
        elif not (
            self.write_full
            or self.held
            or self.inflight > self.max_inflight >> 1
            or (self.batches and self.held_bytes + self.unsent > self.max_bytes >> 1)
        ):
            if budget.used > budget.limit >> 1:
                budget.waiting.add(self)  # woken by the budget's release
            else:
                self.reading = True
                self.transport.resumeProducing()

    def flush(self) -> None:
        """Answer every finished batch at the head of the queue."""
        batches = self.batches
        if batches and batches[0].waiting == 0:
            done = [batches.popleft()]
            size = done[0].size
            while batches and batches[0].waiting == 0:
                batch = batches.popleft()
                done.append(batch)
                size += batch.size
            if size:
                self.held_bytes -= size
                self.budget.release(size)
            if not self.lost:
                self.answer(done)
        if not self.reading:
            self.update_reading()
        if self.closing and not batches and not self.held and not self.lost:
            self.finish()  # requests held for a password check are answered first

    # -- what subclasses provide ------------------------------------------------

    answer: Callable[[list[Batch]], None]

    @staticmethod
    def connection_refusal(status: int, reason: str) -> bytes:
        """The bytes that refuse a whole connection in this port's wire format (e.g. over the limit)."""
        raise NotImplementedError

    def fail_internal(self) -> None:
        """Make the fatal answer a 500: an exception of ours (``internal_error``)."""
        raise NotImplementedError

    def finish(self) -> None:
        """Everything answered and no more input: close."""
        self.close()
