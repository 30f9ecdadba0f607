"""``msghub-spool``: look into, or empty, the spool of a hub (running or not).

    msghub-spool -c CONF stats
    msghub-spool -c CONF dump NAME [--limit N] [--body]
    msghub-spool -c CONF purge NAME

The database is opened directly; thanks to WAL this works beside a running
hub.  A relative ``spool.path`` is taken from the current directory, as the
hub takes it from its ``--rundir``.  A hub that is running keeps its own
depth counts: after ``purge`` they stay too high until ``Spool.refresh_depths``
or a restart.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from datetime import datetime, timezone
from typing import NoReturn, Sequence, TextIO

from msghub.spool import connect, count_by_name, read_messages

# Rows read per query by dump, and deleted per transaction by purge: a purge
# of millions of rows must not hold the write lock for longer than the hub's
# busy timeout, or the hub's commits would fail meanwhile.
PAGE = 1000
PURGE_CHUNK = 10_000


class CliError(Exception):
    """Reported as one line on stderr, exit status 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(1, f"{self.prog}: {message} (see --help)\n")


def _open(path: str) -> sqlite3.Connection:
    try:
        conn = connect(path)
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as e:
        raise CliError(f"cannot open spool {path}: {e}") from e
    if not {"meta", "messages"} <= tables:
        conn.close()
        raise CliError(f"{path} is not a msghub spool")
    return conn


def _text(value: bytes) -> str:
    return value.decode("ascii", "backslashreplace")


def stats(path: str, out: TextIO) -> int:
    conn = _open(path)
    try:
        depths = count_by_name(conn)
    finally:
        conn.close()
    width = max([len(name) for name in depths] + [len("total")])
    for name in sorted(depths):
        out.write(f"{name:<{width}}  {depths[name]}\n")
    out.write(f"{'total':<{width}}  {sum(depths.values())}\n")
    return 0


def dump(path: str, name: str, out: TextIO, limit: int | None = None, body: bool = False) -> int:
    conn = _open(path)
    try:
        after, left = 0, limit
        while left is None or left > 0:
            page = read_messages(conn, name, PAGE if left is None else min(PAGE, left), after)
            if not page:
                break
            for m in page:
                when = datetime.fromtimestamp(m.received, timezone.utc).isoformat(timespec="microseconds")
                out.write(f"{m.id_text} seq={m.seq} route={m.route or '-'} received={when}\n")
                out.write(f"  {_text(m.method)} {_text(m.target)}\n")
                for field, value in m.headers:
                    out.write(f"  {_text(field)}: {_text(value)}\n")
                out.write(f"  body: {m.body!r}\n" if body else f"  body: {len(m.body)} bytes\n")
            after = page[-1].seq
            if left is not None:
                left -= len(page)
    finally:
        conn.close()
    return 0


def purge(path: str, name: str, out: TextIO) -> int:
    conn = _open(path)
    try:
        # Only what exists now: a running hub may keep appending to NAME.
        last = conn.execute("SELECT MAX(seq) FROM messages WHERE name = ?", (name,)).fetchone()[0]
        deleted = 0
        while last is not None:
            conn.execute("BEGIN IMMEDIATE")
            n = conn.execute(
                "DELETE FROM messages WHERE seq IN"
                " (SELECT seq FROM messages WHERE name = ? AND seq <= ? ORDER BY seq LIMIT ?)",
                (name, last, PURGE_CHUNK),
            ).rowcount
            conn.execute("COMMIT")
            deleted += n
            if n < PURGE_CHUNK:
                break
    finally:
        conn.close()
    out.write(f"purged {deleted} messages from {name}\n")
    return 0


def spool_path(config_path: str) -> str:
    from msghub.config import ConfigError, load

    try:
        return load(config_path).spool.path
    except ConfigError as e:
        raise CliError("\n".join(e.errors)) from e


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already reported
        return e.code if isinstance(e.code, int) else 1
    out = sys.stdout
    path = args.db if args.db is not None else args.config
    try:
        if args.db is None:
            path = spool_path(args.config)
        if args.command == "stats":
            return stats(path, out)
        if args.command == "dump":
            if args.limit is not None and args.limit < 0:
                raise CliError("--limit must not be negative")
            return dump(path, args.name, out, args.limit, args.body)
        return purge(path, args.name, out)
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
