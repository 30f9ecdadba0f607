"""Forwarding to RabbitMQ, end to end: real ``twistd``, real broker, real clients.

Producers are ``CompactClient`` and ``http.client``; what reached the broker
is read back with pika, a client independent of the hub's txamqp.  The broker
is the session's ``rabbit`` fixture: every test declares its own exchanges
and queues, and a test that stops the broker starts it again before it ends.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pika

from msghub.compact import Request
from msghub.testing import REPO, CompactClient, HubProcess, twistd_command
from msghub.testing_broker import RabbitBroker

SECRET = "secret"
TOKEN_SHA256 = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"  # sha256(SECRET)
MESSAGE_ID = re.compile(r"[0-9a-f]+-[0-9a-f]{10}\Z")


# -- helpers ----------------------------------------------------------------------------


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def connect(rabbit: RabbitBroker) -> pika.BlockingConnection:
    params = pika.URLParameters(rabbit.url)
    params.socket_timeout = 10
    params.blocked_connection_timeout = 10
    params.connection_attempts = 1
    return pika.BlockingConnection(params)


def read_queue(rabbit: RabbitBroker, queue: str, expected: int, timeout: float = 20.0, settle: float = 0.3) -> list:
    """``(method, properties, body)`` of every message in ``queue``, consumed.

    Waits (bounded) for at least ``expected`` messages, then ``settle``
    seconds more for stragglers such as duplicates.
    """
    out: list = []
    deadline = time.monotonic() + timeout
    with connect(rabbit) as connection:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=2000)
        quiet_since = None
        for method, properties, body in channel.consume(queue, auto_ack=True, inactivity_timeout=0.1):
            now = time.monotonic()
            if method is not None:
                out.append((method, properties, body))
                quiet_since = None
                continue
            if len(out) >= expected:
                quiet_since = quiet_since or now
                if now - quiet_since >= settle:
                    break
            if now > deadline:
                break
        channel.cancel()
    return out


def delete(rabbit: RabbitBroker, queues=(), exchanges=()) -> None:
    with connect(rabbit) as connection:
        channel = connection.channel()
        for queue in queues:
            channel.queue_delete(queue)
        for exchange in exchanges:
            channel.exchange_delete(exchange)


def amqp_conf(rabbit: RabbitBroker, body: str, spool_after: float = 1.0, extra: str = "") -> str:
    return (
        "[limits]\nmax_body = 8388608\n"
        f"[amqp]\nurl = \"{rabbit.url}\"\nspool_after = {spool_after}\n{extra}\n{body}"
    )


def post(conn: http.client.HTTPConnection, path: str, body: bytes, headers: dict | None = None):
    conn.request("POST", path, body=body, headers=headers or {})
    response = conn.getresponse()
    response.read()
    return response


def metric(hub: HubProcess, line_start: str) -> float | None:
    _, text = hub.get("/metrics")
    for line in text.decode().splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return None


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def port_closed(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except OSError:
        return True


class BackgroundRestart:
    """``rabbit.restart()`` (a clean stop, then a start on the same ports) in a thread."""

    def __init__(self, rabbit: RabbitBroker) -> None:
        self.rabbit = rabbit
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.rabbit.restart()
        except BaseException as e:  # re-raised in the test's thread by join()
            self.error = e
        finally:
            self.done.set()

    @property
    def started(self) -> bool:
        return self.thread.ident is not None

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float = 90.0) -> None:
        if self.started:
            self.thread.join(timeout)
            assert self.done.is_set(), "the broker restart did not finish"
            if self.error is not None:
                raise self.error


def check(conf: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        twistd_command() + ["-n", "--pidfile=", "msghub", "-c", str(conf), "--check"],
        capture_output=True, text=True, timeout=60, env=env, cwd=conf.parent,
    )


# -- message properties --------------------------------------------------------------------------


def test_messages_arrive_with_the_documented_properties(rabbit, tmp_path):
    durable_ex, plain_ex = unique("props-durable"), unique("props-plain")
    durable_q, plain_q, default_q = unique("props-durable-q"), unique("props-plain-q"), unique("props-default-q")
    conf = amqp_conf(rabbit, f"""
