"""Deferreds fired when something becomes idle: the grace waits of the stop paths.

A stopping service waits for its last piece of work (a connection to drain,
an attempt in flight, a confirm) without polling: the owner of that work
calls ``IdleWaiters.fire`` when it becomes idle, and ``within`` bounds the
wait by a grace period on the given clock.  Whichever way the wait ends,
nothing stays scheduled once it has fired.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime


class IdleWaiters:
    """Callers waiting for one thing to become idle; its owner fires them."""

    __slots__ = ("_waiting",)

    def __init__(self) -> None:
        self._waiting: list[Deferred[None]] = []

    def __bool__(self) -> bool:
        """Someone is waiting: the owner's cue to check whether it is idle."""
        return bool(self._waiting)

    def wait(self) -> Deferred[None]:
        """Fired by the next ``fire``; cancelling it stops waiting."""
        d: Deferred[None] = Deferred(self._cancel)
        self._waiting.append(d)
        return d

    def fire(self) -> None:
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    def _cancel(self, d: Deferred[None]) -> None:
        if d in self._waiting:
            self._waiting.remove(d)


def within(d: Deferred[Any], seconds: float, clock: IReactorTime) -> Deferred[None]:
    """Fires with ``None`` once ``d`` has, or after ``seconds``: a grace period, not a failure.

    It fires on the next reactor turn, not inside ``d``'s callback: owners
    fire from their own callbacks (a ``connectionLost``, a frame being
    parsed), and what a stop does next must not run inside those.
    """
    resumed: Deferred[None] = Deferred()
    d.addTimeout(seconds, clock, onTimeoutCancel=lambda result, timeout: None)
    d.addCallbacks(lambda _: clock.callLater(0, resumed.callback, None) and None, resumed.errback)
    return resumed
