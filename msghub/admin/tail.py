"""The status page's live tail: the first bytes of what one route accepts.

Each route has a ``Tap`` (msghub.push.tap) of its own for the tail, with no
history: a route nobody tails costs one call per batch and nothing per
message.  A tail reader is a subscriber of that tap that sends JSON
summaries, not bodies, and at most ``PER_BATCH`` of each batch: a page is read
by a person, so of a million messages a second it shows a sample and counts
the rest.
"""

from __future__ import annotations

import json
from typing import Callable, Sequence

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from msghub.admin.sse import EventRequest
from msghub.config_subscriptions import SubscriptionConfig
from msghub.push.events import encode_event
from msghub.push.subscriber import Gap, Item
from msghub.push.tap import Tap

HEAD_BYTES = 96  # bytes of each body a tail shows
PER_BATCH = 20  # messages of one batch a tail shows; the rest are counted as skipped
PER_SECOND = 50  # and at most this many a second, whatever the batches


def tail_tap(route_name: str) -> Tap:
    """The tail's tap of one route: no history, no buffer beyond the socket's."""
    config = SubscriptionConfig(name=f"tail {route_name}", match="/tail", route=route_name, history_bytes=0)
    return Tap(config, route_name)


def summary(item: Item, now: float, skipped: int) -> dict:
    head = item.body[:HEAD_BYTES]
    return {
        "id": item.id,
        "time": now,
        "bytes": len(item.body),
        "head": head.decode("utf-8", "replace"),
        "more": len(item.body) > HEAD_BYTES,
        "skipped": skipped,
    }


class TailReader:
    """One page's tail; the tap calls ``ready``, ``deliver``, and ``on_close`` when it leaves."""

    def __init__(self, request: Request, clock: IReactorTime) -> None:
        self.clock = clock
        self.on_close: Callable[[], None] | None = None  # set by the tap
        self.skipped = 0  # not shown since the last event shown
        self.second = 0.0  # start of the current one-second window
        self.shown = 0  # events sent in that window
        self.out = EventRequest(request, self._gone)

    def ready(self, replay: Sequence[Item] = (), gap: Gap | None = None) -> None:
        pass  # no history: nothing to replay

    def deliver(self, items: list[Item]) -> None:
        now = self.clock.seconds()
        if now - self.second >= 1.0:
            self.second, self.shown = now, 0
        room = min(PER_BATCH, PER_SECOND - self.shown)
        shown = items[-room:] if room > 0 else []
        self.shown += len(shown)
        self.skipped += len(items) - len(shown)
        chunks = []
        for item in shown:
            data = json.dumps(summary(item, now, self.skipped), separators=(",", ":")).encode()
            chunks.append(encode_event(item.id, b"tail", data))
            self.skipped = 0
        if not self.out.send(b"".join(chunks)):
            self.skipped += len(shown)

    def close(self) -> None:
        self.out.close()

    def _gone(self) -> None:
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            on_close()


class TailFeed(Resource):
    """``/tail?route=NAME``: ``event: tail`` per message that route accepts from now on."""

    isLeaf = True

    def __init__(self, taps: dict[str, Tap], clock: IReactorTime) -> None:
        super().__init__()
        self.taps = taps
        self.clock = clock
        self.readers: set[TailReader] = set()

    def render_GET(self, request: Request) -> bytes | int:
        names = request.args.get(b"route") or [b""]
        tap = self.taps.get(names[-1].decode("utf-8", "replace"))
        if tap is None:
            request.setResponseCode(404)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"no such route\n"
        reader = TailReader(request, self.clock)
        self.readers.add(reader)
        close = None

        def left() -> None:
            self.readers.discard(reader)
            if close is not None:
                close()

        tap.subscribe(reader, {}, None)
        close, reader.on_close = reader.on_close, left
        return NOT_DONE_YET
