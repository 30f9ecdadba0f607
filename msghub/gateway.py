"""msghub-gateway: compact HTTP <-> HTTP/1.1 on a point-to-point link.

    msghub-gateway decompress --listen tcp:8081 --upstream http://10.0.0.5:8000
        accepts compact HTTP and replays each request as HTTP/1.1 to an
        unmodified server over a keep-alive pool; a 2xx answer becomes A:,
        anything else E:n STATUS reason.
    msghub-gateway compress --listen tcp:8000 --upstream compact://10.0.0.5:8081
        an HTTP/1.1 server forwarding every request over one compact
        connection; each client gets 202 for an A:, the far side's status for E:.

Two gateways back to back are transparent for method, target (query
included), version, header fields (their order and spelling; repeated fields
are combined, RFC 9110 5.3) and body.  Hop-by-hop fields (RFC 9110 7.6.1:
Connection and the fields it names, Proxy-Connection, Keep-Alive, TE,
Transfer-Encoding, Upgrade) are dropped, and Content-Length is recomputed.
"""

from __future__ import annotations

import argparse
import sys
from collections import deque
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import httptools
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, serverFromString
from twisted.internet.interfaces import IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver
from twisted.python.failure import Failure
from zope.interface import implementer

from msghub.client._core import parse_url
from msghub.compact import Decoder, Http11Reader, Limits, Rejected, StreamError, ack_line, error_line, fatal_line
from msghub.compact.http11 import to_http11
from msghub.compact.state import Request, State
from msghub.transport import IStreamTransport

if TYPE_CHECKING:
    from msghub.client.txclient import TxCompactSender

log = Logger()

_new = tuple.__new__
HOP_BY_HOP = frozenset((b"connection", b"proxy-connection", b"keep-alive", b"te", b"transfer-encoding", b"upgrade"))


class EndToEnd:
    """Per-``State`` cache of the state without hop-by-hop fields (and with a Host if required)."""

    MAX = 256

    def __init__(self, host: bytes | None = None) -> None:
        self.host = host
        self.cache: dict[int, tuple[State, State]] = {}

    def __call__(self, request: Request) -> Request:
        state = request[3]
        hit = self.cache.get(id(state))
        if hit is None or hit[0] is not state:
            hit = (state, self._strip(state))
            if len(self.cache) >= self.MAX:
                self.cache.clear()
            self.cache[id(state)] = hit
        new = hit[1]
        if new is state:
            return request
        return _new(Request, (request[0], request[1], request[2], new, request[4]))

    def _strip(self, state: State) -> State:
        drop = set(HOP_BY_HOP)
        connection = state.header(b"connection")
        if connection:
            drop.update(t.strip().lower() for t in connection.split(b","))
        fields = [(n, v) for n, v in state.headers if n.lower() not in drop]
        if self.host is not None and state.header(b"host") is None:
            fields.insert(0, (b"Host", self.host))
        if len(fields) == len(state.headers) and all(a is b for a, b in zip(fields, state.headers)):
            return state
        return State(state.version, state.base, state.method, fields)


# -- decompress: compact in, HTTP/1.1 out ---------------------------------------------


