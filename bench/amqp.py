"""Publishing to RabbitMQ through the hub, beside the broker's own ceiling, in one run.

Claims (the AMQP forwarder's acceptance, STYLE.md rule 8), on the 2-core
development machine with a private broker this script starts and stops:

1. compact -> hub -> RabbitMQ, confirmed end to end (a producer's ``A:n``
   only after the broker confirmed message n), 66-byte bodies: >= 80% of the
   raw ceiling for the same durability, for a transient route (non-durable
   exchange and queue, delivery_mode 1) and a persistent one (durable
   exchange and queue, delivery_mode 2);
2. plain HTTP/1.1 (32 keep-alive connections, pipelined) -> hub -> RabbitMQ:
   >= 30x the management plugin's ``POST /api/exchanges/%2f/X/publish``;
3. the AMQP dispatcher draining a spooled backlog (500,000 66-byte and
   50,000 4 KiB messages, persistent route) at >= 0.8x the raw publisher
   sending the same messages with the same window (``bench/amqp_drain.py``
   describes the rows; ``--drain-only`` runs just those, ``--no-drain``
   skips them).

Rows, measured in alternating rounds against one broker:

- **raw**: the ceiling.  A child process writes pre-encoded
  basic.publish + header + body frames (built with ``msghub.forward.amqp_wire``,
  byte for byte what the hub sends: same properties and headers table)
  over a plain socket after a hand-written handshake and confirm.select,
  500 messages per write, at most ``--window`` (10,000, the hub's
  ``confirm_window``) unconfirmed, counting basic.ack (multiple);
- **pika**: a child process publishing with pika's ``SelectConnection``
  (asynchronous, confirm_delivery, the same window, the same properties);
- **hub compact** / **hub plain HTTP**: the real ``twistd -n msghub`` fed by
  the load generators of ``bench/ingress.py`` (imported), timed from the
  first byte sent to the last acknowledgement;
- **management API**: ``http.client`` keep-alive, Basic guest:guest, one
  request at a time (the plugin confirms each publish before answering).

Every message goes to a bound queue that one raw consumer (a thread of this
script, basic.consume with no-ack) drains while the rows run; after each run
the script waits (bounded) until the consumer has received every message the
run had confirmed.  Latency: compact and raw publishers paced at half of the
raw ceiling measured for that durability, a send time (``time.monotonic_ns``)
in the first 16 bytes of each body, read by the consumer thread in the same
process.  CPU: utime+stime from /proc of the publisher (hub or child), the
broker's ``beam.smp`` and this script per run, and what the rest of the
machine used meanwhile ("others": a shared, noisy machine).

Runs in the rounds are kept shorter than the hub's ``amqp.spool_after``
(5 s) at the ceiling; then one **sustained** run per publisher and
durability lasts ``--sustained-seconds`` (15 s).  A hub run during which the
hub diverted messages to its spool (acknowledged on commit, published later
by its dispatcher) is flagged with the number spooled, read from the spool's
AUTOINCREMENT counter (segments, not messages).

Cores: the hub and the raw and pika publishers that stand in for it on core
0; the broker on core 1, started with only that core in its CPU set (so
Erlang runs one scheduler); this script (load generators and consumer) on
core 1 too.  ``--broker-core 0`` puts the broker beside the hub instead,
``--broker-core -1`` lets it run two schedulers on both cores.

    .venv/bin/python bench/amqp.py [--rounds R] [--quick] [--drain-only | --no-drain]
    .venv/bin/python bench/amqp.py --profile transient|persistent|http|drain|drain-large [--profile-out FILE]
"""

from __future__ import annotations

import argparse
import base64
import datetime
import http.client
import json
import os
import platform
import selectors
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from struct import Struct
from time import monotonic_ns, perf_counter

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingress import (  # noqa: E402  (bench/ingress.py: same load generators, pinning and CPU accounting)
    HEAD, TASKSET, bodies, cpu_seconds, fmt_rate, http_request, pin_pid, run_compact, run_http,
)
import amqp_drain  # noqa: E402  (bench/amqp_drain.py: the drain rows)
from amqp_drain import busy_seconds  # noqa: E402
from msghub.forward import amqp_wire as wire  # noqa: E402
from msghub.message import format_id  # noqa: E402
from msghub.testing import HubProcess  # noqa: E402
from msghub.testing_broker import RabbitBroker, installed  # noqa: E402

BODY = 66
BATCH = 500  # messages per write, raw publisher
HUB_CORE = 0  # the hub, and the raw and pika publishers that stand in for it
KEY = b"opra"
DURABILITIES = ("transient", "persistent")
_frame_head = Struct(">BHI")
_tune = Struct(">HIH")
READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


# -- a minimal AMQP 0-9-1 client: handshake, a few methods, frames ---------------------------------


class AmqpError(RuntimeError):
    pass