[[amqp.exchanges]]
name = "{durable_ex}"
type = "topic"
durable = true

[[amqp.exchanges]]
name = "{plain_ex}"
type = "topic"
durable = false
auto_delete = false

[[amqp.queues]]
name = "{durable_q}"
bind = [{{exchange = "{durable_ex}", key = "orders.#"}}]

[[amqp.queues]]
name = "{plain_q}"
durable = false
bind = [{{exchange = "{plain_ex}", key = "#"}}]

[[amqp.queues]]
name = "{default_q}"

[users.feed]
token_sha256 = "{TOKEN_SHA256}"

[[routes]]
name = "direct"
match = "/direct"
amqp = {{exchange = "", routing_key = "{default_q}"}}

[[routes]]
name = "orders"
match = "/orders/{{region}}/{{kind}}"
methods = ["POST", "PUT"]
users = ["feed"]
amqp = {{exchange = "{durable_ex}", routing_key = "orders.{{region}}.{{kind}}"}}

[[routes]]
name = "ticks"
match = "/ticks/{{symbol}}"
amqp = {{exchange = "{plain_ex}", routing_key = "ticks.{{symbol}}"}}
""")
    body = b'{"qty": 3, "note": "\xc3\xa9"}'
    with HubProcess(tmp_path / "hub", conf) as hub:
        before = time.time()
        conn = http.client.HTTPConnection("127.0.0.1", hub.http_port, timeout=10)
        response = post(conn, "/orders/eu/new?src=web", body, {
            "Host": "hub.example",
            "Accept-Encoding": "identity",
            "Content-Type": "application/json; charset=utf-8",
            "Content-Encoding": "identity",
            "X-Trace": "t-1",
            "Authorization": f"Bearer {SECRET}",
            "Cookie": "session=abc",
            "Connection": "keep-alive, X-Hop",
            "X-Hop": "hop-by-hop",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Upgrade-Insecure-Requests": "1",
        })
        assert response.status == 202
        client = CompactClient(hub.compact_port)
        client.send([
            Request(b"PUT", b"/orders/us/cancel", [(b"Authorization", b"Bearer " + SECRET.encode()),
                                                   (b"Content-Type", b"text/plain"), (b"X-Batch", b"7")], b"c"),
            Request(b"POST", b"/ticks/BRK%2FB", [(b"X-Venue", b"XNYS"), (b"X-Msghub-User", b"mallory"),
                                                 (b"x-msghub-route", b"forged")], b"\x00\x01tick"),
        ])
        client.read_until(2)
        assert post(conn, "/direct", b"d").status == 202
        after = time.time()
        assert client.acked == 2 and not client.errors
        client.close()
        conn.close()

    durable = read_queue(rabbit, durable_q, 2)
    plain = read_queue(rabbit, plain_q, 1)
    default = read_queue(rabbit, default_q, 1)
    delete(rabbit, [durable_q, plain_q, default_q], [durable_ex, plain_ex])
    assert len(durable) == 2 and len(plain) == 1 and len(default) == 1

    (m4, p4, b4), = default  # the default exchange is durable: so is the message
    assert (m4.exchange, m4.routing_key, b4, p4.delivery_mode) == ("", default_q, b"d", 2)

    (m1, p1, b1), (m2, p2, b2) = durable
    (m3, p3, b3), = plain
    assert (b1, b2, b3) == (body, b"c", b"\x00\x01tick")
    assert (m1.exchange, m1.routing_key) == (durable_ex, "orders.eu.new")
    assert (m2.exchange, m2.routing_key) == (durable_ex, "orders.us.cancel")
    assert (m3.exchange, m3.routing_key) == (plain_ex, "ticks.BRK/B")  # the capture, percent-decoded

    assert p1.content_type == "application/json; charset=utf-8"
    assert p1.content_encoding == "identity"
    assert p2.content_type == "text/plain" and p2.content_encoding is None
    assert p3.content_type is None and p3.content_encoding is None
    for p in (p1, p2, p3):
        assert MESSAGE_ID.match(p.message_id), p.message_id
        assert p.app_id == "msghub"
        assert int(before) - 1 <= p.timestamp <= after + 1
    assert len({p1.message_id, p2.message_id, p3.message_id}) == 3
    assert p1.delivery_mode == 2 and p2.delivery_mode == 2
    assert p3.delivery_mode in (None, 1)

    assert p1.headers == {
        "Host": "hub.example",
        "Accept-Encoding": "identity",
        "X-Trace": "t-1",
        "Upgrade-Insecure-Requests": "1",
        "x-msghub-method": "POST",
        "x-msghub-target": "/orders/eu/new?src=web",
        "x-msghub-route": "orders",
        "x-msghub-user": "feed",
    }
    assert p2.headers == {
        "X-Batch": "7",
        "x-msghub-method": "PUT",
        "x-msghub-target": "/orders/us/cancel",
        "x-msghub-route": "orders",
        "x-msghub-user": "feed",
    }
    assert p3.headers == {
        "X-Venue": "XNYS",
        "x-msghub-method": "POST",
        "x-msghub-target": "/ticks/BRK%2FB",
        "x-msghub-route": "ticks",
    }  # an anonymous producer cannot pass itself off as a user


# -- large and binary bodies -------------------------------------------------------------


def test_large_binary_bodies_arrive_intact_over_both_ingress_ports(rabbit, tmp_path):
    exchange, queue = unique("large"), unique("large-q")
    conf = amqp_conf(rabbit, f"""
