"""``msghub-spool``: look into, or empty, the spool of a hub (running or not).

    msghub-spool -c CONF stats
    msghub-spool -c CONF dump NAME [--limit N] [--body]
    msghub-spool -c CONF purge NAME
    msghub-spool -c CONF backup DEST
    msghub-spool -c CONF dead TARGET [--limit N] [--body]
    msghub-spool -c CONF replay TARGET [--id ID]
    msghub-spool -c CONF enable TARGET
    msghub-spool -c CONF disable TARGET [--reason TEXT]

The database is opened directly; thanks to WAL this works beside a running
hub.  A relative ``spool.path`` is taken from the conf file's folder, as the
hub takes it, whatever the current directory.  A hub that is running keeps its own
depth counts: after ``purge`` they stay too high until ``Spool.refresh_depths``
or a restart (a hub with webhook targets notices within seconds).

``dead``, ``replay``, ``enable`` and ``disable`` take a webhook target name
(``orders`` for the spool name ``webhook:orders``); a running hub picks up
their changes within a few seconds.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sqlite3
import sys
from datetime import datetime, timezone
from typing import TYPE_CHECKING, NoReturn, Sequence, TextIO

from msghub.message import Message, format_id, parse_id
from msghub.spool import schema
from msghub.spool.schema import CHANGES_KEY, count_by_name, decode_captures, decode_headers
from msghub.spool.schema import changed as _changed

if TYPE_CHECKING:
    from msghub.config import Config

__all__ = ["CHANGES_KEY", "CliError", "main"]

# Segments read per query by dump, and deleted per transaction by purge: a
# purge of millions of messages must not hold the write lock for longer than
# the hub's busy timeout, or the hub's commits would fail meanwhile.
PAGE = 64
PURGE_CHUNK = 256
REPLAY_CHUNK = 4096


class CliError(Exception):
    """Reported as one line on stderr, exit status 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(1, f"{self.prog}: {message} (see --help)\n")


def _open(path: str) -> sqlite3.Connection:
    try:
        conn = schema.connect(path)
        version = schema.schema_version(conn)
    except sqlite3.Error as e:
        raise CliError(f"cannot open spool {path}: {e}") from e
    if version == 0:
        conn.close()
        raise CliError(f"{path} is not a msghub spool")
    if version != schema.SCHEMA_VERSION or not schema.TABLES_PRESENT <= schema.tables(conn):
        # An older layout: migrate it as the hub would on open.
        try:
            conn.execute("BEGIN IMMEDIATE")
            schema.ensure_schema(conn, path)
            conn.execute("COMMIT")
        except (sqlite3.Error, schema.SchemaError) as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.close()
            raise CliError(str(e)) from e
    return conn


def _text(value: bytes) -> str:
    return value.decode("ascii", "backslashreplace")


def stats(path: str, out: TextIO) -> int:
    conn = _open(path)
    try:
        depths = count_by_name(conn)
        segments = dict(conn.execute("SELECT name, COUNT(*) FROM segments GROUP BY name").fetchall())
        dead = dict(conn.execute("SELECT name, COUNT(*) FROM dead GROUP BY name").fetchall())
        disabled = dict(conn.execute("SELECT name, reason FROM disabled").fetchall())
    finally:
        conn.close()
    width = max([len(name) for name in depths] + [len("total")])
    for name in sorted(depths):
        out.write(f"{name:<{width}}  {depths[name]}  ({segments.get(name, 0)} segments)\n")
    out.write(f"{'total':<{width}}  {sum(depths.values())}\n")
    for name in sorted(dead):
        out.write(f"dead letters of {name}: {dead[name]}\n")
    for name in sorted(disabled):
        out.write(f"disabled: {name} ({disabled[name]})\n")
    return 0


