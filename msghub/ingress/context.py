"""What an ingress connection may use of the hub: one frozen ``IngressContext``.

``msghub.hub`` builds it once and hands it to the ingress factories; the
protocols see nothing else of the process.  Counters and budgets inside it are
mutable (they are shared by every connection), the set of them is not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from msghub.idle import IdleWaiters

if TYPE_CHECKING:
    from msghub.admin.metrics import HubStats
    from msghub.auth import PasswordVerifier
    from msghub.compact.state import Limits
    from msghub.config import LimitsConfig
    from msghub.ingress.base import ByteBudget, IngressProtocol
    from msghub.push.service import PushService
    from msghub.router import Router


@dataclass(frozen=True, slots=True)
class IngressContext:
    """The parts of the hub both producer ports share.

    ``reserve_ids(n)`` returns the first of ``n`` consecutive message ids;
    ``push`` is the [[subscriptions]] service, or ``None`` when the conf has none.
    """

    clock: IReactorTime
    router: Router
    limits: LimitsConfig
    codec_limits: Limits
    reserve_ids: Callable[[int], int]
    verifier: PasswordVerifier
    stats: HubStats
    connections: Connections
    budget: ByteBudget
    push: PushService | None = None


class Connections:
    """The open ingress protocols; ``when_empty`` fires as the last one closes."""

    __slots__ = ("_open", "_empty")

    def __init__(self) -> None:
        self._open: set[IngressProtocol] = set()
        self._empty = IdleWaiters()

    def add(self, protocol: IngressProtocol) -> None:
        self._open.add(protocol)

    def discard(self, protocol: IngressProtocol) -> None:
        self._open.discard(protocol)
        if self._empty and not self._open:
            self._empty.fire()

    def __iter__(self):
        return iter(self._open)

    def __len__(self) -> int:
        return len(self._open)

    def when_empty(self) -> Deferred[None]:
        return self._empty.wait() if self._open else succeed(None)