[[amqp.exchanges]]
name = "{exchange}"
type = "direct"

[[amqp.queues]]
name = "{queue}"
bind = [{{exchange = "{exchange}", key = "blob"}}]

[[routes]]
name = "blobs"
match = "/blobs/{{name}}"
amqp = {{exchange = "{exchange}", routing_key = "blob"}}
""")
    small_big = os.urandom((1 << 20) + 1)
    three_mib = os.urandom(3 << 20)
    with HubProcess(tmp_path / "hub", conf) as hub:
        conn = http.client.HTTPConnection("127.0.0.1", hub.http_port, timeout=30)
        for body in (small_big, three_mib):
            assert post(conn, "/blobs/http", body, {"Content-Type": "application/octet-stream"}).status == 202
        conn.close()
        client = CompactClient(hub.compact_port, timeout=30)
        client.send([Request(b"POST", b"/blobs/compact", [], small_big),
                     Request(b"POST", b"/blobs/compact", [], three_mib)])
        client.read_until(2, timeout=30)
        assert client.acked == 2 and not client.errors
        client.close()
    got = read_queue(rabbit, queue, 4, timeout=30)
    delete(rabbit, [queue], [exchange])
    assert [len(b) for _, _, b in got] == [len(small_big), len(three_mib)] * 2
    assert [b == expected for (_, _, b), expected in zip(got, [small_big, three_mib] * 2)] == [True] * 4
    assert [p.headers["x-msghub-target"] for _, p, _ in got] == ["/blobs/http"] * 2 + ["/blobs/compact"] * 2


# -- unroutable messages --------------------------------------------------------------------------


def test_unroutable_mandatory_message_is_refused_with_404_and_its_batch_neighbours_acked(rabbit, tmp_path):
    exchange, queue = unique("unroutable"), unique("unroutable-q")
    conf = amqp_conf(rabbit, f"""
[[amqp.exchanges]]
name = "{exchange}"
type = "topic"