def _write_message(out: TextIO, m: Message, where: str, body: bool, extra: str = "", error: str | None = None) -> None:
    user = f" user={m.user}" if m.user is not None else ""
    out.write(f"{m.id_text} {where} route={m.route or '-'}{user} received={_when(m.received)}{extra}\n")
    if error is not None:
        out.write(f"  error: {error}\n")
    out.write(f"  {_text(m.method)} {_text(m.target)}\n")
    for field, value in m.headers:
        out.write(f"  {_text(field)}: {_text(value)}\n")
    out.write(f"  body: {m.body!r}\n" if body else f"  body: {len(m.body)} bytes\n")


def dump(path: str, name: str, out: TextIO, limit: int | None = None, body: bool = False) -> int:
    """The undelivered messages of ``name``, oldest first, each with its position ``segment.index``."""
    conn = _open(path)
    try:
        after, left = 0, limit
        while left is None or left > 0:
            page = schema.read_segments(conn, name, after, limit=PAGE * schema.SEGMENT_MAX_COUNT,
                                        max_bytes=PAGE * schema.SEGMENT_MAX_BYTES)
            if not page:
                break
            for seq, mask, messages in page:
                for i, m in enumerate(messages):
                    if mask >> i & 1:
                        continue
                    if left is not None:
                        if left <= 0:
                            break
                        left -= 1
                    _write_message(out, m, f"pos={seq}.{i}", body)
            after = page[-1][0]
    finally:
        conn.close()
    return 0


def purge(path: str, name: str, out: TextIO, config: Config | None = None) -> int:
    """Delete every message of ``name``: one the spool holds or, given ``config``, one its routes write."""
    conn = _open(path)
    try:
        _check_name(conn, name, config)
        # Only what exists now: a running hub may keep appending to NAME.
        last = conn.execute("SELECT MAX(seq) FROM segments WHERE name = ?", (name,)).fetchone()[0]
        deleted = 0
        while last is not None:
            conn.execute("BEGIN IMMEDIATE")
            rows = conn.execute(
                "SELECT s.seq, s.count, m.done FROM segments s LEFT JOIN marks m ON m.seq = s.seq"
                " WHERE s.name = ? AND s.seq <= ? ORDER BY s.seq LIMIT ?",
                (name, last, PURGE_CHUNK),
            ).fetchall()
            for _seq, count, done in rows:
                deleted += count - schema.done_mask(done).bit_count()
            conn.executemany("DELETE FROM segments WHERE seq = ?", [(row[0],) for row in rows])
            conn.executemany("DELETE FROM marks WHERE seq = ?", [(row[0],) for row in rows])
            conn.executemany("DELETE FROM retries WHERE name = ? AND seq = ?", [(name, row[0]) for row in rows])
            finished = len(rows) < PURGE_CHUNK
            if finished:
                _changed(conn)
            conn.execute("COMMIT")
            if finished:
                break
    finally:
        conn.close()
    out.write(f"purged {deleted} messages from {name}\n")
    return 0


def backup(path: str, dest: str, out: TextIO) -> int:
    """A consistent copy of the spool in the new file ``dest``, made beside a running hub."""
    if os.path.lexists(dest):
        raise CliError(f"{dest} exists; backup writes a new file only")
    conn = _open(path)
    try:
        # One read transaction, so the copy is the spool as of one commit, and
        # with WAL the hub's commits go on meanwhile.  The online backup API
        # (sqlite3's .backup) copies in steps and starts over whenever another
        # connection writes, which a busy hub always does.  The copy is also
        # compacted: the free pages, with the bytes of delivered messages, stay behind.
        conn.execute("VACUUM INTO ?", (dest,))
    except sqlite3.Error as e:
        raise CliError(f"backup of {path} to {dest} failed: {e}") from e
    finally:
        conn.close()
    out.write(f"backed up {path} to {dest} ({os.path.getsize(dest)} bytes)\n")
    return 0


