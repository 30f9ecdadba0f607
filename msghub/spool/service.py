"""The spool as the hub wires it: the service that opens and closes it, and a route's sink."""

from __future__ import annotations

from typing import Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from zope.interface import implementer

from msghub.message import Message
from msghub.sink import ISink
from msghub.spool.store import Spool


class SpoolService(Service):
    """Opens the spool on start; on stop, commits what is queued and closes it.

    Add it to the hub's MultiService *first*: it is then stopped last.
    """

    def __init__(self, spool: Spool) -> None:
        self.spool = spool

    def startService(self) -> None:
        self.spool.open()
        Service.startService(self)

    def stopService(self) -> Deferred:
        Service.stopService(self)
        return self.spool.close()


@implementer(ISink)
class SpoolSink:
    """A route's ``spool = "NAME"`` destination."""

    def __init__(self, spool: Spool, name: str) -> None:
        self.name = f"spool:{name}"
        self.spool_name = name
        self._append: Callable[[str, list[Message]], Deferred] = spool.append

    def deliver(self, messages: list[Message]) -> Deferred:
        return self._append(self.spool_name, messages)