[[amqp.queues]]
name = "{queue}"
bind = [{{exchange = "{exchange}", key = "bound.*"}}]

[[routes]]
name = "keys"
match = "/keys/{{key}}"
amqp = {{exchange = "{exchange}", routing_key = "{{key}}"}}
""")
    with HubProcess(tmp_path / "hub", conf) as hub:
        client = CompactClient(hub.compact_port)
        client.send([Request(b"POST", b"/keys/bound.a", [], b"1"),
                     Request(b"POST", b"/keys/nowhere", [], b"2"),
                     Request(b"POST", b"/keys/bound.b", [], b"3")])
        client.read_until(3)
        assert client.acked == 3
        assert {n: e.status for n, e in client.errors.items()} == {2: 404}
        client.close()
        conn = http.client.HTTPConnection("127.0.0.1", hub.http_port, timeout=10)
        assert post(conn, "/keys/nowhere.either", b"4").status == 404
        assert post(conn, "/keys/bound.c", b"5").status == 202
        conn.close()
        assert metric(hub, 'msghub_messages_rejected_total{ingress="compact",status="404"}') == 1
        assert metric(hub, 'msghub_messages_accepted_total{ingress="compact",route="keys"}') == 2
    got = read_queue(rabbit, queue, 3)
    delete(rabbit, [queue], [exchange])
    assert [b for _, _, b in got] == [b"1", b"3", b"5"]


# -- broker restart mid-stream -------------------------------------------------------------


TOTAL = 20_000
CHUNK = 250
STOP_AFTER = 5_000  # acknowledged messages before the broker is stopped
DURING_CAP = 15_000  # sent before the broker is back: the rest goes after


def test_every_acknowledged_message_survives_a_broker_restart_mid_stream(rabbit, tmp_path):
    exchange, queue = unique("restart"), unique("restart-q")
    conf = amqp_conf(rabbit, f"""
[[amqp.exchanges]]
name = "{exchange}"
type = "topic"
durable = true

[[amqp.queues]]
name = "{queue}"
durable = true
bind = [{{exchange = "{exchange}", key = "#"}}]

[[routes]]
name = "stream"
match = "/stream/{{part}}"
amqp = {{exchange = "{exchange}", routing_key = "stream.{{part}}"}}
""", spool_after=1.0, extra="confirm_window = 2000\nheartbeat = 5")
    restart = BackgroundRestart(rabbit)
    phases = {"before": 0, "during": 0, "after": 0}
    depth = 'msghub_spool_depth{name="amqp:stream"}'
    peak_depth = 0.0
    with HubProcess(tmp_path / "hub", conf) as hub:
        client = CompactClient(hub.compact_port, timeout=60)
        sent = 0
        started = time.monotonic()
        try:
            while sent < TOTAL:
                assert time.monotonic() - started < 90, "streaming took too long"
                if restart.started and sent >= DURING_CAP:
                    restart.join()  # hold the tail of the stream until the broker is back
                phase = "before" if not restart.started else ("during" if not restart.done.is_set() else "after")
                n = min(CHUNK, TOTAL - sent)
                client.send([
                    Request(b"POST", b"/stream/p%d" % (i % 8), [(b"Content-Type", b"text/plain")], b"n=%d" % i)
                    for i in range(sent + 1, sent + n + 1)
                ])
                sent += n
                phases[phase] += n
                client.read_until(sent, timeout=30)
                if phase == "during":
                    peak_depth = max(peak_depth, metric(hub, depth) or 0)
                if client.acked >= STOP_AFTER and not restart.started:
                    restart.start()
        finally:
            client.close()
            restart.join()  # the broker is up again whatever happened
        assert not client.closed and client.fatal is None
        acked = set(range(1, client.acked + 1)) - set(client.errors)
        # The dispatcher drains what was spooled while the broker was away.
        wait_for(lambda: not metric(hub, depth), 45, "the amqp:stream spool to drain")
        depth_after = metric(hub, depth)
        log = hub.log()
    assert "amqp: connection lost" in log and log.count("amqp: connected to") >= 2
    assert "Traceback" not in log and "Unhandled" not in log

    got = read_queue(rabbit, queue, len(acked), timeout=45, settle=1.0)
    delete(rabbit, [queue], [exchange])
    ids_by_number: dict[int, set[str]] = {}
    for _, props, body in got:
        ids_by_number.setdefault(int(body[2:]), set()).add(props.message_id)
    missing = sorted(acked - set(ids_by_number))
    duplicates = len(got) - len(ids_by_number)
    print(f"\nbroker restart: sent {TOTAL} (before {phases['before']}, during {phases['during']}, "
          f"after {phases['after']}), acked {len(acked)}, refused {len(client.errors)}, "
          f"received {len(got)}, distinct {len(ids_by_number)}, duplicates {duplicates}, "
          f"peak spool depth {peak_depth:.0f}")
    assert phases["during"] > 0 and phases["after"] > 0
    assert peak_depth > 0  # the outage was long enough for store-and-forward to take over
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {missing[:10]}"
    # A duplicate is the same message published twice: it carries the same id.
    assert all(len(ids) == 1 for ids in ids_by_number.values())
    assert depth_after in (None, 0)
    assert not client.errors, {n: e for n, e in list(client.errors.items())[:5]}
    assert len(acked) == TOTAL


# -- when_broker_down = "reject" -----------------------------------------------------------------


def test_reject_policy_answers_503_while_the_broker_is_stopped_and_accepts_again_after(rabbit, tmp_path):
    exchange, queue = unique("reject"), unique("reject-q")
    conf = amqp_conf(rabbit, f"""
