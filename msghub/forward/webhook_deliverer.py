"""One webhook target's queue: reads its spool name, sends, retries, marks delivered or dead-letters.

``msghub.forward.webhook`` owns the deliverers (one per target) and the poll
that ties them to the spool; this module is what one of them does with its
rows, and ``webhook_state`` decides what each answer means for the target.
"""

from __future__ import annotations

import random as _random
from collections import deque
from typing import Any, Callable, Mapping, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from msghub.config_webhooks import WebhookTarget
from msghub.forward.webhook_client import Result, parse_retry_after, sign
from msghub.forward.webhook_state import LATENCY_BUCKETS, Outcomes, RateLimit, TargetHealth, TargetStats
from msghub.idle import IdleWaiters
from msghub.message import Message, format_id
from msghub.spool import Position, Segment

__all__ = ["LATENCY_BUCKETS", "Client", "Deliverer", "TargetStats"]

log = Logger()


JITTER = 0.2  # each retry delay is scaled by a uniform factor in [0.8, 1.2]: receivers coming back see no stampede
TICK = 1.0  # seconds between polls: new rows from a replay or a past run, enable/disable, idle connections
IDLE_CLOSE = 30.0  # close a connection idle this long, before NATs and receivers drop it silently
STOP_GRACE = 5.0  # on stop, wait this long for attempts in flight (their rows stay queued otherwise)
WINDOW_MIN = 256  # rows a deliverer holds in memory (ready, in flight, awaiting retry): at least this
# Deliveries and dead letters are recorded at most this often per target: a
# commit per reactor turn (hundreds a second while a backlog drains) kept the
# spool's one writer busy, and producers' commits waited behind it.  After a
# crash, what was delivered in the last MARK_DELAY is sent again (at-least-once).
MARK_DELAY = 0.05
READ_COUNT = 16384  # messages per spool read at most (bytes are bounded by the spool's read_bytes)
RETRY_AFTER_MIN_CAP = 60.0  # Retry-After is capped at the longest retry delay, or this if longer

class Client(Protocol):
    """What a deliverer needs of its HTTP client: ``HttpPool``, or a test's fake."""

    def post(self, fields: bytes, body: bytes, on_done: Callable[[Result], None]) -> None: ...

    def close_idle(self, older_than: float) -> None: ...

    def close(self) -> None: ...


class _Pending:
    """A spooled message on its way to the target, with its attempts so far."""

    __slots__ = ("position", "message", "fields", "attempts", "timer", "error")

    def __init__(self, position: Position, message: Message, fields: bytes) -> None:
        self.position = position
        self.message = message
        self.fields = fields  # Content-Type and webhook-id lines: the same for every attempt
        self.attempts = 0
        self.timer: Any = None
        self.error = ""


def _static_fields(message: Message) -> bytes:
    content_type = b""
    for name, value in message.headers:
        if len(name) == 12 and name.lower() == b"content-type":
            content_type = b"Content-Type: %s\r\n" % value
            break
    return b"%swebhook-id: %s\r\n" % (content_type, format_id(message.id).encode("ascii"))


