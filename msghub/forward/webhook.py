"""Webhook targets: signed POSTs from the spool, retried, isolated per target.

A route's ``WebhookSink`` appends each batch once per target, under the
spool name ``webhook:TARGET``, in one ``append_each`` (one commit, one
Deferred): the producer is acknowledged once every target's copy is on disk.
From there each target has its own ``Deliverer``: it reads its spool name in
seq (acceptance) order, keeps up to ``concurrency`` attempts in flight over
its own connection pool, and deletes a row only after a 2xx.  Nothing is
shared between targets but the reactor and the spool, so a dead or slow
target only ever holds its own connections, window and retry timers.

Retry state lives in memory: after a restart every row still in the spool is
tried again from its first attempt (at-least-once; ``webhook-id`` lets the
receiver drop the duplicate).  What must survive a restart is in the spool
database: the rows themselves, the dead letters, and the disabled targets.
"""

from __future__ import annotations

import hashlib
import hmac
import random as _random
from base64 import b64encode
from bisect import bisect_left
from collections import deque
from email.utils import parsedate_to_datetime
from typing import Any, Callable, Iterable, Mapping, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from msghub.config_webhooks import WebhookTarget
from msghub.forward import ISink
from msghub.forward.webhook_client import HttpPool, Result
from msghub.message import format_id
from msghub.spool import SpooledMessage

__all__ = ["Deliverer", "TargetStats", "WebhookForwarder", "WebhookSink", "parse_retry_after", "sign"]

log = Logger()

JITTER = 0.2  # each retry delay is scaled by a uniform factor in [0.8, 1.2]: receivers coming back see no stampede
TICK = 1.0  # seconds between polls: new rows from a replay or a past run, enable/disable, idle connections
IDLE_CLOSE = 30.0  # close a connection idle this long, before NATs and receivers drop it silently
STOP_GRACE = 5.0  # on stop, wait this long for attempts in flight (their rows stay queued otherwise)
WINDOW_MIN = 256  # rows a deliverer holds in memory (ready, in flight, awaiting retry): at least this
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RETRY_AFTER_MIN_CAP = 60.0  # Retry-After is capped at the longest retry delay, or this if longer

_OUTCOMES = ("success", "retry", "timeout", "error", "dead", "disabled")


def sign(keys: Iterable[bytes], message_id: bytes, timestamp: int, body: bytes) -> bytes:
    """The Standard Webhooks ``webhook-signature`` value: ``v1,<base64 HMAC-SHA256>`` per key.

    Signed content is ``{id}.{timestamp}.{body}`` over the raw body bytes;
    several keys (rotation) give space-separated signatures.
    """
    head = b"%s.%d." % (message_id, timestamp)
    out = []
    for key in keys:
        mac = hmac.new(key, head, hashlib.sha256)
        mac.update(body)
        out.append(b"v1," + b64encode(mac.digest()))
    return b" ".join(out)


