"""One reader of a subscription: an event stream, or one long-poll answer.

A subscriber owns its connection's writes once the HTTP port hands the
connection over.  It is the transport's streaming producer, so it knows when
the peer stops reading: the transport pauses it once its own write buffer
(~64 KiB) is full.  From then on events wait in the subscriber's buffer,
bounded by ``buffer_bytes``; past that the subscription's overflow policy
decides.  Nothing a slow reader does reaches the source or other readers:
``deliver`` only ever appends or drops.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any, Callable, NamedTuple, Protocol, Sequence

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from zope.interface import implementer

from msghub.config_subscriptions import SubscriptionConfig
from msghub.push.events import HEARTBEAT, HELLO, encode_gap, encode_overflow, poll_item
from msghub.transport import IStreamTransport

Headers = list[tuple[bytes, bytes]]
Gap = tuple[int | None, str | None, str | None]  # missed (None: unknown), first and last missed id


class Item(NamedTuple):
    """One event as every subscriber of a source gets it (built once per message)."""

    id: str
    event: str
    body: bytes
    chunk: bytes  # the encoded event-stream bytes


class Reader(Protocol):
    """What a source needs of a reader: a ``Subscriber``, or the status page's tail."""

    on_close: Callable[[], None] | None  # set by the source; the reader calls it once, when it leaves

    def ready(self, replay: Sequence[Item] = (), gap: Gap | None = None) -> None: ...

    def deliver(self, items: list[Item]) -> None: ...


# Subscriber states.
STARTING = "starting"  # authorised; the source is getting ready; nothing written yet
OPEN = "open"  # the head is written; events flow (or wait while the peer is slow)
CLOSED = "closed"  # the connection is closing or gone; the source let go of us


def _head(status: bytes, content_type: bytes, headers: Headers, length: int | None = None) -> bytes:
    lines = [b"HTTP/1.1 " + status, b"Content-Type: " + content_type, b"Cache-Control: no-store"]
    if length is not None:
        lines.append(b"Content-Length: %d" % length)
    lines += [b"%s: %s" % h for h in headers]
    lines.append(b"Connection: close")  # the body ends when the stream does
    return b"\r\n".join(lines) + b"\r\n\r\n"


@implementer(IPushProducer)
class Subscriber:
    """Base: the life cycle (``state``: STARTING -> OPEN -> CLOSED) and the hand-off.

    ``on_close`` is set by the source when it attaches: called once, when the
    subscriber closes for any reason, so the source frees what it holds.
    ``flow`` (optional, set by a source that can wait) is called with False
    when the peer stopped reading and True when it reads again.
    """

    def __init__(
        self,
        config: SubscriptionConfig,
        transport: IStreamTransport,
        reactor: IReactorTime,
        headers: Headers,
        name: str = "",
    ) -> None:
        self.config = config
        self.transport = transport
        self.reactor = reactor
        self.headers = headers  # CORS headers for the answer
        self.name = name  # the path it was opened with, for logs
        self.state = STARTING
        self.on_close: Callable[[], None] | None = None
        self.on_done: Callable[["Subscriber"], None] | None = None  # the service's bookkeeping
        self.flow: Callable[[bool], None] | None = None
        self.paused = False
        self.lost = False
        self.lossless = False  # set by sources that stop sending while paused: buffer whatever comes
        transport.registerProducer(self, True)

    # -- what sources call --------------------------------------------------------

    def ready(self, replay: Sequence[Item] = (), gap: Gap | None = None) -> None:
        """The source is attached; ``gap`` (missed before ``replay``), then ``replay``, come first."""
        raise NotImplementedError

    def deliver(self, items: list[Item]) -> None:
        raise NotImplementedError

    def fail(self, status: int, reason: str) -> None:
        """The source cannot serve this subscriber (only while STARTING)."""
        if self.state is not STARTING:
            self.close()
            return
        from msghub.ingress.http import render_response

        self.transport.write(render_response(status, reason, self.headers, close=True))
        self.close()

    # -- life cycle ------------------------------------------------------------------

    LINGER = 10.0  # seconds a closing peer that does not read keeps its socket

    def close(self) -> None:
        """Stop: tell the source, drop what is buffered, close the connection."""
        if self.state is CLOSED:
            return
        self.state = CLOSED
        self._closed()
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            on_close()
        if self.on_done is not None:
            self.on_done(self)
        if self.lost:
            return
        self.transport.unregisterProducer()
        self.transport.loseConnection()
        if self.paused:
            # A graceful close waits for the peer to read what is written;
            # one that stopped reading would hold the socket for ever.
            self.reactor.callLater(self.LINGER, self._abort)

    def _abort(self) -> None:
        if not self.lost:
            self.transport.abortConnection()

    def connection_lost(self) -> None:
        self.lost = True
        self.close()

    def _closed(self) -> None:
        """Subclasses free their buffers and timers."""

    # -- IPushProducer ------------------------------------------------------------------

    def pauseProducing(self) -> None:
        self.paused = True
        if self.flow is not None and self.state is OPEN:
            self.flow(False)

    def resumeProducing(self) -> None:
        self.paused = False
        if self.state is OPEN:
            self._drained()
            if self.flow is not None and not self.paused:
                self.flow(True)

    def stopProducing(self) -> None:
        pass  # connection_lost follows

    def _drained(self) -> None:
        """The transport wrote everything: send what waited."""


