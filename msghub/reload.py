"""Reload on SIGHUP: the conf file is read and checked again, and what may change while running changes.

A conf with problems is refused whole, with the same ``FILE: key: problem``
lines ``--check`` prints, and the running conf is kept.  ``Hub.reload``
applies the rest and names what needs a restart.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Callable

from twisted.application.service import Service
from twisted.logger import Logger

from msghub.config import Config, ConfigError, load

if TYPE_CHECKING:
    from msghub.hub import Hub

log = Logger()


class ReloadService(Service):
    """Installs the SIGHUP handler while running; the reload itself runs on the reactor thread."""

    def __init__(self, hub: Hub, path: str, call_from_thread: Callable[..., object],
                 loader: Callable[[str], Config] = load) -> None:
        self.hub = hub
        self.path = path
        self.call_from_thread = call_from_thread
        self.loader = loader
        self.reloads = 0  # applied, for tests and metrics
        self.refusals = 0

    def startService(self) -> None:
        super().startService()
        signal.signal(signal.SIGHUP, self._signalled)

    def stopService(self) -> None:
        # Ignored, not default: a HUP during shutdown must not kill the process mid-drain.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        super().stopService()

    def _signalled(self, signum: int, frame: object) -> None:
        self.call_from_thread(self.reload)  # a signal handler must not touch the hub itself

    def reload(self) -> bool:
        """Read, check and apply the conf file; ``False`` if it was refused."""
        if not self.running:
            return False
        try:
            config = self.loader(self.path)
        except ConfigError as e:
            self.refusals += 1
            log.error("reload refused; the running configuration is kept:\n{problems}",
                      problems="\n".join(e.errors))
            return False
        notes = self.hub.reload(config)
        self.reloads += 1
        for note in notes:
            log.warn("reload: {note}", note=note)
        log.info("reload: {path} applied ({users} users, {routes} routes)",
                 path=self.path, users=len(config.users), routes=len(self.hub.config.routes))
        return True
