"""The plain HTTP/1.1 port: bytes -> httptools -> router -> sinks -> responses in order.

twisted.web's request machinery costs ~9x what this port may spend per
request, so this is a thin adapter over httptools' C parser.  Identical header
blocks share one compact ``State`` (cached per connection), so routing and
authentication are cached exactly as on the compact port.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import TYPE_CHECKING, Iterable

import httptools
from twisted.python.failure import Failure

from msghub.compact.errors import UsageError
from msghub.compact.state import Request, State, combine_fields
from msghub.ingress.base import Batch, IngressProtocol

if TYPE_CHECKING:
    from msghub.ingress.context import IngressContext
    from msghub.push.service import ConnectionOwner

_new = tuple.__new__
_VERSIONS = {"1.1": b"HTTP/1.1", "1.0": b"HTTP/1.0"}

_SUBSCRIBE_METHODS = frozenset((b"GET", b"HEAD", b"OPTIONS"))
ACCEPTED = b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"
ACCEPTED_CLOSE = b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def render_response(
    status: int, reason: str, headers: Iterable[tuple[bytes, bytes]] = (), close: bool = False
) -> bytes:
    """A small text/plain response; ``reason`` is our own text, never peer bytes."""
    body = reason.encode("ascii", "replace") + b"\n"
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode("ascii"))]
    lines.append(b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n" % len(body))
    for name, value in headers:
        lines.append(b"%s: %s\r\n" % (name, value))
    if close:
        lines.append(b"Connection: close\r\n")
    lines.append(b"\r\n")
    lines.append(body)
    return b"".join(lines)


class _PeerError(Exception):
    """Raised from a parser callback to stop parsing with an HTTP status."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason


