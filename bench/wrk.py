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

Load: ``wrk -t1 -c32 -d SECONDS`` with a Lua script that POSTs 66-byte bodies
with ``Content-Type``; one request per connection in flight (wrk does not
pipeline).  Every response must be 2xx (wrk's non-2xx count must be 0).

    python3 bench/wrk.py [--rounds R] [--seconds S] [--connections C]
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
    args = p.parse_args(argv)
    if shutil.which("wrk") is None:
        sys.exit("wrk not found (Debian: apt-get install wrk)")
    from msghub.testing import HubProcess

    tmp = Path(tempfile.mkdtemp(prefix="msghub-wrk-"))
    lua = tmp / "post.lua"
    lua.write_text(LUA)
    hub = HubProcess(tmp / "hub", CONF).start()
    pin(hub.process.pid, 0)
    servers = {
        "hub": (hub.process.pid, f"http://127.0.0.1:{hub.http_port}/discard/opra"),
    }
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
        hub.stop()
        for child in children:
            child.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"Command: `python3 bench/wrk.py --rounds {args.rounds} --seconds {args.seconds:g}`  ")
    print(f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  ")
    print(f"Python: {platform.python_implementation()} {platform.python_version()}, {platform.machine()}, "
          f"{os.cpu_count()} cores (shared); servers pinned to core 0, wrk to core 1; "
          f"wall time {time.time() - started:.0f} s\n")
    print("| Server | wrk -t1 -c%d, req/s per round (run order) | Median | Range | p99 latency (median) "
          "| Server CPU (median) |" % args.connections)
    print("|---|---|--:|--:|--:|--:|")
    for name, rs in results.items():
        rates = [r["rate"] for r in rs]
        print(f"| {name} | {' '.join(f'{x:,.0f}' for x in rates)} | {statistics.median(rates):,.0f} "
              f"| {min(rates):,.0f}-{max(rates):,.0f} | {statistics.median(r['p99_ms'] for r in rs):.2f} ms "
              f"| {statistics.median(r['cpu'] for r in rs):.0%} |")
    hub_r = [r["rate"] for r in results["hub"]]
    bare_r = [r["rate"] for r in results["bare httptools"]]
    ratios = [a / b for a, b in zip(hub_r, bare_r)]
    med = statistics.median(ratios)
    print(f"\nhub / bare httptools per round: {' '.join(f'{x:.2f}' for x in ratios)}; median {med:.2f}; "
          f"target >= 0.85: {'met' if med >= 0.85 else 'MISSED'}")


if __name__ == "__main__":
    main()
