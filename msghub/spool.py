"""The durable spool: accepted messages committed to SQLite (WAL) before they are acknowledged.

Writes are *group commits*: ``append`` only queues rows in memory, and one
transaction commits everything queued during a reactor turn, so the cost of
an fsync is shared by every message that arrived meanwhile.  Transactions run
in one dedicated worker thread, so the reactor keeps reading while a commit
waits on the disk; at most one commit is in flight and whatever arrives in the
meantime forms the next one.  One writer thread also means SQLite never sees
two writers from this process.

Reads (``read``) use a second connection on the reactor thread: with WAL they
never block the writer, and they only ever see committed rows.

Message ids are ``boot << SEQ_BITS | seq`` (see ``msghub.message``): ``open``
increments a boot counter stored in the database, so ids stay unique across
restarts without any I/O per id.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from msghub.forward import ISink, SinkError
from msghub.message import SEQ_BITS, Message, format_id

__all__ = [
    "Spool",
    "SpoolError",
    "SpoolService",
    "SpoolSink",
    "SpoolStats",
    "SpooledMessage",
    "connect",
    "count_by_name",
    "decode_headers",
    "encode_headers",
    "read_messages",
]

log = Logger()

SCHEMA_VERSION = 1
# SQLite integers are signed 64-bit: the boot number must leave room for the sequence.
MAX_BOOT = (1 << (63 - SEQ_BITS)) - 1
# How long a write waits for another writer (e.g. ``msghub-spool purge``) before failing.
BUSY_TIMEOUT = 5.0
_SYNCHRONOUS = {"full": "FULL", "normal": "NORMAL"}

# AUTOINCREMENT: a forwarder's ``after_seq`` cursor must never see a seq
# reused after the newest rows were deleted.  The (name) index holds the rowid,
# so it serves both "read NAME in seq order" and the per-name counts.
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS messages ("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " name TEXT NOT NULL,"
    " id INTEGER NOT NULL,"
    " route TEXT NOT NULL,"
    " method BLOB NOT NULL,"
    " target BLOB NOT NULL,"
    " headers BLOB NOT NULL,"
    " body BLOB NOT NULL,"
    " received REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS messages_name ON messages (name)",
    # Added for webhooks, and only ever *added*: an older msghub opening this
    # file ignores tables it does not know, and this one creates them in a file
    # an older one wrote, so neither needs SCHEMA_VERSION to change.  It
    # changes only when an existing table changes meaning.
    # dead: rows a forwarder gave up on, with why; ``seq`` is theirs in messages.
    "CREATE TABLE IF NOT EXISTS dead ("
    " seq INTEGER PRIMARY KEY,"
    " name TEXT NOT NULL,"
    " id INTEGER NOT NULL,"
    " route TEXT NOT NULL,"
    " method BLOB NOT NULL,"
    " target BLOB NOT NULL,"
    " headers BLOB NOT NULL,"
    " body BLOB NOT NULL,"
    " received REAL NOT NULL,"
    " died REAL NOT NULL,"
    " error TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS dead_name ON dead (name)",
    # disabled: names whose forwarding is switched off until msghub-spool enables them.
    "CREATE TABLE IF NOT EXISTS disabled (name TEXT PRIMARY KEY, reason TEXT NOT NULL, since REAL NOT NULL)",
)
# Counts writes made beside the hub (msghub-spool replay, purge, enable), so
# a running hub can tell that its in-memory depths went stale.
CHANGES_KEY = "changes"
_INSERT = (
    "INSERT INTO messages (name, id, route, method, target, headers, body, received)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_SELECT = (
    "SELECT seq, id, route, method, target, headers, body, received FROM messages"
    " WHERE name = ? AND seq > ? ORDER BY seq LIMIT ?"
)

_KILL = (
    "INSERT OR REPLACE INTO dead (seq, name, id, route, method, target, headers, body, received, died, error)"
    " SELECT seq, name, id, route, method, target, headers, body, received, ?, ? FROM messages"
    " WHERE name = ? AND seq = ?"
)

# Kinds of queued write operations, executed in order in one transaction.
_OP_INSERT, _OP_DELETE, _OP_PURGE, _OP_COUNT, _OP_BOOT, _OP_DEAD, _OP_DISABLE = range(7)

# Distinct header sets are few (one per compact state); bound the cache anyway.
_HEADER_CACHE_MAX = 4096


class SpoolError(Exception):
    """The spool could not be opened or used as asked (not a peer's fault)."""


@dataclass(frozen=True, slots=True)
class SpooledMessage:
    """A committed message as read back from the spool."""

    seq: int  # the row's position: increasing, never reused
    id: int
    route: str
    method: bytes
    target: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    received: float  # reactor seconds (the epoch, with a real reactor)

    @property
    def id_text(self) -> str:
        return format_id(self.id)


@dataclass(frozen=True)
class SpoolStats:
    path: str
    boot: int
    healthy: bool
    commits: int  # successful transactions since open
    failures: int  # failed transactions since open
    queued: int  # messages waiting for the next commit
    committing: bool  # a commit is in flight
    depths: Mapping[str, int]
    total: int


# -- helpers shared with msghub.spoolcli ------------------------------------


# Credentials are checked at the door and never written to disk: no forwarder
# passes them on, and a spool file (or ``msghub-spool dump``) must not leak them.
NOT_STORED = frozenset((b"authorization", b"proxy-authorization"))


def encode_headers(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """``Name: value CRLF`` lines, credentials left out; values never contain CR or LF."""
    return b"".join([b"%s: %s\r\n" % pair for pair in headers if pair[0].lower() not in NOT_STORED])


def decode_headers(blob: bytes) -> tuple[tuple[bytes, bytes], ...]:
    # A field name is a token (no ":" or space), so the first ": " separates.
    return tuple(tuple(line.split(b": ", 1)) for line in blob.split(b"\r\n")[:-1])  # type: ignore[misc]


def connect(path: str, *, create: bool = False, check_same_thread: bool = True) -> sqlite3.Connection:
    """An autocommit connection with a busy timeout; ``create=False`` refuses a missing file."""
    if create:
        conn = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=check_same_thread
        )
    else:
        # A URI so that a mistyped path is an error instead of a new empty database.
        uri = Path(path).absolute().as_uri() + "?mode=rw"
        conn = sqlite3.connect(
            uri, uri=True, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=check_same_thread
        )
    return conn


def count_by_name(conn: sqlite3.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT name, COUNT(*) FROM messages GROUP BY name").fetchall())


def read_messages(
    conn: sqlite3.Connection, name: str, limit: int = 100, after_seq: int = 0
) -> list[SpooledMessage]:
    # fetchall ends the statement, so no read snapshot is held open to stall WAL checkpoints.
    rows = conn.execute(_SELECT, (name, after_seq, limit)).fetchall()
    return [
        SpooledMessage(seq, id_, route, method, target, decode_headers(headers), body, received)
        for seq, id_, route, method, target, headers, body, received in rows
    ]


def _route_name(decision: Any) -> str:
    route = getattr(decision, "route", None)
    name = getattr(route, "name", None)
    return name if isinstance(name, str) else ""


# -- the spool ---------------------------------------------------------------


class Spool:
    """The ACID store and its group commit.

    ``threadpool``: by default the spool starts and stops its own one-thread
    pool; a pool passed in is used as is (its owner starts and stops it) and
    must run one call at a time.  An opened spool must be closed (SpoolService
    does it): its worker thread would otherwise keep the process alive.
    """

    def __init__(self, path: str, reactor: Any, synchronous: str = "full", threadpool: Any = None) -> None:
        if synchronous not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {sorted(_SYNCHRONOUS)}, not {synchronous!r}")
        self.path = path
        self.synchronous = synchronous
        self._reactor = reactor
        self._own_pool = threadpool is None
        self._pool = ThreadPool(1, 1, "msghub-spool") if threadpool is None else threadpool
        self._conn: sqlite3.Connection | None = None  # the writer's; used only in the pool thread
        self._reader: sqlite3.Connection | None = None  # the reactor thread's
        self._state = "new"  # -> "open" -> "closing" -> "closed"
        self._close_waiters: list[Deferred] = []

        self.boot = 0
        self.healthy = True
        self.commits = 0
        self.failures = 0
        self._depths: dict[str, int] = {}
        self._header_cache: dict[tuple, bytes] = {}

        # Operations waiting for the next commit, in call order.  Consecutive
        # appends share one insert op (_rows/_counts), so a commit makes one
        # executemany however many batches it carries.
        self._ops: list[tuple] = []
        self._rows: list[tuple] | None = None
        self._counts: dict[str, int] | None = None
        self._waiters: list[Deferred] = []  # one per append call in _ops
        self._call: Any = None  # the scheduled _flush, at most one
        self._committing = False

        # Id reservation: see reserve_ids.
        self._seq_space = 1 << SEQ_BITS
        self._next_id = 0
        self._id_end = 0
        self._roll_at = 0
        self._next_boot: int | None = None
        self._boot_requested = False

    # -- life cycle --

    def open(self) -> None:
        """Open (creating if needed) the database, bump the boot counter, load depths."""
        if self._state != "new":
            raise SpoolError(f"spool {self.path} cannot be opened twice")
        directory = os.path.dirname(self.path)
        try:
            if directory:
                os.makedirs(directory, exist_ok=True)
            conn = connect(self.path, create=True, check_same_thread=False)
            try:
                self.boot = self._initialize(conn)
                self._depths = count_by_name(conn)
                reader = connect(self.path)
                reader.execute("PRAGMA query_only = ON")
            except BaseException:
                conn.close()
                raise
        except (OSError, sqlite3.Error) as e:
            raise SpoolError(f"cannot open spool {self.path}: {e}") from e
        self._conn, self._reader = conn, reader
        self._start_epoch(self.boot)
        if self._own_pool:
            self._pool.start()
        self._state = "open"

    def _initialize(self, conn: sqlite3.Connection) -> int:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise SpoolError(f"spool {self.path}: SQLite refused WAL mode (got {mode!r})")
        conn.execute(f"PRAGMA synchronous = {_SYNCHRONOUS[self.synchronous]}")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA:
                conn.execute(statement)
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            schema = meta.get("schema", SCHEMA_VERSION)
            if schema != SCHEMA_VERSION:
                raise SpoolError(f"spool {self.path} has schema {schema}, this msghub reads {SCHEMA_VERSION}")
            boot = meta.get("boot", 0) + 1
            if boot > MAX_BOOT:
                raise SpoolError(f"spool {self.path}: boot counter exhausted")
            conn.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                (("schema", SCHEMA_VERSION), ("boot", boot)),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return boot

    def close(self) -> Deferred:
        """Commit everything queued (appends made meanwhile included), then close.

        Fires once the database and the worker thread are closed.
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
        self._state = "closed"
        if self._own_pool and self._pool.started:
            self._pool.stop()  # the worker is idle: this joins at once
        for conn in (self._conn, self._reader):
            if conn is not None:
                conn.close()
        self._conn = self._reader = None
        waiters, self._close_waiters = self._close_waiters, []
        for d in waiters:
            d.callback(None)

    # -- ids --

    def first_id(self) -> int:
        """The first message id of this boot."""
        return self.boot << SEQ_BITS

    def _start_epoch(self, boot: int) -> None:
        self.boot = boot
        self._next_id = boot << SEQ_BITS
        self._id_end = self._next_id + self._seq_space
        # Ask for the next boot number halfway through, so it is committed
        # long before this one runs out.
        self._roll_at = self._next_id + self._seq_space // 2
        self._next_boot = None
        self._boot_requested = False

    def reserve_ids(self, n: int) -> int:
        """The first of ``n`` consecutive fresh message ids (no I/O)."""
        first = self._next_id
        if first + n > self._roll_at:
            return self._reserve_slow(n)
        self._next_id = first + n
        return first

    def _reserve_slow(self, n: int) -> int:
        # 2**SEQ_BITS ids last ~12 days at 1M msg/s: a long-lived hub moves
        # on to a fresh boot number rather than run into the next boot's ids.
        if not self._boot_requested and self._state in ("open", "closing"):
            self._boot_requested = True
            self._enqueue((_OP_BOOT,), None)
        self._roll_at = self._id_end
        if self._next_id + n > self._id_end:
            if self._next_boot is None:
                raise SpoolError("message ids exhausted before the next boot number was committed")
            self._start_epoch(self._next_boot)
        first = self._next_id
        self._next_id = first + n
        return first

    # -- writes --

    def append(self, name: str, messages: list[Message]) -> Deferred:
        """Queue ``messages`` under ``name``; fires once they are committed.

        Fails with ``SinkError(503)`` if that commit fails or the spool is closed.
        """
        return self.append_each((name,), messages)

    def append_each(self, names: Iterable[str], messages: list[Message]) -> Deferred:
        """Queue ``messages`` once under each of ``names``: one Deferred, one commit for all."""
        if self._state not in ("open", "closing"):
            return fail(SinkError(503, "spool closed"))
        if not messages:
            return succeed(None)
        # One tuple per message and no call unless a header set is new: this
        # runs on the reactor thread for every spooled message.
        get, encode = self._header_cache.get, self._headers
        for name in names:
            try:
                new = [
                    (name, id_, decision.route.name, r[0], r[1], get(h) or encode(h), r[2], received)
                    for id_, r, decision, received in messages
                    for h in (r[3].headers,)
                ]
            except AttributeError:  # a decision without a named route
                new = [
                    (name, id_, _route_name(decision), r[0], r[1], get(h) or encode(h), r[2], received)
                    for id_, r, decision, received in messages
                    for h in (r[3].headers,)
                ]
            rows = self._rows
            if rows is None:
                rows, counts = self._rows, self._counts = new, {name: len(new)}
                self._ops.append((_OP_INSERT, rows, counts))
            else:
                rows += new
                counts = self._counts  # type: ignore[assignment]
                counts[name] = counts.get(name, 0) + len(new)
        d: Deferred = Deferred()
        self._waiters.append(d)
        if self._call is None and not self._committing:
            self._call = self._reactor.callLater(0, self._flush)
        return d

    def _headers(self, headers: tuple[tuple[bytes, bytes], ...]) -> bytes:
        # Keyed by the headers tuple, not the State: States compare HTTP-semantically
        # (name case, field order), and the spool keeps the exact fields.  Every
        # request of one State shares the tuple, so a hit is an identity match.
        # b"" is falsy: an empty header set comes back here each time, which is cheap.
        cache = self._header_cache
        if len(cache) >= _HEADER_CACHE_MAX:
            cache.clear()
        encoded = cache[headers] = encode_headers(headers)
        return encoded

    def delete(self, name: str, seqs: Iterable[int]) -> Deferred:
        """Delete rows of ``name`` by seq; fires with how many were deleted."""
        return self._write((_OP_DELETE, name, [(name, seq) for seq in seqs]))

    def dead(self, name: str, errors: Iterable[tuple[int, str]], died: float) -> Deferred:
        """Move rows of ``name`` (seq, error) to the dead letters; fires with how many moved."""
        return self._write((_OP_DEAD, name, [(died, error, name, seq) for seq, error in errors]))

    def set_disabled(self, name: str, reason: str | None, since: float = 0.0) -> Deferred:
        """Record ``name`` as disabled (``reason`` None: enabled again); fires once committed."""
        return self._write((_OP_DISABLE, name, reason, since))

    def purge(self, name: str) -> Deferred:
        """Delete every committed (or earlier queued) message of ``name``; fires with the count."""
        return self._write((_OP_PURGE, name))

    def refresh_depths(self) -> Deferred:
        """Recount depths from the table, e.g. after ``msghub-spool purge`` ran beside the hub."""
        return self._write((_OP_COUNT,))

    def _write(self, op: tuple) -> Deferred:
        if self._state not in ("open", "closing"):
            return fail(SpoolError("spool closed"))
        d: Deferred = Deferred()
        self._enqueue(op, d)
        return d

    def _enqueue(self, op: tuple, d: Deferred | None) -> None:
        self._ops.append((*op, d))
        self._rows = self._counts = None  # later appends must come after this op
        if self._call is None and not self._committing:
            self._call = self._reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        call, self._call = self._call, None
        if call is not None and call.active():  # called directly, not by the timer
            call.cancel()
        if self._committing:
            return  # _committed calls again
        if not self._ops:
            if self._state == "closing":
                self._finish_close()
            return
        ops, waiters = self._ops, self._waiters
        self._ops, self._waiters, self._rows, self._counts = [], [], None, None
        self._committing = True
        call_from_thread = self._reactor.callFromThread
        committed = self._committed

        def on_result(ok: bool, result: Any) -> None:  # runs in the worker thread
            call_from_thread(committed, ops, waiters, ok, result)

        self._pool.callInThreadWithCallback(on_result, self._commit, ops)

    def _commit(self, ops: list[tuple]) -> list[Any]:
        """One transaction for ``ops``; runs in the worker thread."""
        conn = self._conn
        assert conn is not None
        results: list[Any] = []
        add = results.append
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op in ops:
                kind = op[0]
                if kind == _OP_INSERT:
                    conn.executemany(_INSERT, op[1])
                    add(None)
                elif kind == _OP_DELETE:
                    add(conn.executemany("DELETE FROM messages WHERE name = ? AND seq = ?", op[2]).rowcount)
                elif kind == _OP_PURGE:
                    add(conn.execute("DELETE FROM messages WHERE name = ?", (op[1],)).rowcount)
                elif kind == _OP_COUNT:
                    add(count_by_name(conn))
                elif kind == _OP_DEAD:
                    conn.executemany(_KILL, op[2])
                    rows = [(name, seq) for _, _, name, seq in op[2]]
                    add(conn.executemany("DELETE FROM messages WHERE name = ? AND seq = ?", rows).rowcount)
                elif kind == _OP_DISABLE:
                    if op[2] is None:
                        conn.execute("DELETE FROM disabled WHERE name = ?", (op[1],))
                    else:
                        conn.execute("INSERT OR REPLACE INTO disabled VALUES (?, ?, ?)", op[1:4])
                    add(None)
                else:  # _OP_BOOT
                    boot = conn.execute("SELECT value FROM meta WHERE key = 'boot'").fetchone()[0] + 1
                    if boot > MAX_BOOT:
                        raise SpoolError(f"spool {self.path}: boot counter exhausted")
                    conn.execute("UPDATE meta SET value = ? WHERE key = 'boot'", (boot,))
                    add(boot)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # SQLite may already have rolled back (e.g. on a full disk)
            raise
        return results

    def _committed(self, ops: list[tuple], waiters: list[Deferred], ok: bool, result: Any) -> None:
        """Back on the reactor thread: account, fire the waiters, start the next commit."""
        self._committing = False
        if ok:
            self.commits += 1
            self.healthy = True
            self._apply(ops, result)
            for d in waiters:
                d.callback(None)
        else:
            self.failures += 1
            self.healthy = False
            failure = result if isinstance(result, Failure) else Failure(result)
            log.failure("spool {path}: commit of {n} operations failed", failure, path=self.path, n=len(ops))
            for op in ops:
                if op[0] == _OP_BOOT:
                    self._boot_requested = False
                    self._roll_at = self._next_id  # ask again on the next reservation
                elif op[0] != _OP_INSERT and op[-1] is not None:
                    op[-1].errback(self._write_failed(failure, SpoolError("spool write failed")))
            for d in waiters:
                d.errback(self._write_failed(failure, SinkError(503, "spool write failed")))
        self._flush()  # what arrived during the commit goes now (or, closing, we are done)

    @staticmethod
    def _write_failed(cause: Failure, error: Exception) -> Failure:
        error.__cause__ = cause.value
        return Failure(error)

    def _apply(self, ops: list[tuple], results: list[Any]) -> None:
        depths = self._depths
        for op, result in zip(ops, results):
            kind = op[0]
            if kind == _OP_INSERT:
                for name, n in op[2].items():
                    depths[name] = depths.get(name, 0) + n
                continue
            if kind in (_OP_DELETE, _OP_PURGE, _OP_DEAD):
                name = op[1]
                left = depths.get(name, 0) - result
                if left > 0:
                    depths[name] = left
                else:
                    depths.pop(name, None)
            elif kind == _OP_COUNT:
                self._depths = depths = dict(result)
            elif kind == _OP_DISABLE:
                pass
            else:  # _OP_BOOT
                self._next_boot = result
            if op[-1] is not None:
                op[-1].callback(result if kind != _OP_COUNT else dict(result))

    # -- reads --

    def depth(self, name: str) -> int:
        """Committed messages of ``name`` (kept in memory, no I/O)."""
        return self._depths.get(name, 0)

    def depths(self) -> dict[str, int]:
        return dict(self._depths)

    def read(self, name: str, limit: int = 100, after_seq: int = 0) -> list[SpooledMessage]:
        """Up to ``limit`` committed messages of ``name`` with seq > ``after_seq``, oldest first."""
        if self._reader is None:
            raise SpoolError("spool is not open")
        return read_messages(self._reader, name, limit, after_seq)

    def disabled(self) -> dict[str, str]:
        """Disabled names and why (one small query: forwarders poll it)."""
        if self._reader is None:
            raise SpoolError("spool is not open")
        return dict(self._reader.execute("SELECT name, reason FROM disabled").fetchall())

    def external_changes(self) -> int:
        """A counter msghub-spool bumps on each write it makes beside the hub."""
        if self._reader is None:
            raise SpoolError("spool is not open")
        row = self._reader.execute("SELECT value FROM meta WHERE key = ?", (CHANGES_KEY,)).fetchone()
        return row[0] if row else 0

    def stats(self) -> SpoolStats:
        depths = dict(self._depths)
        return SpoolStats(
            path=self.path,
            boot=self.boot,
            healthy=self.healthy,
            commits=self.commits,
            failures=self.failures,
            queued=sum(len(op[1]) for op in self._ops if op[0] == _OP_INSERT),
            committing=self._committing,
            depths=depths,
            total=sum(depths.values()),
        )


class SpoolService(Service):
    """Opens the spool on start; on stop, commits what is queued and closes it.

    Add it to the hub's MultiService *first*: it is then stopped last.
    """

    def __init__(self, spool: Spool) -> None:
        self.spool = spool

    def startService(self) -> None:
        self.spool.open()
        Service.startService(self)

    def stopService(self) -> Deferred:
        Service.stopService(self)
        return self.spool.close()


@implementer(ISink)
class SpoolSink:
    """A route's ``spool = "NAME"`` destination."""

    def __init__(self, spool: Spool, name: str) -> None:
        self.name = f"spool:{name}"
        self.spool_name = name
        self._append: Callable[[str, list[Message]], Deferred] = spool.append

    def deliver(self, messages: list[Message]) -> Deferred:
        return self._append(self.spool_name, messages)
