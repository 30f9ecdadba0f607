"""A thin keep-alive HTTP/1.1 client for webhook deliveries: one pool per target.

Why not ``twisted.web.client.Agent``: measured on the 2-core development
machine against a bare local receiver, Agent with a persistent
``HTTPConnectionPool`` tops out near 6,000 POSTs/s on its own (Headers,
body producers, a Deferred chain and a response object per request), before
the hub has read, signed or deleted anything -- below the >= 5,000
deliveries/s the webhook forwarder must reach with all of that added.  A
webhook POST needs little of Agent: no redirects, no cookies, no streaming
bodies, one request per connection at a time.  So requests here are one
``writeSequence`` of pre-rendered bytes, responses are parsed by httptools,
and the result comes back through a plain callback, not a Deferred (see
docs/webhooks.md for the figures).

Each request is answered exactly once, with a ``Result``: a status, or the
error that stood in for one (timeout, connection failure, garbage).  The pool
never holds more connections than requests in flight, so the deliverer's own
in-flight limit bounds it.  ``sign`` and ``parse_retry_after`` are the two
header values of the exchange: the Standard Webhooks signature sent, and the
``Retry-After`` received.
"""

from __future__ import annotations

import hashlib
import hmac
from base64 import b64encode
from email.utils import parsedate_to_datetime
from typing import Any, Callable, Iterable

import httptools
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from msghub import __version__
from msghub.config_webhooks import WebhookTarget
from msghub.tls import tls_problem
from msghub.transport import IStreamTransport

# Enough of a refusal's body to say why in a dead letter; the rest is read and dropped.
ERROR_BODY_MAX = 256


class Result:
    """How one request ended.  ``status`` 0: no response (see ``error``)."""

    __slots__ = ("status", "reason", "error", "timed_out", "retry_after", "body")

    def __init__(
        self,
        status: int = 0,
        reason: bytes = b"",
        error: str = "",
        timed_out: bool = False,
        retry_after: bytes | None = None,
        body: bytes = b"",
    ) -> None:
        self.status = status
        self.reason = reason
        self.error = error
        self.timed_out = timed_out
        self.retry_after = retry_after
        self.body = body

    def __repr__(self) -> str:
        if self.status:
            return f"Result({self.status} {self.reason.decode('latin-1')})"
        return f"Result(error={self.error!r}, timed_out={self.timed_out})"


OnDone = Callable[[Result], None]


class _Exchange:
    """One request: its bytes, its callback, its timeout, and where it is."""

    __slots__ = ("data", "on_done", "timer", "conn", "connecting", "fresh_retry", "done")

    def __init__(self, data: list[bytes], on_done: OnDone) -> None:
        self.data = data
        self.on_done = on_done
        self.timer: Any = None
        self.conn: _Connection | None = None
        self.connecting: Deferred | None = None
        self.fresh_retry = False  # already resent once on a new connection
        self.done = False