[[amqp.exchanges]]
name = "{exchange}"
type = "fanout"

[[amqp.queues]]
name = "{queue}"
bind = [{{exchange = "{exchange}", key = ""}}]

[[routes]]
name = "strict"
match = "/strict/{{n}}"
when_broker_down = "reject"
amqp = {{exchange = "{exchange}", routing_key = "strict"}}
""", spool_after=0.5)
    restart = BackgroundRestart(rabbit)
    with HubProcess(tmp_path / "hub", conf) as hub:
        conn = http.client.HTTPConnection("127.0.0.1", hub.http_port, timeout=10)
        assert post(conn, "/strict/1", b"before").status == 202
        restart.start()
        try:
            wait_for(lambda: port_closed(rabbit.port), 30, "the broker to stop", interval=0.02)
            wait_for(lambda: "amqp: connection lost" in hub.log(), 10, "the hub to see the broker go")
            t0 = time.monotonic()
            response = post(conn, "/strict/2", b"refused")
            waited = time.monotonic() - t0
            assert response.status == 503
            assert response.getheader("Retry-After") == "1"
            assert waited < 5
            client = CompactClient(hub.compact_port)
            client.send([Request(b"POST", b"/strict/3", [], b"refused"),
                         Request(b"POST", b"/strict/4", [], b"refused")])
            client.read_until(2)
            assert {n: e.status for n, e in client.errors.items()} == {1: 503, 2: 503}
            client.close()
            assert metric(hub, 'msghub_spool_depth{name="amqp:strict"}') is None
        finally:
            restart.join()
        # Back up: accepted again once the hub has reconnected.
        conn = http.client.HTTPConnection("127.0.0.1", hub.http_port, timeout=10)
        wait_for(lambda: post(conn, "/strict/5", b"after").status == 202, 30, "a 202 after the restart",
                 interval=0.2)
        conn.close()
        assert "Traceback" not in hub.log()
    got = read_queue(rabbit, queue, 2)
    delete(rabbit, [queue], [exchange])
    bodies = [b for _, _, b in got]
    assert bodies[0] == b"before" and bodies[-1] == b"after"
    assert b"refused" not in bodies


# -- blocked by a resource alarm ----------------------------------------------------------------------


def test_messages_are_spooled_while_the_broker_blocks_publishing_and_drained_after(rabbit, tmp_path):
    exchange, queue = unique("blocked"), unique("blocked-q")
    conf = amqp_conf(rabbit, f"""
