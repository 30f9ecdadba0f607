"""Fan-out to SSE subscribers: a route tap and an AMQP binding, beside a bare Twisted SSE writer.

Claim (issue 11, point 7): messages/s delivered to 1, 10 and 100 SSE
subscribers of one subscription, each subscriber's count equal to the
published count or its gaps reported, compared with the ceiling of Twisted
itself writing the same event bytes to the same number of sockets.

Rows, one per source and fan-out, in one run:

- **bare twisted**: a child process (this script, ``--bare``) that accepts the
  subscribers, then writes pre-encoded events (``msghub.push.events``, 66-byte
  bodies, 100 per write) to every socket, pausing while any transport says
  its buffer is full: no ingress, no router, no tap; the writing ceiling.
- **tap**: the real ``twistd -n msghub``; one compact connection
  (``msghub.client.CompactSender.send_many``) POSTs to a discard route; the
  subscribers read ``/tap/bench``, a tap of that route.
- **amqp binding**: the same hub, with ``[amqp]`` on a private broker
  (``msghub.testing_broker``): the route publishes (confirmed) to a transient
  topic exchange, each subscriber of ``/sub/bench`` has its own queue bound
  to it, consumed by the hub and written as SSE.

The subscribers are N plain sockets in one child process (``--read``) that
counts ``id:`` lines and sums the ``missed`` of ``event: gap``.  A row's rate
is messages published / (last event read by the slowest subscriber - first
byte published); deliveries/s is that times N.  Hub CPU is utime+stime from
/proc over the row.  Every process shares the machine's cores.

    .venv/bin/python bench/push.py [--scale S] [--rounds R] [--no-amqp]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from msghub.client import CompactSender  # noqa: E402
from msghub.push.events import HELLO, encode_event, field_text  # noqa: E402
from msghub.testing import HubProcess, free_port  # noqa: E402
from msghub.testing_broker import RabbitBroker, installed  # noqa: E402

FANOUTS = (1, 10, 100)
MESSAGES = {"bare twisted": 200_000, "tap": 200_000, "amqp binding": 50_000}  # at fan-out 1; / sqrt(N) beyond
UNIT = 1000  # messages per send_many call
HEADERS = {"Content-Type": "application/x-opra-quote"}
BUFFER = 64 << 20  # subscribers' buffer_bytes: larger than any row's stream, so a gap means a real overflow
_GAP = re.compile(rb"event: gap\ndata: (\{[^\n]*\})\n")
_ID = b"\nid: "

CONF = """
[[routes]]
name = "bench"
match = "/tap/{{x}}"
discard = true

[[subscriptions]]
match = "/tap/bench"
route = "bench"
buffer_bytes = {buffer}
history_bytes = 0
"""
AMQP_CONF = """
[amqp]
url = "{url}"
[[amqp.exchanges]]
name = "push.bench"
type = "topic"
durable = false
auto_delete = false

[[routes]]
name = "amqp"
match = "/amqp/{{x}}"
amqp = {{exchange = "push.bench", routing_key = "bench"}}

[[subscriptions]]
match = "/sub/bench"
amqp = {{exchange = "push.bench", binding = "bench"}}
buffer_bytes = {buffer}
"""


def bodies(n: int) -> list[bytes]:
    """66-byte OPRA-like quotes, numbered."""
    tail = b"OPRA|SPY   260619C00550000|B 12.34x50|A 12.41x75|".ljust(66 - 14, b"~")
    return [b"Q%012d|" % i + tail for i in range(n)]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a whole process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- child: the subscribers ----------------------------------------------------------------------


def read_main(port: int, path: str, n: int, expected: int, timeout: float) -> None:
    """Open ``n`` subscribers, say "ready", count events until each has ``expected`` (or goes idle)."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"GET %s HTTP/1.1\r\nHost: b\r\nAccept: text/event-stream\r\n\r\n" % path.encode())
        socks.append(s)
    starts = []
    for s in socks:  # the head and the ": ok" comment: attached
        data = b""
        while HELLO not in data:
            chunk = s.recv(1 << 16)
            if not chunk:
                raise SystemExit(f"subscriber closed before attaching: {data[:200]!r}")
            data += chunk
        starts.append(data.split(HELLO, 1)[1])
    print("ready", flush=True)
    counts, missed, last = [0] * n, [0] * n, [0.0] * n
    tails, gap_tails = [b"\n"] * n, [b""] * n
    sel = selectors.DefaultSelector()
    for i, s in enumerate(socks):
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
    open_ = n

    def take(i: int, chunk: bytes) -> None:
        buf = tails[i] + chunk
        counts[i] += buf.count(_ID)
        tails[i] = buf[-4:]
        if b"gap" in gap_tails[i] + chunk:
            gbuf = gap_tails[i] + chunk
            for m in _GAP.finditer(gbuf):
                missed[i] += json.loads(m.group(1))["missed"] or 0
            end = gbuf.rfind(b"\n\n")
            gap_tails[i] = gbuf[end + 2:][-512:] if end >= 0 else gbuf[-512:]
        else:
            gap_tails[i] = chunk[-512:]
        last[i] = time.monotonic()

    for i, rest in enumerate(starts):
        if rest:
            take(i, rest)
    deadline = time.monotonic() + timeout
    idle_since = time.monotonic()
    while open_ and time.monotonic() < deadline and time.monotonic() - idle_since < 5.0:
        if all(c + m >= expected for c, m in zip(counts, missed)):
            break
        for key, _ in sel.select(0.5):
            i = key.data
            try:
                chunk = key.fileobj.recv(1 << 18)
            except BlockingIOError:
                continue
            if not chunk:
                sel.unregister(key.fileobj)
                open_ -= 1
                continue
            take(i, chunk)
            idle_since = time.monotonic()
    for s in socks:
        s.close()
    print(json.dumps({"counts": counts, "missed": missed, "last": max(last)}), flush=True)


