"""A producer's ack latency while a large webhook backlog drains (issue: nothing blocks the reactor).

Claim (docs/benchmarks.md): while a 1 GiB backlog drains from the spool to a
webhook receiver, a compact producer on another route keeps its ack latency
p99 under 50 ms.

Set-up, per round:

1. A spool is filled offline (``msghub.spool.Spool`` in this process) with
   ``--backlog-bytes`` of ``--body`` byte messages under the target's spool
   name, and the target is recorded as disabled, so the hub starts with the
   whole backlog queued and nothing moving.
2. The real hub (``twistd -n msghub`` via ``msghub.testing.HubProcess``)
   opens it.  The receiver (a bare ``Protocol`` with httptools in its own
   process, answering ``204`` on keep-alive connections) counts what arrives.
3. **idle**: a compact producer sends ``--rate`` 66-byte messages/s to a
   ``spool`` route for ``--seconds``, one write per millisecond tick, and
   records each message's ack latency (send time to the ``A:`` line that
   covers it).  This is the baseline, on the same hub in the same run.
4. **drain**: ``msghub-spool enable`` lets the target go; the same producer
   runs for as long as the backlog takes to drain (at most ``--timeout``),
   and the drain is timed from the enable to the receiver holding every
   message.

Reported: deliveries/s and MB/s of the drain, and p50/p99/max ack latency of
the producer in both phases.

    .venv/bin/python bench/backlog.py [--backlog-bytes N] [--body B] [--rounds R] [--rate M]
"""

from __future__ import annotations

import argparse
import os
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from time import perf_counter

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RECEIVER = textwrap.dedent(
    """
    import sys, httptools
    from twisted.internet import reactor, protocol, task
    RESPONSE = b"HTTP/1.1 204 No Content\\r\\n\\r\\n"
    total = [0]
    class Receiver(protocol.Protocol):
        def connectionMade(self):
            self.parser = httptools.HttpRequestParser(self)
            self.complete = 0
        def on_message_complete(self):
            self.complete += 1
        def dataReceived(self, data):
            self.complete = 0
            self.parser.feed_data(data)
            if self.complete:
                total[0] += self.complete
                self.transport.write(RESPONSE * self.complete)
    def report():
        sys.stdout.write("%d\\n" % total[0])
        sys.stdout.flush()
    factory = protocol.Factory.forProtocol(Receiver)
    factory.noisy = False
    reactor.listenTCP(int(sys.argv[1]), factory, interface="127.0.0.1")
    print("ready", flush=True)
    task.LoopingCall(report).start(0.05)
    reactor.run()
    """
)

CONF = """
[webhooks.sink]
url = "http://127.0.0.1:{port}/in"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
concurrency = {concurrency}

[[routes]]
name = "hooks"
match = "/hooks/{{x}}"
webhooks = ["sink"]

[[routes]]
name = "probe"
match = "/probe/{{x}}"
spool = "probe"
"""

HEAD = b"H:Content-Type: application/x-opra-quote\r\nB:/probe/opra\r\n"
PROBE_BODY = 66


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prefill(path: str, count: int, body_size: int) -> None:
    """``count`` messages for webhook target ``sink``, committed, with the target disabled.

    In a child process: ``task.react`` ends its reactor for good.
    """
    code = subprocess.call([sys.executable, "-c", (
        "import sys; sys.path.insert(0, %r); import backlog; "
        "from twisted.internet import task; task.react(backlog._fill, [%r, %d, %d])"
    ) % (str(Path(__file__).parent), path, count, body_size)], cwd=str(REPO))
    if code:
        raise RuntimeError(f"prefill failed with {code}")


