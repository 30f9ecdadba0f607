"""Webhook delivery throughput from the spool, beside Twisted's Agent doing bare POSTs.

Claim (docs/webhooks.md): one target delivers >= 5,000 messages/s to a fast
local receiver, on the 2-core development machine, with the receiver in its
own process on the other core.

- **msghub**: N messages (JSON bodies of ~100 bytes) are committed to a real
  spool under ``webhook:bench``; a ``WebhookForwarder`` with the real reactor
  then reads, signs (Standard Webhooks, HMAC-SHA256), POSTs over up to
  ``concurrency`` keep-alive connections, and deletes each row after its
  2xx.  Timed from ``startService`` until the spool holds no row of the target
  (every delete committed).
- **agent**: the same number of POSTs of the same body with
  ``twisted.web.client.Agent`` and a persistent ``HTTPConnectionPool``, the
  same concurrency, no spool, no signature: the library baseline.

The receiver answers every request ``204`` on keep-alive connections (a bare
``Protocol`` with httptools, started as a subprocess of this script).  Rounds
alternate msghub and agent, swapping the order each round.

    python3 bench/webhook.py [--messages N] [--concurrency C] [--rounds R]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

RECEIVER = textwrap.dedent(
    """
    import sys, httptools
    from twisted.internet import reactor, protocol
    RESPONSE = b"HTTP/1.1 204 No Content\\r\\n\\r\\n"
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
                self.transport.write(RESPONSE * self.complete)
    factory = protocol.Factory.forProtocol(Receiver)
    factory.noisy = False
    reactor.listenTCP(int(sys.argv[1]), factory, interface="127.0.0.1")
    print("ready", flush=True)
    reactor.run()
    """
)
BODY = b'{"order": 123456, "kind": "created", "customer": "c-0001", "items": [1, 2, 3], "total": "99.95"}'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_msghub(reactor, port: int, n: int, concurrency: int, workdir: str):
    """Fires with deliveries/s."""
    from twisted.internet import defer, task

    from msghub.compact.state import Request
    from msghub.config_webhooks import WebhookTarget, parse_secret
    from msghub.forward.webhook import WebhookForwarder
    from msghub.message import Message
    from msghub.spool import Spool

    class Route:
        name = "bench"

    class Decision:
        route = Route()

    path = os.path.join(workdir, f"spool-{time.monotonic_ns()}.db")
    spool = Spool(path, reactor, synchronous="normal")
    spool.open()
    target = WebhookTarget(
        "bench", f"http://127.0.0.1:{port}/in", port=port, path=b"/in",
        secrets=(parse_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),), concurrency=concurrency,
    )
    request = Request(b"POST", b"/orders/x", ((b"Content-Type", b"application/json"),), BODY)
    first = spool.reserve_ids(n)
    messages = [Message(first + i, request, Decision(), 0.0) for i in range(n)]

    @defer.inlineCallbacks
    def go():
        for i in range(0, n, 10_000):
            yield spool.append("webhook:bench", messages[i:i + 10_000])
        forwarder = WebhookForwarder({"bench": target}, reactor, spool)
        started = time.perf_counter()
        forwarder.startService()
        while spool.depth("webhook:bench"):
            yield task.deferLater(reactor, 0.01, lambda: None)
        seconds = time.perf_counter() - started
        attempts = forwarder.deliverers["bench"].stats.attempts
        yield forwarder.stopService()
        yield spool.close()
        assert attempts["success"] == n, attempts
        os.unlink(path)
        return n / seconds

    return go()


def run_agent(reactor, port: int, n: int, concurrency: int):
    """Fires with POSTs/s."""
    from twisted.internet import defer
    from twisted.web.client import Agent, HTTPConnectionPool, readBody
    from twisted.web.http_headers import Headers
    from twisted.web.iweb import IBodyProducer
    from zope.interface import implementer

    @implementer(IBodyProducer)
    class Body:
        length = len(BODY)

        def startProducing(self, consumer):
            consumer.write(BODY)
            return defer.succeed(None)

        def pauseProducing(self):
            pass

        def stopProducing(self):
            pass

    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = concurrency
    agent = Agent(reactor, pool=pool)
    url = f"http://127.0.0.1:{port}/in".encode()
    headers = Headers({b"Content-Type": [b"application/json"]})
    left = [n]

    @defer.inlineCallbacks
    def worker():
        while left[0] > 0:
            left[0] -= 1
            response = yield agent.request(b"POST", url, headers, Body())
            yield readBody(response)
            assert response.code == 204

    @defer.inlineCallbacks
    def go():
        started = time.perf_counter()
        yield defer.gatherResults([worker() for _ in range(concurrency)])
        seconds = time.perf_counter() - started
        yield pool.closeCachedConnections()
        return n / seconds

    return go()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=50_000)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import warnings

    warnings.simplefilter("ignore", DeprecationWarning)
    from twisted.internet import defer, task

    port = free_port()
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER, str(port)], stdout=subprocess.PIPE)
    rates: dict[str, list[float]] = {"msghub": [], "agent": []}

    @defer.inlineCallbacks
    def rounds(reactor, workdir):
        for i in range(args.rounds):
            order = ["msghub", "agent"] if i % 2 == 0 else ["agent", "msghub"]
            for which in order:
                if which == "msghub":
                    rate = yield run_msghub(reactor, port, args.messages, args.concurrency, workdir)
                else:
                    rate = yield run_agent(reactor, port, args.messages, args.concurrency)
                rates[which].append(rate)
                print(f"round {i + 1} {which:>6}: {rate:,.0f} deliveries/s", flush=True)

    try:
        assert receiver.stdout.readline().strip() == b"ready"
        with tempfile.TemporaryDirectory() as workdir:
            try:
                task.react(rounds, [workdir])
            except SystemExit as e:
                if e.code:
                    raise
        for which, values in rates.items():
            print(f"{which:>6}: median {statistics.median(values):,.0f}/s"
                  f" (min {min(values):,.0f}, max {max(values):,.0f}), {args.messages:,} messages,"
                  f" concurrency {args.concurrency}")
    finally:
        receiver.terminate()
        receiver.wait()


if __name__ == "__main__":
    main()
