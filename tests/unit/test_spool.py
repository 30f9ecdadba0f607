"""The spool: group commit into segments, failure, durability across reopen, reads and marks.

Most tests drive the spool with ``task.Clock`` and a pool that runs commits
(and reads) only when the test says so, so "in flight" is a state the test
can hold.  A few tests use the real reactor and the real worker threads.
"""

from __future__ import annotations

import shutil
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from msghub.message import SEQ_BITS, Message, format_id
from msghub.sink import ISink, SinkError
from msghub.spool import Segment, Spool, SpoolError, SpoolService, SpoolSink, decode_headers, encode_headers
from msghub.spool import schema

HEADERS = ((b"Content-Type", b"application/json"), (b"X-Trace", b"a: b"))
FIXTURE = Path(__file__).parent.parent / "fixtures" / "spool_v1.db"


class ThreadedClock(Clock):
    """A Clock whose callFromThread runs at once (the test is the only thread)."""

    def callFromThread(self, f: Callable, *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)


class ManualPool:
    """Stands in for the worker threads: runs queued calls when told to."""

    def __init__(self) -> None:
        self.pending: list[tuple] = []

    def callInThreadWithCallback(self, on_result: Callable, f: Callable, *args: Any, **kw: Any) -> None:
        self.pending.append((on_result, f, args, kw))

    def run(self) -> None:
        on_result, f, args, kw = self.pending.pop(0)
        try:
            result = f(*args, **kw)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)


def messages(n: int, first_id: int = 1, route: str = "orders", body: bytes = b"{}", user: str | None = None,
             captures: dict | None = None) -> list[Message]:
    captures = captures or {}
    return [
        Message(first_id + i, b"POST", b"/orders", HEADERS, body, route, user, captures, 1700000000.5 + i, i + 1)
        for i in range(n)
    ]


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


def read(spool: Spool, pool: ManualPool, name: str, **kw: Any) -> list[Segment]:
    out = results([spool.read(name, **kw)])
    while pool.pending:
        pool.run()
    [segments] = out
    assert isinstance(segments, list), segments
    return segments


def pending(spool: Spool, pool: ManualPool, name: str, **kw: Any) -> list[tuple[tuple[int, int], Message]]:
    return [((s.seq, i), m) for s in read(spool, pool, name, **kw) for i, m in s.pending()]


def ids(spool: Spool, pool: ManualPool, name: str) -> list[int]:
    return [m.id for _, m in pending(spool, pool, name)]


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
    read_now = results([spool.read("q")])
    assert read_now == []  # reads too go through the pool


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
    assert ids(spool, pool, "q") == [1]  # the failed rows were rolled back


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
        stored = [m for _, m in pending(again, pool, "q")]
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
    s.open()
    s._ids._seq_space = 100
    s._ids._start(s.boot)
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


# -- segments, reads, marks, purges --


def test_one_commit_writes_one_segment_per_name(spool, clock, pool):
    for i in range(5):
        spool.append("q", messages(10, first_id=1 + 10 * i))
    spool.append("other", messages(2, first_id=100))
    commit(clock, pool)
    rows = spool._conn.execute("SELECT name, count FROM segments ORDER BY seq").fetchall()
    assert rows == [("q", 50), ("other", 2)]
    assert ids(spool, pool, "q") == list(range(1, 51))


