"""The plain HTTP port under wrk, the client users have, beside bare baselines in the same run.

Claim (issue 9, point 7): with wrk ``-c32``, not pipelined, the hub's plain
port reaches >= 0.85x of a bare Twisted protocol that parses with httptools
and answers 202, each server pinned to core 0 and wrk to core 1.

Servers, one at a time, rounds alternating and the order swapped each round:

- **hub**: the real hub (``twistd -n msghub`` via ``msghub.testing.HubProcess``)
  with a ``discard = true`` route; POST ``/discard/opra``;
- **bare httptools**: a Twisted ``Protocol`` in a child process that feeds
  every read to ``httptools.HttpRequestParser`` and writes one
  ``202 Accepted`` (``Content-Length: 0``) per request: the least a Twisted
  server does per HTTP/1.1 request;
- **twisted.web**: a ``Site`` whose leaf resource answers 202 (log off).

With ``--compare DIR`` a second hub runs from another checkout of msghub
(say, the commit before a change) in the same rounds, as ``hub (DIR)``: a
before/after pair measured side by side, each against the same baseline.

Load: ``wrk -t1 -c32 -d SECONDS`` with a Lua script that POSTs 66-byte bodies
with ``Content-Type``; one request per connection in flight (wrk does not
pipeline).  Every response must be 2xx (wrk's non-2xx count must be 0).

    .venv/bin/python bench/wrk.py [--rounds R] [--seconds S] [--connections C] [--compare DIR]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

BODY = "Q" * 16 + "x" * 50  # 66 bytes, the OPRA shape of the other benchmarks
LUA = f"""
wrk.method = "POST"
wrk.body = "{BODY}"
wrk.headers["Content-Type"] = "application/x-opra-quote"
"""
CONF = """
[[routes]]
name = "discard"
match = "/discard/{x}"
discard = true
"""

BARE = r'''
import sys, httptools
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol

ANSWER = b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"

class Bare(Protocol):
    def connectionMade(self):
        self.parser = httptools.HttpRequestParser(self)
        self.done = 0
    def on_message_complete(self):
        self.done += 1
    def dataReceived(self, data):
        self.done = 0
        self.parser.feed_data(data)
        if self.done:
            self.transport.write(ANSWER * self.done)

factory = Factory.forProtocol(Bare)
factory.noisy = False
reactor.listenTCP(int(sys.argv[1]), factory, interface="127.0.0.1")
print("ready", flush=True)
reactor.run()
'''

WEB = r'''
import sys
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site

class Accept(Resource):
    isLeaf = True
    def render_POST(self, request):
        request.setResponseCode(202)
        return b""

site = Site(Accept())
site.log = lambda request: None
reactor.listenTCP(int(sys.argv[1]), site, interface="127.0.0.1")
print("ready", flush=True)
reactor.run()
'''

TASKSET = shutil.which("taskset")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pin(pid: int, core: int) -> None:
    if TASKSET and (os.cpu_count() or 1) >= 2:
        subprocess.run([TASKSET, "-a", "-p", "-c", str(core), str(pid)], check=True, stdout=subprocess.DEVNULL)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(url: str, lua: str, seconds: float, connections: int) -> dict:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "-s", lua, "--latency", url]
    if TASKSET and (os.cpu_count() or 1) >= 2:
        cmd = [TASKSET, "-c", "1", *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:(.*)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    return {
        "rate": rate, "total": total, "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "errors": errors.group(1).strip() if errors else "",
        "p99_ms": float(p99.group(1)) * scale[p99.group(2)] if p99 else float("nan"),
    }


class Child:
    """A baseline server script in its own process on core 0."""

    def __init__(self, source: str) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-c", source, str(self.port)], stdout=subprocess.PIPE)
        if self.proc.stdout.readline().strip() != b"ready":
            raise RuntimeError("baseline did not start")
        pin(self.proc.pid, 0)
        self.pid = self.proc.pid
        self.url = f"http://127.0.0.1:{self.port}/discard/opra"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=8.0, help="wrk duration per run")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--compare", type=Path, metavar="DIR", help="also run the hub from this checkout of msghub")
    args = p.parse_args(argv)
    if shutil.which("wrk") is None:
        sys.exit("wrk not found (Debian: apt-get install wrk)")
    from msghub import testing

    tmp = Path(tempfile.mkdtemp(prefix="msghub-wrk-"))
    lua = tmp / "post.lua"
    lua.write_text(LUA)
    hubs = [testing.HubProcess(tmp / "hub", CONF).start()]
    servers = {"hub": (hubs[0].process.pid, f"http://127.0.0.1:{hubs[0].http_port}/discard/opra")}
    if args.compare is not None:
        # HubProcess puts testing.REPO first on the child's PYTHONPATH: point it at the other tree.
        own, testing.REPO = testing.REPO, args.compare.resolve()
        try:
            other = testing.HubProcess(tmp / "hub-compare", CONF).start()
        finally:
            testing.REPO = own
        hubs.append(other)
        servers[f"hub ({args.compare.name})"] = (other.process.pid, f"http://127.0.0.1:{other.http_port}/discard/opra")
    for hub in hubs:
        pin(hub.process.pid, 0)
    children = [Child(BARE), Child(WEB)]
    servers["bare httptools"] = (children[0].pid, children[0].url)
    servers["twisted.web"] = (children[1].pid, children[1].url)
    results: dict[str, list[dict]] = {name: [] for name in servers}
    started = time.time()
    try:
        for _, url in servers.values():  # warm-up, untimed
            run_wrk(url, str(lua), 1, args.connections)
        for i in range(args.rounds):
            order = list(servers) if i % 2 == 0 else list(reversed(servers))
            for name in order:
                pid, url = servers[name]
                c0 = cpu_seconds(pid)
                r = run_wrk(url, str(lua), args.seconds, args.connections)
                r["cpu"] = (cpu_seconds(pid) - c0) / args.seconds
                if r["non2xx"] or r["errors"]:
                    raise RuntimeError(f"{name}: {r['non2xx']} non-2xx, socket errors {r['errors']}")
                results[name].append(r)
                print(f"round {i + 1} {name:>15}: {r['rate']:,.0f} req/s, p99 {r['p99_ms']:.2f} ms, "
                      f"server CPU {r['cpu']:.0%}", file=sys.stderr, flush=True)
    finally:
        for hub in hubs:
            hub.stop()
        for child in children:
            child.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    compare = f" --compare {args.compare}" if args.compare is not None else ""
    print(f"Command: `.venv/bin/python bench/wrk.py --rounds {args.rounds} --seconds {args.seconds:g}{compare}`  ")
    print(f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  ")
    print(f"Python: {platform.python_implementation()} {platform.python_version()}, {platform.machine()}, "
          f"{os.cpu_count()} cores (shared); servers pinned to core 0, wrk to core 1; "
          f"wall time {time.time() - started:.0f} s\n")
    print("| Server | wrk -t1 -c%d, req/s per round (run order) | Median | Range | p99 latency (median) "
          "| Server CPU (median) | Requests per server CPU-second (median) |" % args.connections)
    print("|---|---|--:|--:|--:|--:|--:|")
    for name, rs in results.items():
        rates = [r["rate"] for r in rs]
        print(f"| {name} | {' '.join(f'{x:,.0f}' for x in rates)} | {statistics.median(rates):,.0f} "
              f"| {min(rates):,.0f}-{max(rates):,.0f} | {statistics.median(r['p99_ms'] for r in rs):.2f} ms "
              f"| {statistics.median(r['cpu'] for r in rs):.0%} "
              f"| {statistics.median(r['rate'] / r['cpu'] for r in rs):,.0f} |")
    bare = results["bare httptools"]
    print()
    for name in servers:
        if name.startswith("hub"):
            ratios = [r["rate"] / b["rate"] for r, b in zip(results[name], bare)]
            med = statistics.median(ratios)
            verdict = "met" if med >= 0.85 else "MISSED"
            print(f"{name} / bare httptools per round: {' '.join(f'{x:.2f}' for x in ratios)}; median {med:.2f} "
                  f"(range {min(ratios):.2f}-{max(ratios):.2f}); target >= 0.85: {verdict}  ")
            # Requests per CPU-second: what the two servers cost, whatever share of the core they got.
            work = [(r["rate"] / r["cpu"]) / (b["rate"] / b["cpu"]) for r, b in zip(results[name], bare)]
            print(f"{name} / bare httptools, requests per server CPU-second: "
                  f"{' '.join(f'{x:.2f}' for x in work)}; median {statistics.median(work):.2f}  ")


if __name__ == "__main__":
    main()
