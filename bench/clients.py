"""Producer-side throughput: msghub.client and msghub-send beside a pre-encoded socket blast.

Claims (issue 12):

1. the blocking ``CompactSender`` and ``msghub-send`` are not the bottleneck:
   each sends OPRA-sized messages (66-octet body, Content-Type and
   Accept-Encoding headers) to a ``discard = true`` route at >= 0.5x the rate
   that a pre-encoded socket blast of the same stream gets through the same
   hub in the same run; wire bytes per message are the codec's 73;
2. the gateway pair (compress -> compact -> decompress) in front of an HTTP
   server costs a known factor against talking HTTP to it directly.

How it runs: one real hub (``twistd -n msghub`` via ``HubProcess``) with a
discard route.  **blast**: the stream's header lines, then one pre-encoded
unit of 100,000 ``+: 66`` messages written ``N / 100,000`` times over one
blocking socket while a thread reads the ``A:`` lines; timed from the first
byte to the ack of the last message.  **client**: ``CompactSender.send`` in a
loop, then ``flush()``; timed the same way; **client send_many**: the same
through ``send_many`` (bodies in lists of 4096).  **msghub-send**: the console
script (a subprocess) reading N lines from a file; its own summary gives
the rate (from start to the last ack) and the bytes.  **gateway**:
``HttpSender`` (64 pipelined) sends M messages to the hub's plain HTTP port
directly, then through ``msghub-gateway compress`` -> ``msghub-gateway
decompress`` -> the same port (both gateways are subprocesses).  Rounds
alternate the order of blast and client.  Beside each rate: the hub's CPU
per message (/proc/PID/stat), the sender's (process_time, or RUSAGE_CHILDREN
for msghub-send), and for the pair the two gateways' CPU.

    .venv/bin/python bench/clients.py [--messages N] [--gateway-messages M] [--rounds R]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from msghub.client import CompactSender, HttpSender  # noqa: E402
from msghub.testing import HubProcess, free_port  # noqa: E402

BODY = b"OPRA" + b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"[:62]  # 66 octets
assert len(BODY) == 66
HEADERS = {"Content-Type": "application/x-opra-quote", "Accept-Encoding": "identity"}
HEAD = b"H:Content-Type:application/x-opra-quote\r\nH:Accept-Encoding:identity\r\nB:/discard/opra\r\n"
UNIT = 100_000
ROUTES = """
[[routes]]
name = "discard"
match = "/discard/{name}"
discard = true
"""


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(hub_pid: int, fn, *args) -> dict:
    """Run ``fn``; add the hub's and this process's CPU microseconds per message."""
    hub0, own0 = cpu_seconds(hub_pid), time.process_time()
    result = fn(*args)
    n = args[1]
    result["hub_us"] = (cpu_seconds(hub_pid) - hub0) / n * 1e6
    result.setdefault("client_us", (time.process_time() - own0) / n * 1e6)
    return result


def blast(port: int, n: int) -> dict:
    unit = b"+: 66\r\n" + BODY
    count = min(UNIT, n)
    chunk = unit * count
    repeats, rest = divmod(n, count)
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    done = threading.Event()
    last = [0]

    def read():
        buf = b""
        while last[0] < n:
            data = sock.recv(65536)
            if not data:
                break
            buf += data
            end = buf.rfind(b"\r\n")
            if end < 0:
                continue
            for line in buf[:end].split(b"\r\n"):
                if line.startswith(b"A:"):
                    last[0] = int(line[2:])
                elif line:
                    raise RuntimeError(f"unexpected reply {line!r}")
            buf = buf[end + 2 :]
        done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    start = time.perf_counter()
    sock.sendall(HEAD)
    for _ in range(repeats):
        sock.sendall(chunk)
    if rest:
        sock.sendall(unit * rest)
    done.wait(600)
    elapsed = time.perf_counter() - start
    sock.close()
    wire = len(HEAD) + len(unit) * n
    assert last[0] == n, f"blast: acked {last[0]} of {n}"
    return {"rate": n / elapsed, "seconds": elapsed, "bytes": wire / n}


def client(port: int, n: int) -> dict:
    start = time.perf_counter()
    sender = CompactSender("127.0.0.1", port)
    send = sender.send
    for _ in range(n):
        send("/discard/opra", BODY, HEADERS)
    sender.flush()
    elapsed = time.perf_counter() - start
    sender.close()
    assert sender.acked == n
    return {"rate": n / elapsed, "seconds": elapsed, "bytes": sender.wire_bytes / n}


def client_many(port: int, n: int) -> dict:
    start = time.perf_counter()
    sender = CompactSender("127.0.0.1", port)
    bodies = [BODY] * 4096
    left = n
    while left:
        k = min(left, len(bodies))
        sender.send_many("/discard/opra", bodies[:k] if k < len(bodies) else bodies, HEADERS)
        left -= k
    sender.flush()
    elapsed = time.perf_counter() - start
    sender.close()
    assert sender.acked == n
    return {"rate": n / elapsed, "seconds": elapsed, "bytes": sender.wire_bytes / n}


SUMMARY = re.compile(r"sent (\d+), acknowledged (\d+).*?([\d.]+) wire bytes/message, ([\d,]+) msg/s in ([\d.]+) s")


def sendcli(port: int, n: int, lines: Path) -> dict:
    import resource

    child0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "msghub.sendcli", "-H", "Content-Type: application/x-opra-quote",
         "-H", "Accept-Encoding: identity", f"compact://127.0.0.1:{port}/discard/opra", str(lines)],
        capture_output=True, text=True, cwd=REPO, timeout=1800,
    )
    wall = time.perf_counter() - start
    m = SUMMARY.search(done.stderr)
    assert done.returncode == 0 and m and int(m.group(2)) == n, done.stderr
    seconds = float(m.group(5))
    child = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = child.ru_utime + child.ru_stime - child0.ru_utime - child0.ru_stime
    return {"rate": n / seconds, "seconds": seconds, "bytes": float(m.group(3)), "wall": wall,
            "client_us": cpu / n * 1e6}


def http_rate(port: int, n: int) -> dict:
    start = time.perf_counter()
    sender = HttpSender("127.0.0.1", port)
    for _ in range(n):
        sender.send("/discard/opra", BODY, HEADERS)
    sender.flush()
    elapsed = time.perf_counter() - start
    sender.close()
    assert sender.acked == n
    return {"rate": n / elapsed, "seconds": elapsed, "bytes": sender.wire_bytes / n}


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} not listening")


def gateways(http_port: int) -> tuple[list[subprocess.Popen], int]:
    compact_port, front_port = free_port(), free_port()
    gw = [sys.executable, "-m", "msghub.gateway"]
    down = subprocess.Popen(gw + ["decompress", "--listen", f"tcp:{compact_port}:interface=127.0.0.1",
                                  "--upstream", f"http://127.0.0.1:{http_port}"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(compact_port, down)
    up = subprocess.Popen(gw + ["compress", "--listen", f"tcp:{front_port}:interface=127.0.0.1",
                                "--upstream", f"compact://127.0.0.1:{compact_port}"],
                          cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(front_port, up)
    return [up, down], front_port


def fmt(x: float) -> str:
    return f"{x:,.0f}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=1_000_000)
    p.add_argument("--gateway-messages", type=int, default=50_000)
    p.add_argument("--rounds", type=int, default=1)
    args = p.parse_args(argv)
    n = args.messages
    with tempfile.TemporaryDirectory(prefix="msghub-bench-clients-") as tmp:
        tmp = Path(tmp)
        lines = tmp / "bodies.txt"
        with open(lines, "wb") as f:
            block = (BODY + b"\n") * 10_000
            for _ in range(n // 10_000):
                f.write(block)
            f.write((BODY + b"\n") * (n % 10_000))
        hub = HubProcess(tmp / "hub", ROUTES).start()
        results: dict[str, list[dict]] = {"blast": [], "client": [], "client send_many": [], "msghub-send": [], "http direct": [],
                                          "http via gateway pair": []}
        try:
            for r in range(args.rounds):
                order = [("blast", blast), ("client", client), ("client send_many", client_many)]
                if r % 2:
                    order.reverse()
                for name, fn in order:
                    results[name].append(measured(hub.process.pid, fn, hub.compact_port, n))
                    print(f"round {r + 1}: {name}: {fmt(results[name][-1]['rate'])} msg/s", file=sys.stderr)
                results["msghub-send"].append(measured(hub.process.pid, sendcli, hub.compact_port, n, lines))
                print(f"round {r + 1}: msghub-send: {fmt(results['msghub-send'][-1]['rate'])} msg/s", file=sys.stderr)
            m = args.gateway_messages
            procs, front = gateways(hub.http_port)
            try:
                for r in range(args.rounds):
                    results["http direct"].append(measured(hub.process.pid, http_rate, hub.http_port, m))
                    gw0 = sum(cpu_seconds(proc.pid) for proc in procs)
                    results["http via gateway pair"].append(measured(hub.process.pid, http_rate, front, m))
                    results["http via gateway pair"][-1]["gateways_us"] = (
                        sum(cpu_seconds(proc.pid) for proc in procs) - gw0) / m * 1e6
                    print(f"round {r + 1}: http direct {fmt(results['http direct'][-1]['rate'])}, "
                          f"via gateways {fmt(results['http via gateway pair'][-1]['rate'])} msg/s", file=sys.stderr)
            finally:
                for proc in procs:
                    proc.terminate()
                    proc.wait(10)
        finally:
            hub.stop()
    load = os.getloadavg()
    print(f"Command: .venv/bin/python bench/clients.py --messages {n} --gateway-messages {args.gateway_messages} "
          f"--rounds {args.rounds}  ")
    print(f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  ")
    print(f"Python: {platform.python_implementation()} {platform.python_version()}, {platform.machine()}, "
          f"{os.cpu_count()} cores; load average after the run {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; no pinning\n")
    print("| Case | Messages | Per round (msg/s) | Median msg/s | Wire bytes/message | hub CPU us/msg | sender CPU us/msg |")
    print("|---|--:|---|--:|--:|--:|--:|")
    for name, runs in results.items():
        count = args.gateway_messages if name.startswith("http") else n
        rates = [x["rate"] for x in runs]
        print(f"| {name} | {count:,} | {' '.join(fmt(x) for x in rates)} | {fmt(statistics.median(rates))} "
              f"| {statistics.median(x['bytes'] for x in runs):.1f} "
              f"| {statistics.median(x['hub_us'] for x in runs):.2f} | {statistics.median(x['client_us'] for x in runs):.2f} |")
    med = {k: statistics.median(x["rate"] for x in v) for k, v in results.items()}
    print(f"\nRatios (medians): client / blast {med['client'] / med['blast']:.2f}; "
          f"client send_many / blast {med['client send_many'] / med['blast']:.2f}; "
          f"msghub-send / blast {med['msghub-send'] / med['blast']:.2f}; "
          f"gateway pair / direct HTTP {med['http via gateway pair'] / med['http direct']:.2f} "
          f"(per message: {1e6 / med['http via gateway pair'] - 1e6 / med['http direct']:.1f} us more; "
          f"the two gateways' CPU: {statistics.median(x['gateways_us'] for x in results['http via gateway pair']):.1f} us/msg)")


if __name__ == "__main__":
    main()