def test_a_large_group_is_split_into_bounded_segments(spool, clock, pool):
    spool.append("q", messages(schema.SEGMENT_MAX_COUNT + 10))
    big = b"x" * (schema.SEGMENT_MAX_BYTES // 2 + 1)
    spool.append("big", messages(3, first_id=10**6, body=big))
    commit(clock, pool)
    counts = spool._conn.execute("SELECT name, count FROM segments ORDER BY seq").fetchall()
    assert counts == [("q", schema.SEGMENT_MAX_COUNT), ("q", 10), ("big", 1), ("big", 1), ("big", 1)]


def test_read_pages_by_segment_per_name(spool, clock, pool):
    for i in range(3):
        spool.append("q", messages(2, first_id=1 + 2 * i))
        commit(clock, pool)
    spool.append("other", messages(2, first_id=100))
    commit(clock, pool)
    page = read(spool, pool, "q", limit=2)
    assert [[m.id for m in s.messages] for s in page] == [[1, 2]]
    rest = read(spool, pool, "q", after_seq=page[-1].seq)
    assert [m.id for s in rest for m in s.messages] == [3, 4, 5, 6]


def test_read_is_bounded_by_bytes_but_returns_at_least_one_segment(spool, clock, pool):
    for i in range(4):
        spool.append("q", messages(1, first_id=1 + i, body=b"x" * 1000))
        commit(clock, pool)
    assert len(read(spool, pool, "q", max_bytes=2500)) == 2  # stays within the bound
    assert len(read(spool, pool, "q", max_bytes=1)) == 1


def test_done_marks_progress_inside_a_segment_and_deletes_it_when_all_are_done(spool, clock, pool):
    spool.append("q", messages(4))
    commit(clock, pool)
    [(seq, _)] = spool._conn.execute("SELECT seq, count FROM segments").fetchall()
    marked = results([spool.done("q", [(seq, 0), (seq, 2), (seq, 2), (10**9, 0)])])
    commit(clock, pool)
    assert marked == [2] and spool.depth("q") == 2
    [segment] = read(spool, pool, "q")
    assert [i for i, _ in segment.pending()] == [1, 3]
    results([spool.done("q", [(seq, 1), (seq, 3)])])
    commit(clock, pool)
    assert spool._conn.execute("SELECT COUNT(*) FROM segments").fetchone() == (0,)
    assert spool.depths() == {}


def test_progress_survives_a_reopen(tmp_path, clock, pool):
    path = str(tmp_path / "spool.db")
    s = Spool(path, clock, threadpool=pool)
    s.open()
    s.append("q", messages(3))
    commit(clock, pool)
    [segment] = read(s, pool, "q")
    s.done("q", [(segment.seq, 0)])
    s.set_retries("q", [((segment.seq, 1), 3, 1700000999.0)])
    s.close()
    commit(clock, pool)
    again = Spool(path, clock, threadpool=pool)
    again.open()
    try:
        assert again.depths() == {"q": 2}
        [segment] = read(again, pool, "q")
        assert [m.id for _, m in segment.pending()] == [2, 3]
        assert segment.retries == {1: (3, 1700000999.0)}
    finally:
        again.close()
        commit(clock, pool)


def test_segment_seqs_are_never_reused_after_deleting_the_newest(spool, clock, pool):
    spool.append("q", messages(2))
    commit(clock, pool)
    [segment] = read(spool, pool, "q")
    spool.done("q", [(segment.seq, 0), (segment.seq, 1)])
    spool.append("q", messages(1, first_id=3))
    commit(clock, pool)
    # A forwarder that got up to this segment must still see the new message.
    assert [m.id for s in read(spool, pool, "q", after_seq=segment.seq) for m in s.messages] == [3]


def test_dead_moves_messages_with_user_and_captures_and_marks_them_done(spool, clock, pool):
    spool.append("q", messages(2, user="feed", captures={"symbol": "A"}))
    commit(clock, pool)
    [(position, first), _] = pending(spool, pool, "q")
    moved = results([spool.dead("q", [(position, first, "HTTP 400 Bad Request")], 1700000100.0)])
    commit(clock, pool)
    assert moved == [1] and spool.depth("q") == 1
    row = spool._conn.execute("SELECT id, user, captures, error FROM dead").fetchone()
    assert row == (first.id, "feed", '{"symbol":"A"}', "HTTP 400 Bad Request")


def test_purge_applies_in_call_order_with_appends(spool, clock, pool):
    spool.append("q", messages(3))
    purged = results([spool.purge("q")])
    spool.append("q", messages(1, first_id=4))
    commit(clock, pool)
    assert purged == [3]  # queued before the purge, in the same commit
    assert spool.commits == 1
    assert spool.depths() == {"q": 1}


def test_purge_removes_committed_messages(spool, clock, pool):
    spool.append("q", messages(3))
    commit(clock, pool)
    purged = results([spool.purge("q")])
    commit(clock, pool)
    assert purged == [3] and spool.depths() == {}


def test_refresh_depths_sees_rows_removed_behind_the_spools_back(spool, clock, pool, tmp_path):
    spool.append("q", messages(3))
    commit(clock, pool)
    other = sqlite3.connect(spool.path)
    with other:
        other.execute("DELETE FROM segments")
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


def test_headers_are_stored_exactly_as_received_without_credentials(spool, clock, pool):
    a = ((b"Content-Type", b"a"), (b"X-One", b"1"), (b"Authorization", b"Bearer secret"))
    b = ((b"x-one", b"1"), (b"content-type", b"a"))
    one = Message(1, b"POST", b"/x", a, b"", "r", None, {}, 0.0)
    two = Message(2, b"PUT", b"/y", b, b"", "r", None, {}, 0.0)
    spool.append("q", [one, two])
    commit(clock, pool)
    assert [m.headers for _, m in pending(spool, pool, "q")] == [a[:2], b]


def test_user_and_captures_survive_the_spool(spool, clock, pool):
    sent = messages(2, user="feed", captures={"symbol": "IBM", "venue": "x/y"}) + messages(1, first_id=9)
    spool.append("q", sent)
    commit(clock, pool)
    back = [m for _, m in pending(spool, pool, "q")]
    assert [m._replace(number=0) for m in sent] == back


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


# -- migration from one row per message --


def test_a_v1_spool_is_migrated_on_open_and_drains_in_order(tmp_path, clock, pool):
    path = tmp_path / "spool.db"
    shutil.copy(FIXTURE, path)
    s = Spool(str(path), clock, threadpool=pool)
    s.open()
    try:
        assert s.depths() == {"quotes": 5, "amqp:orders": 3, "webhook:hooks": 3, "webhook:off": 1}
        assert [m.body for _, m in pending(s, pool, "quotes")] == [b"q0", b"q1", b"q2", b"q3", b"q4"]
        hooks = [m for _, m in pending(s, pool, "webhook:hooks")]
        assert [m.body for m in hooks] == [b"w0", b"w2", b"w3"]
        assert hooks[0].headers == ((b"Content-Type", b"text/plain"), (b"X-Trace", b"t-1"))
        assert (hooks[0].route, hooks[0].target, hooks[0].user) == ("hooks", b"/hooks/0", None)
        meta = dict(s._conn.execute("SELECT key, value FROM meta").fetchall())
        assert meta["schema_version"] == schema.SCHEMA_VERSION and "schema" not in meta and meta["boot"] == 2
        assert "messages" not in schema.tables(s._conn)
        assert s._conn.execute("SELECT body, user FROM dead").fetchall() == [(b"w1", None)]
        assert s.first_id() == 2 << SEQ_BITS  # ids go on from the old boot counter
    finally:
        s.close()
        commit(clock, pool)


# The v2 layout (segments with their done bitmap inside the row), as that release created it.
_V2_TABLES = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "CREATE TABLE segments (seq INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, count INTEGER NOT NULL,"
    " bytes INTEGER NOT NULL, done BLOB, data BLOB NOT NULL)",
    "CREATE INDEX segments_name ON segments (name, seq)",
    "CREATE TABLE retries (name TEXT NOT NULL, seq INTEGER NOT NULL, idx INTEGER NOT NULL,"
    " attempts INTEGER NOT NULL, next_at REAL NOT NULL, PRIMARY KEY (name, seq, idx)) WITHOUT ROWID",
    "CREATE TABLE dead (seq INTEGER PRIMARY KEY, name TEXT NOT NULL, id INTEGER NOT NULL, route TEXT NOT NULL,"
    " method BLOB NOT NULL, target BLOB NOT NULL, headers BLOB NOT NULL, body BLOB NOT NULL, received REAL NOT NULL,"
    " died REAL NOT NULL, error TEXT NOT NULL, user TEXT, captures TEXT)",
    "CREATE TABLE disabled (name TEXT PRIMARY KEY, reason TEXT NOT NULL, since REAL NOT NULL)",
)