class HttpIngress(IngressProtocol):
    """One plain HTTP/1.1 connection: keep-alive, pipelining, responses in request order."""

    ingress = "http"
    MAX_STATES = 64  # header blocks remembered per connection

    def __init__(self, context: IngressContext) -> None:
        super().__init__(context)
        limits = context.limits
        self.max_url = limits.max_line
        self.max_headers = limits.max_headers
        self.max_header_bytes = limits.max_header_bytes
        self.max_body = limits.max_body
        # Bytes a request head may take on the wire before it is refused.
        self.max_head = limits.max_line + limits.max_header_bytes + 1024
        self.in_head = False
        self.head_bytes = 0  # bytes of whole reads spent inside the current head
        self.head_begun = False  # a head began during the current read
        self.parser = httptools.HttpRequestParser(self)
        self.states: dict[tuple, State] = {}
        self.next_number = 1
        self.events: list = []
        self.keep: list[bool] = []
        self.error: _PeerError | None = None
        self.stopped = False  # a request without keep-alive was the last one
        self.fatal: tuple[int, str] | None = None
        # A GET on a [[subscriptions]] path ends the request stream: once the
        # requests before it are answered, the connection is handed to
        # msghub.push (``handoff``), which owns it from then on (``subscriber``).
        self.push = context.push
        self.handoff: tuple | None = None
        self.subscriber: ConnectionOwner | None = None  # owns the connection once handed to the push service

    # -- httptools callbacks (camelCase is not ours: httptools names them) ----

    def on_message_begin(self) -> None:
        self.in_head = True
        self.head_begun = True
        self.head_bytes = 0
        self.url = b""
        self.fields: list[tuple[bytes, bytes]] = []
        self.field_bytes = 0
        self.length: bytes | None = None  # the Content-Length value, checked once the headers end
        self.body: list[bytes] = []
        self.size = 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.max_url:
            raise _PeerError(414, "request-target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name)
        # Body framing is the parser's business; keeping Content-Length out of
        # the header block lets requests of any body size share one State.
        if (size == 14 or size == 17) and name.lower() in (b"content-length", b"transfer-encoding"):
            if size == 14:
                self.length = value
            return
        self.fields.append((name, value))
        self.field_bytes += size + len(value) + 4
        if self.field_bytes > self.max_header_bytes or len(self.fields) > self.max_headers:
            raise _PeerError(431, "request header fields too large")

    def on_headers_complete(self) -> None:
        self.in_head = False
        parser = self.parser
        if parser.should_upgrade():
            raise _PeerError(400, "protocol upgrade not supported")
        if self.length is not None and (not self.length.isdigit() or int(self.length) > self.max_body):
            raise _PeerError(413, "body too large")
        method = parser.get_method()
        key = (method, parser.get_http_version(), tuple(self.fields))
        state = self.states.get(key)
        if state is None:
            version = _VERSIONS.get(key[1])
            if version is None:
                raise _PeerError(505, "HTTP version not supported")
            try:
                headers = combine_fields(self.fields)
            except UsageError as e:
                raise _PeerError(400, str(e)) from e
            if len(self.states) >= self.MAX_STATES:
                self.states.clear()
            state = self.states[key] = State(version, b"", method, headers)
        self.state = state
        self.keep_alive = parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > self.max_body:
            raise _PeerError(413, "body too large")
        self.body.append(body)

    def on_message_complete(self) -> None:
        parts = self.body
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        number = self.next_number + len(self.events)
        if self.push is not None and self.state.method in _SUBSCRIBE_METHODS:
            found = self.push.match(self.url)
            if found is not None:
                self.handoff = (*found, self.state.method, self.url, self.state)
                self.stopped = True
                raise _PeerError(0, "")
        self.events.append(_new(Request, (self.state.method, self.url or b"/", body, self.state, number)))
        self.keep.append(self.keep_alive)
        if not self.keep_alive:
            self.stopped = True
            raise _PeerError(0, "")  # stop: nothing after a closing request is read

    # -- Twisted ----------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        self.unbatched += len(data)
        self.resetTimeout()
        self.head_begun = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fatal(400, "protocol upgrade not supported")
        except httptools.HttpParserError as e:
            cause = e.__context__
            if isinstance(cause, _PeerError):
                if cause.status:
                    self._fatal(cause.status, cause.reason)
                else:
                    self.closing = True
            elif cause is not None:  # one of our callbacks raised: a bug, not the peer's bytes
                self.fatal = (500, "internal error")
                self.closing = True
                self.transport.pauseProducing()
                self.internal_error(cause)
            else:
                self._fatal(400, "malformed request")
        if self.in_head and not self.head_begun and not self.closing:
            # httptools buffers a header field until it ends, so bound the head
            # here: a peer cannot make us hold more than one head (plus one
            # read) of it.  Only reads spent wholly inside one head count: a
            # read that ends mid-head after pipelined requests is not a long head.
            self.head_bytes += len(data)
            if self.head_bytes > self.max_head:
                self._fatal(431, "request header fields too large")
        events = self.events
        if events:
            first = self.next_number
            self.next_number += len(events)
            keep = self.keep
            self.events = []
            self.keep = []
            self.route_batch(events, first, keep)
        elif self.closing:
            self.flush()

    def _fatal(self, status: int, reason: str) -> None:
        self.fatal = (status, reason)
        self.closing = True
        self.transport.pauseProducing()
        self.stats.rejected(self.ingress, {0: (status,)})
        self.log_once(f"{status} {reason}")

    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason)
        if self.subscriber is not None:
            self.subscriber.connection_lost()

    def drain(self) -> None:
        if self.subscriber is not None:
            self.subscriber.close()
        elif self.handoff is None:
            super().drain()
        else:
            self.handoff = None  # stopping: answer what came before it and close
            super().drain()

    @staticmethod
    def connection_refusal(status: int, reason: str) -> bytes:
        headers = ((b"Retry-After", b"1"),) if status == 503 else ()
        return render_response(status, reason, headers, close=True)

    def answer(self, batches: list[Batch]) -> None:
        out = []
        for batch in batches:
            errors = batch.errors
            keep = batch.extra
            for i in range(batch.last - batch.first + 1):
                error = errors.get(batch.first + i)
                if error is None:
                    out.append(ACCEPTED if keep[i] else ACCEPTED_CLOSE)
                else:
                    out.append(render_response(error[0], error[1], error[2], close=not keep[i]))
        self.write(b"".join(out))

    def finish(self) -> None:
        if self.handoff is not None and self.fatal is None and not self.lost:
            sub, captures, method, url, state = self.handoff
            self.handoff = None
            self.setTimeout(None)
            if self.registered:
                self.registered = False
                self.transport.unregisterProducer()
            if not self.reading:  # reading tells us when the subscriber goes away
                self.reading = True
                self.transport.resumeProducing()
            assert self.push is not None  # handoff is set only when there is a push service
            self.subscriber = self.push.open(self, sub, captures, method, url, state)
            return
        if self.fatal is not None:
            self.transport.write(render_response(self.fatal[0], self.fatal[1], close=True))
        self.close()
