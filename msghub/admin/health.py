"""Liveness: whether the hub is listening and its spool writable (``/healthz``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.application.service import Service
from twisted.internet.defer import Deferred

if TYPE_CHECKING:
    from msghub.spool import Spool


class Health:
    """The running flag and the spool's health, read by ``/healthz`` and the status page."""

    __slots__ = ("spool", "running")

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.running = False

    def problems(self) -> list[str]:
        problems = []
        if not self.running:
            problems.append("not listening")
        if not self.spool.healthy:
            problems.append("spool not writable")
        return problems


class RunningService(Service):
    """Added to the service tree last, so it starts once every listener is up."""

    def __init__(self, health: Health) -> None:
        self.health = health

    def startService(self) -> None:
        super().startService()
        self.health.running = True

    def stopService(self) -> Deferred[None] | None:
        self.health.running = False
        return super().stopService()