def _check_name(conn: sqlite3.Connection, name: str, config: Config | None) -> None:
    # A typo must not read as "purged 0 messages".  Names the spool still holds
    # count as known, so that a route removed from the conf can be emptied.
    from msghub.config import spool_names

    known = set(schema.count_segments(conn)) | set(spool_names(config) if config is not None else ())
    if name in known:
        return
    where = f"{config.path} or the spool" if config is not None else "the spool"
    close = difflib.get_close_matches(name, sorted(known), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise CliError(f"no spool name {name!r} in {where} ({hint}known: {', '.join(sorted(known)) or 'none'})")


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="microseconds")


def _dead_message(row: tuple) -> Message:
    _, id_, route, method, target, headers, body, received, _, _, user, captures = row
    return Message(id_, bytes(method), bytes(target), decode_headers(headers), bytes(body), route, user,
                   decode_captures(captures), received)


_DEAD_COLUMNS = "seq, id, route, method, target, headers, body, received, died, error, user, captures"


def dead(path: str, name: str, out: TextIO, limit: int | None = None, body: bool = False) -> int:
    """The dead letters of ``name``, oldest first, each with the error that killed it."""
    conn = _open(path)
    try:
        # Oldest first by acceptance (message id): with concurrent deliveries,
        # messages die in another order than they were accepted.
        after, left = (-1, 0), limit
        while left is None or left > 0:
            page = conn.execute(
                f"SELECT {_DEAD_COLUMNS} FROM dead WHERE name = ? AND (id, seq) > (?, ?) ORDER BY id, seq LIMIT ?",
                (name, *after, REPLAY_CHUNK if left is None else min(REPLAY_CHUNK, left)),
            ).fetchall()
            if not page:
                break
            for row in page:
                died, error = row[8], row[9]
                _write_message(out, _dead_message(row), f"dead={row[0]}", body, f" died={_when(died)}", error)
            after = (page[-1][1], page[-1][0])
            if left is not None:
                left -= len(page)
    finally:
        conn.close()
    return 0


def replay(path: str, name: str, out: TextIO, message_id: int | None = None) -> int:
    """Put dead letters of ``name`` back in line, at the end, in the order they were accepted."""
    where, args = ("name = ?", (name,)) if message_id is None else ("name = ? AND id = ?", (name, message_id))
    conn = _open(path)
    moved = 0
    try:
        while True:  # chunks, so the hub's own commits never wait long for the lock
            conn.execute("BEGIN IMMEDIATE")
            rows = conn.execute(
                f"SELECT {_DEAD_COLUMNS} FROM dead WHERE {where} ORDER BY id, seq LIMIT {REPLAY_CHUNK}", args
            ).fetchall()
            messages = [_dead_message(row) for row in rows]
            for part in schema.split_segments(messages):
                conn.execute(schema.INSERT_SEGMENT,
                             (name, len(part), schema.segment_bytes(part), schema.encode_segment(part)))
            conn.executemany("DELETE FROM dead WHERE seq = ?", [(row[0],) for row in rows])
            if rows:
                _changed(conn)
            conn.execute("COMMIT")
            moved += len(rows)
            if len(rows) < REPLAY_CHUNK:
                break
    finally:
        conn.close()
    if message_id is not None and not moved:
        raise CliError(f"no dead letter {format_id(message_id)} in {name}")
    out.write(f"replayed {moved} messages to {name}\n")
    return 0


