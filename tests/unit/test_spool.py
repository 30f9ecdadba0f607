"""The spool: group commit, failure, durability across reopen, reads and deletes.

Most tests drive the spool with ``task.Clock`` and a pool that runs commits
only when the test says so, so "in flight" is a state the test can hold.
Two tests use the real reactor and the real worker thread.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Any, Callable

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from msghub.compact.state import Request
from msghub.forward import ISink, SinkError
from msghub.message import SEQ_BITS, Message, format_id
from msghub.spool import (
    Spool,
    SpoolError,
    SpoolService,
    SpoolSink,
    decode_headers,
    encode_headers,
)

HEADERS = ((b"Content-Type", b"application/json"), (b"X-Trace", b"a: b"))


class Route:
    def __init__(self, name: str) -> None:
        self.name = name


class Decision:
    def __init__(self, route: str) -> None:
        self.route = Route(route)


class ThreadedClock(Clock):
    """A Clock whose callFromThread runs at once (the test is the only thread)."""

    def callFromThread(self, f: Callable, *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)


class ManualPool:
    """Stands in for the worker thread: runs queued calls when told to."""

    def __init__(self) -> None:
        self.pending: list[tuple] = []

    def callInThreadWithCallback(self, on_result: Callable, f: Callable, *args: Any) -> None:
        self.pending.append((on_result, f, args))

    def run(self) -> None:
        on_result, f, args = self.pending.pop(0)
        try:
            result = f(*args)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)


def messages(n: int, first_id: int = 1, route: str = "orders", body: bytes = b"{}") -> list[Message]:
    request = Request(b"POST", b"/orders", HEADERS, body)
    decision = Decision(route)
    return [Message(first_id + i, request, decision, 1700000000.5 + i) for i in range(n)]


@pytest.fixture
def clock() -> ThreadedClock:
    return ThreadedClock()


@pytest.fixture
def pool() -> ManualPool:
    return ManualPool()


@pytest.fixture
def spool(tmp_path, clock, pool):
    s = Spool(str(tmp_path / "var" / "spool.db"), clock, threadpool=pool)
    s.open()
    yield s
    if s._state != "closed":
        s.close()
        clock.advance(0)
        while pool.pending:
            pool.run()


def commit(clock: Clock, pool: ManualPool) -> None:
    clock.advance(0)
    while pool.pending:
        pool.run()


def results(ds: list[defer.Deferred]) -> list[Any]:
    out: list[Any] = []
    for d in ds:
        d.addBoth(out.append)
    return out


# -- group commit --


def test_appends_in_one_turn_are_one_transaction(spool, clock, pool):
    ds = [spool.append("q", messages(10, first_id=1 + 10 * i)) for i in range(50)]
    clock.advance(0)
    assert len(pool.pending) == 1
    pool.run()
    assert spool.commits == 1
    assert results(ds) == [None] * 50
    assert spool.depth("q") == 500


def test_append_fires_only_after_its_commit(spool, clock, pool):
    fired = results([spool.append("q", messages(3))])
    assert fired == []
    clock.advance(0)
    assert fired == []  # the commit is queued for the worker, not done
    pool.run()
    assert fired == [None]


def test_appends_during_a_commit_form_the_next_one(spool, clock, pool):
    first = results([spool.append("q", messages(2))])
    clock.advance(0)
    second = results([spool.append("q", messages(2, first_id=3))])
    clock.advance(0)
    assert len(pool.pending) == 1  # at most one commit in flight
    pool.run()
    assert (first, second) == ([None], [])
    assert len(pool.pending) == 1  # the next one starts as soon as the first is done
    pool.run()
    assert second == [None]
    assert spool.commits == 2


def test_empty_append_is_already_safe(spool, clock, pool):
    assert results([spool.append("q", [])]) == [None]
    clock.advance(0)
    assert pool.pending == []


def test_commit_runs_through_the_thread_pool_not_the_reactor(spool, clock, pool):
    spool.append("q", messages(1))
    clock.advance(0)
    assert spool.depth("q") == 0  # nothing was written on the reactor's turn
    assert spool.read("q") == []


# -- failure --


def test_failed_commit_fails_with_503_and_marks_unhealthy(spool, clock, pool):
    spool._conn.execute("PRAGMA query_only = ON")  # every write now fails inside SQLite
    out = results([spool.append("q", messages(2)), spool.append("q", messages(1, first_id=3))])
    commit(clock, pool)
    assert [f.check(SinkError) for f in out] == [SinkError, SinkError]
    assert {(f.value.status, f.value.reason) for f in out} == {(503, "spool write failed")}
    assert isinstance(out[0].value.__cause__, sqlite3.Error)
    assert spool.healthy is False
    assert spool.failures == 1
    assert spool.depth("q") == 0

    spool._conn.execute("PRAGMA query_only = OFF")
    again = results([spool.append("q", messages(1))])
    commit(clock, pool)
    assert again == [None]
    assert spool.healthy is True
    assert [m.id for m in spool.read("q")] == [1]  # the failed rows were rolled back


def test_failed_commit_fails_queued_deletes_too(spool, clock, pool):
    spool.append("q", messages(1))
    commit(clock, pool)
    spool._conn.execute("PRAGMA query_only = ON")
    out = results([spool.purge("q")])
    commit(clock, pool)
    assert out[0].check(SpoolError)
    assert spool.depth("q") == 1


def test_append_to_a_closed_spool_fails_with_503(spool, clock, pool):
    spool.close()
    out = results([spool.append("q", messages(1))])
    assert out[0].check(SinkError) and out[0].value.status == 503


# -- durability --


def test_reopen_keeps_messages_depth_and_bumps_boot(tmp_path, clock, pool):
    path = str(tmp_path / "spool.db")
    s = Spool(path, clock, threadpool=pool)
    s.open()
    boot = s.boot
    first = s.reserve_ids(2)
    assert first == s.first_id() == boot << SEQ_BITS
    s.append("q", messages(2, first_id=first, body=b"hello"))
    s.append("other", messages(1, first_id=first + 1, route="r2"))
    commit(clock, pool)
    s.close()
    assert s._conn is None

    again = Spool(path, clock, threadpool=pool, synchronous="normal")
    again.open()
    try:
        assert again.boot == boot + 1
        assert again.reserve_ids(1) > first + 1  # ids stay unique across restarts
        assert again.depths() == {"q": 2, "other": 1}
        stored = again.read("q")
        assert [m.id for m in stored] == [first, first + 1]
        m = stored[0]
        stored_fields = (m.route, m.method, m.target, m.headers, m.body)
        assert stored_fields == ("orders", b"POST", b"/orders", HEADERS, b"hello")
        assert m.received == 1700000000.5
        assert m.id_text == format_id(first)
    finally:
        again.close()


def test_close_waits_for_the_commit_in_flight(spool, clock, pool):
    appended = results([spool.append("q", messages(1))])
    clock.advance(0)
    closed = results([spool.close()])
    assert closed == []
    pool.run()
    assert appended == [None] and closed == [None]
    assert spool._conn is None


def test_close_commits_what_is_queued_including_appends_made_meanwhile(spool, clock, pool):
    first = results([spool.append("q", messages(1))])
    closed = results([spool.close()])
    late = results([spool.append("q", messages(1, first_id=2))])  # e.g. a connection still draining
    commit(clock, pool)
    assert (first, late, closed) == ([None], [None], [None])
    assert spool.commits == 1


def test_close_with_nothing_queued_closes_at_once(spool):
    assert results([spool.close()]) == [None]
    assert spool._conn is None and spool._reader is None


def test_close_still_completes_when_the_last_commit_fails(spool, clock, pool):
    spool._conn.execute("PRAGMA query_only = ON")
    appended = results([spool.append("q", messages(1))])
    closed = results([spool.close()])
    commit(clock, pool)
    assert appended[0].check(SinkError) and closed == [None]


def test_service_opens_on_start_and_closes_on_stop(tmp_path, clock, pool):
    s = Spool(str(tmp_path / "spool.db"), clock, threadpool=pool)
    service = SpoolService(s)
    service.startService()
    assert s.boot == 1 and service.running
    s.append("q", messages(1))
    stopped = results([service.stopService()])
    commit(clock, pool)
    assert stopped == [None] and s.depth("q") == 1
    assert not service.running


# -- ids --


def test_reserve_ids_hands_out_consecutive_blocks(spool):
    a = spool.reserve_ids(1000)
    b = spool.reserve_ids(5)
    assert a == spool.first_id() and b == a + 1000


def test_reserve_ids_moves_to_a_new_boot_before_the_sequence_runs_out(tmp_path, clock, pool):
    s = Spool(str(tmp_path / "spool.db"), clock, threadpool=pool)
    s._seq_space = 100
    s.open()
    first_boot = s.boot
    s.reserve_ids(60)  # past halfway: the next boot number is requested
    commit(clock, pool)
    s.reserve_ids(30)
    rolled = s.reserve_ids(20)  # would run past the space
    assert s.boot == first_boot + 1
    assert rolled == (first_boot + 1) << SEQ_BITS
    s.close()
    again = Spool(s.path, clock, threadpool=pool)
    again.open()
    assert again.boot == first_boot + 2
    again.close()


def test_reserve_ids_before_open_is_an_error(tmp_path, clock):
    with pytest.raises(SpoolError):
        Spool(str(tmp_path / "spool.db"), clock).reserve_ids(1)


# -- reads, deletes, purges --


def test_read_pages_by_seq_per_name(spool, clock, pool):
    spool.append("q", messages(5))
    spool.append("other", messages(2, first_id=100))
    commit(clock, pool)
    page = spool.read("q", limit=2)
    assert [m.id for m in page] == [1, 2]
    rest = spool.read("q", after_seq=page[-1].seq)
    assert [m.id for m in rest] == [3, 4, 5]


def test_delete_removes_rows_and_lowers_depth(spool, clock, pool):
    spool.append("q", messages(4))
    commit(clock, pool)
    seqs = [m.seq for m in spool.read("q", limit=3)]
    deleted = results([spool.delete("q", seqs + [10**9])])
    commit(clock, pool)
    assert deleted == [3]
    assert spool.depth("q") == 1
    assert [m.id for m in spool.read("q")] == [4]


def test_seqs_are_never_reused_after_deleting_the_newest(spool, clock, pool):
    spool.append("q", messages(2))
    commit(clock, pool)
    last = spool.read("q")[-1].seq
    spool.delete("q", [m.seq for m in spool.read("q")])
    spool.append("q", messages(1, first_id=3))
    commit(clock, pool)
    # A forwarder that got up to `last` must still see the new message.
    assert [m.id for m in spool.read("q", after_seq=last)] == [3]


def test_purge_applies_in_call_order_with_appends(spool, clock, pool):
    spool.append("q", messages(3))
    purged = results([spool.purge("q")])
    spool.append("q", messages(1, first_id=4))
    commit(clock, pool)
    assert purged == [3]
    assert spool.commits == 1
    assert spool.depths() == {"q": 1}


def test_refresh_depths_sees_rows_removed_behind_the_spools_back(spool, clock, pool, tmp_path):
    spool.append("q", messages(3))
    commit(clock, pool)
    other = sqlite3.connect(spool.path)
    with other:
        other.execute("DELETE FROM messages")
    other.close()
    assert spool.depth("q") == 3
    counted = results([spool.refresh_depths()])
    commit(clock, pool)
    assert counted == [{}] and spool.depths() == {}


def test_stats_reports_depths_and_health(spool, clock, pool):
    spool.append("a", messages(2))
    spool.append("b", messages(1))
    commit(clock, pool)
    stats = spool.stats()
    assert (stats.depths, stats.total, stats.healthy, stats.commits) == ({"a": 2, "b": 1}, 3, True, 1)


def test_route_is_empty_when_the_decision_has_no_named_route(spool, clock, pool):
    request = Request(b"PUT", b"/x", (), b"")
    spool.append("q", [Message(1, request, None, 0.0)])
    commit(clock, pool)
    [m] = spool.read("q")
    assert (m.route, m.method, m.headers) == ("", b"PUT", ())


def test_headers_are_stored_exactly_as_received(spool, clock, pool):
    # Two States equal in HTTP terms (name case, field order) keep their own spelling.
    a = Request(b"POST", b"/x", ((b"Content-Type", b"a"), (b"X-One", b"1")))
    b = Request(b"POST", b"/x", ((b"x-one", b"1"), (b"content-type", b"a")))
    assert a.state == b.state
    spool.append("q", [Message(1, a, None, 0.0), Message(2, b, None, 0.0)])
    commit(clock, pool)
    assert [m.headers for m in spool.read("q")] == [a.headers, b.headers]


def test_headers_round_trip():
    headers = ((b"A", b""), (b"B", b"x: y"), (b"C", b"\xff"))
    assert decode_headers(encode_headers(headers)) == headers


# -- construction errors --


def test_unknown_synchronous_mode_is_refused(clock):
    with pytest.raises(ValueError):
        Spool("x.db", clock, synchronous="off")


def test_open_failure_is_a_spool_error(tmp_path, clock):
    with pytest.raises(SpoolError, match="cannot open spool"):
        Spool(str(tmp_path), clock).open()  # a directory


# -- the sink --


def test_spool_sink_is_an_isink_that_appends_under_its_name(spool, clock, pool):
    sink = SpoolSink(spool, "orders")
    assert verifyObject(ISink, sink)
    out = results([sink.deliver(messages(2))])
    commit(clock, pool)
    assert out == [None] and spool.depth("orders") == 2


# -- the real worker thread --


@pytest_twisted.inlineCallbacks
def test_real_worker_thread_commits_off_the_reactor_thread(tmp_path):
    from twisted.internet import reactor

    s = Spool(str(tmp_path / "spool.db"), reactor)
    s.open()
    threads = set()
    real_commit = s._commit

    def commit_here(ops):
        threads.add(threading.get_ident())
        return real_commit(ops)

    s._commit = commit_here
    try:
        ds = [s.append("q", messages(100, first_id=1 + 100 * i)) for i in range(20)]
        yield defer.gatherResults(ds)
        assert s.commits == 1
        assert threads and threading.get_ident() not in threads
        ds = [s.append("q", messages(1, first_id=5000 + i)) for i in range(3)]
        closing = s.close()  # waits for those
        yield defer.gatherResults(ds + [closing])
        assert s.depth("q") == 2003 and not s._pool.started
    finally:
        if s._state != "closed":
            yield s.close()


@pytest_twisted.inlineCallbacks
def test_reactor_keeps_turning_and_queues_the_next_commit_while_one_is_in_flight(tmp_path):
    from twisted.internet import reactor

    s = Spool(str(tmp_path / "spool.db"), reactor)
    s.open()
    gate = threading.Event()
    real_commit = s._commit

    def slow_commit(ops):
        gate.wait(5)  # a slow fsync
        return real_commit(ops)

    s._commit = slow_commit
    try:
        first = s.append("q", messages(1))
        yield task.deferLater(reactor, 0.01, lambda: None)
        assert s.stats().committing and not first.called
        second = s.append("q", messages(1, first_id=2))
        yield task.deferLater(reactor, 0.01, lambda: None)
        assert s.stats().queued == 1 and not second.called
        gate.set()
        yield defer.gatherResults([first, second])
        assert s.commits == 2 and s.depth("q") == 2
    finally:
        gate.set()
        yield s.close()