# -- child: the bare Twisted SSE writer ----------------------------------------------------------


def bare_main(port: int, n: int, total: int) -> None:
    from twisted.internet import reactor
    from twisted.internet.interfaces import IPushProducer
    from twisted.internet.protocol import Factory, Protocol
    from zope.interface import implementer

    event = field_text("bench")
    batch = b"".join(encode_event("1-%010x" % i, event, body) for i, body in enumerate(bodies(100)))
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
            b"Cache-Control: no-store\r\nConnection: close\r\n\r\n" + HELLO)
    conns: list = []
    state = {"sent": 0, "paused": 0, "scheduled": False}

    @implementer(IPushProducer)
    class Sse(Protocol):
        buf = b""
        paused = False

        def dataReceived(self, data: bytes) -> None:
            self.buf += data
            if b"\r\n\r\n" in self.buf and self not in conns:
                self.transport.registerProducer(self, True)
                self.transport.write(head)
                conns.append(self)
                if len(conns) == n:
                    print("start", time.monotonic(), flush=True)
                    schedule()

        def pauseProducing(self) -> None:
            if not self.paused:
                self.paused = True
                state["paused"] += 1

        def resumeProducing(self) -> None:
            if self.paused:
                self.paused = False
                state["paused"] -= 1
                schedule()

        def stopProducing(self) -> None:
            pass

    def schedule() -> None:
        if not state["scheduled"] and state["sent"] < total:
            state["scheduled"] = True
            reactor.callLater(0, pump)

    def pump() -> None:
        state["scheduled"] = False
        for _ in range(16):  # then let the reactor write
            if state["paused"] or state["sent"] >= total:
                return
            for p in conns:
                p.transport.write(batch)
            state["sent"] += 100
        schedule()

    factory = Factory.forProtocol(Sse)
    reactor.listenTCP(port, factory, interface="127.0.0.1")
    print("listening", flush=True)
    reactor.run()


# -- the parent: rows ----------------------------------------------------------------------------


def spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)


def readers(port: int, path: str, n: int, expected: int, timeout: float) -> subprocess.Popen:
    proc = spawn("--read", str(port), path, str(n), str(expected), str(timeout))
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.kill()
        raise RuntimeError(f"readers did not attach: {line!r}")
    return proc


def finish(proc: subprocess.Popen, timeout: float) -> dict:
    out, _ = proc.communicate(timeout=timeout + 30)
    return json.loads(out.strip().splitlines()[-1])


def row(result: dict, total: int, start: float, n: int, cpu: float | None) -> dict:
    counts, missed = result["counts"], result["missed"]
    ok = sum(1 for c, m in zip(counts, missed) if c == total and m == 0)
    gapped = [(c, m) for c, m in zip(counts, missed) if m]
    short = [c for c, m in zip(counts, missed) if c + m < total]
    elapsed = max(result["last"] - start, 1e-9)  # nothing read at all: a rate of ~0, and "short" says why
    return {
        "n": n, "published": total, "elapsed": elapsed, "rate": total / elapsed if result["last"] else 0.0, "deliveries": total * n / elapsed,
        "complete": ok, "gapped": gapped, "short": short, "cpu_us": None if cpu is None else cpu / (total * n) * 1e6,
    }


def run_bare(n: int, total: int, timeout: float) -> dict:
    port = free_port()
    writer = spawn("--bare", str(port), str(n), str(total))
    try:
        assert writer.stdout.readline().strip() == "listening"
        proc = readers(port, "/bare", n, total, timeout)
        start = float(writer.stdout.readline().split()[1])
        cpu0 = cpu_seconds(writer.pid)
        result = finish(proc, timeout)
        return row(result, total, start, n, cpu_seconds(writer.pid) - cpu0)
    finally:
        writer.kill()
        writer.wait(10)