def set_disabled(path: str, name: str, out: TextIO, reason: str | None) -> int:
    """``reason`` None: enable ``name``; else disable it."""
    conn = _open(path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        if reason is None:
            n = conn.execute("DELETE FROM disabled WHERE name = ?", (name,)).rowcount
        else:
            since = datetime.now(timezone.utc).timestamp()
            n = conn.execute("INSERT OR REPLACE INTO disabled VALUES (?, ?, ?)", (name, reason, since)).rowcount
        _changed(conn)
        conn.execute("COMMIT")
    finally:
        conn.close()
    if reason is None:
        out.write(f"enabled {name}\n" if n else f"{name} was not disabled\n")
    else:
        out.write(f"disabled {name}\n")
    return 0


def _load(config_path: str):
    from msghub.config import ConfigError, load

    try:
        return load(config_path)
    except ConfigError as e:
        raise CliError("\n".join(e.errors)) from e


def spool_path(config_path: str) -> str:
    return _load(config_path).spool.path


def webhook_name(target: str, config: Config | None = None) -> str:
    """``orders`` (or ``webhook:orders``) -> ``webhook:orders``, checked against ``config`` if given."""
    from msghub.config_webhooks import spool_name

    bare = target.removeprefix("webhook:")
    if config is not None and bare not in config.webhooks:
        known = ", ".join(sorted(config.webhooks)) or "none"
        raise CliError(f"no webhook target {bare!r} in {config.path} (defined: {known})")
    return spool_name(bare)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="msghub-spool", description="Inspect or empty the msghub spool.")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("-c", "--config", metavar="CONF", help="the hub's TOML configuration")
    where.add_argument("--db", metavar="PATH", help="the spool database itself")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    commands.add_parser("stats", help="messages per name, and the total")
    dump_parser = commands.add_parser("dump", help="print the messages of NAME, oldest first")
    dump_parser.add_argument("name", metavar="NAME")
    dump_parser.add_argument("--limit", type=int, metavar="N", help="at most N messages")
    dump_parser.add_argument("--body", action="store_true", help="print bodies, not just their length")
    purge_parser = commands.add_parser("purge", help="delete every message of NAME")
    purge_parser.add_argument("name", metavar="NAME")
    backup_parser = commands.add_parser("backup", help="copy the spool, consistently, to the new file DEST")
    backup_parser.add_argument("dest", metavar="DEST")
    dead_parser = commands.add_parser("dead", help="print the dead letters of webhook TARGET and why")
    dead_parser.add_argument("name", metavar="TARGET")
    dead_parser.add_argument("--limit", type=int, metavar="N", help="at most N messages")
    dead_parser.add_argument("--body", action="store_true", help="print bodies, not just their length")
    replay_parser = commands.add_parser("replay", help="queue dead letters of TARGET for delivery again")
    replay_parser.add_argument("name", metavar="TARGET")
    replay_parser.add_argument("--id", metavar="ID", help="only the message with this id (as dead prints it)")
    enable_parser = commands.add_parser("enable", help="resume deliveries to a disabled TARGET")
    enable_parser.add_argument("name", metavar="TARGET")
    disable_parser = commands.add_parser("disable", help="hold deliveries to TARGET until enabled")
    disable_parser.add_argument("name", metavar="TARGET")
    disable_parser.add_argument("--reason", default="disabled by msghub-spool", help="shown by stats and in the log")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already reported
        return e.code if isinstance(e.code, int) else 1
    out = sys.stdout
    path = args.db if args.db is not None else args.config
    config = None
    try:
        if args.db is None:
            config = _load(args.config)
            path = config.spool.path
        if args.command == "stats":
            return stats(path, out)
        if args.command in ("dump", "dead") and args.limit is not None and args.limit < 0:
            raise CliError("--limit must not be negative")
        if args.command == "dump":
            return dump(path, args.name, out, args.limit, args.body)
        if args.command == "purge":
            return purge(path, args.name, out, config)
        if args.command == "backup":
            return backup(path, args.dest, out)
        name = webhook_name(args.name, config)
        if args.command == "dead":
            return dead(path, name, out, args.limit, args.body)
        if args.command == "replay":
            try:
                message_id = None if args.id is None else parse_id(args.id)
            except ValueError:
                raise CliError(f"--id {args.id!r} is not a message id such as 1-000000002a") from None
            return replay(path, name, out, message_id)
        return set_disabled(path, name, out, None if args.command == "enable" else args.reason)
    except CliError as e:
        for line in str(e).splitlines():
            print(f"msghub-spool: {line}", file=sys.stderr)
        return 1
    except sqlite3.Error as e:
        print(f"msghub-spool: {path}: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # e.g. "dump NAME | head": stop quietly, and keep the interpreter's
        # final flush of stdout from failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
