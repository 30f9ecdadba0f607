"""The one interface every destination implements, and the error it refuses with.

Below both the spool and the forwarders: each depends on this module, never on
the other for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from msghub.message import Message


class SinkError(Exception):
    """A sink could not take messages; ``status`` is what producers are told."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


class ISink(Interface):
    """Something that takes responsibility for accepted messages."""

    name = Attribute("str: the destination name used in metrics and logs")

    def deliver(messages: list[Message]) -> Deferred | None:
        """Take ``messages`` (a list of ``Message``, in acceptance order).

        Return ``None`` when they are already safe, or a Deferred that fires
        once they are safe (committed or confirmed) and fails with
        ``SinkError`` when they are not.  The Deferred may instead fire with
        a dict mapping the ids of some of the messages to a ``SinkError``:
        those were refused, the rest are safe.  One call per batch, never per message.
        """
