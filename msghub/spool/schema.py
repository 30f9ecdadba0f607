"""The spool's on-disk layout: tables, the segment codec, and migrations.

No Twisted here: ``msghub-spool`` imports only this module.

A *segment* is one row holding the messages one group commit wrote for one
destination name, in acceptance order.  ``data`` is the segment codec's
output (see ``encode_segment``; the layout is in ``docs/hub.md``) and
``count`` the number of messages in it.  A segment's progress is a row of its
own in ``marks``: ``done``, a bitmap of the messages already delivered or dead
(bit ``i`` of the little-endian integer: message ``i``), absent while none
is.  Both rows are deleted once every bit is set.  Progress lives apart from
the data because SQLite rewrites a whole row on UPDATE: a mark kept beside a
1 MiB segment cost ~12 ms per commit, one in its own row costs microseconds.
Positions are ``(seq, index)``: segment seq (AUTOINCREMENT, never reused) and
the message's index inside it.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from array import array
from bisect import bisect_right
from itertools import accumulate
from operator import itemgetter
from pathlib import Path
from struct import Struct
from typing import Iterable, Iterator, Mapping, Sequence

from msghub.message import NO_CAPTURES, Headers, Message

SCHEMA_VERSION = 3
SCHEMA_KEY = "schema_version"
# Counts writes made beside the hub (msghub-spool replay, purge, enable), so
# a running hub can tell that its in-memory depths went stale.
CHANGES_KEY = "changes"
BOOT_KEY = "boot"
# How long a write waits for another writer (e.g. ``msghub-spool purge``) before failing.
BUSY_TIMEOUT = 5.0

# A segment holds at most this many messages or (beyond its first message)
# body bytes: readers take whole segments, so this bounds one read's memory.
SEGMENT_MAX_COUNT = 8192
SEGMENT_MAX_BYTES = 1 << 20

TABLES = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    # ``data`` last: SQLite reads the small columns without touching the
    # blob's overflow pages (opening a spool counts depths from them).
    "CREATE TABLE IF NOT EXISTS segments ("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " name TEXT NOT NULL,"
    " count INTEGER NOT NULL,"
    " bytes INTEGER NOT NULL,"
    " data BLOB NOT NULL)",
    "CREATE INDEX IF NOT EXISTS segments_name ON segments (name, seq)",
    # Which messages of a segment are done; deleted with its segment.
    "CREATE TABLE IF NOT EXISTS marks (seq INTEGER PRIMARY KEY, done BLOB NOT NULL)",
    # A webhook message's retry schedule: kept with its position so that a
    # restart resumes it.  Deleted with its segment.
    "CREATE TABLE IF NOT EXISTS retries ("
    " name TEXT NOT NULL, seq INTEGER NOT NULL, idx INTEGER NOT NULL,"
    " attempts INTEGER NOT NULL, next_at REAL NOT NULL,"
    " PRIMARY KEY (name, seq, idx)) WITHOUT ROWID",
    # dead: messages a forwarder gave up on, with why; one row each (they are few).
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
    " error TEXT NOT NULL,"
    " user TEXT,"
    " captures TEXT)",
    "CREATE INDEX IF NOT EXISTS dead_name ON dead (name)",
    # disabled: names whose forwarding is switched off until msghub-spool enables them.
    "CREATE TABLE IF NOT EXISTS disabled (name TEXT PRIMARY KEY, reason TEXT NOT NULL, since REAL NOT NULL)",
)

INSERT_SEGMENT = "INSERT INTO segments (name, count, bytes, data) VALUES (?, ?, ?, ?)"
INSERT_DEAD = (
    "INSERT INTO dead (name, id, route, method, target, headers, body, received, died, error, user, captures)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class SchemaError(Exception):
    """The file is not a spool this msghub can read."""


# -- header blocks ------------------------------------------------------------

# Credentials are checked at the door and never written to disk: no forwarder
# passes them on, and a spool file (or ``msghub-spool dump``) must not leak them.
NOT_STORED = frozenset((b"authorization", b"proxy-authorization"))


def encode_headers(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """``Name: value CRLF`` lines, credentials left out; values never contain CR or LF."""
    return b"".join([b"%s: %s\r\n" % pair for pair in headers if pair[0].lower() not in NOT_STORED])


def decode_headers(blob: bytes) -> Headers:
    # A field name is a token (no ":" or space), so the first ": " separates.
    return tuple(tuple(line.split(b": ", 1)) for line in blob.split(b"\r\n")[:-1])  # type: ignore[misc]


def encode_captures(captures: Mapping[str, str]) -> bytes:
    return json.dumps(captures, separators=(",", ":"), sort_keys=True).encode() if captures else b""


def decode_captures(blob: bytes | str | None) -> Mapping[str, str]:
    return json.loads(blob) if blob else NO_CAPTURES


# -- the segment codec --------------------------------------------------------
#
# segment  = head contexts ids received ctx tlen blen targets bodies
# head     = "MHS2" count:u32 ncontexts:u32
# contexts = ncontexts * (method route user headers captures), each a u32
#            length then bytes; user length 0xFFFFFFFF means anonymous
# ids      = count * i64; received = count * f64
# ctx      = count * u32 (index into contexts); tlen, blen = count * u32
# targets, bodies = the concatenated bytes
# All integers little-endian.  A context is what a compact state and a
# routing decision share, so a segment stores each header block once.

MAGIC = b"MHS2"
_head = Struct("<4sII")
_u32 = Struct("<I")
_NO_USER = 0xFFFFFFFF
_SWAP = sys.byteorder != "little"


def _pack(code: str, values: Iterable) -> bytes:
    a = array(code, values)
    if _SWAP:
        a.byteswap()
    return a.tobytes()


def _unarray(code: str, data: memoryview) -> array:
    a = array(code)
    a.frombytes(data)
    if _SWAP:
        a.byteswap()
    return a


def _field(data: bytes) -> bytes:
    return _u32.pack(len(data)) + data


def _context(method: bytes, route: str, user: str | None, headers: Headers, captures: Mapping[str, str],
             cache: dict) -> bytes:
    block = cache.get(headers)
    if block is None:
        block = encode_headers(headers)
        if len(cache) < 4096:
            cache[headers] = block
    return b"".join((
        _field(method), _field(route.encode()),
        _u32.pack(_NO_USER) if user is None else _field(user.encode()),
        _field(block), _field(encode_captures(captures)),
    ))


def encode_segment(messages: Sequence[Message], header_cache: dict | None = None) -> bytes:
    """One segment for ``messages`` (in order).  ``header_cache``: header tuple -> encoded block."""
    if not messages:
        return _head.pack(MAGIC, 0, 0)
    columns = _transpose(messages)
    return _encode(columns, list(map(len, columns["body"])), {} if header_cache is None else header_cache)


def encode_segments(messages: Sequence[Message], header_cache: dict | None = None) -> list[tuple[int, int, bytes]]:
    """``(count, body bytes, data)`` for each segment of ``messages``, split as ``split_segments`` splits."""
    if not messages:
        return []
    cache = {} if header_cache is None else header_cache
    columns = _transpose(messages)
    lengths = list(map(len, columns["body"]))
    out = []
    for start, end in _bounds(lengths):
        if start == 0 and end == len(messages):
            part, part_lengths = columns, lengths
        else:
            part = {field: column[start:end] for field, column in columns.items()}
            part_lengths = lengths[start:end]
        out.append((end - start, sum(part_lengths), _encode(part, part_lengths, cache)))
    return out


# One getter per Message field, by name.
_GETTERS = {field: itemgetter(i) for i, field in enumerate(Message._fields) if field != "number"}


def _transpose(messages: Sequence[Message]) -> dict[str, list]:
    """Field name -> that field of every message, in order.

    One C loop per field.  ``zip(*messages)`` would be one pass, but it
    allocates an iterator per message, and freeing them all at once hands
    pymalloc's arenas back to the kernel, to be faulted in again by the next
    commit; these lists allocate nothing per message.  bench/ingress.py's
    SQLite floor times the encoder alone ("segment encoding alone").
    """
    return {field: list(map(get, messages)) for field, get in _GETTERS.items()}


def _encode(columns: dict[str, list], lengths: list[int], cache: dict) -> bytes:
    """The segment of the messages whose fields are ``columns``; not empty.

    It runs on the writer thread, which shares the reactor's core, so the
    per-message work stays in C: the messages are transposed once, each
    column is then packed by one call, and the segment is joined once.
    Every message of one compact state and routing decision shares its
    method, header, route, user and captures objects (and usually its
    target), so ``list.count``, which tests identity before equality, finds
    the common case of one context and one target at once.  A segment that
    mixes contexts pays a hash and a dict lookup per message, in C as well.
    """
    ids, received, bodies, targets = columns["id"], columns["received"], columns["body"], columns["target"]
    methods, headers, routes, users, captures = (
        columns["method"], columns["headers"], columns["route"], columns["user"], columns["captures"])
    n = len(ids)
    method, target, header, route, user, capture = methods[0], targets[0], headers[0], routes[0], users[0], captures[0]
    if (headers.count(header) == n and methods.count(method) == n and routes.count(route) == n
            and users.count(user) == n and captures.count(capture) == n):
        blocks = [_context(method, route, user, header, capture, cache)]
        index = bytes(4 * n)  # context 0 for every message
    else:
        # Captures are dicts (unhashable): keyed by identity, and contexts
        # that encode alike are merged afterwards.
        keys = list(zip(headers, methods, routes, users, map(id, captures)))
        at = dict(zip(reversed(keys), range(n - 1, -1, -1)))  # key -> its first message
        distinct: dict[bytes, int] = {}
        number = {}
        for key in dict.fromkeys(keys):  # in order of first use
            i = at[key]
            block = _context(methods[i], routes[i], users[i], headers[i], captures[i], cache)
            number[key] = distinct.setdefault(block, len(distinct))
        blocks = list(distinct)
        index = _pack("I", map(number.__getitem__, keys))
    parts = [_head.pack(MAGIC, n, len(blocks)), *blocks, _pack("q", ids), _pack("d", received), index]
    if targets.count(target) == n:
        parts += (_u32.pack(len(target)) * n, _pack("I", lengths), target * n)
    else:
        parts += (_pack("I", map(len, targets)), _pack("I", lengths))
        parts += targets
    parts += bodies  # joined once, with the rest: no intermediate copy of the bodies
    return b"".join(parts)


def decode_segment(data: bytes) -> list[Message]:
    """The messages of one segment, credentials absent, ``number`` 0."""
    view = memoryview(data)
    try:
        magic, count, ncontexts = _head.unpack_from(view, 0)
        if magic != MAGIC:
            raise SchemaError(f"not a segment (magic {bytes(magic)!r})")
        pos = _head.size
        contexts = []
        for _ in range(ncontexts):
            fields: list = []
            for _ in range(5):
                (n,) = _u32.unpack_from(view, pos)
                pos += 4
                if n == _NO_USER:
                    fields.append(None)
                    continue
                fields.append(bytes(view[pos : pos + n]))
                pos += n
            method, route, user, headers, captures = fields
            contexts.append((method, route.decode(), None if user is None else user.decode(),
                             decode_headers(headers), decode_captures(captures)))
        ids = _unarray("q", view[pos : pos + 8 * count])
        pos += 8 * count
        received = _unarray("d", view[pos : pos + 8 * count])
        pos += 8 * count
        ctx = _unarray("I", view[pos : pos + 4 * count])
        pos += 4 * count
        tlen = _unarray("I", view[pos : pos + 4 * count])
        pos += 4 * count
        blen = _unarray("I", view[pos : pos + 4 * count])
        pos += 4 * count
        tends = list(accumulate(tlen, initial=pos))
        bends = list(accumulate(blen, initial=tends[-1]))
        if bends[-1] != len(data):
            raise SchemaError(f"segment of {len(data)} bytes, its layout says {bends[-1]}")
        new = tuple.__new__
        out = []
        for i in range(count):
            method, route, user, headers, captures = contexts[ctx[i]]
            out.append(new(Message, (
                ids[i], method, data[tends[i] : tends[i + 1]], headers, data[bends[i] : bends[i + 1]],
                route, user, captures, received[i], 0,
            )))
        return out
    except (IndexError, ValueError) as e:  # struct.error is a ValueError
        raise SchemaError(f"corrupt segment: {e}") from e


def split_segments(messages: Sequence[Message]) -> Iterator[Sequence[Message]]:
    """``messages`` in runs of at most SEGMENT_MAX_COUNT messages and about SEGMENT_MAX_BYTES of bodies."""
    for start, end in _bounds([len(m.body) for m in messages]):
        yield messages if start == 0 and end == len(messages) else messages[start:end]


def _bounds(lengths: list[int]) -> list[tuple[int, int]]:
    """``(start, end)`` of each segment for messages with these body lengths.

    A segment takes messages while it holds fewer than SEGMENT_MAX_COUNT and
    their bodies fit in SEGMENT_MAX_BYTES; it always takes at least one.
    """
    n = len(lengths)
    ends = list(accumulate(lengths))
    if n <= SEGMENT_MAX_COUNT and (not n or ends[-1] <= SEGMENT_MAX_BYTES):
        return [(0, n)]
    out = []
    start = 0
    while start < n:
        before = ends[start - 1] if start else 0
        end = bisect_right(ends, before + SEGMENT_MAX_BYTES, start, min(n, start + SEGMENT_MAX_COUNT))
        end = max(end, start + 1)
        out.append((start, end))
        start = end
    return out


def segment_bytes(messages: Sequence[Message]) -> int:
    return sum(len(m.body) for m in messages)


# -- progress bitmaps ---------------------------------------------------------


def done_mask(done: bytes | None) -> int:
    return int.from_bytes(done, "little") if done else 0


def mask_bytes(mask: int) -> bytes | None:
    return mask.to_bytes((mask.bit_length() + 7) // 8, "little") if mask else None


def full_mask(count: int) -> int:
    return (1 << count) - 1


# -- opening, migrating, counting ------------------------------------------------


def connect(path: str, *, create: bool = False, check_same_thread: bool = True) -> sqlite3.Connection:
    """An autocommit connection with a busy timeout; ``create=False`` refuses a missing file."""
    if create:
        return sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=check_same_thread)
    # A URI so that a mistyped path is an error instead of a new empty database.
    uri = Path(path).absolute().as_uri() + "?mode=rw"
    return sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT, isolation_level=None,
                           check_same_thread=check_same_thread)


def tables(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def schema_version(conn: sqlite3.Connection) -> int:
    """3 for segments with marks apart, 2 for segments with marks inside, 1 for one row per message, 0 for empty."""
    names = tables(conn)
    if "meta" not in names:
        return 0
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    if SCHEMA_KEY in meta:
        return int(meta[SCHEMA_KEY])
    return 1 if "messages" in names or "schema" in meta else 0


def ensure_schema(conn: sqlite3.Connection, path: str) -> bool:
    """Create or migrate the tables, inside the caller's write transaction.

    Returns whether anything was written.  Refuses a file newer than this msghub.
    """
    version = schema_version(conn)
    if version > SCHEMA_VERSION:
        raise SchemaError(f"spool {path} has schema {version}, this msghub reads up to {SCHEMA_VERSION}")
    if version == SCHEMA_VERSION:
        if TABLES_PRESENT <= tables(conn):
            return False
    for statement in TABLES:
        conn.execute(statement)
    if version == 1:
        migrate_v1(conn)
    elif version == 2:
        migrate_v2(conn)
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (SCHEMA_KEY, SCHEMA_VERSION))
    return True


TABLES_PRESENT = frozenset(("meta", "segments", "marks", "retries", "dead", "disabled"))
_V1_PAGE = 4096


def migrate_v1(conn: sqlite3.Connection) -> int:
    """Move v1's one row per message into segments, per name in seq order; returns how many moved.

    v1 stored no user or captures: those messages come back anonymous and
    without captures (as v1's dispatcher published them).
    """
    moved = 0
    names = [row[0] for row in conn.execute("SELECT DISTINCT name FROM messages ORDER BY name")]
    for name in names:
        after = 0
        while True:
            rows = conn.execute(
                "SELECT seq, id, route, method, target, headers, body, received FROM messages"
                " WHERE name = ? AND seq > ? ORDER BY seq LIMIT ?",
                (name, after, _V1_PAGE),
            ).fetchall()
            if not rows:
                break
            after = rows[-1][0]
            batch = [
                Message(id_, bytes(method), bytes(target), decode_headers(headers), bytes(body), route, None,
                        NO_CAPTURES, received)
                for _, id_, route, method, target, headers, body, received in rows
            ]
            for part in split_segments(batch):
                conn.execute(INSERT_SEGMENT, (name, len(part), segment_bytes(part), encode_segment(part)))
            moved += len(rows)
    conn.execute("DROP TABLE messages")
    columns = _columns(conn, "dead")
    for column in ("user", "captures"):
        if column not in columns:
            conn.execute(f"ALTER TABLE dead ADD COLUMN {column} TEXT")
    conn.execute("DELETE FROM meta WHERE key = 'schema'")
    return moved


def migrate_v2(conn: sqlite3.Connection) -> int:
    """Move v2's in-row ``done`` bitmaps into ``marks``; returns how many segments had one.

    The old column stays, NULL from then on: dropping it would rewrite every
    segment, which a spool migrated on a nearly full disk cannot afford.
    """
    conn.execute("INSERT OR REPLACE INTO marks (seq, done) SELECT seq, done FROM segments WHERE done IS NOT NULL")
    moved = conn.execute("SELECT changes()").fetchone()[0]
    conn.execute("UPDATE segments SET done = NULL WHERE done IS NOT NULL")
    return moved


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def count_by_name(conn: sqlite3.Connection) -> dict[str, int]:
    """Undelivered messages per name, from the small columns only."""
    depths: dict[str, int] = {}
    for name, count, done in conn.execute(
        "SELECT s.name, s.count, m.done FROM segments s LEFT JOIN marks m ON m.seq = s.seq"
    ):
        left = count - done_mask(done).bit_count()
        if left:
            depths[name] = depths.get(name, 0) + left
    return depths


def count_segments(conn: sqlite3.Connection) -> dict[str, int]:
    """Segment rows per name (delivered messages' segments included until deleted)."""
    return dict(conn.execute("SELECT name, COUNT(*) FROM segments GROUP BY name").fetchall())


def read_segments(
    conn: sqlite3.Connection, name: str, after_seq: int = 0, limit: int = 100, max_bytes: int = 4 << 20
) -> list[tuple[int, int, list[Message]]]:
    """``(seq, done_mask, messages)`` for segments of ``name`` after ``after_seq``, oldest first.

    At most ``limit`` undelivered messages and about ``max_bytes`` of bodies
    (always at least one segment, which SEGMENT_MAX_BYTES bounds).
    """
    out: list[tuple[int, int, list[Message]]] = []
    taken = size = 0
    cursor = conn.execute(
        "SELECT s.seq, s.count, s.bytes, m.done FROM segments s LEFT JOIN marks m ON m.seq = s.seq"
        " WHERE s.name = ? AND s.seq > ? ORDER BY s.seq",
        (name, after_seq),
    )
    wanted: list[tuple[int, int]] = []  # (seq, done mask)
    for seq, count, nbytes, done in cursor:
        mask = done_mask(done)
        if wanted and (taken + count > limit or size + nbytes > max_bytes):
            break
        wanted.append((seq, mask))
        taken += count - mask.bit_count()
        size += nbytes
        if taken >= limit or size >= max_bytes:
            break
    cursor.close()  # ends the statement: no read snapshot left open to stall checkpoints
    for seq, mask in wanted:
        row = conn.execute("SELECT data FROM segments WHERE seq = ?", (seq,)).fetchone()
        if row is not None:
            out.append((seq, mask, decode_segment(row[0])))
    return out


def changed(conn: sqlite3.Connection) -> None:
    """Tell a running hub that rows changed beside it (inside the caller's transaction)."""
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, 1) ON CONFLICT (key) DO UPDATE SET value = value + 1",
        (CHANGES_KEY,),
    )