class _Connection(Protocol):
    """One keep-alive connection, one request at a time (no pipelining)."""

    transport: IStreamTransport  # connected: see msghub.transport

    def __init__(self, pool: "HttpPool") -> None:
        self.pool = pool
        self.exchange: _Exchange | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.used = 0  # requests sent on this connection
        self.idle_since = 0.0
        self.lost = False
        self._reset()

    def _reset(self) -> None:
        self.received = False  # any response byte for the current request
        self.status = 0
        self.reason = b""
        self.retry_after: bytes | None = None
        self.body = b""
        self.complete = False
        self.keep_alive = False
        self.headers_done = False

    # -- driven by the pool --

    def send(self, exchange: _Exchange) -> None:
        self.exchange = exchange
        exchange.conn = self
        self.used += 1
        self._reset()
        self.transport.writeSequence(exchange.data)

    # -- httptools callbacks: record only; results are handed out after feed_data --

    def on_status(self, reason: bytes) -> None:
        if len(self.reason) < ERROR_BODY_MAX:  # may come in pieces
            self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 11 and name.lower() == b"retry-after":
            self.retry_after = value.strip()

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        if len(self.body) < ERROR_BODY_MAX:
            self.body = (self.body + body)[:ERROR_BODY_MAX]

    def on_message_complete(self) -> None:
        if self.status >= 200:
            self.complete = True
            # Asked here: once feed_data returns, the parser has moved on to the next message.
            self.keep_alive = self.parser.should_keep_alive()
        else:  # 1xx (e.g. 103 Early Hints): the final response follows
            self._reset()
            self.received = True

    # -- Twisted --

    def dataReceived(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:  # bytes nobody asked for: the connection cannot be trusted
            self.transport.abortConnection()
            return
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self.exchange = None
            self.transport.abortConnection()
            self.pool._finish(exchange, Result(error=f"bad response: {e}"))
            return
        if self.complete:
            self.exchange = None
            result = Result(self.status, self.reason, retry_after=self.retry_after, body=self.body)
            if self.keep_alive:
                self.pool._release(self)
            else:
                self.transport.loseConnection()
            self.pool._finish(exchange, result)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost = True
        exchange, self.exchange = self.exchange, None
        self.pool._lost(self)
        if exchange is None or exchange.done:
            return
        if self.headers_done and self.status >= 200:
            # A response delimited by closing the connection: complete now.
            result = Result(self.status, self.reason, retry_after=self.retry_after, body=self.body)
            self.pool._finish(exchange, result)
        elif not self.received and self.used > 1 and not exchange.fresh_retry:
            # The peer closed a kept-alive connection as we reused it (its idle
            # timeout raced our request): the request was never processed,
            # so send it once more on a fresh connection rather than wait a
            # whole retry delay.
            exchange.fresh_retry = True
            exchange.conn = None
            self.pool._connect(exchange)
        else:
            why = "connection lost"
            if reason is not None:
                # A refused TLS handshake arrives here too: say what TLS said, not the Failure's repr.
                why = tls_problem(reason) or reason.getErrorMessage()
            self.pool._finish(exchange, Result(error=f"connection lost: {why}"))


class _Factory(Factory):
    noisy = False  # one connection per attempt in flight: starting/stopping lines would flood the log

    def __init__(self, pool: "HttpPool") -> None:
        self.pool = pool

    def buildProtocol(self, addr: Any) -> _Connection:
        return _Connection(self.pool)


Connect = Callable[[Factory], Deferred]  # an endpoint's connect, for tests to replace


def endpoint_connect(reactor: Any, target: WebhookTarget, timeout: float) -> Connect:
    """Connect to ``target`` with a HostnameEndpoint (TLS for https)."""
    from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

    endpoint: Any = HostnameEndpoint(reactor, target.host.encode("idna"), target.port, timeout=timeout)
    if target.scheme == "https":
        from msghub.tls import client_options

        endpoint = wrapClientTLS(client_options(target.host, target.client_tls), endpoint)
    return endpoint.connect


def request_prefix(target: WebhookTarget) -> bytes:
    """Request line and the fields that are the same for every request to ``target``."""
    host = target.host if ":" not in target.host else f"[{target.host}]"
    default_port = 443 if target.scheme == "https" else 80
    if target.port != default_port:
        host = f"{host}:{target.port}"
    lines = [b"POST %s HTTP/1.1\r\n" % target.path, b"Host: %s\r\n" % host.encode("ascii")]
    names = {name.lower() for name, _ in target.headers}
    if b"user-agent" not in names:
        lines.append(b"User-Agent: msghub/%s\r\n" % __version__.encode())
    lines.extend(b"%s: %s\r\n" % pair for pair in target.headers)
    return b"".join(lines)


class HttpPool:
    """Keep-alive connections to one target; ``post`` answers through a callback."""

    def __init__(self, reactor: Any, target: WebhookTarget, connect: Connect | None = None) -> None:
        self.reactor = reactor
        self.timeout = target.timeout
        self.target = target
        self.prefix = request_prefix(target)
        self._connect_to = connect  # built at the first connection when None
        self._factory = _Factory(self)
        self.idle: list[_Connection] = []  # LIFO: the busiest connections stay warm
        self.open: set[_Connection] = set()
        self.connects = 0  # connections attempted, for tests and metrics

    def post(self, fields: bytes, body: bytes, on_done: OnDone) -> None:
        """POST ``body`` with the prefix, ``fields`` (rendered lines) and Content-Length."""
        exchange = _Exchange(
            [self.prefix, fields, b"Content-Length: %d\r\n\r\n" % len(body), body], on_done
        )
        exchange.timer = self.reactor.callLater(self.timeout, self._timed_out, exchange)
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.lost:
                conn.send(exchange)
                return
        self._connect(exchange)

    def _connect(self, exchange: _Exchange) -> None:
        self.connects += 1
        if self._connect_to is None:
            self._connect_to = endpoint_connect(self.reactor, self.target, self.timeout)
        d = self._connect_to(self._factory)
        exchange.connecting = d

        def connected(conn: _Connection) -> None:
            exchange.connecting = None
            self.open.add(conn)
            if exchange.done:  # timed out meanwhile
                self._release(conn)
            else:
                conn.send(exchange)

        def failed(failure: Failure) -> None:
            exchange.connecting = None
            if not exchange.done and not failure.check(CancelledError):
                self._finish(exchange, Result(error=f"connect failed: {failure.getErrorMessage()}"))

        d.addCallbacks(connected, failed)

    def _timed_out(self, exchange: _Exchange) -> None:
        exchange.timer = None
        conn, exchange.conn = exchange.conn, None
        self._finish(exchange, Result(error=f"no response within {self.timeout:g} s", timed_out=True))
        if exchange.connecting is not None:
            exchange.connecting.cancel()
        if conn is not None and conn.exchange is exchange:
            conn.exchange = None
            conn.transport.abortConnection()

    def _finish(self, exchange: _Exchange, result: Result) -> None:
        if exchange.done:
            return
        exchange.done = True
        if exchange.timer is not None:
            exchange.timer.cancel()
            exchange.timer = None
        exchange.on_done(result)

    def _release(self, conn: _Connection) -> None:
        if not conn.lost:
            conn.idle_since = self.reactor.seconds()
            self.idle.append(conn)

    def _lost(self, conn: _Connection) -> None:
        self.open.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)

    def close_idle(self, older_than: float = 0.0) -> None:
        """Close connections idle for more than ``older_than`` seconds (all, with 0)."""
        cutoff = self.reactor.seconds() - older_than
        keep = []
        for conn in self.idle:
            if older_than and conn.idle_since > cutoff:
                keep.append(conn)
            else:
                conn.lost = True
                conn.transport.loseConnection()
        self.idle = keep

    def close(self) -> None:
        """Abort every connection; requests still in flight end with an error."""
        self.close_idle()
        for conn in list(self.open):
            conn.transport.abortConnection()

    @property
    def busy(self) -> int:
        return len(self.open) - len(self.idle)


# -- header values a webhook request and its response carry ---------------------------


def sign(keys: Iterable[bytes], message_id: bytes, timestamp: int, body: bytes) -> bytes:
    """The Standard Webhooks ``webhook-signature`` value: ``v1,<base64 HMAC-SHA256>`` per key.

    Signed content is ``{id}.{timestamp}.{body}`` over the raw body bytes;
    several keys (rotation) give space-separated signatures.
    """
    head = b"%s.%d." % (message_id, timestamp)
    out = []
    for key in keys:
        mac = hmac.new(key, head, hashlib.sha256)
        mac.update(body)
        out.append(b"v1," + b64encode(mac.digest()))
    return b" ".join(out)


def parse_retry_after(value: bytes, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` of delta-seconds or an HTTP-date; None if unreadable."""
    text = value.decode("latin-1").strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # HTTP-dates are GMT
        return None
    return max(0.0, when.timestamp() - now)