def test_a_v2_spool_keeps_its_progress_marks_after_the_upgrade(tmp_path, clock, pool):
    path = str(tmp_path / "spool.db")
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in _V2_TABLES:
        conn.execute(statement)
    conn.executemany("INSERT INTO meta VALUES (?, ?)", [("schema_version", 2), ("boot", 3)])
    first, second = messages(4), messages(2, first_id=5)
    conn.execute("INSERT INTO segments (name, count, bytes, done, data) VALUES ('q', 4, 8, ?, ?)",
                 (bytes([0b0101]), schema.encode_segment(first)))
    conn.execute("INSERT INTO segments (name, count, bytes, done, data) VALUES ('q', 2, 4, NULL, ?)",
                 (schema.encode_segment(second),))
    conn.close()
    s = Spool(path, clock, threadpool=pool)
    s.open()
    try:
        assert s.depths() == {"q": 4}
        left = pending(s, pool, "q")
        assert [m.id for _, m in left] == [2, 4, 5, 6]  # 1 and 3 were delivered before the upgrade
        assert s._conn.execute("SELECT seq, done FROM marks").fetchall() == [(left[0][0][0], bytes([0b0101]))]
        results([s.done("q", [p for p, _ in left[:2]])])
        commit(clock, pool)
        assert [m.id for _, m in pending(s, pool, "q")] == [5, 6]
        assert s._conn.execute("SELECT COUNT(*) FROM marks").fetchone() == (0,)  # deleted with its segment
        meta = dict(s._conn.execute("SELECT key, value FROM meta").fetchall())
        assert meta["schema_version"] == schema.SCHEMA_VERSION
    finally:
        s.close()
        commit(clock, pool)


