"""Webhook delivery throughput from the spool, and ingest while a target is down.

Claims (docs/webhooks.md): one target delivers >= 5,000 messages/s to a fast
local receiver, on the 2-core development machine, with the receiver in its
own process on the other core; and a target that is down does not slow the
producers: ingest to a webhook route whose receiver refuses every connection
stays at the rate of a plain ``spool`` route of the same hub.

- **msghub**: N messages (JSON bodies of ~100 bytes) are committed to a real
  spool under ``webhook:bench``; a ``WebhookForwarder`` with the real reactor
  then reads, signs (Standard Webhooks, HMAC-SHA256), POSTs over up to
  ``concurrency`` keep-alive connections, and deletes each row after its
  2xx.  Timed from ``startService`` until the spool holds no row of the target
  (every delete committed).
- **agent**: the same number of POSTs of the same body with
  ``twisted.web.client.Agent`` and a persistent ``HTTPConnectionPool``, the
  same concurrency, no spool, no signature: the library baseline.
- **bare**: the same number of POSTs, pre-rendered, written by a bare
  ``Protocol`` over ``concurrency`` keep-alive connections, one request in
  flight on each, responses parsed by httptools: the ceiling of the loop
  itself, with no spool, no signature and no retry bookkeeping.
- **ingest, target down / spool route**: the real hub (``twistd -n msghub``
  via ``msghub.testing.HubProcess``) with a webhook target on a port nothing
  listens on, and a ``spool = "x"`` route.  One compact connection sends
  ``--ingest-messages`` pre-encoded messages (the same body) to one route and
  is timed until the last ``A:``; rounds alternate the two routes.  The hub
  keeps refusing and retrying the down target meanwhile (its queue is the
  ``webhook:down`` spool name, one row per message, like the spool route).

The receiver answers every request ``204`` on keep-alive connections (a bare
``Protocol`` with httptools, started as a subprocess of this script).  Rounds
alternate msghub and agent, swapping the order each round.

    .venv/bin/python bench/webhook.py [--messages N] [--concurrency C] [--rounds R]
                             [--ingest-messages N] [--no-ingest]
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

    from msghub.config_webhooks import WebhookTarget, parse_secret
    from msghub.forward.webhook import WebhookForwarder
    from msghub.message import Message
    from msghub.spool import Spool

    path = os.path.join(workdir, f"spool-{time.monotonic_ns()}.db")
    spool = Spool(path, reactor, synchronous="normal")
    spool.open()
    target = WebhookTarget(
        "bench", f"http://127.0.0.1:{port}/in", port=port, path=b"/in",
        secrets=(parse_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),), concurrency=concurrency,
    )
    headers = ((b"Content-Type", b"application/json"),)
    first = spool.reserve_ids(n)
    messages = [Message(first + i, b"POST", b"/orders/x", headers, BODY, "bench", None, {}, 0.0) for i in range(n)]

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


def run_bare(reactor, port: int, n: int, concurrency: int):
    """Fires with POSTs/s: pre-rendered requests, one in flight per keep-alive connection."""
    import httptools
    from twisted.internet import defer, endpoints, protocol

    request = (
        b"POST /in HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (port, len(BODY), BODY)
    )
    left = [n]
    finished = defer.Deferred()
    answered = [0]

    class Poster(protocol.Protocol):
        def connectionMade(self):
            self.parser = httptools.HttpResponseParser(self)
            self.complete = 0
            self.next()

        def next(self):
            if left[0] > 0:
                left[0] -= 1
                self.transport.write(request)
            else:
                self.transport.loseConnection()

        def on_message_complete(self):
            self.complete += 1

        def dataReceived(self, data):
            self.complete = 0
            self.parser.feed_data(data)
            for _ in range(self.complete):
                assert self.parser.get_status_code() == 204
                answered[0] += 1
                if answered[0] == n:
                    finished.callback(None)
                self.next()

    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    factory = protocol.Factory.forProtocol(Poster)
    factory.noisy = False

    @defer.inlineCallbacks
    def go():
        started = time.perf_counter()
        for _ in range(concurrency):
            endpoint.connect(factory)
        yield finished
        return n / (time.perf_counter() - started)

    return go()


INGEST_CONF = """
[webhooks.down]
url = "http://127.0.0.1:{port}/in"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
retry = [5, 300, 1800, 7200]