class _Upstream(Protocol):
    """One keep-alive connection to the HTTP server; responses fire Deferreds in order."""

    transport: IStreamTransport  # connected: see msghub.transport

    def __init__(self, pool: "HttpPool") -> None:
        self.pool = pool
        self.waiting: deque[defer.Deferred] = deque()
        self.parser = httptools.HttpResponseParser(self)
        self.reason = b""
        self.open = False

    def connectionMade(self) -> None:
        self.open = True

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        reason, self.reason = self.reason.decode("ascii", "replace"), b""
        keep = self.parser.should_keep_alive()
        self.waiting.popleft().callback((status, reason))
        if not keep:
            self.open = False
            self.transport.loseConnection()
        self.pool._idle(self)

    def dataReceived(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            log.warn("gateway: unparseable response from upstream; closing that connection")
            self.transport.abortConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.open = False
        waiting, self.waiting = self.waiting, deque()
        for d in waiting:
            d.callback((503, "upstream connection lost"))
        self.pool._lost(self)


class HttpPool:
    """At most ``connections`` keep-alive connections, each with up to ``pipeline`` requests in flight."""

    def __init__(self, reactor: IReactorTime, host: str, port: int, connections: int = 4, pipeline: int = 8) -> None:
        self.reactor = reactor
        self.endpoint = HostnameEndpoint(reactor, host, port)
        self.max_connections = connections
        self.pipeline = pipeline
        self.conns: list[_Upstream] = []
        self.connecting = 0
        self.queue: deque[tuple[bytes, defer.Deferred]] = deque()

    def request(self, data: bytes) -> defer.Deferred:
        d: defer.Deferred[tuple] = defer.Deferred()  # (status, reason)
        self.queue.append((data, d))
        self._dispatch()
        return d

    def _dispatch(self) -> None:
        queue = self.queue
        while queue:
            conn = min((c for c in self.conns if c.open), key=lambda c: len(c.waiting), default=None)
            if conn is None or len(conn.waiting) >= self.pipeline:
                if len(self.conns) + self.connecting < self.max_connections:
                    self._open()
                if conn is None or len(conn.waiting) >= self.pipeline:
                    return
            # Write a run of requests at once: one write, many requests.
            room = self.pipeline - len(conn.waiting)
            chunk = []
            while queue and room:
                data, d = queue.popleft()
                chunk.append(data)
                conn.waiting.append(d)
                room -= 1
            conn.transport.write(b"".join(chunk))

    def _open(self) -> None:
        self.connecting += 1
        d = self.endpoint.connect(Factory.forProtocol(lambda: _Upstream(self)))
        d.addCallbacks(self._opened, self._failed)

    def _opened(self, conn: _Upstream) -> None:
        self.connecting -= 1
        self.conns.append(conn)
        self._dispatch()

    def _failed(self, failure) -> None:
        self.connecting -= 1
        if not self.conns and not self.connecting:
            queue, self.queue = self.queue, deque()
            for _, d in queue:
                d.callback((503, "upstream unreachable"))

    def _idle(self, conn: _Upstream) -> None:
        if self.queue:
            self._dispatch()

    def _lost(self, conn: _Upstream) -> None:
        if conn in self.conns:
            self.conns.remove(conn)
        if self.queue:
            self._dispatch()


@implementer(IHalfCloseableProtocol)
class Decompress(Protocol):
    """One compact connection: decode, replay over the pool, answer A:/E: strictly in order.

    Half-closeable, as the hub's ports are: a client that shuts down its
    sending side gets the answers to what it sent, then the gateway closes.
    ``O:message-ids`` is refused (``X:400``): an upstream HTTP server's
    answers carry no ids to name.  A request whose version HTTP/1.1 cannot
    carry gets ``E:n 505``.
    """

    transport: IStreamTransport  # connected: see msghub.transport

    def __init__(self, pool: HttpPool, end_to_end: EndToEnd, limits: Limits) -> None:
        self.pool = pool
        self.end_to_end = end_to_end
        self.decoder = Decoder(limits, message_ids=False)
        self.results: dict[int, tuple[int, str] | None] = {}
        self.next_answer = 1
        self.fatal: StreamError | None = None
        self.eof = False  # the client shut down its sending side
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        if self.fatal is not None:
            return
        try:
            events = self.decoder.feed(data)
        except StreamError as e:
            events = e.events
            self.fatal = e
            self.transport.pauseProducing()
        for event in events:
            if event.__class__ is Rejected:
                self.results[event.number] = (event.status, event.reason)
                continue
            number = event[4]
            if not event[3].version.startswith(b"HTTP/1."):
                self.results[number] = (505, "HTTP version not supported")
                continue
            self.results[number] = None
            data = to_http11(self.end_to_end(event))
            self.pool.request(data).addCallback(self._answered, number)
        self._flush()

    def _answered(self, result: tuple[int, str], number: int) -> None:
        self.results[number] = result
        self._flush()

    def _flush(self) -> None:
        if self.lost:
            return
        results = self.results
        out = []
        last = None
        n = self.next_answer
        while (result := results.get(n)) is not None:
            del results[n]
            status, reason = result
            if not 200 <= status < 300:
                out.append(error_line(n, status, reason.replace("\r", " ").replace("\n", " ")[:200]))
            last = n
            n += 1
        self.next_answer = n
        if last is not None:
            out.append(ack_line(last))
            self.transport.write(b"".join(out))
        if self.fatal is not None and not results:
            self.transport.write(fatal_line(self.fatal.status, self.fatal.reason))
            self.transport.loseConnection()
        elif self.eof and not results:
            self.transport.loseConnection()

    def readConnectionLost(self) -> None:
        self.eof = True
        self._flush()

    def writeConnectionLost(self) -> None:
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = True


# -- compress: HTTP/1.1 in, compact out -------------------------------------------------


def _response(status: int, reason: str, close: bool) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    body = (reason or phrase).encode("ascii", "replace") + b"\n"
    head = b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n" % (
        status, phrase.encode("ascii"), len(body))
    return head + (b"Connection: close\r\n" if close else b"") + b"\r\n" + body


ACCEPTED = b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"
ACCEPTED_CLOSE = b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