class StreamSubscriber(Subscriber):
    """``Accept: text/event-stream``: events as they come, heartbeats between them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # Subscriber's
        super().__init__(*args, **kwargs)
        self.backlog: deque[bytes] = deque()
        self.backlog_bytes = 0
        self.missed = 0  # events dropped since the peer stopped reading
        self.first_missed: str | None = None
        self.last_missed: str | None = None
        self.sent = 0  # events written (or buffered) to this peer
        self.gaps = 0
        self.beat: IDelayedCall | None = None

    def ready(self, replay: Sequence[Item] = (), gap: Gap | None = None) -> None:
        if self.state is not STARTING:
            return
        self.state = OPEN
        head = _head(b"200 OK", b"text/event-stream; charset=utf-8", [*self.headers, (b"X-Accel-Buffering", b"no")])
        out = [head, HELLO]
        if gap is not None:
            out.append(encode_gap(*gap))
            self.gaps += 1
        out += [item.chunk for item in replay]
        self.sent += len(replay)
        self.transport.write(b"".join(out))
        self._arm()

    def deliver(self, items: list[Item]) -> None:
        if self.state is not OPEN:
            return
        if not self.paused and not self.backlog and not self.missed:
            self.sent += len(items)
            if len(items) == 1:
                self.transport.write(items[0].chunk)
            else:
                self.transport.write(b"".join([item.chunk for item in items]))
            return
        limit = self.config.buffer_bytes
        for i, item in enumerate(items):
            size = len(item.chunk)
            if self.lossless or (not self.missed and self.backlog_bytes + size <= limit):
                self.backlog.append(item.chunk)
                self.backlog_bytes += size
                self.sent += 1
                continue
            if self.config.overflow == "close":
                missed = len(items) - i
                self.transport.write(b"".join(self.backlog) + encode_overflow(missed, item.id, limit))
                self.close()
                return
            # "gap": everything from here waits to be counted, not kept, so
            # the backlog stays one run of consecutive events.
            if not self.missed:
                self.first_missed = item.id
            self.missed += 1
            self.last_missed = item.id

    def _drained(self) -> None:
        out = list(self.backlog)
        self.backlog.clear()
        self.backlog_bytes = 0
        if self.missed:
            out.append(encode_gap(self.missed, self.first_missed, self.last_missed))
            self.gaps += 1
            self.missed = 0
            self.first_missed = self.last_missed = None
        if out:
            self.transport.write(b"".join(out))

    def _arm(self) -> None:
        self.beat = self.reactor.callLater(self.config.heartbeat, self._heartbeat)

    def _heartbeat(self) -> None:
        if self.state is not OPEN:
            return
        if not self.paused:  # a peer that does not read needs no proof of life
            self.transport.write(HEARTBEAT)
        self._arm()

    def _closed(self) -> None:
        self.backlog.clear()
        self.backlog_bytes = 0
        if self.beat is not None and self.beat.active():
            self.beat.cancel()
        self.beat = None


class PollSubscriber(Subscriber):
    """``?poll=1``: one JSON array of the events pending, or of the first to come, or ``[]``."""

    def __init__(self, *args: Any, timeout: float | None = None, **kwargs: Any) -> None:  # and Subscriber's
        super().__init__(*args, **kwargs)
        self.timeout = self.config.poll_timeout if timeout is None else timeout
        self.timer: IDelayedCall | None = None

    def ready(self, replay: Sequence[Item] = (), gap: Gap | None = None) -> None:
        if self.state is not STARTING:
            return
        self.state = OPEN
        if replay or gap is not None:
            self._answer(list(replay), gap)
        else:
            self.timer = self.reactor.callLater(self.timeout, self._answer, [], None)

    def deliver(self, items: list[Item]) -> None:
        if self.state is OPEN:
            self._answer(items, None)

    def _answer(self, items: list[Item], gap: Gap | None) -> None:
        self.timer = None
        out: list[dict] = []
        if gap is not None:
            out.append({"event": "gap", "missed": gap[0], "from": gap[1], "to": gap[2]})
        size, limit = 0, self.config.buffer_bytes
        for i, item in enumerate(items):
            size += len(item.chunk)
            if not item.id:  # a gap the source found in the middle of its events
                out.append({"event": "gap", **json.loads(item.body)})
                continue
            if size > limit and i:  # at least one event, however big: the client must progress
                left = items[i:]
                out.append({"event": "gap", "missed": len(left), "from": left[0].id, "to": left[-1].id})
                break
            out.append(poll_item(item.id, item.event, item.body))
        body = json.dumps(out, separators=(",", ":")).encode() + b"\n"
        self.transport.write(_head(b"200 OK", b"application/json", self.headers, len(body)) + body)
        self.close()

    def _closed(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
