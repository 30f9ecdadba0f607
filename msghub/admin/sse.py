"""An event stream on a twisted.web request, for the admin port's page.

The admin port is not the data path, so twisted.web is fine here (chunked
encoding, its own keep-alive handling).  What a reader does not read is
dropped and counted, never queued: a status snapshot replaces the previous
one, and a tail is for eyes, so a stalled page costs the hub nothing.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.interfaces import IPushProducer
from twisted.web.server import Request
from zope.interface import implementer

from msghub.push.events import HELLO

# EventRequest states.
OPEN = "open"  # the head is written; chunks go out unless the peer stopped reading
CLOSED = "closed"  # finished by us or lost by the peer; on_close has been called


@implementer(IPushProducer)
class EventRequest:
    """One reader; ``on_close`` is called once, however the stream ends."""

    def __init__(self, request: Request, on_close: Callable[[], None]) -> None:
        self.request = request
        self.on_close: Callable[[], None] | None = on_close  # None once called
        self.state = OPEN
        self.paused = False
        self.dropped = 0  # chunks not sent because the peer was not reading
        request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"X-Accel-Buffering", b"no")
        request.registerProducer(self, True)
        request.notifyFinish().addBoth(self._ended)
        request.write(HELLO)

    def send(self, chunk: bytes) -> bool:
        """Write ``chunk`` now, or drop it (False) while the peer is not reading."""
        if self.state is not OPEN:
            return False
        if self.paused:
            self.dropped += 1
            return False
        self.request.write(chunk)
        return True

    def close(self) -> None:
        if self.state is not OPEN:
            return
        request = self.request
        request.unregisterProducer()
        request.finish()  # fires notifyFinish: _ended does the rest
        self._ended(None)

    def _ended(self, _) -> None:
        if self.state is CLOSED:
            return
        self.state = CLOSED
        on_close, self.on_close = self.on_close, None
        if on_close is not None:  # not CLOSED, so not called yet
            on_close()

    # -- IPushProducer: the channel pauses us when its transport's buffer is full --

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        pass  # notifyFinish fires with the connection's loss
