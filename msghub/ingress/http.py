"""The plain HTTP/1.1 port: bytes -> ``Http11Reader`` -> router -> sinks -> responses in order.

twisted.web's request machinery costs ~9x what this port may spend per
request, so this is a thin adapter over the sans-IO ``Http11Reader``
(httptools' C parser underneath), as ``CompactIngress`` is over the compact
``Decoder``: one reader, one table of limits and statuses, for this port,
the gateway and the CLI.  Identical header blocks share one compact
``State``, so routing and authentication are cached exactly as on the
compact port.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import TYPE_CHECKING, Iterable

from twisted.python.failure import Failure

from msghub.compact.errors import StreamError
from msghub.compact.http11 import Http11Reader
from msghub.compact.state import Request
from msghub.ingress.base import BODY, HEAD, Batch, IngressProtocol
from msghub.message import SEQ_BITS, SEQ_MASK

if TYPE_CHECKING:
    from msghub.ingress.context import IngressContext
    from msghub.push.service import ConnectionOwner

_SUBSCRIBE_METHODS = frozenset((b"GET", b"HEAD", b"OPTIONS"))
# A 202 names the message it accepted: Message-Id is the id's text (format_id),
# the AMQP message_id and the webhook-id of the message.
ACCEPTED = b"HTTP/1.1 202 Accepted\r\nMessage-Id: %x-%010x\r\nContent-Length: 0\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
ACCEPTED_CLOSE = b"HTTP/1.1 202 Accepted\r\nMessage-Id: %x-%010x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


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


class HttpIngress(IngressProtocol):
    """One plain HTTP/1.1 connection: keep-alive, pipelining, responses in request order.

    The request that closes the connection (HTTP/1.0 without keep-alive,
    ``Connection: close``) is the last one read; its answer says
    ``Connection: close``.
    """

    ingress = "http"

    def __init__(self, context: IngressContext) -> None:
        super().__init__(context)
        self.reader = Http11Reader(context.codec_limits)
        self.last_number = 0  # the number of the request that closes the connection, once read
        self.fatal: tuple[int, str] | None = None
        self.expecting: Request | None = None  # waits for earlier answers before its 100 Continue
        # A GET on a [[subscriptions]] path ends the request stream: once the
        # requests before it are answered, the connection is handed to
        # msghub.push (``handoff``), which owns it from then on (``subscriber``).
        self.push = context.push
        self.handoff: tuple | None = None
        self.subscriber: ConnectionOwner | None = None  # owns the connection once handed to the push service

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        self.unbatched += len(data)
        self.resetTimeout()
        reader = self.reader
        try:
            events = reader.feed(data)
            if self.push is not None:
                events = self._find_subscription(events)
        except StreamError as e:
            events = e.events
            self._fatal(e.status, e.reason)
        except Exception as e:  # a bug of ours, not the peer's bytes
            events = []
            self.internal_error(e)
        if reader.done and events and self.handoff is None:
            self.closing = True
            self.last_number = events[-1][4]
        if events:
            self.route_read(events, events[0][4])
        elif self.closing:
            self.flush()
        if self.closing:
            return
        if not reader.at_boundary:
            self.progress(HEAD if reader.in_head else BODY, reader.number)
            expecting = reader.expectation()  # after the answers to the requests before it
            if expecting is not None:
                try:
                    self._expect_continue(expecting)
                except Exception as e:
                    self.internal_error(e)
                    self.flush()
        elif self.slow_kind:
            self.progress(0)

    def _find_subscription(self, events: list) -> list:
        """Cut ``events`` at the first request for a subscription path: it ends the request stream."""
        push = self.push
        assert push is not None
        for i, req in enumerate(events):
            if req[0] in _SUBSCRIBE_METHODS:
                found = push.match(req[1])
                if found is not None:
                    state = req[3]
                    self.handoff = (*found, req[0], req[1], state)
                    self.closing = True
                    return events[:i]
        return events

    def _expect_continue(self, req: Request, flush: bool = True) -> None:
        """``Expect: 100-continue``: ``100 Continue`` if the route would take it, else its final answer now.

        The decision is the cached routing decision, so it costs nothing more
        than routing the request.  A refusal (401, 403, 404, 405) is the
        final answer: the body is never read and the connection closes after
        it.  Credentials not yet checked on this connection are checked with
        the body (100 Continue first).  While earlier requests await their
        answers the interim answer waits too (it would come before theirs):
        ``answer`` sends it once they are answered, if the body has not come.
        """
        if self.batches or self.held:
            self.expecting = req
            return
        state = req[3]
        entry = self.cache.for_state(state)
        if entry is not None:
            method, target = req[0], req[1]
            targets = entry.methods.get(method) or self.cache.targets(entry, method)
            decision = targets.get(target) or self.cache.decide(entry, method, target)
            if decision.status:
                if decision.route is not None:
                    self.stats.route_rejected(decision.route.name, 1)
                self.stats.rejected(self.ingress, {req[4]: (decision.status,)})
                self.closing = True
                self.transport.pauseProducing()
                self.write(render_response(decision.status, decision.reason, decision.headers, close=True))
                if flush:
                    self.flush()  # nothing else is owed: close
                return
        self.write(CONTINUE)

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

    def request_timeout(self, reason: str) -> None:
        self._fatal(408, reason)

    def fail_internal(self) -> None:
        self.fatal = (500, "internal error")

    @staticmethod
    def connection_refusal(status: int, reason: str) -> bytes:
        headers = ((b"Retry-After", b"1"),) if status == 503 else ()
        return render_response(status, reason, headers, close=True)

    def answer(self, batches: list[Batch]) -> None:
        out = []
        last = self.last_number
        for batch in batches:
            errors = batch.errors
            ids = batch.ids
            for number in range(batch.first, batch.last + 1):
                error = errors.get(number) if errors else None
                if error is None:
                    id_ = ids + number
                    out.append((ACCEPTED_CLOSE if number == last else ACCEPTED) % (id_ >> SEQ_BITS, id_ & SEQ_MASK))
                else:
                    out.append(render_response(error[0], error[1], error[2], close=number == last))
        self.write(b"".join(out))
        req = self.expecting
        if req is not None and not self.batches and not self.held:
            self.expecting = None
            reader = self.reader
            if not self.closing and reader.in_body and reader.number == req[4]:  # its body has not come
                try:
                    self._expect_continue(req, flush=False)  # flush, our caller, closes if it refused
                except Exception as e:
                    self.internal_error(e)

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
