"""CPU per plain HTTP request in the hub's protocol, beside the bare httptools protocol of bench/wrk.py.

What wrk's load costs the hub in Python, without sockets or a reactor: one
wrk-shaped request (``POST /discard/opra``, ``Host``, ``Content-Length: 66``,
``Content-Type``, a 66-byte body) per ``dataReceived``, as wrk ``-c32``
delivers them, into

- **bare**: bench/wrk.py's bare protocol (httptools, one ``202`` per request);
- **hub**: ``HttpIngress`` of this checkout on a ``discard = true`` route,
  built by ``msghub.hub.Hub`` as ``twistd`` builds it (route taps included);
- **hub, parse only**: the same with ``route_batch`` replaced by a no-op, so
  the difference to *hub* is routing, the sink, the answer and the write.

Both write into a transport that only counts the writes.  Each figure is the
least of ``--rounds`` runs of ``--requests`` reads, in CPU time of this
thread (``time.thread_time``): on a shared, noisy machine the minimum is the
cost of the code, the rest is other work.  The reactor's part (epoll, recv,
send: about 13 us per request in bench/wrk.py's runs) is the same for every
server and is not here.

    .venv/bin/python bench/http_cost.py [--requests N] [--rounds R]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httptools  # noqa: E402
from twisted.internet import reactor  # noqa: E402
from twisted.internet.protocol import Protocol  # noqa: E402

from msghub.config import Config, LimitsConfig, RouteConfig  # noqa: E402
from msghub.hub import Hub  # noqa: E402
from msghub.ingress.http import HttpIngress  # noqa: E402

REQUEST = (
    b"POST /discard/opra HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Length: 66\r\n"
    b"Content-Type: application/x-opra-quote\r\n\r\n" + b"Q" * 16 + b"x" * 50
)
ANSWER = b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"


class CountingTransport:
    """Just enough of a TCP transport for both protocols; counts the writes."""

    disconnecting = False

    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1

    def registerProducer(self, producer: object, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def loseConnection(self) -> None:
        pass

    def getPeer(self) -> None:
        return None


class Ids:
    """The one spool method the ingress path calls."""

    next_id = 1 << 40

    def reserve_ids(self, n: int) -> int:
        first = self.next_id
        self.next_id += n
        return first


class Bare(Protocol):
    """bench/wrk.py's bare httptools protocol."""

    def connectionMade(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.done = 0

    def on_message_complete(self) -> None:
        self.done += 1

    def dataReceived(self, data: bytes) -> None:
        self.done = 0
        self.parser.feed_data(data)
        if self.done:
            self.transport.write(ANSWER * self.done)


def hub_protocol(parse_only: bool = False) -> HttpIngress:
    routes = (RouteConfig(name="discard", match="/discard/{x}", methods=(b"POST",), discard=True),)
    config = Config(path="bench.toml", users={}, routes=routes, limits=LimitsConfig())
    hub = Hub(config, reactor, Ids())  # type: ignore[arg-type]  # the ingress path only reserves ids
    protocol = HttpIngress(hub.ingress)
    protocol.makeConnection(CountingTransport())
    if parse_only:
        protocol.route_batch = lambda events, first, extra=None: None  # type: ignore[method-assign]
    return protocol


def us_per_request(protocol: Protocol, n: int) -> float:
    feed = protocol.dataReceived
    t0 = time.thread_time()
    for _ in range(n):
        feed(REQUEST)
    return (time.thread_time() - t0) / n * 1e6


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=40_000, help="reads per run")
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args(argv)
    bare = Bare()
    bare.makeConnection(CountingTransport())
    servers = {"bare httptools": bare, "hub": hub_protocol(), "hub, parse only": hub_protocol(parse_only=True)}
    for protocol in servers.values():
        us_per_request(protocol, 1000)  # warm-up; the hub answers every request
    assert servers["hub"].transport.writes == 1000
    runs: dict[str, list[float]] = {name: [] for name in servers}
    for _ in range(args.rounds):
        for name, protocol in servers.items():
            runs[name].append(us_per_request(protocol, args.requests))
    best = {name: min(r) for name, r in runs.items()}
    print(f"Command: `.venv/bin/python bench/http_cost.py --requests {args.requests} --rounds {args.rounds}`  ")
    print("| Protocol | us of CPU per request (least of the rounds) | Beyond bare |")
    print("|---|--:|--:|")
    for name, us in best.items():
        print(f"| {name} | {us:.2f} | {us - best['bare httptools']:+.2f} |")
    print(f"\nrouting, sink, answer and write (hub - hub, parse only): {best['hub'] - best['hub, parse only']:.2f} us")


if __name__ == "__main__":
    main()