class Amqp:
    """A blocking connection with channel 1 open: just what the raw rows need, no library."""

    def __init__(self, port: int, confirm: bool = False, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.sock.sendall(b"AMQP\x00\x00\x09\x01")
        self.expect(10, 10)  # connection.start
        props = {"product": "msghub-bench", "capabilities": {"publisher_confirms": True}}
        self.sock.sendall(wire.start_ok_frame(props, b"PLAIN", b"\0guest\0guest", b"en_US"))
        channel_max, self.frame_max, _ = _tune.unpack_from(self.expect(10, 30))  # connection.tune
        self.method(0, 10, 31, _tune.pack(channel_max, self.frame_max, 0))  # tune-ok, no heartbeats
        self.method(0, 10, 40, wire.shortstr(b"/") + b"\x00\x00")  # connection.open
        self.expect(10, 41)
        self.method(1, 20, 10, b"\x00")  # channel.open
        self.expect(20, 11)
        if confirm:
            self.method(1, 85, 10, b"\x00")  # confirm.select
            self.expect(85, 11)

    def method(self, channel: int, class_id: int, method_id: int, arguments: bytes) -> None:
        self.sock.sendall(wire.method_frame(channel, class_id, method_id, arguments))

    def frame(self) -> tuple[int, bytes]:
        while True:
            if len(self.buf) >= 7:
                kind, _, size = _frame_head.unpack_from(self.buf)
                if len(self.buf) >= size + 8:
                    payload, self.buf = self.buf[7 : 7 + size], self.buf[size + 8 :]
                    return kind, payload
            data = self.sock.recv(65536)
            if not data:
                raise AmqpError("broker closed the connection")
            self.buf += data

    def expect(self, class_id: int, method_id: int) -> bytes:
        """The arguments of the next method frame, which must be (class_id, method_id)."""
        for _ in range(1000):
            kind, payload = self.frame()
            if kind != wire.FRAME_METHOD:
                continue
            got = (int.from_bytes(payload[:2], "big"), int.from_bytes(payload[2:4], "big"))
            if got == (class_id, method_id):
                return payload[4:]
            raise AmqpError(f"expected method {class_id}.{method_id}, got {got[0]}.{got[1]}: {payload[4:80]!r}")
        raise AmqpError("no method frame in 1000 frames")

    def close(self) -> None:
        try:
            self.method(0, 10, 50, b"\x00\xc8" + wire.shortstr(b"bye") + b"\x00\x00\x00\x00")
            self.sock.settimeout(5)
            self.expect(10, 51)
        except (OSError, AmqpError):
            pass
        self.sock.close()


class Confirms:
    """Reads basic.ack frames off a publisher's socket: ``feed(data)`` -> highest tag confirmed."""

    def __init__(self) -> None:
        self.tail = b""
        self.upto = 0
        self.frames = 0

    def feed(self, data: bytes) -> int:
        buf = self.tail + data if self.tail else data
        pos, n = 0, len(buf)
        while pos + 7 <= n:
            kind, _, size = _frame_head.unpack_from(buf, pos)
            end = pos + size + 8
            if end > n:
                break
            if kind == 1:
                confirm = wire.parse_confirm(buf[pos:end])
                if confirm is None:
                    raise AmqpError(f"unexpected frame from the broker: {buf[pos:pos + 80]!r}")
                if confirm[3]:
                    raise AmqpError(f"broker nacked tag {confirm[1]}")
                if confirm[1] > self.upto:  # multiple or not: tags are confirmed in order here
                    self.upto = confirm[1]
                self.frames += 1
            pos = end
        self.tail = buf[pos:]
        return self.upto


def message_frames(durability: str, target: bytes, body: bytes, message_id: int, frame_max: int) -> bytes:
    """One message exactly as the hub's AmqpSink encodes it for the bench routes."""
    static = wire.StaticProperties(
        ((b"Content-Type", b"application/x-opra-quote"), (b"Accept-Encoding", b"identity")),
        b"POST", durability, None, durability == "persistent",
    )
    return wire.publish_frame(1, b"bench." + durability.encode(), KEY, True) + wire.content_frames(
        1, frame_max, static, target, format_id(message_id).encode(), int(time.time()), body
    )


# -- the consumer: one thread draining both queues ----------------------------------------------------


class Consumer:
    """basic.consume (no-ack) on both bench queues; counts deliveries, optionally reads send times."""

    def __init__(self, port: int) -> None:
        self.conn = Amqp(port)
        for d in DURABILITIES:
            queue = b"bench." + d.encode()
            # basic.consume: reserved, queue, consumer tag, bits (no-local, no-ack, exclusive, no-wait), table
            self.conn.method(1, 60, 20, b"\x00\x00" + wire.shortstr(queue) + wire.shortstr(queue) + b"\x02"
                             + b"\x00\x00\x00\x00")
            self.conn.expect(60, 21)
        self.count = 0
        self.latencies: list[int] | None = None  # set to a list to record ns from send to receipt
        # Drain runs: deliveries per body number (bodies start b"Q%012d", as ``bodies`` makes them),
        # and the time ``count`` reached ``goal``.
        self.seen: bytearray | None = None
        self.goal = 0
        self.reached: float | None = None
        self.error: str | None = None
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="consumer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        sock = self.conn.sock
        sock.settimeout(0.2)
        buf, unpack = self.conn.buf, _frame_head.unpack_from
        first_body = False  # the next body frame starts a message (a body may span frames)
        while not self.stopping:
            try:
                data = sock.recv(1 << 18)
            except socket.timeout:
                continue
            except OSError as e:
                self.error = str(e)
                return
            if not data:
                self.error = "broker closed the consumer's connection"
                return
            now = monotonic_ns()
            buf = buf + data if buf else data
            pos, n, count, lat, seen = 0, len(buf), 0, self.latencies, self.seen
            while pos + 7 <= n:
                kind, _, size = unpack(buf, pos)
                end = pos + size + 8
                if end > n:
                    break
                if kind == 1:
                    if buf[pos + 8] != 60 or buf[pos + 10] != 60:  # not basic.deliver
                        self.error = f"consumer got {buf[pos:pos + 80]!r}"
                        return
                    count += 1
                    first_body = True
                elif kind == 3:
                    if lat is not None:
                        lat.append(now - int(buf[pos + 7 : pos + 23], 16))
                    elif seen is not None and first_body:
                        first_body = False
                        number = int(buf[pos + 8 : pos + 20])
                        if number < len(seen) and seen[number] < 255:
                            seen[number] += 1
                pos = end
            buf = buf[pos:]
            self.count += count
            if self.goal and self.reached is None and self.count >= self.goal:
                self.reached = perf_counter()

    def expect(self, n: int) -> None:
        """Count the next ``n`` deliveries by body number and note when the last one arrives."""
        self.reached = None
        self.seen = bytearray(n)
        self.goal = self.count + n

    def tally(self) -> tuple[int, int]:
        """``(lost, duplicates)`` among the bodies ``expect`` asked for; stops counting."""
        seen, self.seen, self.goal = self.seen, None, 0
        return seen.count(0), sum(seen) - len(seen) + seen.count(0)

    def wait_for(self, expected: int, timeout: float) -> float:
        """Seconds until ``count`` reached ``expected`` (bounded); raises if it did not."""
        t0 = perf_counter()
        deadline = t0 + timeout
        while self.count < expected:
            if self.error:
                raise AmqpError(self.error)
            if perf_counter() > deadline:
                raise AmqpError(f"consumer has {self.count:,} of {expected:,} messages after {timeout}s")
            time.sleep(0.01)
        return perf_counter() - t0

    def stop(self) -> None:
        self.stopping = True
        self.thread.join(5)
        self.conn.close()


# -- child publishers (``--serve raw|pika PORT``): one per row, kept across rounds --------------------


def serve(kind: str, port: int) -> None:
    """Read one JSON command per line; print "start" when timing begins, then the result as JSON."""
    conn = Amqp(port, confirm=True) if kind == "raw" else None
    units: dict[tuple, list[bytes]] = {}
    published = 0
    print("ready", flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd.get("quit"):
            break
        if kind == "raw":
            d, size = cmd["durability"], cmd.get("size")
            key = (d, size, cmd["count"] if size else BATCH)
            if key not in units:
                if size:  # a drain row's ceiling: every message numbered, as the hub's backlog is
                    units.clear()  # one drain shape held at a time
                    units[key] = amqp_drain.raw_units(d, size, cmd["count"], BATCH, conn.frame_max)
                else:
                    body = bodies(BATCH)
                    units[key] = [b"".join(message_frames(d, b"/%s/opra" % d.encode(), b, (1 << 40) + i,
                                                          conn.frame_max) for i, b in enumerate(body))]
            result = raw_publish(conn, units[key], published, cmd["count"], cmd["window"], cmd["timeout"])
            published += result["count"]
        else:
            result = pika_publish(port, cmd["durability"], cmd["count"], cmd["window"], cmd["timeout"])
        print(json.dumps(result), flush=True)
    if conn is not None:
        conn.close()


def raw_publish(conn: Amqp, units: list[bytes], published: int, count: int, window: int, timeout: float) -> dict:
    """``count`` messages (whole units of BATCH, taken from ``units`` in turn) with at most ``window``
    unconfirmed."""
    sock = conn.sock
    sock.setblocking(False)
    confirms = Confirms()
    confirms.upto = published
    goal, sent, pending = published + count, published, None
    sel = selectors.DefaultSelector()
    sel.register(sock, READ | WRITE)
    writing = True
    print("start", flush=True)
    c0, t0 = time.process_time(), perf_counter()
    deadline = t0 + timeout
    try:
        while confirms.upto < goal and perf_counter() < deadline:
            for _, mask in sel.select(0.5):
                if mask & READ:
                    try:
                        data = sock.recv(1 << 16)
                    except BlockingIOError:
                        data = None
                    if data == b"":
                        raise AmqpError("broker closed the connection")
                    if data:
                        confirms.feed(data)
                while True:
                    if pending is None:
                        if sent >= goal or sent + BATCH - confirms.upto > window:
                            break
                        pending = memoryview(units[(sent - published) // BATCH % len(units)])
                        sent += BATCH
                    try:
                        n = sock.send(pending)
                    except BlockingIOError:
                        break
                    pending = pending[n:] if n < len(pending) else None
                    if pending is not None:
                        break
                # Ask for WRITE only while there is something to write: a full window waits for confirms.
                if writing != (pending is not None):
                    writing = pending is not None
                    sel.modify(sock, READ | WRITE if writing else READ)
        elapsed = perf_counter() - t0
    finally:
        sel.close()
        sock.setblocking(True)
    done = confirms.upto - published
    return {"count": done, "elapsed": elapsed, "capped": done < count, "own_cpu": time.process_time() - c0,
            "ack_frames": confirms.frames}


def pika_publish(port: int, durability: str, count: int, window: int, timeout: float) -> dict:
    """pika's SelectConnection with confirm_delivery, keeping at most ``window`` unconfirmed."""
    import pika

    params = pika.ConnectionParameters("127.0.0.1", port, credentials=pika.PlainCredentials("guest", "guest"),
                                       heartbeat=0, connection_attempts=1, socket_timeout=10)
    props = pika.BasicProperties(
        content_type="application/x-opra-quote",
        headers={"Accept-Encoding": "identity", "x-msghub-method": "POST", "x-msghub-route": durability,
                 "x-msghub-target": f"/{durability}/opra"},
        delivery_mode=2 if durability == "persistent" else 1, message_id="1-0000000001",
        timestamp=int(time.time()), app_id="msghub",
    )
    body = bodies(1)[0]
    exchange = f"bench.{durability}"
    st = {"sent": 0, "upto": 0, "t0": 0.0, "c0": 0.0, "t1": None, "error": None}

    def more(channel) -> None:
        publish = channel.basic_publish
        while st["sent"] < count and st["sent"] - st["upto"] < window:
            publish(exchange, "opra", body, props, mandatory=True)
            st["sent"] += 1

    def on_confirm(frame) -> None:
        if isinstance(frame.method, pika.spec.Basic.Nack):
            st["error"] = f"nack {frame.method.delivery_tag}"
        st["upto"] = max(st["upto"], frame.method.delivery_tag)
        if st["upto"] >= count or st["error"]:
            st["t1"] = perf_counter()
            conn.close()
        else:
            more(channel_ref[0])

    channel_ref: list = []

    def on_select(_frame) -> None:
        print("start", flush=True)
        st["c0"], st["t0"] = time.process_time(), perf_counter()
        more(channel_ref[0])

    def on_channel(channel) -> None:
        channel_ref.append(channel)
        channel.confirm_delivery(on_confirm, callback=on_select)

    conn = pika.SelectConnection(
        params, on_open_callback=lambda c: c.channel(on_open_callback=on_channel),
        on_open_error_callback=lambda c, e: (st.update(error=str(e)), c.ioloop.stop()),
        on_close_callback=lambda c, e: c.ioloop.stop(),
    )
    conn.ioloop.call_later(timeout + 5, lambda: (st.update(error="timeout"), conn.close()))
    conn.ioloop.start()
    if st["t1"] is None:
        st["t1"] = perf_counter()
    return {"count": st["upto"], "elapsed": st["t1"] - st["t0"], "capped": st["upto"] < count,
            "own_cpu": time.process_time() - st["c0"], "error": st["error"]}


class Publisher:
    """A ``--serve`` child pinned to the hub's core: the hub's seat, without the hub."""

    def __init__(self, kind: str, port: int) -> None:
        pin = [TASKSET, "-c", str(HUB_CORE)] if TASKSET else []
        self.proc = subprocess.Popen(pin + [sys.executable, __file__, "--serve", kind, str(port)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        self._line(30)  # "ready"

    def _line(self, timeout: float) -> str:
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, READ)
        try:
            if not sel.select(timeout):
                raise RuntimeError(f"publisher {self.pid}: no answer in {timeout}s")
        finally:
            sel.close()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"publisher {self.pid} exited with {self.proc.poll()}")
        return line

    def run(self, durability: str, count: int, window: int, timeout: float, on_start, size: int = 0) -> dict:
        """``size``: numbered bodies of that size (the drain rows' ceiling) instead of the 66-byte unit."""
        self.proc.stdin.write(json.dumps({"durability": durability, "count": count, "window": window,
                                          "timeout": timeout, "size": size}) + "\n")
        self.proc.stdin.flush()
        if self._line(120 if size else 30).strip() != "start":  # numbered frames are built first
            raise RuntimeError("publisher did not start")
        on_start()
        r = json.loads(self._line(timeout + 30))
        if r.get("error"):
            raise RuntimeError(f"publisher: {r['error']}")
        return r

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write('{"quit": true}\n')
                self.proc.stdin.flush()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(5)


# -- paced publishing (latency) and the management API -------------------------------------------


class CompactAcks:
    """``A:n`` lines -> the highest n; any ``E:``/``X:`` line is an error."""

    def __init__(self) -> None:
        self.tail = b""
        self.upto = 0

    def feed(self, data: bytes) -> int:
        buf = self.tail + data if self.tail else data
        end = buf.rfind(b"\r\n")
        if end < 0:
            self.tail = buf
            return self.upto
        done, self.tail = buf[:end], buf[end + 2 :]
        if b"E:" in done or b"X:" in done:
            raise RuntimeError(f"hub refused: {done[:200]!r}")
        i = done.rfind(b"A:")
        if i >= 0:
            j = done.find(b"\r\n", i)
            self.upto = int(done[i + 2 : j if j >= 0 else len(done)])
        return self.upto


def paced(sock: socket.socket, make, acks, rate: float, seconds: float, timeout: float) -> dict:
    """``rate`` messages/s for ``seconds``: each tick (~1 ms) sends the messages due, stamped with the send time."""
    total = int(rate * seconds)
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sock, READ)
    sent, upto, pending, writes = 0, 0, None, 0
    t0 = perf_counter()
    deadline = t0 + timeout
    try:
        while upto < total:
            now = perf_counter()
            if now >= deadline:
                break
            if pending is None and sent < total:
                due = min(total, int((now - t0) * rate) + 1)
                if due > sent:
                    pending, sent, writes = memoryview(make(due - sent, monotonic_ns())), due, writes + 1
            if pending is not None:
                try:
                    n = sock.send(pending)
                except BlockingIOError:
                    n = 0
                pending = pending[n:] if n < len(pending) else None
            wait = 0.001 if sent < total else 0.2
            for _ in sel.select(0 if pending is not None else wait):
                try:
                    data = sock.recv(1 << 16)
                except BlockingIOError:
                    continue
                if not data:
                    raise RuntimeError("connection closed during a paced run")
                upto = acks.feed(data)
        elapsed = perf_counter() - t0
    finally:
        sel.close()
    return {"count": upto, "elapsed": elapsed, "capped": upto < total, "writes": writes}


def paced_raw(port: int, durability: str, rate: float, seconds: float, timeout: float) -> dict:
    conn = Amqp(port, confirm=True)
    try:
        frames = message_frames(durability, b"/%s/opra" % durability.encode(), bodies(1)[0], 1 << 40, conn.frame_max)
        head, tail = frames[: -BODY - 1], frames[-BODY - 1 + 16 :]
        return paced(conn.sock, lambda k, t: (head + b"%016x" % t + tail) * k, Confirms(), rate, seconds, timeout)
    finally:
        conn.sock.setblocking(True)
        conn.close()


def paced_compact(port: int, durability: str, rate: float, seconds: float, timeout: float) -> dict:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.sendall(HEAD + b"B:/%s/opra\r\n" % durability.encode())
        tail = bodies(1)[0][16:]
        return paced(sock, lambda k, t: (b"+: 66\r\n" + b"%016x" % t + tail) * k, CompactAcks(), rate, seconds,
                     timeout)
    finally:
        sock.close()


def run_mgmt(port: int, durability: str, count: int, connections: int, timeout: float) -> dict:
    """``count`` POSTs to the management API's publish endpoint over ``connections`` keep-alive connections."""
    path = f"/api/exchanges/%2f/bench.{durability}/publish"
    body = json.dumps({
        "properties": {"delivery_mode": 2 if durability == "persistent" else 1,
                       "content_type": "application/x-opra-quote",
                       "headers": {"Accept-Encoding": "identity", "x-msghub-method": "POST",
                                   "x-msghub-route": durability, "x-msghub-target": f"/{durability}/opra"}},
        "routing_key": KEY.decode(), "payload": bodies(1)[0].decode(), "payload_encoding": "string",
    })
    headers = {"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode(),
               "Content-Type": "application/json"}
    done, errors = [0] * connections, []
    deadline = perf_counter() + timeout

    def worker(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            for _ in range(count // connections + (i < count % connections)):
                if perf_counter() > deadline or errors:
                    return
                conn.request("POST", path, body, headers)
                response = conn.getresponse()
                data = response.read()
                if response.status != 200 or b'"routed":true' not in data:
                    errors.append(f"{response.status} {data[:200]!r}")
                    return
                done[i] += 1
        except OSError as e:
            errors.append(str(e))
        finally:
            conn.close()

    t0 = perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 15)
    elapsed = perf_counter() - t0
    if errors:
        raise RuntimeError(f"management API: {errors[0]}")
    return {"count": sum(done), "elapsed": elapsed, "capped": sum(done) < count}


# -- the rig: broker, queues, consumer, hub, publishers -----------------------------------------------

HUB_CONF = """
[amqp]
url = "{url}"
{extra}
[[amqp.exchanges]]
name = "bench.transient"
type = "direct"
durable = false

[[amqp.exchanges]]
name = "bench.persistent"
type = "direct"
durable = true

[[amqp.queues]]
name = "bench.transient"
durable = false
bind = [{{exchange = "bench.transient", key = "opra"}}]

[[amqp.queues]]
name = "bench.persistent"
durable = true
bind = [{{exchange = "bench.persistent", key = "opra"}}]

[[routes]]
name = "transient"
match = "/transient/{{name}}"
amqp = {{exchange = "bench.transient", routing_key = "opra"}}

[[routes]]
name = "persistent"
match = "/persistent/{{name}}"
amqp = {{exchange = "bench.persistent", routing_key = "opra"}}
"""


def beam_pid(broker: RabbitBroker, timeout: float = 10.0) -> int:
    """The broker's beam.smp (the Erlang VM writes its OS pid to RABBITMQ_PID_FILE)."""
    path = Path(broker.env["RABBITMQ_PID_FILE"])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid = int(path.read_text().strip())
            if Path(f"/proc/{pid}/comm").read_text().strip() == "beam.smp":
                return pid
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"no beam.smp pid in {path}")


def declare(port: int) -> None:
    """The bench exchanges and queues, as the hub's config declares them (it re-declares them on connect)."""
    import pika

    params = pika.ConnectionParameters("127.0.0.1", port, credentials=pika.PlainCredentials("guest", "guest"),
                                       connection_attempts=1, socket_timeout=10)
    with pika.BlockingConnection(params) as conn:
        ch = conn.channel()
        for d in DURABILITIES:
            name = f"bench.{d}"
            ch.exchange_declare(name, "direct", durable=d == "persistent")
            ch.queue_declare(name, durable=d == "persistent")
            ch.queue_bind(name, name, KEY.decode())


def spooled_rows(hub: HubProcess) -> int:
    """Segments the hub ever appended to its spool (AUTOINCREMENT high-water mark): 0 unless it diverted."""
    conn = sqlite3.connect(f"file:{hub.spool_path}?mode=ro", uri=True, timeout=5)
    try:
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'segments'").fetchone()
        return row[0] if row else 0
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


class Rig:
    """The private broker (management plugin on, for its publish endpoint), the consumer and the hub."""

    def __init__(self, tmp: Path, args) -> None:
        self.procs: list = []
        try:
            self._start(tmp, args)
        except BaseException:
            self.stop()  # nothing started here outlives a failed start
            raise

    def _start(self, tmp: Path, args) -> None:
        self.broker = RabbitBroker(tmp / "broker", management=True)
        self.procs.append(self.broker)
        # The broker inherits this process's CPU set when it starts, and Erlang starts one scheduler per
        # CPU it may use: both cores (its default install) unless --broker-core pins it to one.
        self.pinned = bool(TASKSET) and (os.cpu_count() or 1) >= 2
        if self.pinned:
            os.sched_setaffinity(0, {args.broker_core} if args.broker_core >= 0 else set(range(2)))
        self.broker.start(timeout=90)
        if self.pinned:
            os.sched_setaffinity(0, {args.script_core})
        self.beam = beam_pid(self.broker)
        declare(self.broker.port)
        self.consumer = Consumer(self.broker.port)
        self.procs.append(self.consumer)
        extra = f"spool_after = {args.spool_after}" if args.spool_after is not None else ""
        self.hub = HubProcess(tmp / "hub", HUB_CONF.format(url=self.broker.url, extra=extra))
        self.procs.append(self.hub)
        self.hub.start()
        self.hub.pid = self.hub.process.pid
        pin_pid(self.hub.pid, HUB_CORE)

    def publisher(self, kind: str) -> Publisher:
        p = Publisher(kind, self.broker.port)
        self.procs.append(p)
        return p

    def measure(self, pid: int, fn, latency: bool = False, drain_timeout: float = 30.0) -> dict:
        """Run ``fn(start)`` (it calls ``start()`` as timing begins); CPU of publisher, broker and this script
        from then until the consumer has every message the run confirmed.  ``latency``: the consumer reads
        the send time in each body meanwhile, and the run gets its percentiles."""
        snap: dict = {}
        pids = {"pub": pid, "broker": self.beam, "script": os.getpid()}
        if pid != self.hub.pid:
            pids["hub"] = self.hub.pid  # idle in this run, but not "other" load

        def start() -> None:
            snap.update({k: cpu_seconds(p) for k, p in pids.items()}, t=perf_counter(), busy=busy_seconds())

        c0, spooled0 = self.consumer.count, spooled_rows(self.hub)
        self.consumer.latencies = [] if latency else None
        try:
            r = fn(start)
            r["drain"] = self.consumer.wait_for(c0 + r["count"], drain_timeout)
        finally:
            lat, self.consumer.latencies = self.consumer.latencies, None
        if latency:
            if len(lat) < r["count"]:
                raise RuntimeError(f"latency: {len(lat):,} send times read for {r['count']:,} messages")
            lat.sort()
            r.update(p50=percentile(lat, 0.50), p99=percentile(lat, 0.99), p999=percentile(lat, 0.999),
                     max=lat[-1] / 1e3)
        window = perf_counter() - snap["t"]
        ours: dict[int, float] = {}
        for k, p in pids.items():
            ours[p] = used = cpu_seconds(p) - snap[k]
            r[f"cpu_{k}"] = used / window
            r[f"us_{k}"] = used / max(1, r["count"]) * 1e6
        # Everything else the machine ran meanwhile (a shared, noisy machine: tests and benchmarks run beside it).
        r["others"] = max(0.0, busy_seconds() - snap["busy"] - sum(ours.values())) / window
        r["rate"] = r["count"] / r["elapsed"]
        # The hub diverts a route to its spool when the confirm window stays full for amqp.spool_after:
        # such a run is not the live publish path, and its row is flagged.
        r["spooled"] = spooled_rows(self.hub) - spooled0
        return r

    def stop(self) -> None:
        for proc in reversed(self.procs):
            try:
                proc.stop()
            except Exception as e:  # keep stopping the others
                print(f"stopping {proc!r}: {e}", file=sys.stderr)
        self.procs.clear()


def hub_compact(rig: Rig, durability: str, n: int, unit_n: int, timeout: float):
    unit = b"".join(b"+: 66\r\n" + b for b in bodies(unit_n))
    head = HEAD + b"B:/%s/opra\r\n" % durability.encode()

    def fn(start):
        start()
        return run_compact(rig.hub.compact_port, head, unit, unit_n, max(1, n // unit_n), timeout)
    return fn



# -- rounds and tables ---------------------------------------------------------------------------------


def rounds(rig: Rig, cases: dict, n_rounds: int, results: dict, what: str, latency: bool = False) -> None:
    """``cases``: label -> (pid, fn, warm-up fn or None); alternating order, swapped every round."""
    labels = list(cases)
    for label in labels:
        pid, _, warm = cases[label]
        if warm is not None:
            rig.measure(pid, warm)
        results.setdefault(label, [])
    for r in range(n_rounds):
        for label in labels if r % 2 == 0 else labels[::-1]:
            pid, fn, _ = cases[label]
            results[label].append(rig.measure(pid, fn, latency))
        print(f"  {what} round {r + 1}: " + ", ".join(
            f"{k} {results[k][-1]['rate']:,.0f}/s" for k in labels), file=sys.stderr, flush=True)


def percentile(ordered: list, q: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] / 1e3  # ns -> us


def med(xs) -> float:
    return statistics.median(xs)


def rate_table(results: dict, rows: list[tuple[str, str, str]]) -> list[str]:
    out = ["| Case | Publisher | Count/run | Rate per round (run order) | Median | Range | Publisher CPU per round "
           "| Broker CPU per round | Script CPU (median) | Others per round | Publisher us/msg (median) "
           "| Broker us/msg (median) |",
           "|---|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for label, case, publisher in rows:
        runs = results[label]
        rates = [x["rate"] for x in runs]
        capped = " (capped)" if any(x["capped"] for x in runs) else ""
        spooled = sum(x["spooled"] for x in runs)
        if spooled:
            capped += f" ({spooled:,} segments spooled)"
        out.append(
            f"| {case} | {publisher}{capped} | {runs[0]['count']:,} | {' '.join(fmt_rate(x) for x in rates)} "
            f"| {fmt_rate(med(rates))} | {fmt_rate(min(rates))}-{fmt_rate(max(rates))} "
            f"| {' '.join(format(x['cpu_pub'], '.0%') for x in runs)} "
            f"| {' '.join(format(x['cpu_broker'], '.0%') for x in runs)} "
            f"| {med(x['cpu_script'] for x in runs):.0%} | {' '.join(format(x['others'], '.0%') for x in runs)} "
            f"| {med(x['us_pub'] for x in runs):.1f} "
            f"| {med(x['us_broker'] for x in runs):.1f} |")
    return out


def ratio_table(results: dict, rows: list[tuple[str, str, str, float | None]]) -> tuple[list[str], dict]:
    out = ["| Ratio (same round) | Per round | Median | Range | Target |", "|---|---|--:|--:|---|"]
    verdicts = {}
    for title, code, ref, target in rows:
        q = [a["rate"] / b["rate"] for a, b in zip(results[code], results[ref])]
        verdict = "-"
        if target is not None:
            ok = med(q) >= target
            verdicts[title] = ok
            verdict = f">= {target:g}: {'met' if ok else 'MISSED'}"
            if any(x["spooled"] for x in results[code]):
                verdict += " (runs with spooled messages: not the live path)"
        fmt = (lambda x: f"{x:.1f}") if max(q) >= 10 else (lambda x: f"{x:.2f}")
        out.append(f"| {title} | {' '.join(fmt(x) for x in q)} | {fmt(med(q))} | {fmt(min(q))}-{fmt(max(q))} "
                   f"| {verdict} |")
    return out, verdicts


def sustained_table(results: dict, half: dict) -> list[str]:
    out = ["| Durability | Publisher | Messages | Acknowledged rate | Segments spooled by the hub "
           "| Consumer had all, s after "
           "the last ack | Delivered rate (to the last delivery) | Delivered / raw rounds' median "
           "| Publisher us/msg | Broker us/msg |",
           "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for d in DURABILITIES:
        for p, label in (("raw", "raw frames"), ("hub", "compact -> hub")):
            x = results[f"long {p} {d}"][0]
            delivered = x["count"] / (x["elapsed"] + x["drain"])
            out.append(f"| {d} | {label} | {x['count']:,} | {fmt_rate(x['rate'])}/s | {x['spooled']:,} "
                       f"| {x['drain']:.1f} | {fmt_rate(delivered)}/s | {delivered / (2 * half[d]):.2f} "
                       f"| {x['us_pub']:.1f} | {x['us_broker']:.1f} |")
    return out


def latency_table(results: dict, rows: list[tuple[str, str, str]]) -> list[str]:
    out = ["| Durability | Publisher | Paced rate | Messages/run | p50 per round (ms) | p99 per round (ms) "
           "| p50 (median) | p99 (median) | p99.9 (median) | Max (all rounds) | Publisher CPU (median) "
           "| Broker CPU (median) | Others per round |",
           "|---|---|--:|--:|---|---|--:|--:|--:|--:|--:|--:|--:|"]
    for label, durability, publisher in rows:
        runs = results[label]
        p50 = [x["p50"] / 1e3 for x in runs]
        p99 = [x["p99"] / 1e3 for x in runs]
        out.append(
            f"| {durability} | {publisher} | {fmt_rate(med(x['rate'] for x in runs))}/s | {runs[0]['count']:,} "
            f"| {' '.join(f'{x:.2f}' for x in p50)} | {' '.join(f'{x:.2f}' for x in p99)} | {med(p50):.2f} "
            f"| {med(p99):.2f} | {med(x['p999'] for x in runs) / 1e3:.2f} | {max(x['max'] for x in runs) / 1e3:.2f} "
            f"| {med(x['cpu_pub'] for x in runs):.0%} | {med(x['cpu_broker'] for x in runs):.0%} "
            f"| {' '.join(format(x['others'], '.0%') for x in runs)} |")
    return out


# -- profile --------------------------------------------------------------------------------------------


# Stages of the hub's work: each busy sample goes to the first of these found walking up from its leaf.
STAGES = (
    ("encode frames (AmqpSink.encode)", "AmqpSink.encode"),
    ("txamqp, per confirm frame (AMQClient.frame_received)", "AMQClient.frame_received"),
    ("confirm bookkeeping (AmqpForwarder.confirmed)", "AmqpForwarder.confirmed"),
    ("compact decode (Decoder.feed)", "Decoder.feed"),
    ("HTTP parse (HttpIngress.dataReceived)", "HttpIngress.dataReceived"),
    ("route and hand to the sink (IngressProtocol.route_batch)", "IngressProtocol.route_batch"),
    ("answers to producers (IngressProtocol.flush)", "IngressProtocol.flush"),
    ("socket writes (FileDescriptor.doWrite)", "FileDescriptor.doWrite"),
    ("txamqp frame splitting (FrameReceiver.dataReceived)", "FrameReceiver.dataReceived"),
    # The drain profile: the spool's threads and the dispatcher.
    ("spool writer thread: commits, done marks (Spool._commit)", "Spool._commit"),
    ("spool reader thread: SQLite and segment decode (_read_segments)", "_read_segments"),
    ("dispatcher bookkeeping (Dispatcher.pump, .settled)", "Dispatcher.pump"),
    ("dispatcher bookkeeping (Dispatcher.pump, .settled)", "Dispatcher.settled"),
)


def summarize_profile(raw: Path, top: int = 25) -> None:
    """py-spy's raw stacks -> shares of the *busy* samples (leaf frame not the reactor's epoll wait):
    self time by function and by line, total time by function."""
    by_line, by_function, inclusive, stages, samples, idle = Counter(), Counter(), Counter(), Counter(), 0, 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = []
        for frame in stack.split(";"):
            name, _, where = frame.rpartition(" (")
            where = where.rstrip(")").rsplit("/", 1)[-1]
            frames.append((name, where.split(":")[0], where))
        samples += int(count)
        name, file, where = frames[-1]
        if name == "EPollReactor.doPoll":
            idle += int(count)
            continue
        by_line[f"{name} ({where})"] += int(count)
        by_function[f"{name} ({file})"] += int(count)
        for name, file, _ in set(frames):
            inclusive[f"{name} ({file})"] += int(count)
        names = [f[0] for f in reversed(frames)]
        stages[next((label for n in names for label, key in STAGES if n == key), "other (reactor, reads, timers)")] \
            += int(count)
    busy = max(1, samples - idle)
    print(f"{samples} samples (all threads), {busy} busy (not waiting in epoll); raw stacks in {raw}")
    for title, table in (("stage", stages), ("self time, by function", by_function), ("self time, by line", by_line),
                         ("total time, by function", inclusive)):
        print(f"\nTop frames by {title}, share of busy samples:")
        for frame, count in table.most_common(top):
            print(f"  {count / busy:6.1%}  {frame}")


def profile(args, rig: Rig, tmp: Path) -> None:
    spy = shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy not found (pip install py-spy)")
    out = Path(args.profile_out or tmp / "profile.txt")
    if args.profile == "http":
        request = http_request(bodies(1)[0], b"/persistent/opra")

        def fn(start):
            start()
            return run_http(rig.hub.http_port, request, args.http_requests, 32, 64, args.http_window, args.timeout)
    else:
        fn = hub_compact(rig, args.profile, args.messages, args.unit, args.timeout)
    rig.measure(rig.hub.pid, hub_compact(rig, "transient", args.unit, args.unit, args.timeout))  # warm-up
    # py-spy beside the hub (core 1 is the broker's, and --nonblocking reads never stop the hub).
    pin = [TASKSET, "-c", str(HUB_CORE)] if rig.pinned else []
    spy_proc = subprocess.Popen(pin + [spy, "record", "--pid", str(rig.hub.pid), "--nonblocking", "--rate", "500",
                                 "--format", "raw", "--output", str(out), "--duration", "600"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    try:
        # Several runs, each shorter than spool_after: the live publish path only.
        for _ in range(3):
            r = rig.measure(rig.hub.pid, fn)
            print(f"{args.profile}: {r['count']:,} messages, {r['rate']:,.0f}/s under py-spy; hub "
                  f"{r['us_pub']:.1f} us/msg, broker {r['us_broker']:.1f} us/msg; "
                  f"{r['spooled']:,} segments spooled by the hub")
    finally:
        spy_proc.send_signal(2)
        spy_proc.wait(30)
    summarize_profile(out)


# -- main -----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--serve", nargs=2, metavar=("KIND", "PORT"), help=argparse.SUPPRESS)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--messages", type=int, default=150_000,
                   help="per raw and hub compact run (at the ceiling, shorter than the hub's spool_after)")
    p.add_argument("--unit", type=int, default=50_000, help="compact messages per pre-encoded unit")
    p.add_argument("--pika-messages", type=int, default=60_000, help="per pika run")
    p.add_argument("--http-requests", type=int, default=100_000, help="per hub plain-HTTP run")
    p.add_argument("--http-window", type=int, default=256, help="outstanding plain-HTTP requests per connection")
    p.add_argument("--mgmt-requests", type=int, default=2_000, help="per management API run")
    p.add_argument("--latency-seconds", type=float, default=2.0, help="per paced run")
    p.add_argument("--sustained-seconds", type=float, default=15.0,
                   help="length of the sustained runs at the raw ceiling (longer than the hub's spool_after)")
    p.add_argument("--window", type=int, default=10_000, help="unconfirmed messages, raw and pika publishers")
    p.add_argument("--broker-core", type=int, default=1, help="the broker's core (one scheduler); -1: both cores")
    p.add_argument("--script-core", type=int, default=1, help="this script's core (load generators, consumer)")
    p.add_argument("--spool-after", type=float, default=None, help="hub [amqp] spool_after (default: the hub's)")
    p.add_argument("--timeout", type=float, default=30.0, help="wall-clock cap per run, seconds")
    p.add_argument("--quick", action="store_true", help="a fifth of every count, 1 round (smoke test)")
    p.add_argument("--drain-messages", type=int, default=500_000, help="backlog per drain run, 66-byte bodies")
    p.add_argument("--drain-large-messages", type=int, default=50_000, help="backlog per drain run, large bodies")
    p.add_argument("--drain-large-size", type=int, default=4096, help="body size of the large drain shape")
    p.add_argument("--drain-only", action="store_true", help="only the drain rows (and their raw ceiling)")
    p.add_argument("--no-drain", action="store_true", help="skip the drain rows")
    p.add_argument("--read-bytes", type=int, default=None, help="hub [spool] read_bytes (default: the hub's)")
    p.add_argument("--profile", choices=("transient", "persistent", "http", "drain", "drain-large"),
                   help="profile one hub run with py-spy")
    p.add_argument("--profile-out", help="raw py-spy stacks (default: a temp file)")
    args = p.parse_args(argv)
    if args.serve:
        return serve(args.serve[0], int(args.serve[1]))
    if not installed():
        raise SystemExit("RabbitMQ is not installed (scripts/bootstrap test installs it)")
    if args.quick:
        args.rounds = 1
        for k in ("messages", "unit", "pika_messages", "http_requests", "mgmt_requests", "drain_messages",
                  "drain_large_messages"):
            setattr(args, k, getattr(args, k) // 5)
        args.latency_seconds /= 2
        args.sustained_seconds = 8.0
    args.messages = max(args.unit, args.messages // args.unit * args.unit)  # whole compact units
    args.messages = max(BATCH, args.messages // BATCH * BATCH)  # and whole raw batches
    shapes = [("66 B", 66, max(BATCH, args.drain_messages // BATCH * BATCH)),
              (f"{args.drain_large_size:,} B", args.drain_large_size,
               max(BATCH, args.drain_large_messages // BATCH * BATCH))]
    half: dict = {}
    t_start = perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="msghub-bench-amqp-"))
    rig = None
    results: dict = {}
    notes: list[str] = []
    try:
        rig = Rig(tmp, args)
        if args.profile in ("drain", "drain-large"):
            spy = shutil.which("py-spy")
            if spy is None:
                raise SystemExit("py-spy not found (pip install py-spy)")
            _, size, count = shapes[args.profile == "drain-large"]
            drain = amqp_drain.Drain(rig, None, HUB_CONF, tmp, args)
            return amqp_drain.profile_drain(drain, size, count, spy, Path(args.profile_out or tmp / "profile.txt"),
                                            summarize_profile)
        if args.profile:
            return profile(args, rig, tmp)
        raw = rig.publisher("raw")
        if args.drain_only:
            amqp_drain.run_rounds(amqp_drain.Drain(rig, raw, HUB_CONF, tmp, args), shapes, args.rounds, results)
        else:
            pk = rig.publisher("pika")
            n, w, to = args.messages, args.window, args.timeout
            request = http_request(bodies(1)[0], b"/persistent/opra")

            def http(count: int):
                def fn(start):
                    start()
                    return run_http(rig.hub.http_port, request, count, 32, 64, args.http_window, to)
                return fn

            def mgmt(count: int, conns: int):
                def fn(start):
                    start()
                    return run_mgmt(rig.broker.management_port, "persistent", count, conns, to)
                return fn

            def paced_run(paced_fn, port: int, d: str, rate: float, seconds: float, timeout: float):
                def fn(start):
                    start()
                    return paced_fn(port, d, rate, seconds, timeout)
                return fn

            def child(pub: Publisher, d: str, count: int, timeout: float = to):
                return lambda start: pub.run(d, count, w, timeout, start)

            cases = {}
            for d in DURABILITIES:
                cases[f"raw {d}"] = (raw.pid, child(raw, d, n), child(raw, d, max(BATCH, n // 10 // BATCH * BATCH)))
                cases[f"hub {d}"] = (rig.hub.pid, hub_compact(rig, d, n, args.unit, to),
                                     hub_compact(rig, d, args.unit, args.unit, to))
                cases[f"pika {d}"] = (pk.pid, child(pk, d, args.pika_messages),
                                      child(pk, d, args.pika_messages // 10))
            cases["hub http"] = (rig.hub.pid, http(args.http_requests), http(args.http_requests // 10))
            me = os.getpid()  # the management API's client is this script
            cases["mgmt 1"] = (me, mgmt(args.mgmt_requests, 1), mgmt(args.mgmt_requests // 10, 1))
            cases["mgmt 32"] = (me, mgmt(args.mgmt_requests, 32), None)
            rounds(rig, cases, args.rounds, results, "throughput")

            # Latency at half the raw ceiling measured above, per durability.
            half = {d: med(x["rate"] for x in results[f"raw {d}"]) / 2 for d in DURABILITIES}
            lat_cases = {}
            for d in DURABILITIES:
                for label, pid, paced_fn, port in ((f"lat raw {d}", me, paced_raw, rig.broker.port),
                                                   (f"lat hub {d}", rig.hub.pid, paced_compact, rig.hub.compact_port)):
                    lat_cases[label] = (pid, paced_run(paced_fn, port, d, half[d], args.latency_seconds, to), None)
            rounds(rig, lat_cases, args.rounds, results, "latency", latency=True)
            # Sustained: one run per publisher and durability lasting --sustained-seconds at the ceiling, longer
            # than the hub's amqp.spool_after (5 s by default).
            for d in DURABILITIES:
                n_long = max(1, round(2 * half[d] * args.sustained_seconds / args.unit)) * args.unit
                for label, pid, fn in ((f"long raw {d}", raw.pid, child(raw, d, n_long, 4 * to)),
                                       (f"long hub {d}", rig.hub.pid, hub_compact(rig, d, n_long, args.unit, 4 * to))):
                    results[label] = [rig.measure(pid, fn, drain_timeout=120)]
                    x = results[label][0]
                    print(f"  sustained {label}: {x['rate']:,.0f}/s acked, {x['spooled']:,} segments spooled, "
                          f"consumer done {x['drain']:.1f} s later", file=sys.stderr, flush=True)
            for d in DURABILITIES:
                runs = results[f"raw {d}"]
                per_k = sum(x["ack_frames"] for x in runs) / sum(x["count"] for x in runs) * 1000
                notes.append(f"raw {d}: the broker sent {per_k:.0f} basic.ack frames per 1,000 messages confirmed")
            if not args.no_drain:
                amqp_drain.run_rounds(amqp_drain.Drain(rig, raw, HUB_CONF, tmp, args), shapes, args.rounds, results)
            spooled = spooled_rows(rig.hub)
            notes.append(f"hub spool segments ever appended: {spooled:,}" + (
                " (0: every message went the live publish path)" if not spooled else
                " (the hub diverted to its spool: runs marked 'spooled' are not all the live publish path)"))
            notes.append(f"consumer received {rig.consumer.count:,} messages, every one the runs confirmed "
                         f"(checked after each run)")
    finally:
        if rig is not None:
            rig.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    elapsed = perf_counter() - t_start
    if not args.profile:
        report(args, argv, results, notes, elapsed, rig.pinned, half, shapes)


def report(args, argv, results: dict, notes: list[str], elapsed: float, pinned: bool, half: dict,
           shapes: list) -> None:
    cmd = ".venv/bin/python bench/amqp.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    broker = (f"broker on core {args.broker_core} (one scheduler)" if args.broker_core >= 0
              else "broker on both cores (two schedulers)")
    print(f"Command: `{cmd}`  ")
    print(f"Date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}  ")
    print(f"Python: {platform.python_implementation()} {platform.python_version()}, {platform.machine()}, "
          f"{os.cpu_count()} cores (shared); "
          + (f"hub and stand-in publishers on core {HUB_CORE}, {broker}, this script on core {args.script_core}  "
             if pinned else "not pinned (no taskset)  "))
    print(f"Broker: RabbitMQ {rabbit_version()} (management plugin on), one raw consumer (no-ack) draining both "
          f"queues throughout  ")
    print(f"Rounds: {args.rounds}, 66-byte bodies, window {args.window:,}, timeout {args.timeout:.0f} s per run; "
          f"wall time {elapsed:.0f} s")
    print()
    drain = [] if args.no_drain else [
        f"Drain of a spooled backlog (persistent route) beside the raw publisher, same messages and window "
        f"{args.window:,}" + (f", hub spool.read_bytes {args.read_bytes:,}" if args.read_bytes else "") + ":", "",
        *amqp_drain.tables(results, shapes, med), ""]
    if args.drain_only:
        print("\n".join(drain))
        return
    rows = []
    for d in DURABILITIES:
        rows += [(f"raw {d}", f"{d}", "raw frames (ceiling)"), (f"hub {d}", f"{d}", "compact -> hub"),
                 (f"pika {d}", f"{d}", "pika SelectConnection")]
    rows += [("hub http", "persistent", "plain HTTP, 32 conns -> hub"),
             ("mgmt 1", "persistent", "management API, 1 conn"), ("mgmt 32", "persistent", "management API, 32 conns")]
    print("\n".join(rate_table(results, rows)))
    print()
    table, verdicts = ratio_table(results, [
        ("transient: compact -> hub / raw", "hub transient", "raw transient", 0.8),
        ("persistent: compact -> hub / raw", "hub persistent", "raw persistent", 0.8),
        ("transient: pika / raw", "pika transient", "raw transient", None),
        ("persistent: pika / raw", "pika persistent", "raw persistent", None),
        ("transient: compact -> hub / pika", "hub transient", "pika transient", None),
        ("persistent: compact -> hub / pika", "hub persistent", "pika persistent", None),
        ("plain HTTP -> hub / management API, 1 conn", "hub http", "mgmt 1", 30),
        ("plain HTTP -> hub / management API, 32 conns", "hub http", "mgmt 32", None),
    ])
    print("\n".join(table))
    print()
    print(f"Latency, publish to consumer, paced at half the raw ceiling's median "
          f"({', '.join(f'{d} {fmt_rate(half[d])}/s' for d in DURABILITIES)}):")
    print()
    print("\n".join(latency_table(results, [(f"lat {p} {d}", d, label) for d in DURABILITIES
                                           for p, label in (("raw", "raw frames"), ("hub", "compact -> hub"))])))
    print()
    print(f"Sustained, one run each after the rounds, {args.sustained_seconds:g} s at the raw ceiling's median:")
    print()
    print("\n".join(sustained_table(results, half)))
    print()
    print("\n".join(drain))
    for note in notes:
        print(f"- {note}")


def rabbit_version() -> str:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "rabbitmq-server"], capture_output=True,
                             text=True, timeout=10).stdout
        return out.split("-")[0] or "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


if __name__ == "__main__":
    main()