def test_marks_queued_beside_appends_commit_right_after_them(spool, clock, pool):
    results([spool.append("q", messages(2))])
    commit(clock, pool)
    (first, _), _ = pending(spool, pool, "q")
    marked = results([spool.done("q", [first])])
    acked = results([spool.append("q", messages(1, first_id=10))])
    clock.advance(0)
    assert len(pool.pending) == 1
    pool.run()  # the appends alone: the producer's ack does not wait for the marks
    clock.advance(0)
    assert acked == [None] and marked == []
    assert len(pool.pending) == 1
    pool.run()  # then the marks, before anything queued meanwhile
    clock.advance(0)
    assert marked == [1]
    assert [m.id for _, m in pending(spool, pool, "q")] == [2, 10]


def test_marks_live_apart_from_the_segment_data(spool, clock, pool):
    results([spool.append("q", messages(3))])
    commit(clock, pool)
    (position, _), *_ = pending(spool, pool, "q")
    results([spool.done("q", [position])])
    commit(clock, pool)
    assert spool._conn.execute("SELECT seq, done FROM marks").fetchall() == [(position[0], b"\x01")]
    assert [m.id for _, m in pending(spool, pool, "q")] == [2, 3]


def test_a_spool_from_a_newer_msghub_is_refused(tmp_path, clock):
    path = str(tmp_path / "spool.db")
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    conn.execute("INSERT INTO meta VALUES ('schema_version', 99)")
    conn.commit()
    conn.close()
    with pytest.raises(SpoolError, match="schema 99"):
        Spool(path, clock).open()


# -- a full disk --


def _fill(spool: Spool, clock: Clock, pool: ManualPool, body: bytes) -> list:
    out: list = []
    for i in range(200):
        spool.append("q", messages(1, first_id=1 + i, body=body)).addBoth(out.append)
        commit(clock, pool)
        if isinstance(out[-1], Failure):
            break
    return out


def test_a_full_spool_refuses_with_503_logs_once_and_accepts_again_once_space_is_free(tmp_path, clock, pool):
    logged: list[dict] = []
    globalLogPublisher.addObserver(logged.append)
    s = Spool(str(tmp_path / "spool.db"), clock, threadpool=pool, max_bytes=256 * 1024)
    s.open()
    try:
        out = _fill(s, clock, pool, b"x" * 20_000)
        assert out[-1].check(SinkError) and (out[-1].value.status, out[-1].value.reason) == (503, "spool full")
        accepted = s.depth("q")
        assert accepted == len(out) - 1 > 0
        more = [results([s.append("q", messages(1, body=b"y" * 20_000))]) for _ in range(5)]
        commit(clock, pool)
        assert all(r[0].check(SinkError) for r in more) and not s.healthy
        errors = [e for e in logged if e.get("log_level") is not None and e["log_level"].name == "error"]
        assert len(errors) == 1  # one line per change of health, not per failed commit
        segments = read(s, pool, "q")
        s.done("q", [(seg.seq, 0) for seg in segments[:5]])  # deliveries free space
        commit(clock, pool)
        again = results([s.append("q", messages(1, first_id=10**6, body=b"z" * 20_000))])
        commit(clock, pool)
        assert again == [None] and s.healthy
        assert s.depth("q") == accepted - 5 + 1  # nothing acknowledged was lost
    finally:
        globalLogPublisher.removeObserver(logged.append)
        s.close()
        commit(clock, pool)