@implementer(IHalfCloseableProtocol)
class Compress(Protocol):
    """One HTTP/1.1 client connection: each request goes over the shared compact client.

    Half-closeable: a client that shuts down its sending side gets its answers, then the close.
    """

    transport: IStreamTransport  # connected: see msghub.transport

    def __init__(self, client: TxCompactSender, end_to_end: EndToEnd, limits: Limits) -> None:
        self.client = client
        self.end_to_end = end_to_end
        self.reader = Http11Reader(limits)
        self.answers: deque[list] = deque()  # [response bytes or None, closes]
        self.closing = False
        self.fatal: bytes | None = None
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            requests = self.reader.feed(data)
        except StreamError as e:
            requests = e.events
            self.closing = True
            self.fatal = _response(e.status, e.reason, close=True)
            self.transport.pauseProducing()
        if self.reader.done:  # the last request read closes the connection: nothing after it is read
            self.closing = True
        last = requests[-1] if requests else None
        for request in requests:
            slot = [None, self.reader.done and request is last]
            self.answers.append(slot)
            d = self.client.send_request(self.end_to_end(request))
            d.addCallbacks(self._acked, self._refused, callbackArgs=(slot,), errbackArgs=(slot,))
        self._flush()

    def _acked(self, _, slot) -> None:
        slot[0] = ACCEPTED_CLOSE if slot[1] else ACCEPTED
        self._flush()

    def _refused(self, failure, slot) -> None:
        error = failure.value
        status = getattr(error, "status", 0) or 503
        reason = getattr(error, "reason", "") or "no answer from the far side"
        slot[0] = _response(status, reason, close=slot[1])
        self._flush()

    def _flush(self) -> None:
        if self.lost:
            return
        answers = self.answers
        out = []
        while answers and answers[0][0] is not None:
            out.append(answers.popleft()[0])
        if out:
            self.transport.write(b"".join(out))
        if self.closing and not answers:
            if self.fatal is not None:
                self.transport.write(self.fatal)
            self.transport.loseConnection()

    def readConnectionLost(self) -> None:
        self.closing = True
        self._flush()

    def writeConnectionLost(self) -> None:
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = True


# -- wiring -------------------------------------------------------------------------------


class _DecompressFactory(Factory):
    """Decompress connections, all replayed over one upstream ``pool``."""

    def __init__(self, pool: HttpPool, end_to_end: EndToEnd, limits: Limits) -> None:
        self.pool = pool
        self.protocol = lambda: Decompress(pool, end_to_end, limits)


class _CompressFactory(Factory):
    """Compress connections, all sent over one compact ``client``."""

    def __init__(self, client: TxCompactSender, end_to_end: EndToEnd, limits: Limits) -> None:
        self.client = client
        self.protocol = lambda: Compress(client, end_to_end, limits)


def decompress_factory(reactor: IReactorTime, upstream: str, connections: int = 4, pipeline: int = 32,
                       limits: Limits = Limits()) -> Factory:
    target = parse_url(upstream)
    if target.scheme != "http" or target.tls:
        raise ValueError("decompress --upstream must be http://HOST:PORT")
    pool = HttpPool(reactor, target.host, target.port, connections, pipeline)
    end_to_end = EndToEnd(f"{target.host}:{target.port}".encode("ascii"))
    return _DecompressFactory(pool, end_to_end, limits)


def compress_factory(
    reactor: IReactorTime, upstream: str, window: int = 10_000, limits: Limits = Limits(), **kwargs: Any
) -> Factory:
    from msghub.client.txclient import TxCompactSender

    target = parse_url(upstream)
    if target.scheme != "compact":
        raise ValueError("compress --upstream must be compact://HOST:PORT or compacts://HOST:PORT")
    client = TxCompactSender(reactor, target.host, target.port, tls=target.tls, window=window, **kwargs)
    end_to_end = EndToEnd()
    return _CompressFactory(client, end_to_end, limits)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="msghub-gateway", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)
    d = sub.add_parser("decompress", help="compact in, HTTP/1.1 to an unmodified server out")
    d.add_argument("--listen", required=True, help="Twisted server endpoint, e.g. tcp:8081:interface=127.0.0.1")
    d.add_argument("--upstream", required=True, help="http://HOST:PORT")
    d.add_argument("--connections", type=int, default=4, help="keep-alive connections to upstream (default 4)")
    d.add_argument("--pipeline", type=int, default=32,
                   help="requests in flight per upstream connection (default 32; 1: no pipelining)")
    c = sub.add_parser("compress", help="HTTP/1.1 in, one compact connection out")
    c.add_argument("--listen", required=True, help="Twisted server endpoint, e.g. tcp:8000:interface=127.0.0.1")
    c.add_argument("--upstream", required=True, help="compact://HOST:PORT (compacts:// for TLS)")
    c.add_argument("--window", type=int, default=10_000, help="most unanswered requests on the compact link")
    args = p.parse_args(argv)

    from twisted.internet import reactor

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    try:
        if args.mode == "decompress":
            factory = decompress_factory(reactor, args.upstream, args.connections, args.pipeline)
        else:
            factory = compress_factory(reactor, args.upstream, args.window)
        endpoint = serverFromString(reactor, args.listen)
    except ValueError as e:
        print(f"msghub-gateway: {e}", file=sys.stderr)
        return 2
    failed = []

    def bind_failed(f):
        failed.append(f)
        log.failure("msghub-gateway: cannot listen", f)
        reactor.stop()

    endpoint.listen(factory).addErrback(bind_failed)
    reactor.run()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