def run_hub(hub: HubProcess, route: str, path: str, n: int, total: int, timeout: float) -> dict:
    proc = readers(hub.http_port, path, n, total, timeout)
    unit = bodies(UNIT)
    cpu0 = cpu_seconds(hub.process.pid)
    start = time.monotonic()
    with CompactSender("127.0.0.1", hub.compact_port, window=50_000) as sender:
        for _ in range(total // UNIT):
            sender.send_many(route, unit, HEADERS)
        sender.flush(timeout)
    result = finish(proc, timeout)
    return row(result, total, start, n, cpu_seconds(hub.process.pid) - cpu0)


def messages(source: str, n: int, scale: float) -> int:
    return max(UNIT, int(MESSAGES[source] * scale / n ** 0.5) // UNIT * UNIT)


def table(results: dict) -> list[str]:
    lines = [
        "| Source | Subscribers | Published | msg/s to each (median) | deliveries/s | vs bare | complete | gaps / short | CPU us/delivery |",
        "|---|--:|--:|--:|--:|--:|--:|---|--:|",
    ]
    for (source, n), runs in results.items():
        rate = statistics.median(r["rate"] for r in runs)
        bare = results.get(("bare twisted", n))
        ratio = "" if bare is None else f"{rate / statistics.median(r['rate'] for r in bare):.2f}"
        r = runs[-1]
        problems = []
        if any(x["gapped"] for x in runs):
            problems.append("gaps " + "; ".join(f"{c}+{m} missed" for x in runs for c, m in x["gapped"][:3]))
        if any(x["short"] for x in runs):
            problems.append("short " + ", ".join(str(c) for x in runs for c in x["short"][:3]))
        cpu = statistics.median(x["cpu_us"] for x in runs)
        lines.append(
            f"| {source} | {n} | {r['published']:,} | {rate:,.0f} | {rate * n:,.0f} | {ratio} "
            f"| {sum(x['complete'] for x in runs)}/{n * len(runs)} | {' '.join(problems) or 'none'} | {cpu:.2f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scale", type=float, default=1.0, help="multiplies every row's message count")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--no-amqp", action="store_true", help="skip the AMQP rows (no broker started)")
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--read", nargs=5, help=argparse.SUPPRESS)
    p.add_argument("--bare", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.read:
        port, path, n, expected, timeout = args.read
        return read_main(int(port), path, int(n), int(expected), float(timeout))
    if args.bare:
        return bare_main(*(int(x) for x in args.bare))

    started = datetime.datetime.now(datetime.timezone.utc)
    tmp = Path(tempfile.mkdtemp(prefix="push-", dir="/tmp/sse2" if Path("/tmp/sse2").is_dir() else None))
    results: dict = {}
    broker = None
    with_amqp = not args.no_amqp and installed()
    conf = CONF.format(buffer=BUFFER)
    try:
        if with_amqp:
            broker = RabbitBroker(tmp / "rabbit").start()
            conf += AMQP_CONF.format(url=broker.url, buffer=BUFFER)
        hub = HubProcess(tmp / "hub", conf).start()
        try:
            for _ in range(args.rounds):
                for n in FANOUTS:
                    cases = [("bare twisted", lambda t: run_bare(n, t, args.timeout)),
                             ("tap", lambda t: run_hub(hub, "/tap/x", "/tap/bench", n, t, args.timeout))]
                    if with_amqp:
                        cases.append(("amqp binding",
                                      lambda t: run_hub(hub, "/amqp/x", "/sub/bench", n, t, args.timeout)))
                    for source, fn in cases:
                        result = fn(messages(source, n, args.scale))
                        results.setdefault((source, n), []).append(result)
                        print(f"{source:>13} x{n:<3} {result['rate']:>10,.0f} msg/s to each, "
                              f"complete {result['complete']}/{n}, gaps {result['gapped'][:2]}, "
                              f"short {result['short'][:2]}", file=sys.stderr, flush=True)
        finally:
            hub.stop()
    finally:
        if broker is not None:
            broker.stop()
    load = os.getloadavg()
    print(f"Command: `.venv/bin/python bench/push.py {' '.join(argv if argv is not None else sys.argv[1:])}`".rstrip())
    print(f"Date: {started:%Y-%m-%d %H:%M} UTC")
    print(f"Python: {platform.python_implementation()} {platform.python_version()}, {platform.machine()}, "
          f"{os.cpu_count()} cores; load average after the run {load[0]:.2f}")
    print()
    print("\n".join(table(results)))


if __name__ == "__main__":
    main()