def _fill(reactor, path: str, count: int, body_size: int):
    from twisted.internet import defer

    from msghub.message import Message
    from msghub.spool import Spool

    body = (b"x" * (body_size - 1)) + b"\n"
    headers = ((b"Content-Type", b"application/octet-stream"),)

    @defer.inlineCallbacks
    def go():
        spool = Spool(path, reactor, synchronous="normal")
        spool.open()
        first = spool.reserve_ids(count)
        step = max(1, (8 << 20) // body_size)
        for i in range(0, count, step):
            n = min(step, count - i)
            yield spool.append("webhook:sink", [
                Message(first + i + k, b"POST", b"/hooks/x", headers, body, "hooks", None, {}, 0.0)
                for k in range(n)
            ])
        yield spool.set_disabled("webhook:sink", "backlog benchmark", time.time())
        yield spool.close()

    return go()


class Receiver:
    def __init__(self, port: int) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", RECEIVER, str(port)], stdout=subprocess.PIPE)
        if self.proc.stdout.readline().strip() != b"ready":
            raise RuntimeError("receiver did not start")
        self.count = 0
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.count = int(line)

    def wait_for(self, n: int, timeout: float) -> float | None:
        """Seconds until ``n`` arrived, or None at the timeout."""
        t0 = perf_counter()
        while perf_counter() - t0 < timeout:
            if self.count >= n:
                return perf_counter() - t0
            time.sleep(0.01)
        return None

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


def probe(port: int, rate: float, stop: threading.Event, seconds: float, timeout: float) -> list[float]:
    """Paced compact messages until ``stop`` (or ``seconds``); each one's ack latency in seconds."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(HEAD)
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    message = b"+: %d\r\n%s" % (PROBE_BODY, b"q" * PROBE_BODY)
    sent_at: list[float] = []
    latencies: list[float] = []
    acked = 0
    tail = b""
    pending = b""
    t0 = perf_counter()
    deadline = t0 + timeout
    try:
        while True:
            now = perf_counter()
            if now >= deadline:
                raise RuntimeError(f"probe: {acked} of {len(sent_at)} acked after {timeout} s")
            sending = not stop.is_set() and now - t0 < seconds
            if sending and not pending:
                due = int((now - t0) * rate) + 1 - len(sent_at)
                if due > 0:
                    sent_at.extend([now] * due)
                    pending = message * due
            if pending:
                try:
                    n = sock.send(pending)
                except BlockingIOError:
                    n = 0
                pending = pending[n:]
            elif not sending and acked == len(sent_at):
                return latencies
            for _ in sel.select(0.001):
                try:
                    data = sock.recv(1 << 16)
                except BlockingIOError:
                    continue
                if not data:
                    raise RuntimeError("probe: connection closed")
                got = perf_counter()
                buf = tail + data
                end = buf.rfind(b"\r\n")
                if end < 0:
                    tail = buf
                    continue
                lines, tail = buf[:end], buf[end + 2:]
                if b"E:" in lines or b"X:" in lines:
                    raise RuntimeError(f"probe: hub refused: {lines[:200]!r}")
                upto = int(lines[lines.rfind(b"A:") + 2:].split(b"\r\n", 1)[0])
                latencies.extend(got - t for t in sent_at[acked:upto])
                acked = upto
    finally:
        sel.close()
        sock.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def one_round(args, workdir: Path) -> dict:
    from msghub.testing import HubProcess

    count = args.backlog_bytes // args.body
    spool_path = str(workdir / "spool.db")
    t0 = perf_counter()
    prefill(spool_path, count, args.body)
    fill_s = perf_counter() - t0
    # A real backlog built up over time is on disk long before it drains: do
    # not let the first fsync of the drain pay for writing the prefill back.
    os.sync()
    port = free_port()
    receiver = Receiver(port)
    hub = HubProcess(workdir / "hub", CONF.format(port=port, concurrency=args.concurrency), spool_path=spool_path)
    out: dict = {"count": count, "fill_s": fill_s}
    try:
        hub.start(timeout=120)
        idle = probe(hub.compact_port, args.rate, threading.Event(), args.seconds, args.timeout)
        stop = threading.Event()
        result: dict = {}
        thread = threading.Thread(target=lambda: result.update(
            lat=probe(hub.compact_port, args.rate, stop, args.timeout, args.timeout + 30)))
        thread.start()
        try:
            subprocess.check_call(
                [sys.executable, "-m", "msghub.spoolcli", "-c", str(hub.conf_path), "enable", "sink"],
                cwd=str(REPO), stdout=subprocess.DEVNULL,
            )
            drain_s = receiver.wait_for(count, args.timeout)
        finally:
            stop.set()
            thread.join(args.timeout + 60)
        if drain_s is None:
            raise RuntimeError(f"drain: {receiver.count:,} of {count:,} delivered in {args.timeout} s")
        out.update(idle=idle, drain=result["lat"], drain_s=drain_s)
    finally:
        hub.stop()
        receiver.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backlog-bytes", type=int, default=1 << 30)
    p.add_argument("--body", type=int, default=16384, help="backlog body bytes")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--rate", type=float, default=2000.0, help="probe messages/s")
    p.add_argument("--seconds", type=float, default=5.0, help="idle probe length")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--timeout", type=float, default=180.0)
    args = p.parse_args(argv)
    rows = []
    for i in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="msghub-backlog-") as d:
            r = one_round(args, Path(d))
        rows.append(r)
        mb = r["count"] * args.body / r["drain_s"] / 1e6
        print(f"round {i + 1}: filled {r['count']:,} x {args.body:,} B in {r['fill_s']:.1f} s; drained in "
              f"{r['drain_s']:.1f} s = {r['count'] / r['drain_s']:,.0f} deliveries/s, {mb:,.0f} MB/s", flush=True)
        for phase in ("idle", "drain"):
            lat = r[phase]
            print(f"  producer ack latency, {phase:>5}: {len(lat):,} messages, p50 "
                  f"{percentile(lat, 0.5) * 1e3:.1f} ms, p99 {percentile(lat, 0.99) * 1e3:.1f} ms, "
                  f"max {max(lat) * 1e3:.1f} ms", flush=True)
    rates = [r["count"] / r["drain_s"] for r in rows]
    p99 = [percentile(r["drain"], 0.99) * 1e3 for r in rows]
    idle99 = [percentile(r["idle"], 0.99) * 1e3 for r in rows]
    print(f"drain: median {statistics.median(rates):,.0f} deliveries/s (range {min(rates):,.0f}-{max(rates):,.0f})")
    print(f"producer p99 during drain: median {statistics.median(p99):.1f} ms (range {min(p99):.1f}-{max(p99):.1f});"
          f" idle {statistics.median(idle99):.1f} ms; target < 50 ms: "
          f"{'met' if max(p99) < 50 else 'MISSED'}")


if __name__ == "__main__":
    main()
