"""The ``discard = true`` destination: acknowledge and drop (for load tests)."""

from __future__ import annotations

from zope.interface import implementer

from msghub.sink import ISink


@implementer(ISink)
class DiscardSink:
    name = "discard"

    def deliver(self, messages: list) -> None:
        return None
