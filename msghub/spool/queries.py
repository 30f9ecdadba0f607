"""What the spool's threads run against the database: reads, marks, dead rows, and disk helpers.

No Twisted here: each function takes the thread's own connection and runs
inside (or, for reads, outside) the caller's transaction.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Iterable, Mapping, NamedTuple

from msghub.message import Message
from msghub.spool import schema

__all__ = ["Position", "Segment", "dead_row", "free_bytes", "is_full", "mark", "poll", "read_segments",
           "rollback", "shrink_wal"]

Position = tuple[int, int]  # (segment seq, index in the segment)


class Segment(NamedTuple):
    """One committed segment as read back: its messages and where delivery stands.

    ``done`` has bit ``i`` set for each message already delivered or dead;
    ``retries`` maps an index to ``(attempts, next_at)`` for messages whose
    webhook retry schedule was recorded.
    """

    seq: int
    messages: list[Message]
    done: int
    retries: Mapping[int, tuple[int, float]]

    def pending(self) -> list[tuple[int, Message]]:
        """``(index, message)`` for each message not yet done, in order."""
        done = self.done
        return [(i, m) for i, m in enumerate(self.messages) if not done >> i & 1]


def read_segments(conn: sqlite3.Connection, name: str, after: int, limit: int, max_bytes: int) -> list[Segment]:
    found = schema.read_segments(conn, name, after, limit, max_bytes)
    if not found:
        return []
    first, last = found[0][0], found[-1][0]
    retries: dict[int, dict[int, tuple[int, float]]] = {}
    for seq, idx, attempts, next_at in conn.execute(
        "SELECT seq, idx, attempts, next_at FROM retries WHERE name = ? AND seq BETWEEN ? AND ?", (name, first, last)
    ):
        retries.setdefault(seq, {})[idx] = (attempts, next_at)
    return [Segment(seq, messages, mask, retries.get(seq, {})) for seq, mask, messages in found]


def poll(conn: sqlite3.Connection) -> tuple[dict[str, str], int]:
    disabled = dict(conn.execute("SELECT name, reason FROM disabled").fetchall())
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (schema.CHANGES_KEY,)).fetchone()
    return disabled, (row[0] if row else 0)


def mark(conn: sqlite3.Connection, name: str, positions: Iterable[Position]) -> int:
    """Set the done bits of ``positions``; delete segments that are all done.  Returns how many were new."""
    by_seq: dict[int, int] = {}
    for seq, idx in positions:
        by_seq[seq] = by_seq.get(seq, 0) | (1 << idx)
    new = 0
    for seq, bits in by_seq.items():
        row = conn.execute(
            "SELECT s.count, m.done FROM segments s LEFT JOIN marks m ON m.seq = s.seq WHERE s.seq = ? AND s.name = ?",
            (seq, name),
        ).fetchone()
        if row is None:
            continue  # purged meanwhile
        count, done = row
        old = schema.done_mask(done)
        mask = (old | bits) & schema.full_mask(count)
        new += mask.bit_count() - old.bit_count()
        if mask == schema.full_mask(count):
            conn.execute("DELETE FROM segments WHERE seq = ?", (seq,))
            conn.execute("DELETE FROM marks WHERE seq = ?", (seq,))
            conn.execute("DELETE FROM retries WHERE name = ? AND seq = ?", (name, seq))
        elif mask != old:
            conn.execute("INSERT OR REPLACE INTO marks (seq, done) VALUES (?, ?)", (seq, schema.mask_bytes(mask)))
    return new


def dead_row(name: str, m: Message, died: float, error: str) -> tuple:
    return (
        name, m.id, m.route, m.method, m.target, schema.encode_headers(m.headers), m.body, m.received, died, error,
        m.user, schema.encode_captures(m.captures).decode() or None,
    )


def shrink_wal(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.Error:
        pass


def free_bytes(path: str) -> int:
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def is_full(error: BaseException | None) -> bool:
    return isinstance(error, sqlite3.Error) and (
        getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "full" in str(error)
    )


def rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # SQLite may already have rolled back (e.g. on a full disk)