[[amqp.exchanges]]
name = "{exchange}"
type = "direct"

[[amqp.queues]]
name = "{queue}"
bind = [{{exchange = "{exchange}", key = "b"}}]

[[routes]]
name = "alarmed"
match = "/alarmed/{{n}}"
amqp = {{exchange = "{exchange}", routing_key = "b"}}
""", spool_after=0.5)
    depth = 'msghub_spool_depth{name="amqp:alarmed"}'
    with HubProcess(tmp_path / "hub", conf) as hub:
        client = CompactClient(hub.compact_port)
        client.send([Request(b"POST", b"/alarmed/0", [], b"0")])
        client.read_until(1)
        assert client.acked == 1
        # A memory high watermark of 0 raises the alarm at once: RabbitMQ
        # blocks publishers (connection.blocked) until it is lifted.
        rabbit.ctl("set_vm_memory_high_watermark", "0")
        try:
            t0 = time.monotonic()
            client.send([Request(b"POST", b"/alarmed/%d" % i, [], b"%d" % i) for i in range(1, 4)])
            client.read_until(4, timeout=15)
            waited = time.monotonic() - t0
            assert client.acked == 4 and not client.errors
            assert waited < 10
            client.send([Request(b"POST", b"/alarmed/%d" % i, [], b"%d" % i) for i in range(4, 6)])
            client.read_until(6, timeout=15)
            assert client.acked == 6 and not client.errors
            assert metric(hub, depth) and metric(hub, depth) >= 2
        finally:
            rabbit.ctl("set_vm_memory_high_watermark", "0.4")
        wait_for(lambda: not metric(hub, depth), 30, "the spool to drain after the alarm cleared")
        client.close()
    got = read_queue(rabbit, queue, 6)
    delete(rabbit, [queue], [exchange])
    assert sorted({b for _, _, b in got}, key=int) == [b"%d" % i for i in range(6)]


# -- configuration errors --------------------------------------------------------------------------


def test_check_reports_an_unknown_exchange_and_a_bad_url_as_file_key_problem(tmp_path):
    conf = tmp_path / "bad.toml"
    conf.write_text("""
[amqp]
url = "http://127.0.0.1:5672/"

[[amqp.exchanges]]
name = "known"

[[routes]]
name = "r"
match = "/r/{x}"
amqp = {exchange = "nosuch", routing_key = "r.{x}"}

[[routes]]
name = "s"
match = "/s/{x}"
amqp = {exchange = "known", routing_key = "s.{y}"}
""")
    result = check(conf)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert f"{conf}: amqp.url: " in result.stderr
    assert any(line.startswith(f"{conf}: amqp.url: ") and "amqp://" in line for line in lines)
    assert any(line.startswith(f"{conf}: routes[0].amqp: ") and "nosuch" in line for line in lines)
    assert any(line.startswith(f"{conf}: routes[1].amqp: ") and "{y}" in line for line in lines)
    assert all(re.match(rf"{re.escape(str(conf))}: [\w.\[\]]+: \S", line) for line in lines), lines
    assert "Traceback" not in result.stderr


def test_check_accepts_a_valid_amqp_conf(tmp_path):
    conf = tmp_path / "good.toml"
    conf.write_text("""
[amqp]
url = "amqp://guest:guest@127.0.0.1:5672/%2f"

[[amqp.exchanges]]
name = "known"

[[routes]]
name = "r"
match = "/r/{x}"
when_broker_down = "reject"
amqp = {exchange = "known", routing_key = "r.{x}"}
""")
    result = check(conf)
    assert result.returncode == 0, result.stderr