class Deliverer:
    """One target's queue: reads its spool name, sends, retries, marks delivered or dead-letters."""

    def __init__(
        self,
        target: WebhookTarget,
        reactor: Any,
        spool: Any,
        client: Client,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self.name = target.spool_name
        self.reactor = reactor
        self.spool = spool
        self.client = client
        self.random = random
        self.stats = TargetStats()
        self.health = TargetHealth(target.name, target.disable_after)

        self.ready: deque[_Pending] = deque()  # in position order, retries put back in front
        self.waiting: set[_Pending] = set()  # retry timers running
        self.inflight = 0
        self._idle = IdleWaiters()  # the stop's grace wait: no attempt in flight
        # The next position to load.  Reads take whole segments (up to the
        # spool's read_bytes); what the window has no room for yet stays in
        # ``buffered``, decoded, and is loaded from memory as room frees up:
        # a segment is read and decoded once, not once per refill.
        self.cursor: Position = (0, 0)
        self.buffered: deque[Segment] = deque()  # read, not yet wholly loaded; seq >= cursor's
        self.more = False  # the last read filled its limit: rows may be waiting past the buffer
        self.reading = False  # a read is under way (at most one)
        self.woken = False  # rows were committed while reading: read again after it
        self.generation = 0  # bumped when in-memory state is dropped; older results only delete
        self.running = False
        self.disabled = False
        self.disable_committed = True  # our own disable is on disk (until then the poll must not undo it)
        self.paused_until = 0.0  # Retry-After on 429/503: no new attempt before this
        self._pause_call: Any = None
        self._rate_call: Any = None  # the pump, when ``rate`` lets the next attempt start
        self._fill_call: Any = None
        self._flush_call: Any = None
        self._delete: list[Position] = []  # delivered, marked once per MARK_DELAY
        self._kill: list[tuple[Position, Message, str]] = []  # to dead-letter, likewise
        self._retries: list[tuple[Position, int, float]] = []  # schedules to record, likewise
        self._done: set[Position] = set()  # marked or killed but not yet committed: never reread
        self._record_failing = False  # marks are failing to commit (logged once)
        self._dead_logged_at = float("-inf")
        self._dead_unlogged = 0  # dead letters since the last log line; the last one's text:
        self._dead_last = ""
        self.configure(target)

    # -- life cycle ------------------------------------------------------------------

    def configure(self, target: WebhookTarget) -> None:
        """Take ``target``'s policy (at start, or from a reload): it applies from the next attempt.

        Messages keep their attempts so far and running retry timers; the
        next delay is read from the new schedule.
        """
        self.target = target
        self.concurrency = target.concurrency
        self.ordered = target.ordered
        self.window = max(WINDOW_MIN, 4 * target.concurrency)
        self.retry_after_cap = max((*target.retry, RETRY_AFTER_MIN_CAP))
        self._keys = target.secrets
        self._outcome = Outcomes(target)
        self.rate = None if target.rate is None else RateLimit(target.rate, self.reactor.seconds())
        self.health.disable_after = target.disable_after
        if self.running:
            self._pump()

    def start(self, disabled_reason: str | None) -> None:
        self.running = True
        if disabled_reason is not None:
            self.disabled = self.stats.disabled = True
            self.health.disabled(self.reactor.seconds(), disabled_reason)
        self.fill()

    def stop(self) -> None:
        self.running = False
        self._log_dead(force=True)
        self._drop()
        for call in (self._fill_call, self._pause_call, self._rate_call):
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
        self.buffered.clear()
        self.cursor = (0, 0)

    @property
    def loaded(self) -> int:
        return len(self.ready) + len(self.waiting) + self.inflight

    # -- reading the spool ---------------------------------------------------------------

    def wake(self) -> None:
        """Rows were committed for this target: read them soon (once per reactor turn)."""
        if self.reading:
            self.woken = True
        elif self._fill_call is None and self.running and not self.disabled:
            self._fill_call = self.reactor.callLater(0, self.fill)

    def fill(self) -> None:
        self._fill_call = None
        if not self.running or self.disabled:
            return
        if self.reading:
            self.woken = True
            return
        room = self.window - self.loaded
        if room > 0 and self.buffered:
            self._take(room)
            room = self.window - self.loaded
        # Small top-ups only when idle: commits wake us every turn, and a
        # query per turn for a handful of rows would cost more than it moves.
        if room > 0 and not self.buffered and (room >= self.window // 4 or not self.ready):
            self.reading = True
            self.woken = False
            d = self.spool.read(self.name, after_seq=self.cursor[0] - 1, limit=max(room, READ_COUNT))
            d.addCallbacks(self._loaded, self._read_failed, (self.generation,), None)
            return
        self._pump()

    def _loaded(self, segments: list[Segment], generation: int) -> None:
        self.reading = False
        if generation != self.generation:  # dropped meanwhile: what we read is stale
            self.wake()
            return
        cursor = self.cursor
        for segment in segments:
            if segment.seq >= cursor[0]:
                self.buffered.append(segment)
        # Reads stop at a count or a byte bound, so any read that found rows
        # may have left more behind it; only an empty one has seen them all.
        self.more = bool(segments)
        room = self.window - self.loaded
        if room > 0:
            self._take(room)
        if self.woken:
            self.wake()
        self._pump()

    def _take(self, room: int) -> None:
        """Load up to ``room`` messages from ``buffered`` into the window, in position order."""
        now = self.reactor.seconds()
        done = self._done
        cursor = self.cursor
        buffered = self.buffered
        ready = self.ready
        count = 0
        while buffered and count < room:
            segment = buffered[0]
            seq = segment.seq
            start = cursor[1] if seq == cursor[0] else 0
            mask = segment.done
            retries = segment.retries
            messages = segment.messages
            end = len(messages)
            index = start
            while index < end and count < room:
                if mask >> index & 1 or (seq, index) in done:
                    index += 1
                    continue
                message = messages[index]
                pending = _Pending((seq, index), message, _static_fields(message))
                index += 1
                count += 1
                schedule = retries.get(index - 1) if retries else None
                if schedule is not None:  # resumed after a restart
                    pending.attempts, next_at = schedule
                    if next_at > now:
                        pending.timer = self.reactor.callLater(next_at - now, self._due, pending)
                        self.waiting.add(pending)
                        continue
                ready.append(pending)
            if index >= end:
                buffered.popleft()
                cursor = (seq + 1, 0)
            else:
                cursor = (seq, index)
        self.cursor = cursor

    def _read_failed(self, failure: Failure) -> None:
        self.reading = False
        log.failure("webhook {target}: reading the spool failed", failure, target=self.target.name)

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
            due = sorted((p for p in self.waiting if p.timer.getTime() <= now), key=lambda p: p.position)
            for pending in reversed(due):
                pending.timer.cancel()
                pending.timer = None
                self.waiting.discard(pending)
                self.ready.appendleft(pending)
        ready = self.ready
        rate = self.rate
        while ready and self.inflight < self.concurrency:
            if rate is not None:
                wait = rate.wait(self.reactor.seconds())
                if wait:
                    if self._rate_call is None:
                        self._rate_call = self.reactor.callLater(wait, self._rated)
                    break
            self._send(ready.popleft())
        # Read more once half the window is free, not per delivery: one query per
        # many rows.  Without ``more``, new rows come with a wake or the tick.
        if (self.more or self.buffered) and self._fill_call is None and self.loaded <= self.window // 2:
            self._fill_call = self.reactor.callLater(0, self.fill)

    def _rated(self) -> None:
        self._rate_call = None
        self._pump()

    # -- one attempt ----------------------------------------------------------------------

    def _send(self, pending: _Pending) -> None:
        pending.attempts += 1
        message = pending.message
        now = self.reactor.seconds()
        timestamp = int(now)
        fields = pending.fields + b"webhook-timestamp: %d\r\n" % timestamp
        if self._keys:
            message_id = format_id(message.id).encode("ascii")
            fields += b"webhook-signature: %s\r\n" % sign(self._keys, message_id, timestamp, message.body)
        self.inflight += 1
        generation = self.generation
        self.client.post(fields, message.body, lambda result: self._answered(pending, now, generation, result))

    def _answered(self, pending: _Pending, started: float, generation: int, result: Result) -> None:
        self.inflight -= 1
        now = self.reactor.seconds()
        stats = self.stats
        status = result.status
        if status:
            stats.observe(now - started)
        outcome = self._outcome(result)
        stats.attempts[outcome] += 1
        if outcome == "success":
            self.health.succeeded(now)
            self._finish(pending, None)
        elif generation != self.generation:
            pass  # dropped meanwhile (disabled or stopping): the row is read again later
        elif outcome == "disabled":
            reason = f"HTTP 410 {result.reason.decode('latin-1')} for {format_id(pending.message.id)}"
            self.disable(reason, persist=True)
        else:
            pending.error = self._describe(result)
            if outcome == "dead":  # not in retry_on: this message, not the target, is refused
                self._finish(pending, pending.error)
            else:
                self.health.failed(now, pending.error)
                self._retry(pending, result, now)
                self._disable_if_overdue(now)
        self._pump()
        if self._idle and not self.inflight:  # after this answer's bookkeeping: the stop flushes next
            self._idle.fire()

    def when_idle(self) -> Deferred:
        """Fires once no attempt is in flight."""
        return self._idle.wait() if self.inflight else succeed(None)

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
            self._finish(pending, f"gave up after {pending.attempts} attempts; last: {pending.error}")
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
        # Recorded so that a restart resumes the schedule, with the marks.
        self._retries.append((pending.position, pending.attempts, now + delay))
        if self._flush_call is None:
            self._flush_call = self.reactor.callLater(MARK_DELAY, self.flush)

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

    # -- deleting and dead-lettering, batched per MARK_DELAY -----------------------------

    def _finish(self, pending: _Pending, error: str | None) -> None:
        """``pending`` is done: delivered (``error`` None) or dead."""
        position = pending.position
        self._done.add(position)
        if error is None:
            self._delete.append(position)
        else:
            self._kill.append((position, pending.message, error))
            self.stats.dead += 1
            self._dead_unlogged += 1
            self._dead_last = f"{format_id(pending.message.id)}: {error}"
            self._log_dead(force=False)
        if self._flush_call is None:
            self._flush_call = self.reactor.callLater(MARK_DELAY, self.flush)

    def _log_dead(self, force: bool) -> None:
        # At most a line a second: a target refusing everything must not flood the log.
        now = self.reactor.seconds()
        if self._dead_unlogged and (force or now - self._dead_logged_at >= 1.0):
            log.info("webhook {target}: {n} dead-lettered (last {last}); msghub-spool dead {target} lists them",
                     target=self.target.name, n=self._dead_unlogged, last=self._dead_last)
            self._dead_logged_at = now
            self._dead_unlogged = 0

    def flush(self) -> None:
        """Record deliveries and dead letters now (normally done once per MARK_DELAY)."""
        call, self._flush_call = self._flush_call, None
        if call is not None and call.active():
            call.cancel()
        if self._retries:
            schedule, self._retries = self._retries, []
            self.spool.set_retries(self.name, schedule).addErrback(
                lambda f: log.warn("webhook {target}: recording retry times failed: {error}",
                                   target=self.target.name, error=f.getErrorMessage()))
        if self._delete:
            positions, self._delete = self._delete, []
            self.spool.done(self.name, positions).addBoth(self._flushed, positions, None)
        if self._kill:
            entries, self._kill = self._kill, []
            self.spool.dead(self.name, entries, self.reactor.seconds()).addBoth(self._flushed, None, entries)

    def _flushed(self, result: Any, positions: list[Position] | None, entries: list | None) -> None:
        if isinstance(result, Failure):
            # Not on disk: keep them out of rereads and try again next tick.
            # (The spool logs its own failure once; so do we, not per attempt.)
            if not self._record_failing:
                self._record_failing = True
                log.warn("webhook {target}: recording deliveries failed ({error}); retrying each second",
                         target=self.target.name, error=result.getErrorMessage())
            if positions is not None:
                self._delete.extend(positions)
            else:
                self._kill.extend(entries or ())
            return
        if self._record_failing:
            self._record_failing = False
            log.info("webhook {target}: recording deliveries works again", target=self.target.name)
        self._done.difference_update(positions if positions is not None else [p for p, _, _ in entries or ()])

    # -- disabling ---------------------------------------------------------------------------

    def disable(self, reason: str, persist: bool) -> None:
        """Stop sending; every row stays queued.  ``persist``: record it for restarts."""
        if self.disabled:
            return
        self.disabled = self.stats.disabled = True
        self.health.disabled(self.reactor.seconds(), reason)
        self._drop()
        if persist:
            self.disable_committed = False

            def committed(result: Any) -> None:
                self.disable_committed = True
                if isinstance(result, Failure):
                    log.failure("webhook {target}: recording the disable failed", result, target=self.target.name)

            self.spool.set_disabled(self.name, reason, self.reactor.seconds()).addBoth(committed)

    def _disable_if_overdue(self, now: float) -> None:
        reason = self.health.overdue(now)
        if reason is not None:
            self.disable(reason, persist=True)

    @property
    def state(self) -> str:
        """``healthy``, ``retrying`` or ``disabled``: see ``TargetHealth``."""
        return self.health.state

    def enable(self) -> None:
        if not self.disabled:
            return
        self.disabled = self.stats.disabled = False
        self.paused_until = 0.0
        self.health.enabled(self.reactor.seconds())
        self.fill()

    def tick(self, disabled: Mapping[str, str]) -> None:
        """Once per ``TICK``: follow msghub-spool's enable/disable, find rows written beside us."""
        reason = disabled.get(self.name)
        if reason is not None and not self.disabled:
            self.disable(reason, persist=False)
        elif reason is None and self.disabled and self.disable_committed:
            self.enable()
        elif self.running and not self.disabled:
            self._disable_if_overdue(self.reactor.seconds())  # between attempts hours apart, too
            self.fill()
        if self._delete or self._kill:
            self.flush()
        self._log_dead(force=False)
        self.client.close_idle(IDLE_CLOSE)


