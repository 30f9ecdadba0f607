"""msghub.client against the real hub process: acks, rejections, the window, a hub restart."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, threads

from msghub.client import CompactSender, HttpSender, Rejected, Unreachable, open_sender
from msghub.client.txclient import RequestRefused, TxCompactSender
from msghub.compact import UsageError
from msghub.spoolcli import main as spool_main
from msghub.testing import HubProcess, free_port

ROUTES = """
[[routes]]
name = "held"
match = "/held/{name}"
spool = "held"

[[routes]]
name = "drop"
match = "/drop/{name}"
discard = true

[users.feed]
token_sha256 = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"

[[routes]]
name = "private"
match = "/private/{name}"
users = ["feed"]
discard = true
"""
SECRET = "secret"
OPRA = {"Content-Type": "application/x-opra-quote"}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    process = HubProcess(tmp_path_factory.mktemp("clients") / "hub", ROUTES).start()
    yield process
    process.stop()


def spooled_bodies(hub: HubProcess, capsys) -> list[str]:
    capsys.readouterr()
    assert spool_main(["--db", hub.spool_path, "dump", "held", "--body"]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("kind", ["compact", "http"])
def test_sender_acks_everything_and_reports_refusals(hub, kind):
    port = hub.compact_port if kind == "compact" else hub.http_port
    cls = CompactSender if kind == "compact" else HttpSender
    with cls("127.0.0.1", port) as sender:
        numbers = [sender.send("/drop/opra", b"q" * 66, OPRA) for _ in range(2000)]
        sender.flush(timeout=10)
        assert numbers == list(range(1, 2001))
        assert sender.acked == 2000 and sender.outstanding == 0
        assert sender.send("/nowhere", b"x") == 2001
        sender.send("/drop/ok", b"x")
        sender.send("/private/x", b"x")
        sender.send("/drop/ok", b"x", method="PUT")
        with pytest.raises(Rejected) as info:
            sender.flush(timeout=10)
        assert [(n, s) for n, s, _ in info.value.failures] == [(2001, 404), (2003, 401), (2004, 405)]
        assert sender.acked == 2001
        sender.flush(timeout=10)  # the failures were reported once


def test_compact_sender_costs_the_encoders_bytes(hub):
    with CompactSender("127.0.0.1", hub.compact_port) as sender:
        for _ in range(1000):
            sender.send("/drop/opra", b"q" * 66, {"Content-Type": "application/x-opra-quote", "Accept-Encoding": "identity"})
        sender.flush(timeout=10)
        # docs/compact-http.md 9.2: 151, 82, 86 octets, then 73 per message, for
        # /receiver; /drop/opra is one octet longer in each of the first three.
        assert sender.wire_bytes == 73_100 + 3


def test_send_many_matches_a_loop_of_send(hub):
    with CompactSender("127.0.0.1", hub.compact_port, window=1000) as bulk:
        assert bulk.send("/drop/a", b"first") == 1
        numbers = bulk.send_many("/drop/opra", [b"q%d" % i for i in range(5000)], OPRA)
        assert numbers == range(2, 5002)
        assert bulk.send_many("/nowhere", [b"x", "text"]) == range(5002, 5004)
        with pytest.raises(Rejected) as info:
            bulk.flush(timeout=10)
        assert [(n, s) for n, s, _ in info.value.failures] == [(5002, 404), (5003, 404)]
    with CompactSender("127.0.0.1", hub.compact_port, window=1000) as loop:
        loop.send("/drop/a", b"first")
        for i in range(5000):
            loop.send("/drop/opra", b"q%d" % i, OPRA)
        loop.send("/nowhere", b"x")
        loop.send("/nowhere", "text")
        with pytest.raises(Rejected):
            loop.flush(timeout=10)
    assert bulk.acked == loop.acked == 5001
    assert bulk.wire_bytes == loop.wire_bytes  # the same requests, so the same stream


def test_credentials_and_url(hub):
    sender, path = open_sender(f"compact://127.0.0.1:{hub.compact_port}/private/x", token=SECRET)
    with sender:
        sender.send(path, b"authorised")
    assert sender.acked == 1
    with CompactSender("127.0.0.1", hub.compact_port, token="wrong") as sender:
        sender.send("/private/x", b"x")
        with pytest.raises(Rejected) as info:
            sender.flush(timeout=10)
        assert info.value.failures[0][1] == 401
        sender.flush()


def test_send_blocks_while_the_window_is_full(hub):
    with CompactSender("127.0.0.1", hub.compact_port, window=8) as sender:
        most = 0
        for i in range(500):
            sender.send("/drop/w", b"%d" % i)
            most = max(most, sender.outstanding)
        sender.flush(timeout=10)
    assert most <= 8 and sender.acked == 500


def test_an_oversized_body_is_refused_by_send_and_the_stream_goes_on(hub):
    # It used to be queued and then fail in the batch's encode: the requests
    # before it were never written, yet the next A: counted them as acked.
    with CompactSender("127.0.0.1", hub.compact_port, timeout=5) as sender:
        numbers = [sender.send("/drop/big", b"x") for _ in range(5)]
        with pytest.raises(UsageError, match="over the decoder's limits"):
            sender.send("/drop/big", b"x" * (CompactSender.limits.max_body + 1))
        with pytest.raises(UsageError):
            sender.send_many("/drop/big", [b"y", b"x" * (CompactSender.limits.max_body + 1)])
        numbers.append(sender.send("/drop/big", b"after"))
        sender.flush(timeout=10)
    assert numbers == [1, 2, 3, 4, 5, 6] and sender.acked == 6 and sender.outstanding == 0


def test_http_sender_reads_the_413_of_a_body_the_hub_would_not_read(hub):
    # The hub answers 413 and closes without reading the body; the write fails
    # (EPIPE), and the answer waiting in the socket must still count, or the
    # sender resends the body on a new connection for ever.
    start = time.monotonic()
    with HttpSender("127.0.0.1", hub.http_port, timeout=5) as sender:
        big = sender.send("/drop/big", b"x" * 5_000_000)
        after = sender.send("/drop/big", b"after")
        with pytest.raises(Rejected) as info:
            sender.flush(timeout=10)
    assert info.value.failures == [(big, 413, "Request Entity Too Large")]
    assert sender.acked == 1 and after == big + 1
    assert sender.reconnects <= 1 and time.monotonic() - start < 5


@pytest_twisted.inlineCallbacks
def test_twisted_client_refuses_an_oversized_body_before_queueing_it(hub):
    client = TxCompactSender(reactor, "127.0.0.1", hub.compact_port)
    first = client.send("/drop/t", b"x")
    with pytest.raises(UsageError):
        client.send("/drop/t", b"x" * (TxCompactSender.limits.max_body + 1))
    assert (yield first) == 1
    assert (yield client.send("/drop/t", b"after")) == 2
    yield client.close()


def test_unreachable_hub_raises_after_give_up(tmp_path):
    start = time.monotonic()
    with pytest.raises(Unreachable):
        CompactSender("127.0.0.1", free_port(), give_up_after=0.3)
    assert time.monotonic() - start < 3


def test_bare_lf_gets_an_answer_at_once(hub):
    with socket.create_connection(("127.0.0.1", hub.compact_port), timeout=5) as sock:
        sock.sendall(b"+:/drop/a 2\r\nhi-:/drop/typed\n")
        data = b""
        while not data.endswith(b"\r\n") or b"X:" not in data:
            chunk = sock.recv(1024)
            if not chunk:
                break
            data += chunk
    assert data == b"A:1\r\nX:400 bare LF; lines end with CRLF\r\n"


def _restart_soon(hub: HubProcess, after: float, down: float) -> threading.Thread:
    def run():
        time.sleep(after)
        hub.stop()
        time.sleep(down)
        hub.start()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_hub_restart_mid_stream_resends_everything_unacknowledged(tmp_path, capsys):
    hub = HubProcess(tmp_path / "hub", ROUTES).start()
    try:
        sender = CompactSender("127.0.0.1", hub.compact_port, window=2000, give_up_after=20)
        restart = _restart_soon(hub, after=0.2, down=0.3)
        count = 0
        deadline = time.monotonic() + 15
        # Keep sending until the restart is over and some more went through the new hub.
        while restart.is_alive() or count < 3000:
            count += 1
            sender.send("/held/r", b"m%06d" % count)
            if count % 500 == 0:
                time.sleep(0.01)  # let the hub fall behind a little: requests in flight when it stops
            assert time.monotonic() < deadline
        restart.join()
        sender.flush(timeout=20)  # raises Rejected if anything was refused or given up
        sender.close()
        assert sender.reconnects >= 1 and sender.acked == count
        out = spooled_bodies(hub, capsys).encode()
        assert [i for i in range(1, count + 1) if b"m%06d" % i not in out] == []
    finally:
        hub.stop()


class MuteThenAcking:
    """A fake compact server: the first connection reads and closes without answering,
    later ones acknowledge every request they frame (as the hub would)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.received: list[bytes] = []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        from msghub.compact import Decoder, ack_line

        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                if self.connections == 1:  # read all ten requests, then hang up
                    seen = b""
                    while b"r9" not in seen and (data := conn.recv(65536)):
                        seen += data
                    continue
                decoder = Decoder()
                while data := conn.recv(65536):
                    events = decoder.feed(data)
                    self.received += [e.body for e in events]
                    if events:
                        conn.sendall(ack_line(events[-1].number))

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("resend", [True, False])
def test_lost_connection_resends_or_fails_by_option(resend):
    server = MuteThenAcking()
    try:
        sender = CompactSender("127.0.0.1", server.port, resend=resend, timeout=5, backoff=(0.01, 0.1))
        for i in range(10):
            sender.send("/x", b"r%d" % i)
        if resend:
            sender.flush(timeout=5)
            assert sender.acked == 10 and sender.resent == 10 and sender.reconnects == 1
            assert server.received == [b"r%d" % i for i in range(10)]
        else:
            with pytest.raises(Rejected) as info:
                sender.flush(timeout=5)
            assert info.value.failures == [(n, 0, "connection lost") for n in range(1, 11)]
            assert sender.acked == 0 and server.received == []
            sender.send("/x", b"later")  # the sender carries on on a new connection
            sender.flush(timeout=5)
            assert server.received == [b"later"]
        sender.close()
    finally:
        server.close()


