"""Draining a route's spool to RabbitMQ once the broker is back: read ahead, publish, mark done.

The forwarder (``amqp.py``) owns the connection and the confirm window; a
``Dispatcher`` per AMQP route decides what of the route's spool to publish
next.  It keeps the broker busy the way a producer does: while the batches
it wrote wait for their confirms, the next segments are already being read
(off the reactor thread) and decoded, so when confirms free room in the
window the next batch is written at once.  A dispatcher that waited for each
batch's confirms before reading the next one left the broker idle for a
read, a decode and an encode per batch: with 4 KiB bodies (segments of ~200
messages) it drained at 0.63x the raw publisher (docs/benchmarks.md).

Bounds, each named below: one read in flight; read-ahead kept under the
confirm window in messages and under ``spool.read_bytes`` in body bytes
(plus the one segment a read may return beyond them); publishes in flight
under the confirm window (a segment is cut to fit, never exceeds it) and
under ``INFLIGHT_MAX_BYTES``.

Done marks are written per segment, once every message of it that was read
is settled: a segment cut across batches is deleted by one write instead of
being updated batch by batch (SQLite rewrites the whole row, blob included,
when its done bitmap grows).  So after a crash up to one segment's worth of
confirmed messages may be published again (same message id, as any
at-least-once redelivery); a dropped connection or a nack marks what was
confirmed at once.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

from twisted.logger import Logger

from msghub.message import Message, format_id

log = Logger()

# Messages per publish: fewer when the window or the read-ahead has fewer.
# Confirms arrive a few messages at a time; publishing on each would cost a
# record, an encode call and a write per handful of messages.
BATCH_MAX = 1000
BATCH_MIN = 500
# Body bytes of spooled messages written and not yet confirmed (at least one message).
INFLIGHT_MAX_BYTES = 16 << 20
# After a nack, the rewound messages wait this long before they are offered
# again, doubling per nack in a row; a batch confirmed whole resets it.
NACK_BACKOFF_MIN = 0.1
NACK_BACKOFF_MAX = 5.0

IDLE, DRAINING, REWINDING = "idle", "draining", "rewinding"


class Dispatcher:
    """One route's spool drain.

    ``state``:

    - ``IDLE``: the route is not spooling; nothing to do.  ``pump`` moves to
      DRAINING when the route starts spooling.
    - ``DRAINING``: reading ahead (at most one read in flight) and publishing
      what was read, in order, as the window allows.  Back to IDLE once a read
      finds the spool empty with nothing buffered, in flight or being appended.
    - ``REWINDING``: after a nack or a lost connection.  What was read ahead is
      dropped and nothing is published; once this route's publishes in flight
      are settled and their done marks committed, reading starts again from the
      first message not confirmed (so a confirmed message is not read back
      before its done mark is on disk), and the state is DRAINING again.

    ``publish(messages, positions)`` writes a batch (the forwarder records it
    and later calls ``settled`` or ``lost`` with it); ``room()`` is how many
    messages the window takes now (0 while the broker is unavailable).
    """

    def __init__(self, sink: Any, spool: Any, publish: Callable, room: Callable[[], int], window: int,
                 read_bytes: int, clock: Any = None) -> None:
        self.sink = sink  # its spool_name, spooling flag and append counters
        self.clock = clock  # for the back-off after a nack (None: no back-off, as in tests of the rest)
        self.backoff = 0.0  # seconds to wait before publishing again after the last nack
        self.resume_at = 0.0
        self._resume_call: Any = None
        self.spool = spool
        self._publish = publish
        self._room = room
        self.window = window
        self.read_bytes = read_bytes
        self.batch_min = max(1, min(BATCH_MIN, window // 4))
        self.state = IDLE
        self.stopped = False  # set by stop(): nothing is read, published or scheduled after it
        self.read_after = 0  # the last segment read (or, rewinding, to read after)
        self.rewind_to: int | None = None
        self.reading = False
        self.generation = 0  # bumped by a rewind: a read started before it is dropped
        self.exhausted: int | None = None  # sink.committed when a read last found nothing new
        # Read, not yet published: [seq, indices, messages, start] per segment, oldest first.
        self.buffer: deque[list] = deque()
        self.buffered = 0
        self.buffered_bytes = 0
        self.inflight = 0  # messages published and not settled
        self.inflight_bytes = 0
        self.done_writes = 0  # spool.done calls not yet committed
        # seq -> [messages read and not settled, positions settled so far]: done marks wait for the whole segment.
        self.open: dict[int, list] = {}

    # -- driving ------------------------------------------------------------------

    def pump(self) -> None:
        """Move what can move: called on every confirm, commit, reconnect and tick."""
        sink = self.sink
        if self.state == IDLE:
            if not sink.spooling:
                return
            self.state = DRAINING
        if self.stopped:
            return
        if self.clock is not None and self.clock.seconds() < self.resume_at:
            # The broker refused: do not offer it the same messages again at once.
            if self._resume_call is None or not self._resume_call.active():
                self._resume_call = self.clock.callLater(self.resume_at - self.clock.seconds(), self.pump)
            return
        if self.state == REWINDING:
            if self.inflight or self.done_writes:
                return
            assert self.rewind_to is not None  # set whenever the state is REWINDING
            self.read_after, self.rewind_to = self.rewind_to, None
            self.state = DRAINING
        self._publish_buffered()
        if self.reading:
            return
        if self.exhausted is not None and self.exhausted == sink.committed:
            # The last read found nothing new and nothing was committed since.
            if not self.buffered and not self.inflight and sink.appends == 0:
                sink.spooling = False  # drained: new messages are published directly again
                log.info("amqp route {route}: spool drained; publishing directly again", route=sink.route_name)
                self.state = IDLE
                self.exhausted = None
            return
        if self.buffered < self.window and self.buffered_bytes < self.read_bytes:
            self._read()

    def _read(self) -> None:
        self.reading = True
        sink = self.sink
        # A whole read's worth each time (so the buffer holds up to about two): a read started as
        # the buffer falls below one read's worth lands before the batches in flight are confirmed.
        d = self.spool.read(sink.spool_name, after_seq=self.read_after, limit=self.window)
        d.addCallbacks(self._loaded, self._read_failed, (self.generation, sink.committed), None, (self.generation,))

    def _loaded(self, segments: list, generation: int, committed: int) -> None:
        self.reading = False
        if generation != self.generation:
            self.pump()  # read from before a rewind: dropped
            return
        if not segments:
            self.exhausted = committed  # an append committed after the read started may not be in it
        else:
            self.exhausted = None
            buffer, open_ = self.buffer, self.open
            for segment in segments:
                pending = segment.pending()
                if pending:
                    indices = [i for i, _ in pending]
                    messages = [m for _, m in pending]
                    buffer.append([segment.seq, indices, messages, 0])
                    open_[segment.seq] = [len(messages), []]
                    self.buffered += len(messages)
                    self.buffered_bytes += sum([len(m.body) for m in messages])
            self.read_after = segments[-1].seq
        self.pump()

    def _read_failed(self, failure, generation: int) -> None:
        self.reading = False
        log.error("amqp: reading the spool for {route} failed: {error}",
                  route=self.sink.route_name, error=failure.getErrorMessage())

    def _publish_buffered(self) -> None:
        buffer = self.buffer
        while buffer:
            room = min(self._room(), BATCH_MAX)
            if room < min(self.batch_min, self.buffered) or room <= 0:
                return
            budget = INFLIGHT_MAX_BYTES - self.inflight_bytes
            messages: list[Message] = []
            positions: list[tuple[int, int]] = []
            size = 0
            while buffer and len(messages) < room:
                entry = buffer[0]
                seq, indices, stored, start = entry
                end = min(len(stored), start + room - len(messages))
                for i in range(start, end):
                    body = len(stored[i].body)
                    # One message always goes when nothing is in flight, however large.
                    if size + body > budget and (messages or self.inflight or i > start):
                        end = i
                        break
                    size += body
                messages.extend(stored[start:end])
                positions.extend([(seq, index) for index in indices[start:end]])
                if end == len(stored):
                    buffer.popleft()
                else:
                    entry[3] = end
                    break  # cut by the room or the byte budget
            if not messages:
                return
            self.buffered -= len(messages)
            self.buffered_bytes -= size
            self.inflight += len(messages)
            self.inflight_bytes += size
            self._publish(messages, positions)

    # -- outcomes (called by the forwarder) -----------------------------------------------

    def settled(self, messages: list[Message], positions: list, nacked: set[int], returned: dict[int, str]) -> None:
        """Every message of a batch is confirmed, nacked or returned: done, all but the nacked."""
        for i, reason in returned.items():
            if i not in nacked:
                log.warn("amqp: spooled message {id} is {reason}; dropped", id=format_id(messages[i].id), reason=reason)
        self._settle(messages, positions, nacked)
        if nacked:
            self.refused()
            log.warn("amqp: the broker refused {count} spooled message(s) of {route}; "
                     "publishing them again in {backoff:g} s",
                     count=len(nacked), route=self.sink.route_name, backoff=self.backoff)
            self._rewind(positions[min(nacked)][0])
        else:
            self.backoff = 0.0

    def refused(self) -> None:
        """The broker nacked messages of this route (spooled or, spooled now, live): back off.

        Doubling from NACK_BACKOFF_MIN to NACK_BACKOFF_MAX while the broker
        keeps refusing (a full reject-publish queue, say): publishing again at
        once is a tight loop of the same messages.  Nothing is published from
        the spool until the back-off has passed.
        """
        self.backoff = min(NACK_BACKOFF_MAX, max(NACK_BACKOFF_MIN, 2 * self.backoff))
        if self.clock is not None:
            self.resume_at = self.clock.seconds() + self.backoff

    def lost(self, messages: list[Message], positions: list, confirmed: list[int]) -> None:
        """The connection dropped with this batch unsettled: what was confirmed is done, the rest read again."""
        keep = set(range(len(positions))).difference(confirmed)
        self._settle(messages, positions, keep)
        if keep:
            self._rewind(positions[min(keep)][0])

    def _settle(self, messages: list[Message], positions: list, keep: set[int]) -> None:
        """Positions of a batch are settled; those in ``keep`` stay in the spool."""
        self.inflight -= len(messages)
        self.inflight_bytes -= sum([len(m.body) for m in messages])
        open_ = self.open
        entry: list  # [positions left, positions settled] of segment seq_of; set at the first position
        seq_of = -1
        for i, position in enumerate(positions):
            if position[0] != seq_of:
                seq_of = position[0]
                entry = open_[seq_of]
            entry[0] -= 1
            if i not in keep:
                entry[1].append(position)
            if not entry[0]:
                del open_[seq_of]
                self._mark_done(entry[1])

    def stop(self) -> None:
        """The hub stops: mark what was confirmed of segments only partly published."""
        self.stopped = True
        if self._resume_call is not None and self._resume_call.active():
            self._resume_call.cancel()
        open_, self.open = self.open, {}
        for _, done in open_.values():
            self._mark_done(done)

    def _mark_done(self, positions: list) -> None:
        if not positions:
            return
        self.done_writes += 1

        def written(result):
            self.done_writes -= 1
            if self.state == REWINDING:
                self.pump()
            return result

        self.spool.done(self.sink.spool_name, positions).addBoth(written).addErrback(
            lambda f: log.error("amqp: recording dispatched messages failed: {error}", error=f.getErrorMessage())
        )

    def _rewind(self, seq: int) -> None:
        """Drop the read-ahead and read again from segment ``seq`` once nothing is in flight."""
        to = seq - 1
        self.rewind_to = to if self.rewind_to is None else min(self.rewind_to, to)
        self.generation += 1
        for seq, indices, _, start in self.buffer:
            # Read but not published: dropped, to be read again.  A segment
            # partly settled is marked as far as it got.
            entry = self.open[seq]
            entry[0] -= len(indices) - start
            if not entry[0]:
                del self.open[seq]
                self._mark_done(entry[1])
        self.buffer.clear()
        self.buffered = self.buffered_bytes = 0
        self.exhausted = None
        self.state = REWINDING