[[routes]]
name = "webhook"
match = "/wh/{{x}}"
webhooks = ["down"]

[[routes]]
name = "spool"
match = "/sp/{{x}}"
spool = "x"
"""


def ingest(n: int, rounds: int, workdir: str) -> dict[str, list[float]]:
    """Compact ingest (acks/s) to a webhook route whose target is down, and to a spool route."""
    from msghub.compact import Request
    from msghub.testing import CompactClient, HubProcess

    hub = HubProcess(os.path.join(workdir, "hub"), INGEST_CONF.format(port=free_port())).start()
    rates: dict[str, list[float]] = {"ingest, target down": [], "ingest, spool route": []}
    try:
        for i in range(rounds):
            order = ["/wh/x", "/sp/x"] if i % 2 == 0 else ["/sp/x", "/wh/x"]
            for path in order:
                client = CompactClient(hub.compact_port, timeout=60)
                headers = [(b"Content-Type", b"application/json")]
                data = client.encoder.encode([Request(b"POST", path.encode(), headers, BODY) for _ in range(n)])
                started = time.perf_counter()
                client.send_raw(data)
                client.read_until(n, timeout=120)
                rate = n / (time.perf_counter() - started)
                client.close()
                assert client.acked == n and not client.errors, (client.acked, client.errors)
                which = "ingest, target down" if path == "/wh/x" else "ingest, spool route"
                rates[which].append(rate)
                print(f"round {i + 1} {which}: {rate:,.0f} msg/s", flush=True)
        _, text = hub.get("/metrics")
        depth = [line for line in text.decode().splitlines() if line.startswith("msghub_spool_depth{")]
        attempts = [line for line in text.decode().splitlines()
                    if line.startswith('msghub_webhook_attempts_total{outcome="error"')]
        print("after ingest:", "; ".join(depth + attempts), flush=True)
    finally:
        hub.stop()
    return rates


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=50_000)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--ingest-messages", type=int, default=100_000, help="per ingest run (compact)")
    p.add_argument("--no-ingest", action="store_true", help="skip the ingest-while-down runs")
    args = p.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import warnings

    warnings.simplefilter("ignore", DeprecationWarning)
    from twisted.internet import defer, task

    port = free_port()
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER, str(port)], stdout=subprocess.PIPE)
    rates: dict[str, list[float]] = {"msghub": [], "bare": [], "agent": []}

    @defer.inlineCallbacks
    def rounds(reactor, workdir):
        for i in range(args.rounds):
            order = ["msghub", "bare", "agent"] if i % 2 == 0 else ["agent", "bare", "msghub"]
            for which in order:
                if which == "msghub":
                    rate = yield run_msghub(reactor, port, args.messages, args.concurrency, workdir)
                elif which == "bare":
                    rate = yield run_bare(reactor, port, args.messages, args.concurrency)
                else:
                    rate = yield run_agent(reactor, port, args.messages, args.concurrency)
                rates[which].append(rate)
                print(f"round {i + 1} {which:>6}: {rate:,.0f} deliveries/s", flush=True)

    try:
        assert receiver.stdout.readline().strip() == b"ready"
        with tempfile.TemporaryDirectory() as workdir:
            if not args.no_ingest:  # first: task.react ends the process's reactor
                ingest_rates = ingest(args.ingest_messages, args.rounds, workdir)
            try:
                task.react(rounds, [workdir])
            except SystemExit as e:
                if e.code:
                    raise
        for which, values in rates.items():
            print(f"{which:>6}: median {statistics.median(values):,.0f}/s"
                  f" (min {min(values):,.0f}, max {max(values):,.0f}), {args.messages:,} messages,"
                  f" concurrency {args.concurrency}")
        print(f"msghub / bare: {statistics.median(rates['msghub']) / statistics.median(rates['bare']):.2f}")
        if not args.no_ingest:
            for which, values in ingest_rates.items():
                print(f"{which}: median {statistics.median(values):,.0f} msg/s"
                      f" (min {min(values):,.0f}, max {max(values):,.0f}), {args.ingest_messages:,} messages")
            down, spool = (statistics.median(v) for v in ingest_rates.values())
            print(f"ingest target down / spool route: {down / spool:.2f}")
    finally:
        receiver.terminate()
        receiver.wait()


if __name__ == "__main__":
    main()
