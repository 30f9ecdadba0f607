"""What webhooks keep in the spool database: dead letters, disabled targets, and msghub-spool's view of them."""

from __future__ import annotations

import sqlite3
from typing import Any, Callable

import pytest
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from msghub import spoolcli
from msghub.message import Message, format_id
from msghub.spool import Spool

NAME = "webhook:orders"
HEADERS = ((b"Content-Type", b"application/json"),)


class InlineReactor(Clock):
    def callFromThread(self, f: Callable, *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)


class InlinePool:
    def callInThreadWithCallback(self, on_result: Callable, f: Callable, *args: Any) -> None:
        try:
            result = f(*args)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)


@pytest.fixture
def clock() -> InlineReactor:
    c = InlineReactor()
    c.advance(1_700_000_000)
    return c


@pytest.fixture
def spool(tmp_path, clock):
    s = Spool(str(tmp_path / "spool.db"), clock, threadpool=InlinePool())
    s.open()
    yield s
    s.close()
    clock.advance(0)


def add(spool: Spool, clock: Clock, bodies: list[bytes], names=(NAME,)) -> list[Message]:
    first = spool.reserve_ids(len(bodies))
    messages = [
        Message(first + i, b"POST", b"/orders/new", HEADERS, body, "orders-route", None, {}, clock.seconds(), i + 1)
        for i, body in enumerate(bodies)
    ]
    spool.append_each(names, messages)
    clock.advance(0)
    return messages


def rows(spool: Spool, name: str = NAME) -> list[tuple[tuple[int, int], Message]]:
    """``(position, message)`` of every undelivered message (the inline pool makes reads synchronous)."""
    out: list = []
    spool.read(name).addBoth(out.append)
    return [((seg.seq, i), m) for seg in out[0] for i, m in seg.pending()]


def bodies(spool: Spool, name: str = NAME) -> list[bytes]:
    return [m.body for _, m in rows(spool, name)]


def disabled(spool: Spool) -> dict[str, str]:
    out: list = []
    spool.poll().addBoth(out.append)
    return out[0][0]


def changes(spool: Spool) -> int:
    out: list = []
    spool.poll().addBoth(out.append)
    return out[0][1]


def kill(spool: Spool, clock: Clock, found, error: str = "HTTP 400 Bad Request") -> list:
    out: list = []
    spool.dead(NAME, [(position, m, error) for position, m in found], clock.seconds()).addBoth(out.append)
    clock.advance(0)
    return out


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = spoolcli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- the spool ----------------------------------------------------------------------------


def test_append_each_writes_every_name_in_one_commit_with_one_deferred(spool, clock):
    commits = spool.commits
    out: list = []
    first = spool.reserve_ids(2)
    messages = [Message(first + i, b"POST", b"/o", HEADERS, b"x", "r", None, {}, 0.0, i + 1) for i in range(2)]
    spool.append_each(("webhook:a", "webhook:b"), messages).addBoth(out.append)
    clock.advance(0)
    assert out == [None] and spool.commits == commits + 1
    assert spool.depths() == {"webhook:a": 2, "webhook:b": 2}


def test_dead_moves_rows_with_their_error_and_updates_the_depth(spool, clock):
    add(spool, clock, [b"a", b"b"])
    found = rows(spool)
    assert kill(spool, clock, found[:1]) == [1]
    assert bodies(spool) == [b"b"]
    assert spool.depth(NAME) == 1
    dead = spool._reader.execute("SELECT id, name, body, error, died FROM dead").fetchall()
    assert dead == [(found[0][1].id, NAME, b"a", "HTTP 400 Bad Request", clock.seconds())]


def test_disabled_names_are_kept_until_enabled(spool, clock):
    spool.set_disabled(NAME, "HTTP 410 Gone", clock.seconds())
    clock.advance(0)
    assert disabled(spool) == {NAME: "HTTP 410 Gone"}
    spool.set_disabled(NAME, None)
    clock.advance(0)
    assert disabled(spool) == {}


def test_a_spool_written_before_webhooks_opens_keeps_its_rows_and_gains_the_new_tables(tmp_path, clock):
    path = str(tmp_path / "old.db")
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);"
        "INSERT INTO meta VALUES ('schema', 1), ('boot', 7);"
        "CREATE TABLE messages (seq INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, id INTEGER NOT NULL,"
        " route TEXT NOT NULL, method BLOB NOT NULL, target BLOB NOT NULL, headers BLOB NOT NULL,"
        " body BLOB NOT NULL, received REAL NOT NULL);"
        "CREATE INDEX messages_name ON messages (name);"
        "INSERT INTO messages (name, id, route, method, target, headers, body, received)"
        " VALUES ('held', 5, 'r', CAST('POST' AS BLOB), CAST('/x' AS BLOB), CAST('' AS BLOB),"
        " CAST('old body' AS BLOB), 1.0);"
    )
    conn.commit()
    conn.close()
    spool = Spool(path, clock, threadpool=InlinePool())
    spool.open()
    try:
        assert spool.boot == 8
        assert bodies(spool, "held") == [b"old body"]
        assert disabled(spool) == {} and changes(spool) == 0
    finally:
        spool.close()
        clock.advance(0)


# -- msghub-spool ------------------------------------------------------------------------------