# -- the Twisted client -------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_twisted_client_fires_each_deferred_on_its_answer(hub):
    client = TxCompactSender(reactor, "127.0.0.1", hub.compact_port, window=100)
    oks = [client.send("/drop/t", b"%d" % i, OPRA) for i in range(1000)]
    bad = client.send("/nowhere", b"x")
    after = client.send("/drop/t", b"after")
    results = yield defer.gatherResults(oks)
    assert results == list(range(1, 1001))
    with pytest.raises(RequestRefused) as info:
        yield bad
    assert (info.value.number, info.value.status) == (1001, 404)
    assert (yield after) == 1002
    yield client.flush()
    assert client.outstanding == 0
    yield client.close()


@pytest_twisted.inlineCallbacks
def test_twisted_client_resends_across_a_hub_restart(tmp_path, capsys):
    hub = yield threads.deferToThread(HubProcess(tmp_path / "hub", ROUTES).start)
    try:
        client = TxCompactSender(reactor, "127.0.0.1", hub.compact_port, give_up_after=20)
        first = [client.send("/held/t", b"t%05d" % i) for i in range(1, 501)]
        yield defer.gatherResults(first)
        yield threads.deferToThread(hub.stop)
        # Sent while the hub is down: they wait, then go out after the reconnect.
        second = [client.send("/held/t", b"t%05d" % i) for i in range(501, 1001)]
        yield threads.deferToThread(hub.start)
        numbers = yield defer.gatherResults(second)
        assert numbers == list(range(501, 1001))
        assert client.reconnects >= 1
        yield client.close()
        out = yield threads.deferToThread(spooled_bodies, hub, capsys)
        assert all(f"t{i:05d}" in out for i in range(1, 1001))
    finally:
        yield threads.deferToThread(hub.stop)


@pytest_twisted.inlineCallbacks
def test_twisted_client_fails_unanswered_requests_with_resend_off():
    server = MuteThenAcking()
    try:
        client = TxCompactSender(reactor, "127.0.0.1", server.port, resend=False, backoff=(0.01, 0.1))
        sent = [client.send("/x", b"r%d" % i) for i in range(10)]
        results = yield defer.DeferredList(sent, consumeErrors=True)
        assert [(ok, f.value.status, f.value.reason) for ok, f in results] == [(False, 0, "connection lost")] * 10
        assert (yield client.send("/x", b"later")) == 11  # a new connection, answered
        assert server.received == [b"later"]
        yield client.close()
    finally:
        server.close()
