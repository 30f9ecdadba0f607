"""The durable store: segments committed to SQLite (WAL) before messages are acknowledged.

Writes are *group commits*: ``append`` only queues messages in memory, and
one transaction commits everything queued during a reactor turn, as one
segment row per destination name (``schema.py``), so the cost of an fsync
and of a row is shared by every message that arrived meanwhile.  One row per
message cost 4-6 us in SQLite alone; one per group makes SQLite's share a
fraction of a microsecond.  Transactions run in one dedicated writer thread,
so the reactor keeps reading while a commit waits on the disk; at most one
commit is in flight and whatever arrives meanwhile forms the next one.

Reads run in a second thread with their own connection (with WAL they never
block the writer and only see committed rows) and return Deferreds: no
SQLite call runs on the reactor thread once the spool is open.

A full disk (or ``max_bytes``) fails the commit, and with it the appends it
carried (producers get 503); the WAL is then checkpointed and truncated, so
space freed later goes to new segments, and one line is logged per change
of health, not per failed commit.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from itertools import chain
from typing import Any, Iterable, Mapping, Sequence

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from msghub.histogram import Histogram
from msghub.message import SEQ_BITS, Message
from msghub.sink import SinkError
from msghub.spool import queries, schema
from msghub.spool.ids import IdAllocator, IdsExhausted
from msghub.spool.queries import Position, Segment

__all__ = ["Position", "Segment", "Spool", "SpoolError", "SpoolStats"]

log = Logger()

# SQLite integers are signed 64-bit: the boot number must leave room for the sequence.
MAX_BOOT = (1 << (63 - SEQ_BITS)) - 1
_SYNCHRONOUS = {"full": "FULL", "normal": "NORMAL"}
# The WAL is reset after each checkpoint; past this size it is also truncated,
# so a burst (or a full disk) does not keep its space for good.
JOURNAL_SIZE_LIMIT = 8 << 20
READ_BYTES = 4 << 20
# Below this much free space, after a full disk, every commit is bracketed by
# WAL checkpoints: without them the WAL keeps the space a freed megabyte was
# meant for (measured: 69 acks of 1 KiB for 1 MiB freed, ~1,100 with them).
CAREFUL_BELOW = 8 << 20
MAX_QUEUE_BYTES = 256 << 20
# New spool files get 8 KiB pages instead of SQLite's 4 KiB: a segment's
# blob spans half the overflow pages, so SQLite and the kernel do half the
# per-page work (WAL frames, system calls) for the same bytes.  The writer's
# work alone (`bench/ingress.py --floor-only --floor-messages 1000000
# --floor-reps 5`) cost less with 8 KiB in each of 5 interleaved pairs, by
# 1-15% (0.56-0.71 us/msg against 0.59-0.82); 16 KiB did no better than 8.
# A spool capped below SMALL_CAP keeps 4 KiB pages, so that its cap stays
# fine-grained; an existing file keeps the page size it has.
PAGE_SIZE = 8 << 10
SMALL_CAP = 64 * PAGE_SIZE

# Kinds of queued write operations, executed in order in one transaction
# (except that marks may follow the appends queued beside them: _flush).
_INSERT, _DONE, _DEAD, _RETRY, _PURGE, _COUNT, _BOOT, _DISABLE = range(8)
_MARKS = frozenset((_DONE, _DEAD, _RETRY))

class SpoolError(Exception):
    """The spool could not be opened or used as asked (not a peer's fault)."""


@dataclass(frozen=True)
class SpoolStats:
    path: str
    boot: int
    healthy: bool
    commits: int  # successful transactions since open
    failures: int  # failed transactions since open
    queued: int  # messages waiting for the next commit
    queued_bytes: int  # their body bytes
    committing: bool  # a commit is in flight
    depths: Mapping[str, int]
    total: int


class Spool:
    """The ACID store and its group commit.

    ``threadpool``: by default the spool starts and stops its own one-thread
    writer pool (and a reader pool); pools passed in are used as they are
    (their owner starts and stops them) and must run one call at a time.
    ``reader_pool`` defaults to ``threadpool`` when that is given.
    """

    def __init__(
        self,
        path: str,
        reactor: Any,
        synchronous: str = "full",
        threadpool: Any = None,
        reader_pool: Any = None,
        *,
        max_bytes: int | None = None,
        read_bytes: int = READ_BYTES,
        max_queue_bytes: int = MAX_QUEUE_BYTES,
    ) -> None:
        if synchronous not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {sorted(_SYNCHRONOUS)}, not {synchronous!r}")
        self.path = path
        self.synchronous = synchronous
        self.max_bytes = max_bytes
        self.read_bytes = read_bytes
        self.max_queue_bytes = max_queue_bytes
        self._reactor = reactor
        self._own_pools = threadpool is None
        self._pool = ThreadPool(1, 1, "msghub-spool") if threadpool is None else threadpool
        if reader_pool is None:
            reader_pool = ThreadPool(1, 1, "msghub-spool-read") if threadpool is None else threadpool
        self._read_pool = reader_pool
        self._conn: sqlite3.Connection | None = None  # the writer's; used only in its thread
        self._reader: sqlite3.Connection | None = None  # the reader thread's
        self._state = "new"  # -> "open" -> "closing" -> "closed"
        self._close_waiters: list[Deferred] = []
        self._reads = 0  # reads in flight: close waits for them

        self.boot = 0
        self.healthy = True
        self.commits = 0
        self.failures = 0
        self.commit_seconds = Histogram()  # from handing a commit to the writer to its result, on the reactor
        self._commit_began = 0.0
        self.last_error = ""
        self._depths: dict[str, int] = {}
        self._ids: IdAllocator | None = None
        self._boot_unsaved = 0  # a boot number taken on a full disk, saved by the first commit
        self._header_cache: dict = {}  # the writer thread's: header tuple -> encoded block
        self._careful = False  # the writer thread's: short of disk space, keep the WAL short

        # Operations waiting for the next commit, in call order.  Consecutive
        # appends share one insert op, so a commit writes one segment per name
        # however many batches it carries.
        self._ops: list[list] = []
        # Forwarders' marks held back from a commit that carried appends: they
        # go alone in the next one (see _flush).
        self._deferred: list[list] = []
        self._insert: dict[str, list] | None = None  # the open insert op's name -> [message lists]
        self._waiters: list[Deferred] = []  # one per append call in _ops
        self._queued = 0
        self._queued_bytes = 0
        self._call: Any = None  # the scheduled _flush, at most one
        self._committing = False

    # -- life cycle --

    def open(self) -> None:
        """Open (creating or migrating if needed) the database, bump the boot counter, load depths.

        Runs before the hub listens: the only SQLite work done on the reactor thread.
        """
        if self._state != "new":
            raise SpoolError(f"spool {self.path} cannot be opened twice")
        directory = os.path.dirname(self.path)
        try:
            if directory:
                os.makedirs(directory, exist_ok=True)
            conn = schema.connect(self.path, create=True, check_same_thread=False)
            try:
                self.boot = self._initialize(conn)
                self._depths = schema.count_by_name(conn)
                reader = schema.connect(self.path, check_same_thread=False)
                reader.execute("PRAGMA query_only = ON")
            except BaseException:
                conn.close()
                raise
        except (OSError, sqlite3.Error, schema.SchemaError) as e:
            raise SpoolError(f"cannot open spool {self.path}: {e}") from e
        self._conn, self._reader = conn, reader
        self._ids = IdAllocator(self.boot, lambda: self._enqueue([_BOOT], None))
        if self._own_pools:
            self._pool.start()
            self._read_pool.start()
        self._state = "open"

    def _initialize(self, conn: sqlite3.Connection) -> int:
        if self.max_bytes is None or self.max_bytes >= SMALL_CAP:
            conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # before WAL mode creates the file
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise SpoolError(f"spool {self.path}: SQLite refused WAL mode (got {mode!r})")
        conn.execute(f"PRAGMA synchronous = {_SYNCHRONOUS[self.synchronous]}")
        conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
        # Builds with SECURE_DELETE (Debian's among them) zero every freed
        # page: deleting a delivered 1 MiB segment then wrote 1 MiB to the WAL
        # and fsynced it, and producers' commits queued behind (p99 ack
        # latency over 400 ms during a backlog drain).  FAST zeroes only
        # what is written anyway; freed pages keep stale bytes until reused.
        conn.execute("PRAGMA secure_delete = FAST")
        if self.max_bytes is not None:
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count = {max(1, self.max_bytes // page_size)}")
        try:
            return self._bump_boot(conn)
        except sqlite3.OperationalError as e:
            if not queries.is_full(e) or schema.schema_version(conn) != schema.SCHEMA_VERSION:
                raise
        # The disk is full: start anyway, so the hub can drain what it holds.
        # The next boot number is saved by the first commit that succeeds.
        queries.shrink_wal(conn)
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (schema.BOOT_KEY,)).fetchone()
        boot = (row[0] if row else 0) + 1
        self._boot_unsaved = boot
        self.healthy = False
        self.last_error = "database or disk is full"
        log.warn("spool {path}: disk full at start; serving what it holds, accepting again once space is free",
                 path=self.path)
        return boot

    def _bump_boot(self, conn: sqlite3.Connection) -> int:
        conn.execute("BEGIN IMMEDIATE")
        try:
            schema.ensure_schema(conn, self.path)
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (schema.BOOT_KEY,)).fetchone()
            boot = (row[0] if row else 0) + 1
            if boot > MAX_BOOT:
                raise SpoolError(f"spool {self.path}: boot counter exhausted")
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (schema.BOOT_KEY, boot))
            conn.execute("COMMIT")
        except BaseException:
            queries.rollback(conn)
            raise
        return boot

    def close(self) -> Deferred:
        """Commit everything queued (appends made meanwhile included), then close.

        Fires once the database and the worker threads are closed.
        """
        d: Deferred = Deferred()
        if self._state == "closed":
            d.callback(None)
            return d
        self._close_waiters.append(d)
        if self._state == "new":
            self._finish_close()
        elif self._state == "open":
            self._state = "closing"
            if self._call is None:  # else this turn's commit is already scheduled
                self._flush()
        return d

    def _finish_close(self) -> None:
        if self._reads:
            return  # the last read to come back closes
        self._state = "closed"
        if self._own_pools:
            for pool in (self._pool, self._read_pool):
                if pool.started:
                    pool.stop()  # idle: this joins at once
        for conn in (self._conn, self._reader):
            if conn is not None:
                conn.close()
        self._conn = self._reader = None
        waiters, self._close_waiters = self._close_waiters, []
        for d in waiters:
            d.callback(None)

    # -- ids --

    def first_id(self) -> int:
        """The first message id of this boot epoch."""
        assert self._ids is not None
        return self._ids.first_id()

    def reserve_ids(self, n: int) -> int:
        """The first of ``n`` consecutive fresh message ids (no I/O)."""
        ids = self._ids
        if ids is None:
            raise SpoolError("spool is not open")
        try:
            first = ids.reserve(n)
        except IdsExhausted as e:
            raise SpoolError(str(e)) from e
        self.boot = ids.boot
        return first

    # -- writes --

    def append(self, name: str, messages: list[Message]) -> Deferred:
        """Queue ``messages`` under ``name``; fires once they are committed.

        Fails with ``SinkError(503)`` if that commit fails, the write queue is
        over ``max_queue_bytes``, or the spool is closed.
        """
        return self.append_each((name,), messages)

    def append_each(self, names: Sequence[str], messages: list[Message]) -> Deferred:
        """Queue ``messages`` once under each of ``names``: one Deferred, one commit for all."""
        if self._state not in ("open", "closing"):
            return fail(SinkError(503, "spool closed"))
        if not messages:
            return succeed(None)
        size = sum([len(m.body) for m in messages]) * len(names)
        if self._queued_bytes + size > self.max_queue_bytes and self._queued:
            return fail(SinkError(503, "spool busy"))
        insert = self._insert
        if insert is None:
            insert = self._insert = {}
            self._ops.append([_INSERT, insert])
        for name in names:
            lists = insert.get(name)
            if lists is None:
                insert[name] = [messages]
            else:
                lists.append(messages)
        self._queued += len(messages) * len(names)
        self._queued_bytes += size
        d: Deferred = Deferred()
        self._waiters.append(d)
        if self._call is None and not self._committing:
            self._call = self._reactor.callLater(0, self._flush)
        return d

    def done(self, name: str, positions: Iterable[Position]) -> Deferred:
        """Mark messages of ``name`` delivered; fires with how many were newly marked."""
        return self._write([_DONE, name, list(positions)])

    def dead(self, name: str, entries: Iterable[tuple[Position, Message, str]], died: float) -> Deferred:
        """Move messages of ``name`` to the dead letters with their errors; fires with how many moved."""
        return self._write([_DEAD, name, list(entries), died])

    def set_retries(self, name: str, schedule: Iterable[tuple[Position, int, float]]) -> Deferred:
        """Record ``(position, attempts, next_at)`` of messages being retried, so a restart resumes them."""
        return self._write([_RETRY, name, list(schedule)])

    def set_disabled(self, name: str, reason: str | None, since: float = 0.0) -> Deferred:
        """Record ``name`` as disabled (``reason`` None: enabled again); fires once committed."""
        return self._write([_DISABLE, name, reason, since])

    def purge(self, name: str) -> Deferred:
        """Delete every committed (or earlier queued) message of ``name``; fires with the count."""
        return self._write([_PURGE, name])

    def refresh_depths(self) -> Deferred:
        """Recount depths from the table, e.g. after ``msghub-spool purge`` ran beside the hub."""
        return self._write([_COUNT])

    def _write(self, op: list) -> Deferred:
        if self._state not in ("open", "closing"):
            return fail(SpoolError("spool closed"))
        d: Deferred = Deferred()
        self._enqueue(op, d)
        return d

    def _enqueue(self, op: list, d: Deferred | None) -> None:
        op.append(d)
        self._ops.append(op)
        self._insert = None  # later appends must come after this op
        if self._call is None and not self._committing:
            self._call = self._reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        call, self._call = self._call, None
        if call is not None and call.active():  # called directly, not by the timer
            call.cancel()
        if self._committing:
            return  # _committed calls again
        if self._deferred:
            ops, waiters, self._deferred = self._deferred, [], []
        elif not self._ops:
            if self._state == "closing":
                self._finish_close()
            return
        else:
            ops, waiters = self._ops, self._waiters
            self._ops, self._waiters, self._insert = [], [], None
            self._queued = self._queued_bytes = 0
            # Producers wait for their appends' commit, forwarders for nothing:
            # marks (deliveries, dead letters, retry times, which may delete
            # whole segments) queued beside appends go in a commit of their
            # own right after, so an ack never waits for a drain's deletes.
            if len(ops) > 1 and any(op[0] == _INSERT for op in ops):
                marks = [op for op in ops if op[0] in _MARKS]
                if marks:
                    self._deferred = marks
                    ops = [op for op in ops if op[0] not in _MARKS]
        self._committing = True
        self._commit_began = time.monotonic()
        call_from_thread = self._reactor.callFromThread
        committed = self._committed
        boot = self._boot_unsaved

        def on_result(ok: bool, result: Any) -> None:  # runs in the writer thread
            call_from_thread(committed, ops, waiters, ok, result)

        self._pool.callInThreadWithCallback(on_result, self._commit, ops, boot)

    def _commit(self, ops: list[list], boot: int) -> list[Any]:
        """One transaction for ``ops``; runs in the writer thread."""
        conn = self._conn
        assert conn is not None
        results: list[Any] = []
        add = results.append
        if self._careful:
            queries.shrink_wal(conn)
        try:
            conn.execute("BEGIN IMMEDIATE")
            if boot:
                conn.execute("UPDATE meta SET value = MAX(value, ?) WHERE key = ?", (boot, schema.BOOT_KEY))
            for op in ops:
                kind = op[0]
                if kind == _INSERT:
                    add(self._insert_segments(conn, op[1]))
                elif kind == _DONE:
                    add(queries.mark(conn, op[1], op[2]))
                elif kind == _DEAD:
                    name, entries, died = op[1], op[2], op[3]
                    rows = [queries.dead_row(name, m, died, error) for _, m, error in entries]
                    conn.executemany(schema.INSERT_DEAD, rows)
                    add(queries.mark(conn, name, [position for position, _, _ in entries]))
                elif kind == _RETRY:
                    conn.executemany(
                        "INSERT OR REPLACE INTO retries (name, seq, idx, attempts, next_at) VALUES (?, ?, ?, ?, ?)",
                        [(op[1], seq, idx, attempts, next_at) for (seq, idx), attempts, next_at in op[2]],
                    )
                    add(None)
                elif kind == _PURGE:
                    left = schema.count_by_name(conn).get(op[1], 0)  # what the depth counted
                    conn.execute("DELETE FROM marks WHERE seq IN (SELECT seq FROM segments WHERE name = ?)", (op[1],))
                    conn.execute("DELETE FROM segments WHERE name = ?", (op[1],))
                    conn.execute("DELETE FROM retries WHERE name = ?", (op[1],))
                    add(left)
                elif kind == _COUNT:
                    add(schema.count_by_name(conn))
                elif kind == _DISABLE:
                    if op[2] is None:
                        conn.execute("DELETE FROM disabled WHERE name = ?", (op[1],))
                    else:
                        conn.execute("INSERT OR REPLACE INTO disabled VALUES (?, ?, ?)", op[1:4])
                    add(None)
                else:  # _BOOT
                    value = conn.execute("SELECT value FROM meta WHERE key = ?", (schema.BOOT_KEY,)).fetchone()[0] + 1
                    if value > MAX_BOOT:
                        raise SpoolError(f"spool {self.path}: boot counter exhausted")
                    conn.execute("UPDATE meta SET value = ? WHERE key = ?", (value, schema.BOOT_KEY))
                    add(value)
            conn.execute("COMMIT")
        except BaseException as e:
            queries.rollback(conn)
            if isinstance(e, sqlite3.OperationalError) and queries.is_full(e):
                # Give the disk back what the WAL holds, so that space freed
                # later (or deletes meanwhile) makes room for new segments.
                # Only then: on a locked database a checkpoint would wait out
                # the busy timeout.
                self._careful = True
                queries.shrink_wal(conn)
            raise
        if self._careful:
            queries.shrink_wal(conn)
            self._careful = queries.free_bytes(self.path) < CAREFUL_BELOW
        return results

    def _insert_segments(self, conn: sqlite3.Connection, insert: dict[str, list]) -> dict[str, int]:
        rows = []
        counts = {}
        cache = self._header_cache
        for name, lists in insert.items():
            # One list per append (a read's batch): joined in C, not message by message.
            messages = lists[0] if len(lists) == 1 else list(chain.from_iterable(lists))
            counts[name] = len(messages)
            for count, size, data in schema.encode_segments(messages, cache):
                rows.append((name, count, size, data))
        conn.executemany(schema.INSERT_SEGMENT, rows)
        return counts

    def _committed(self, ops: list[list], waiters: list[Deferred], ok: bool, result: Any) -> None:
        """Back on the reactor thread: account, fire the waiters, start the next commit."""
        self._committing = False
        self.commit_seconds.observe(time.monotonic() - self._commit_began)
        if ok:
            self.commits += 1
            self._boot_unsaved = 0
            if not self.healthy:
                self.healthy = True
                log.info("spool {path}: writable again", path=self.path)
            self._apply(ops, result)
            for d in waiters:
                d.callback(None)
        else:
            self.failures += 1
            failure = result if isinstance(result, Failure) else Failure(result)
            error = failure.value
            expected = isinstance(error, (sqlite3.Error, SpoolError))
            text = str(error)
            if self.healthy or text != self.last_error:
                # One line per change of state, not per commit: a full disk
                # fails every commit until space is freed.
                if expected:
                    log.error("spool {path}: commits failing ({error}); producers get 503 until it recovers",
                              path=self.path, error=text)
                else:
                    log.failure("spool {path}: commit failed", failure, path=self.path)
            self.healthy = False
            self.last_error = text
            for op in ops:
                if op[0] == _BOOT:
                    assert self._ids is not None
                    self._ids.next_boot_failed()
                elif op[0] != _INSERT and op[-1] is not None:
                    op[-1].errback(_caused(failure, SpoolError("spool write failed")))
            reason = "spool full" if queries.is_full(error) else "spool write failed"
            for d in waiters:
                d.errback(_caused(failure, SinkError(503, reason)))
        self._flush()  # what arrived during the commit goes now (or, closing, we are done)

    def _apply(self, ops: list[list], results: list[Any]) -> None:
        depths = self._depths
        for op, result in zip(ops, results):
            kind = op[0]
            if kind == _INSERT:
                for name, n in result.items():
                    depths[name] = depths.get(name, 0) + n
                continue
            if kind in (_DONE, _DEAD, _PURGE):
                name = op[1]
                left = depths.get(name, 0) - result
                if left > 0:
                    depths[name] = left
                else:
                    depths.pop(name, None)
            elif kind == _COUNT:
                self._depths = depths = dict(result)
                result = dict(result)
            elif kind == _BOOT:
                assert self._ids is not None
                self._ids.next_boot_committed(result)
            if op[-1] is not None:
                op[-1].callback(result)

    # -- reads (in the reader thread) --

    def _read(self, f: Any, *args: Any) -> Deferred:
        if self._state not in ("open", "closing") or self._reader is None:
            return fail(SpoolError("spool is not open"))
        self._reads += 1
        d = deferToThreadPool(self._reactor, self._read_pool, f, self._reader, *args)

        def finished(result: Any) -> Any:
            self._reads -= 1
            if (self._state == "closing" and not self._reads and not self._committing and not self._ops
                    and not self._deferred):
                self._finish_close()
            return result

        return d.addBoth(finished)

    def read(self, name: str, after_seq: int = 0, limit: int = 1000, max_bytes: int | None = None) -> Deferred:
        """Segments of ``name`` after ``after_seq``, oldest first (a list of ``Segment``).

        At most about ``limit`` undelivered messages and ``max_bytes`` (default
        ``read_bytes``) of bodies, but always at least one segment.
        """
        max_bytes = self.read_bytes if max_bytes is None else max_bytes
        return self._read(queries.read_segments, name, after_seq, limit, max_bytes)

    def poll(self) -> Deferred:
        """``(disabled names -> reason, external change counter)``: what forwarders follow each tick."""
        return self._read(queries.poll)

    def file_bytes(self) -> int:
        """The database file and its WAL on disk, now (a stat each: call at scrape time, not per message)."""
        total = 0
        for path in (self.path, self.path + "-wal"):
            try:
                total += os.stat(path).st_size
            except OSError:
                pass
        return total

    def depth(self, name: str) -> int:
        """Undelivered messages of ``name`` (kept in memory, no I/O)."""
        return self._depths.get(name, 0)

    def depths(self) -> dict[str, int]:
        return dict(self._depths)

    def stats(self) -> SpoolStats:
        depths = dict(self._depths)
        return SpoolStats(
            path=self.path,
            boot=self.boot,
            healthy=self.healthy,
            commits=self.commits,
            failures=self.failures,
            queued=self._queued,
            queued_bytes=self._queued_bytes,
            committing=self._committing,
            depths=depths,
            total=sum(depths.values()),
        )


def _caused(cause: Failure, error: Exception) -> Failure:
    error.__cause__ = cause.value
    return Failure(error)