def test_dead_lists_each_dead_letter_with_its_error(spool, clock, capsys):
    [message] = add(spool, clock, [b'{"a": 1}'])
    kill(spool, clock, rows(spool), "gave up after 5 attempts; last: HTTP 503 Service Unavailable")
    code, out, _ = run(capsys, "--db", spool.path, "dead", "orders", "--body")
    assert code == 0
    assert out.splitlines() == [
        f"{format_id(message.id)} dead=1 route=orders-route received=2023-11-14T22:13:20.000000+00:00"
        " died=2023-11-14T22:13:20.000000+00:00",
        "  error: gave up after 5 attempts; last: HTTP 503 Service Unavailable",
        "  POST /orders/new",
        "  Content-Type: application/json",
        "  body: b'{\"a\": 1}'",
    ]


def test_dead_limit_and_other_names_are_kept_apart(spool, clock, capsys):
    add(spool, clock, [b"1", b"2", b"3"])
    kill(spool, clock, rows(spool))
    code, out, _ = run(capsys, "--db", spool.path, "dead", "orders", "--limit", "2")
    assert code == 0 and len([line for line in out.splitlines() if " dead=" in line]) == 2
    assert run(capsys, "--db", spool.path, "dead", "billing")[:2] == (0, "")


def test_replay_puts_every_dead_letter_back_at_the_end_in_acceptance_order(spool, clock, capsys):
    add(spool, clock, [b"1", b"2"])
    kill(spool, clock, rows(spool))
    add(spool, clock, [b"3"])
    before = changes(spool)
    code, out, _ = run(capsys, "--db", spool.path, "replay", "orders")
    assert (code, out) == (0, "replayed 2 messages to webhook:orders\n")
    found = rows(spool)
    assert [m.body for _, m in found] == [b"3", b"1", b"2"]
    assert found[1][0] > found[0][0]  # a new segment: behind everything queued
    assert spool._reader.execute("SELECT COUNT(*) FROM dead").fetchone() == (0,)
    assert changes(spool) == before + 1


def test_replay_id_moves_just_that_message_and_an_unknown_id_is_an_error(spool, clock, capsys):
    messages = add(spool, clock, [b"1", b"2"])
    kill(spool, clock, rows(spool))
    code, out, _ = run(capsys, "--db", spool.path, "replay", "orders", "--id", format_id(messages[1].id))
    assert (code, out) == (0, "replayed 1 messages to webhook:orders\n")
    assert bodies(spool) == [b"2"]
    code, _, err = run(capsys, "--db", spool.path, "replay", "orders", "--id", format_id(messages[1].id))
    assert (code, err) == (1, f"msghub-spool: no dead letter {format_id(messages[1].id)} in webhook:orders\n")
    code, _, err = run(capsys, "--db", spool.path, "replay", "orders", "--id", "nope")
    assert (code, err) == (1, "msghub-spool: --id 'nope' is not a message id such as 1-000000002a\n")


def test_enable_and_disable_report_what_they_did(spool, capsys):
    assert run(capsys, "--db", spool.path, "enable", "orders")[:2] == (0, "webhook:orders was not disabled\n")
    assert run(capsys, "--db", spool.path, "disable", "orders")[:2] == (0, "disabled webhook:orders\n")
    assert disabled(spool) == {NAME: "disabled by msghub-spool"}
    assert run(capsys, "--db", spool.path, "enable", "orders")[:2] == (0, "enabled webhook:orders\n")
    assert disabled(spool) == {}


def test_stats_shows_dead_letters_and_disabled_targets(spool, clock, capsys):
    add(spool, clock, [b"1", b"2"])
    kill(spool, clock, rows(spool)[:1])
    spool.set_disabled(NAME, "HTTP 410 Gone", clock.seconds())
    clock.advance(0)
    code, out, _ = run(capsys, "--db", spool.path, "stats")
    assert code == 0
    assert out.splitlines() == [
        "webhook:orders  1  (1 segments)",
        "total           1",
        "dead letters of webhook:orders: 1",
        "disabled: webhook:orders (HTTP 410 Gone)",
    ]


def test_with_a_config_target_names_are_checked(spool, tmp_path, capsys):
    conf = tmp_path / "hub.toml"
    conf.write_text(f'[spool]\npath = "{spool.path}"\n[webhooks.orders]\nurl = "http://127.0.0.1:9/"\n')
    assert run(capsys, "-c", str(conf), "enable", "orders")[0] == 0
    code, _, err = run(capsys, "-c", str(conf), "dead", "billing")
    assert (code, err) == (1, f"msghub-spool: no webhook target 'billing' in {conf} (defined: orders)\n")


def test_a_spool_from_before_webhooks_works_with_the_new_commands(tmp_path, capsys):
    path = str(tmp_path / "old.db")
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);"
        "CREATE TABLE messages (seq INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, id INTEGER NOT NULL,"
        " route TEXT NOT NULL, method BLOB NOT NULL, target BLOB NOT NULL, headers BLOB NOT NULL,"
        " body BLOB NOT NULL, received REAL NOT NULL);"
    )
    conn.close()
    assert run(capsys, "--db", path, "dead", "orders")[:2] == (0, "")
    assert run(capsys, "--db", path, "replay", "orders")[:2] == (0, "replayed 0 messages to webhook:orders\n")
    assert run(capsys, "--db", path, "stats")[:2] == (0, "total  0\n")
