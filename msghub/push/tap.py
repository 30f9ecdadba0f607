"""Route taps: what a route accepted, pushed to its subscribers in-process.

``TappedSink`` wraps the route's own sink, so a tap sees a batch only once
that sink has said it is safe (committed, confirmed), minus what it refused:
a reader never sees a message the producer was told failed.  The producer's
answer does not wait for the tap: publishing only appends to bounded buffers.

Each tap keeps the last ``history_bytes`` of events, so a reconnecting
``EventSource`` (``Last-Event-ID``) or the next ``?poll=1`` resumes where it
left off within the hub's lifetime; an id no longer (or never) held is
answered with ``event: gap`` whose ``missed`` is ``null`` (unknown) first.
"""

from __future__ import annotations

from collections import deque
from typing import Mapping

from twisted.internet.defer import Deferred
from zope.interface import implementer

from msghub.config_subscriptions import SubscriptionConfig
from msghub.message import Message, format_id
from msghub.push.events import encode_event, field_text
from msghub.push.subscriber import Item, Reader
from msghub.sink import ISink, SinkError

Filter = tuple[tuple[str, str], ...]  # (capture, value) pairs a message must have


@implementer(ISink)
class TappedSink:
    """A route's sink whose accepted batches are also published to taps."""

    def __init__(self, inner: ISink, taps: list[Tap]) -> None:
        self.inner = inner
        self.name = inner.name
        self.taps = taps

    def deliver(self, messages: list[Message]) -> Deferred | None:
        result = self.inner.deliver(messages)
        if result is None:  # taken at once (discard): _took's loop without its call, once per read
            for tap in self.taps:
                tap.publish(messages, None)
            return None
        return result.addCallback(self._took, messages)

    def _took(self, refused, messages: list):
        for tap in self.taps:
            tap.publish(messages, refused)
        return refused

    def __getattr__(self, name: str):
        return getattr(self.inner, name)  # forwarders' own attributes (state, stats) stay reachable


class Tap:
    """One subscription's view of one route: its subscribers and its history."""

    def __init__(self, config: SubscriptionConfig, route_name: str) -> None:
        self.config = config
        self.event_name = route_name
        self.event = field_text(route_name)
        self.groups: dict[Filter, list[Reader]] = {}
        self.history: deque[tuple[Mapping[str, str], Item]] = deque()
        self.history_bytes = 0
        self.published = 0

    @property
    def subscribers(self) -> int:
        return sum(len(group) for group in self.groups.values())

    def publish(self, messages: list[Message], refused: Mapping[int, SinkError] | None) -> None:
        keep = self.config.history_bytes
        if not self.groups and not keep:
            return
        event, name = self.event, self.event_name
        items = []
        for m in messages:
            if refused and m.id in refused:
                continue
            event_id = format_id(m.id)
            items.append((m.captures, Item(event_id, name, m.body, encode_event(event_id, event, m.body))))
        if not items:
            return
        self.published += len(items)
        if keep:
            history = self.history
            history.extend(items)
            self.history_bytes += sum(len(item.chunk) for _, item in items)
            while self.history_bytes > keep:
                self.history_bytes -= len(history.popleft()[1].chunk)
        for wanted, group in list(self.groups.items()):
            selected = [item for captures, item in items if _matches(captures, wanted)] if wanted else [
                item for _, item in items
            ]
            if selected:
                for subscriber in list(group):
                    subscriber.deliver(selected)

    def subscribe(self, subscriber: Reader, captures: Mapping[str, str], last_id: str | None) -> None:
        """Attach at once; replay history after ``last_id`` when given."""
        wanted: Filter = tuple(sorted(captures.items()))
        group = self.groups.setdefault(wanted, [])
        group.append(subscriber)

        def unsubscribe() -> None:
            group.remove(subscriber)
            if not group and self.groups.get(wanted) is group:
                del self.groups[wanted]

        subscriber.on_close = unsubscribe
        replay: list[Item] = []
        gap = None
        if last_id is not None:
            start = None
            for i in range(len(self.history) - 1, -1, -1):
                if self.history[i][1].id == last_id:
                    start = i + 1
                    break
            if start is None:  # older than the history, or from another run: how many is unknown
                gap, start = (None, None, None), 0
            replay = [item for c, item in list(self.history)[start:] if _matches(c, wanted)]
        subscriber.ready(replay, gap)


def _matches(captures: Mapping[str, str], wanted: Filter) -> bool:
    for name, value in wanted:
        if captures.get(name) != value:
            return False
    return True
