"""msghub-spool: stats, dump and purge on a spool written by ``Spool``."""

from __future__ import annotations

import os
from typing import Any, Callable

import pytest
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from msghub import spoolcli
from msghub.message import Message, format_id
from msghub.spool import Spool

HEADERS = ((b"Content-Type", b"text/plain"),)


class InlineReactor(Clock):
    def callFromThread(self, f: Callable, *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)


class InlinePool:
    """Runs each commit at once, in the calling thread."""

    def callInThreadWithCallback(self, on_result: Callable, f: Callable, *args: Any) -> None:
        try:
            result = f(*args)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)


def fill(spool: Spool, clock: Clock, name: str, n: int, first_id: int) -> None:
    spool.append(name, [
        Message(first_id + i, b"POST", b"/orders/1", HEADERS, b"hello world", "orders-route", None, {}, 1700000000.25)
        for i in range(n)
    ])
    clock.advance(0)


@pytest.fixture
def clock() -> InlineReactor:
    return InlineReactor()


@pytest.fixture
def hub(tmp_path, clock):
    """A spool the way a running hub holds it: open, with committed messages."""
    spool = Spool(str(tmp_path / "spool.db"), clock, threadpool=InlinePool())
    spool.open()
    first = spool.reserve_ids(10)
    fill(spool, clock, "orders", 3, first)
    fill(spool, clock, "audit", 2, first + 3)
    yield spool
    spool.close()


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = spoolcli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_stats_prints_each_name_depth_and_the_total_while_the_hub_has_it_open(hub, capsys):
    code, out, err = run(capsys, "--db", hub.path, "stats")
    assert code == 0 and err == ""
    assert out.splitlines() == ["audit   2  (1 segments)", "orders  3  (1 segments)", "total   5"]


def test_dump_prints_id_route_request_and_body_length(hub, capsys):
    code, out, _ = run(capsys, "--db", hub.path, "dump", "orders", "--limit", "1")
    assert code == 0
    assert out.splitlines() == [
        f"{format_id(hub.first_id())} pos=1.0 route=orders-route received=2023-11-14T22:13:20.250000+00:00",
        "  POST /orders/1",
        "  Content-Type: text/plain",
        "  body: 11 bytes",
    ]


def test_dump_body_prints_bodies_and_pages_through_everything(hub, capsys, monkeypatch):
    monkeypatch.setattr(spoolcli, "PAGE", 2)
    code, out, _ = run(capsys, "--db", hub.path, "dump", "orders", "--body")
    assert code == 0
    assert out.count("  body: b'hello world'\n") == 3


def test_purge_deletes_only_that_name_and_prints_the_count(hub, capsys, monkeypatch):
    monkeypatch.setattr(spoolcli, "PURGE_CHUNK", 2)  # several transactions
    code, out, _ = run(capsys, "--db", hub.path, "purge", "orders")
    assert (code, out) == (0, "purged 3 messages from orders\n")
    assert [m.id for m in hub.read("orders")] == []
    found: list = []
    hub.read("audit").addBoth(found.append)
    assert sum(len(segment.messages) for segment in found[0]) == 2


def test_config_gives_the_spool_path(hub, capsys, tmp_path):
    conf = tmp_path / "hub.toml"
    conf.write_text(f'[spool]\npath = "{hub.path}"\n')
    code, out, _ = run(capsys, "-c", str(conf), "stats")
    assert code == 0 and out.endswith("total   5\n")


def test_config_errors_are_reported_without_traceback(capsys, tmp_path):
    conf = tmp_path / "hub.toml"
    conf.write_text("[spool]\npath = 3\n")
    code, out, err = run(capsys, "-c", str(conf), "stats")
    assert (code, out) == (1, "")
    assert err.startswith(f"msghub-spool: {conf}: spool.path") and err.count("\n") == 1


def test_missing_database_is_one_line_error_and_is_not_created(tmp_path, capsys):
    path = str(tmp_path / "nope.db")
    code, out, err = run(capsys, "--db", path, "stats")
    assert code == 1 and out == ""
    assert err.startswith(f"msghub-spool: cannot open spool {path}") and err.count("\n") == 1
    assert not os.path.exists(path)


def test_a_database_that_is_not_a_spool_is_refused(tmp_path, capsys):
    import sqlite3

    path = str(tmp_path / "other.db")
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.close()
    code, _, err = run(capsys, "--db", path, "dump", "q")
    assert (code, err) == (1, f"msghub-spool: {path} is not a msghub spool\n")


def test_usage_errors_exit_1_with_one_line(capsys):
    code, out, err = run(capsys, "--db", "x.db", "frobnicate")
    assert code == 1 and out == "" and err.count("\n") == 1


def test_purge_of_a_name_the_spool_does_not_hold_is_an_error_naming_the_known_ones(hub, capsys):
    code, out, err = run(capsys, "--db", hub.path, "purge", "order")
    assert (code, out) == (1, "")
    assert err == ("msghub-spool: no spool name 'order' in the spool (did you mean 'orders'? known: audit, orders)\n")
    assert [len(segment.messages) for segment in hub.read("orders").result] == [3]


def test_purge_knows_the_names_the_conf_writes_and_those_the_spool_still_holds(hub, capsys, tmp_path):
    conf = tmp_path / "hub.toml"
    conf.write_text(
        f'[spool]\npath = "{hub.path}"\n'
        '[webhooks.hooks]\nurl = "http://127.0.0.1:1/"\n'
        '[[routes]]\nmatch = "/held"\nspool = "held"\n'
        '[[routes]]\nmatch = "/hooked"\nwebhooks = ["hooks"]\n'
    )
    assert run(capsys, "-c", str(conf), "purge", "held")[:2] == (0, "purged 0 messages from held\n")
    # "orders" is in no route any more; its messages can still be purged.
    assert run(capsys, "-c", str(conf), "purge", "orders")[:2] == (0, "purged 3 messages from orders\n")
    code, _, err = run(capsys, "-c", str(conf), "purge", "nope")
    assert code == 1
    assert err == f"msghub-spool: no spool name 'nope' in {conf} or the spool (known: audit, held, webhook:hooks)\n"


def test_backup_copies_every_name_beside_the_open_spool_and_the_copy_is_a_spool(hub, clock, capsys, tmp_path):
    dest = tmp_path / "copy.db"
    code, out, err = run(capsys, "--db", hub.path, "backup", str(dest))
    assert (code, err) == (0, "")
    assert out == f"backed up {hub.path} to {dest} ({dest.stat().st_size} bytes)\n"
    fill(hub, clock, "orders", 1, hub.reserve_ids(1))  # the hub goes on committing
    _, copied, _ = run(capsys, "--db", str(dest), "stats")
    assert copied.splitlines() == ["audit   2  (1 segments)", "orders  3  (1 segments)", "total   5"]
    _, original, _ = run(capsys, "--db", hub.path, "stats")
    assert "total   6" in original


def test_backup_never_overwrites(hub, capsys, tmp_path):
    dest = tmp_path / "copy.db"
    dest.write_bytes(b"precious")
    code, out, err = run(capsys, "--db", hub.path, "backup", str(dest))
    assert (code, out, err) == (1, "", f"msghub-spool: {dest} exists; backup writes a new file only\n")
    assert dest.read_bytes() == b"precious"