def test_a_spool_opens_on_a_full_disk_and_saves_its_boot_with_the_first_commit(tmp_path, clock, pool, monkeypatch):
    path = str(tmp_path / "spool.db")
    s = Spool(path, clock, threadpool=pool, max_bytes=128 * 1024)
    s.open()
    _fill(s, clock, pool, b"x" * 20_000)
    held, boot = s.depth("q"), s.boot
    s.close()
    commit(clock, pool)

    def no_room(self, conn):  # a real full disk fails the WAL write; tests/integration has that case
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Spool, "_bump_boot", no_room)
    full = Spool(path, clock, threadpool=pool)
    full.open()  # does not raise: the hub can start and drain
    monkeypatch.undo()
    try:
        assert full.depth("q") == held and full.boot == boot + 1 and not full.healthy
        [first, *_] = read(full, pool, "q")
        full.done("q", [(first.seq, 0)])
        commit(clock, pool)
        assert full.healthy
        saved = full._conn.execute("SELECT value FROM meta WHERE key = 'boot'").fetchone()[0]
        assert saved == boot + 1  # the next start takes a fresh boot: ids stay unique
    finally:
        full.close()
        commit(clock, pool)


def test_queued_bytes_are_bounded(tmp_path, clock, pool):
    s = Spool(str(tmp_path / "spool.db"), clock, threadpool=pool, max_queue_bytes=1000)
    s.open()
    try:
        first = results([s.append("q", messages(1, body=b"x" * 800))])
        over = results([s.append("q", messages(1, body=b"x" * 800))])
        assert over[0].check(SinkError) and over[0].value.reason == "spool busy"
        commit(clock, pool)
        assert first == [None]
    finally:
        s.close()
        commit(clock, pool)


# -- the real worker thread --


@pytest_twisted.inlineCallbacks
def test_real_worker_thread_commits_off_the_reactor_thread(tmp_path):
    from twisted.internet import reactor

    s = Spool(str(tmp_path / "spool.db"), reactor)
    s.open()
    threads = set()
    real_commit = s._commit

    def commit_here(ops, boot):
        threads.add(threading.get_ident())
        return real_commit(ops, boot)

    s._commit = commit_here
    try:
        ds = [s.append("q", messages(100, first_id=1 + 100 * i)) for i in range(20)]
        yield defer.gatherResults(ds)
        assert s.commits == 1
        assert threads and threading.get_ident() not in threads
        ds = [s.append("q", messages(1, first_id=5000 + i)) for i in range(3)]
        closing = s.close()  # waits for those
        yield defer.gatherResults(ds + [closing])
        assert s.depth("q") == 2003 and not s._pool.started and not s._read_pool.started
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

    def slow_commit(ops, boot):
        gate.wait(5)  # a slow fsync
        return real_commit(ops, boot)

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


@pytest_twisted.inlineCallbacks
def test_reads_run_in_their_own_thread_while_a_commit_is_in_flight(tmp_path):
    from twisted.internet import reactor

    s = Spool(str(tmp_path / "spool.db"), reactor)
    s.open()
    gate = threading.Event()
    real_commit = s._commit
    try:
        yield s.append("q", messages(3))
        s._commit = lambda ops, boot: (gate.wait(5), real_commit(ops, boot))[1]
        stuck = s.append("q", messages(1, first_id=4))
        segments = yield s.read("q")  # not behind the slow commit
        assert [m.id for seg in segments for m in seg.messages] == [1, 2, 3] and not stuck.called
        gate.set()
        yield stuck
    finally:
        gate.set()
        yield s.close()