def parse_retry_after(value: bytes, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` of delta-seconds or an HTTP-date; None if unreadable."""
    text = value.decode("latin-1").strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # HTTP-dates are GMT
        return None
    return max(0.0, when.timestamp() - now)


class Client(Protocol):
    """What a deliverer needs of its HTTP client: ``HttpPool``, or a test's fake."""

    def post(self, fields: bytes, body: bytes, on_done: Callable[[Result], None]) -> None: ...

    def close_idle(self, older_than: float) -> None: ...

    def close(self) -> None: ...


class TargetStats:
    """Plain counters per target, updated once per attempt and read at scrape time."""

    def __init__(self) -> None:
        self.attempts = dict.fromkeys(_OUTCOMES, 0)
        self.latency = [0] * (len(LATENCY_BUCKETS) + 1)  # per bucket, not cumulative; last is +Inf
        self.latency_sum = 0.0
        self.dead = 0
        self.disabled = False

    def observe(self, seconds: float) -> None:
        self.latency[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds


class _Pending:
    """A row on its way to the target, with its attempts so far."""

    __slots__ = ("row", "fields", "attempts", "timer", "error")

    def __init__(self, row: SpooledMessage, fields: bytes) -> None:
        self.row = row
        self.fields = fields  # Content-Type and webhook-id lines: the same for every attempt
        self.attempts = 0
        self.timer: Any = None
        self.error = ""


def _static_fields(row: SpooledMessage) -> bytes:
    content_type = b""
    for name, value in row.headers:
        if len(name) == 12 and name.lower() == b"content-type":
            content_type = b"Content-Type: %s\r\n" % value
            break
    return b"%swebhook-id: %s\r\n" % (content_type, format_id(row.id).encode("ascii"))


class Deliverer:
    """One target's queue: reads its spool name, sends, retries, deletes or dead-letters."""

    def __init__(
        self,
        target: WebhookTarget,
        reactor: Any,
        spool: Any,
        client: Client,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self.target = target
        self.name = target.spool_name
        self.reactor = reactor
        self.spool = spool
        self.client = client
        self.random = random
        self.concurrency = target.concurrency
        self.ordered = target.ordered
        self.window = max(WINDOW_MIN, 4 * target.concurrency)
        self.retry_after_cap = max((*target.retry, RETRY_AFTER_MIN_CAP))
        self._keys = target.secrets
        self.stats = TargetStats()

        self.ready: deque[_Pending] = deque()  # in seq order, retries put back in front
        self.waiting: set[_Pending] = set()  # retry timers running
        self.inflight = 0
        self.cursor = 0  # last seq read from the spool
        self.more = False  # the last read filled its limit: rows may be waiting past the cursor
        self.generation = 0  # bumped when in-memory state is dropped; older results only delete
        self.running = False
        self.disabled = False
        self.disable_committed = True  # our own disable is on disk (until then the poll must not undo it)
        self.paused_until = 0.0  # Retry-After on 429/503: no new attempt before this
        self._pause_call: Any = None
        self._fill_call: Any = None
        self._flush_call: Any = None
        self._delete: list[int] = []  # delivered rows, deleted once per reactor turn
        self._kill: list[tuple[int, str]] = []  # (seq, error) to dead-letter, likewise
        self._done: set[int] = set()  # seqs deleted or killed but not yet committed: never reread
        self._dead_logged_at = float("-inf")
        self._dead_unlogged = 0  # dead letters since the last log line; the last one's text:
        self._dead_last = ""

    # -- life cycle ------------------------------------------------------------------

    def start(self, disabled_reason: str | None) -> None:
        self.running = True
        if disabled_reason is not None:
            self.disabled = self.stats.disabled = True
            log.warn("webhook {target}: disabled ({reason}); msghub-spool enable {target} resumes it",
                     target=self.target.name, reason=disabled_reason)
        self.fill()

    def stop(self) -> None:
        self.running = False
        self._log_dead(force=True)
        self._drop()
        for call in (self._fill_call, self._pause_call):
            if call is not None and call.active():
                call.cancel()
        self.flush()

    def _drop(self) -> None:
        """Forget every row held in memory; they stay in the spool and are read again."""
        self.generation += 1
        for pending in self.waiting:
            pending.timer.cancel()
        self.waiting.clear()
        self.ready.clear()
        self.cursor = 0

    @property
    def loaded(self) -> int:
        return len(self.ready) + len(self.waiting) + self.inflight

    # -- reading the spool ---------------------------------------------------------------

    def wake(self) -> None:
        """Rows were committed for this target: read them soon (once per reactor turn)."""
        if self._fill_call is None and self.running and not self.disabled:
            self._fill_call = self.reactor.callLater(0, self.fill)

    def fill(self) -> None:
        self._fill_call = None
        if not self.running or self.disabled:
            return
        room = self.window - self.loaded
        # Small top-ups only when idle: commits wake us every turn, and a
        # query per turn for a handful of rows would cost more than it moves.
        if room > 0 and (room >= self.window // 4 or not self.ready):
            rows = self.spool.read(self.name, limit=room, after_seq=self.cursor)
            self.more = len(rows) == room
            if rows:
                self.cursor = rows[-1].seq
                done = self._done
                self.ready.extend(_Pending(row, _static_fields(row)) for row in rows if row.seq not in done)
        self._pump()

    def _pump(self) -> None:
        if not self.running or self.disabled or (self.ordered and self.waiting):
            return  # an ordered target's next message waits for the one being retried
        if self.paused_until:
            now = self.reactor.seconds()
            if now < self.paused_until:
                return
            self.paused_until = 0.0
            # Retries due at the end of the pause go before newer rows, whichever
            # of their timers and the pause's the reactor happens to run first.
            due = sorted((p for p in self.waiting if p.timer.getTime() <= now), key=lambda p: p.row.seq)
            for pending in reversed(due):
                pending.timer.cancel()
                pending.timer = None
                self.waiting.discard(pending)
                self.ready.appendleft(pending)
        ready = self.ready
        while ready and self.inflight < self.concurrency:
            self._send(ready.popleft())
        # Read more once half the window is free, not per delivery: one query per
        # many rows.  Without ``more``, new rows come with a wake or the tick.
        if self.more and self._fill_call is None and self.loaded <= self.window // 2:
            self._fill_call = self.reactor.callLater(0, self.fill)

    # -- one attempt ----------------------------------------------------------------------

    def _send(self, pending: _Pending) -> None:
        pending.attempts += 1
        row = pending.row
        now = self.reactor.seconds()
        timestamp = int(now)
        fields = pending.fields + b"webhook-timestamp: %d\r\n" % timestamp
        if self._keys:
            message_id = format_id(row.id).encode("ascii")
            fields += b"webhook-signature: %s\r\n" % sign(self._keys, message_id, timestamp, row.body)
        self.inflight += 1
        generation = self.generation
        self.client.post(fields, row.body, lambda result: self._answered(pending, now, generation, result))

    def _answered(self, pending: _Pending, started: float, generation: int, result: Result) -> None:
        self.inflight -= 1
        now = self.reactor.seconds()
        stats = self.stats
        status = result.status
        if status:
            stats.observe(now - started)
        seq = pending.row.seq
        if 200 <= status < 300:
            stats.attempts["success"] += 1
            self._finish(seq, None)
        elif generation != self.generation:
            # Dropped meanwhile (disabled or stopping): the row is read again later.
            stats.attempts[self._outcome(result)] += 1
        elif status == 410:
            stats.attempts["disabled"] += 1
            self.disable(f"HTTP 410 {result.reason.decode('latin-1')} for {format_id(pending.row.id)}", persist=True)
        else:
            outcome = self._outcome(result)
            stats.attempts[outcome] += 1
            pending.error = self._describe(result)
            if outcome == "dead":
                self._finish(seq, pending.error)
            else:
                self._retry(pending, result, now)
        self._pump()

    @staticmethod
    def _outcome(result: Result) -> str:
        status = result.status
        if not status:
            return "timeout" if result.timed_out else "error"
        if 200 <= status < 300:
            return "success"
        if status == 410:
            return "disabled"
        # 408: the receiver timed out reading us, a transport problem like our own timeout.
        if status >= 500 or status in (408, 429):
            return "retry"
        return "dead"  # 3xx (not followed) and the other 4xx: sending it again cannot help

    @staticmethod
    def _describe(result: Result) -> str:
        if not result.status:
            return result.error
        text = f"HTTP {result.status} {result.reason.decode('latin-1')}".rstrip()
        body = result.body.decode("utf-8", "replace").strip()
        return f"{text}: {body}" if body else text

    def _retry(self, pending: _Pending, result: Result, now: float) -> None:
        schedule = self.target.retry
        if pending.attempts > len(schedule):
            self._finish(pending.row.seq, f"gave up after {pending.attempts} attempts; last: {pending.error}")
            return
        delay = None
        if result.status in (429, 503) and result.retry_after is not None:
            delay = parse_retry_after(result.retry_after, now)
        if delay is not None:
            # The receiver asked for a break: the whole target pauses, not just this message.
            delay = min(delay, self.retry_after_cap)
            self._pause(now + delay)
        else:
            delay = schedule[pending.attempts - 1] * (1.0 + JITTER * (2.0 * self.random() - 1.0))
        pending.timer = self.reactor.callLater(delay, self._due, pending)
        self.waiting.add(pending)

    def _due(self, pending: _Pending) -> None:
        pending.timer = None
        self.waiting.discard(pending)
        self.ready.appendleft(pending)  # oldest first: a retry goes before new rows
        self._pump()

    def _pause(self, until: float) -> None:
        if until <= self.paused_until:
            return
        self.paused_until = until
        if self._pause_call is not None and self._pause_call.active():
            self._pause_call.cancel()
        self._pause_call = self.reactor.callLater(until - self.reactor.seconds(), self._pump)

    # -- deleting and dead-lettering, batched per reactor turn ---------------------------

    def _finish(self, seq: int, error: str | None) -> None:
        """Row ``seq`` is done: delivered (``error`` None) or dead."""
        self._done.add(seq)
        if error is None:
            self._delete.append(seq)
        else:
            self._kill.append((seq, error))
            self.stats.dead += 1
            self._dead_unlogged += 1
            self._dead_last = f"seq {seq}: {error}"
            self._log_dead(force=False)
        if self._flush_call is None:
            self._flush_call = self.reactor.callLater(0, self.flush)

    def _log_dead(self, force: bool) -> None:
        # At most a line a second: a target refusing everything must not flood the log.
        now = self.reactor.seconds()
        if self._dead_unlogged and (force or now - self._dead_logged_at >= 1.0):
            log.info("webhook {target}: {n} dead-lettered (last {last}); msghub-spool dead {target} lists them",
                     target=self.target.name, n=self._dead_unlogged, last=self._dead_last)
            self._dead_logged_at = now
            self._dead_unlogged = 0

    def flush(self) -> None:
        """Record deliveries and dead letters now (normally done once per reactor turn)."""
        call, self._flush_call = self._flush_call, None
        if call is not None and call.active():
            call.cancel()
        if self._delete:
            seqs, self._delete = self._delete, []
            self.spool.delete(self.name, seqs).addBoth(self._flushed, seqs, None)
        if self._kill:
            errors, self._kill = self._kill, []
            self.spool.dead(self.name, errors, self.reactor.seconds()).addBoth(self._flushed, None, errors)

    def _flushed(self, result: Any, seqs: list[int] | None, errors: list[tuple[int, str]] | None) -> None:
        if isinstance(result, Failure):
            # Not on disk: keep them out of rereads and try again next tick.
            log.failure("webhook {target}: recording deliveries failed", result, target=self.target.name)
            if seqs is not None:
                self._delete.extend(seqs)
            else:
                self._kill.extend(errors or ())
            return
        self._done.difference_update(seqs if seqs is not None else [seq for seq, _ in errors or ()])

    # -- disabling ---------------------------------------------------------------------------

    def disable(self, reason: str, persist: bool) -> None:
        """Stop sending; every row stays queued.  ``persist``: record it for restarts."""
        if self.disabled:
            return
        self.disabled = self.stats.disabled = True
        log.warn("webhook {target}: disabled ({reason}); msghub-spool enable {target} resumes it",
                 target=self.target.name, reason=reason)
        self._drop()
        if persist:
            self.disable_committed = False

            def committed(result: Any) -> None:
                self.disable_committed = True
                if isinstance(result, Failure):
                    log.failure("webhook {target}: recording the disable failed", result, target=self.target.name)

            self.spool.set_disabled(self.name, reason, self.reactor.seconds()).addBoth(committed)

    def enable(self) -> None:
        if not self.disabled:
            return
        self.disabled = self.stats.disabled = False
        self.paused_until = 0.0
        log.info("webhook {target}: enabled; delivering its queue", target=self.target.name)
        self.fill()

    def tick(self, disabled: Mapping[str, str]) -> None:
        """Once per ``TICK``: follow msghub-spool's enable/disable, find rows written beside us."""
        reason = disabled.get(self.name)
        if reason is not None and not self.disabled:
            self.disable(reason, persist=False)
        elif reason is None and self.disabled and self.disable_committed:
            self.enable()
        elif self.running and not self.disabled:
            self.fill()
        if self._delete or self._kill:
            self.flush()
        self._log_dead(force=False)
        self.client.close_idle(IDLE_CLOSE)


@implementer(ISink)
class WebhookSink:
    """A route's ``webhooks = [...]`` destination: one spool append for all its targets."""

    def __init__(self, spool: Any, route_name: str, deliverers: list[Deliverer]) -> None:
        self.name = f"webhooks:{route_name}"
        self.deliverers = deliverers
        self.spool_names = tuple(d.name for d in deliverers)
        self._append_each = spool.append_each

    def deliver(self, messages: list) -> Deferred:
        return self._append_each(self.spool_names, messages).addCallback(self._committed)

    def _committed(self, result: None) -> None:
        for deliverer in self.deliverers:
            deliverer.wake()
        return result


class WebhookForwarder(Service):
    """Every target's deliverer, and the poll that ties them to the spool database."""

    def __init__(
        self,
        targets: Mapping[str, WebhookTarget],
        reactor: Any,
        spool: Any,
        random: Callable[[], float] = _random.random,
        client_factory: Callable[[WebhookTarget], Client] | None = None,
    ) -> None:
        self.reactor = reactor
        self.spool = spool
        make_client = client_factory or (lambda target: HttpPool(reactor, target))
        self.deliverers = {
            name: Deliverer(target, reactor, spool, make_client(target), random) for name, target in targets.items()
        }
        self._tick_call: Any = None
        self._changes = 0

    def sink(self, route_name: str, target_names: Iterable[str]) -> WebhookSink:
        return WebhookSink(self.spool, route_name, [self.deliverers[name] for name in target_names])

    def startService(self) -> None:
        super().startService()
        disabled = self.spool.disabled()  # the spool is open now: SpoolService starts first
        self._changes = self.spool.external_changes()
        for deliverer in self.deliverers.values():
            deliverer.start(disabled.get(deliverer.name))
        self._tick_call = self.reactor.callLater(TICK, self._tick)

    def _tick(self) -> None:
        self._tick_call = self.reactor.callLater(TICK, self._tick)
        try:
            disabled = self.spool.disabled()
            changes = self.spool.external_changes()
        except Exception:
            log.failure("webhooks: polling the spool failed")
            return
        if changes != self._changes:  # msghub-spool wrote beside us: depths went stale
            self._changes = changes
            self.spool.refresh_depths().addErrback(lambda f: log.failure("refreshing depths failed", f))
        for deliverer in self.deliverers.values():
            deliverer.tick(disabled)

    def stopService(self) -> Deferred:
        super().stopService()
        if self._tick_call is not None and self._tick_call.active():
            self._tick_call.cancel()
        deadline = self.reactor.seconds() + STOP_GRACE
        deliverers = list(self.deliverers.values())
        for deliverer in deliverers:
            deliverer.stop()  # no new attempts; what is in flight may still finish

        def wait() -> Any:
            busy = any(d.inflight for d in deliverers)
            if busy and self.reactor.seconds() < deadline:
                return deferLater(self.reactor, 0.05, wait)
            for deliverer in deliverers:
                deliverer.flush()  # deletes of the last answers, before the spool closes
                deliverer.client.close()
            return None

        return deferLater(self.reactor, 0, wait)
