"""``twistd msghub``: Options and makeService, the only place that wires the hub."""

from __future__ import annotations

import gc
import os
import platform
import sys
from typing import cast

from twisted.application.service import MultiService
from twisted.copyright import version as twisted_version
from twisted.internet.interfaces import IProtocolFactory
from twisted.python import usage

from msghub import __version__
from msghub.config import ConfigError, load


def version_line() -> str:
    return f"msghub {__version__} (Twisted {twisted_version}, Python {platform.python_version()})"


class Options(usage.Options):
    synopsis = "[-c CONF] [--check]"
    longdesc = "Run the msghub HTTP-to-messaging hub described by a TOML configuration file."
    optParameters = [["conf", "c", "conf/msghub.toml", "Path to the TOML configuration file."]]
    optFlags = [["check", None, "Validate the configuration, print problems, and exit."]]

    def opt_version(self) -> None:
        """Print msghub's version (and Twisted's and Python's) and exit."""
        # usage.Options' own prints only Twisted's.
        sys.stdout.write(f"{version_line()}\n")
        raise SystemExit(0)

    def postOptions(self) -> None:
        # Taken now, before twistd moves to its --rundir: a SIGHUP must read this same file.
        self.conf_path = os.path.join(os.getcwd(), self["conf"])
        try:
            self.config = load(self["conf"])
        except ConfigError as e:
            for line in e.errors:
                sys.stderr.write(line + "\n")
            raise SystemExit(1) from None
        if self["check"]:
            sys.stdout.write(f"{self['conf']}: ok\n")
            raise SystemExit(0)


def makeService(options: Options) -> MultiService:
    from twisted.internet import reactor

    from msghub.admin.health import RunningService
    from msghub.admin.web import make_site
    from msghub.hub import Hub, IHubReactor
    from msghub.ingress.compact import CompactIngress
    from msghub.ingress.factory import IngressFactory
    from msghub.ingress.http import HttpIngress
    from msghub.listeners import listeners
    from msghub.reload import ReloadService
    from msghub.spool import Spool
    from msghub.startup import log_summary

    config = options.config
    # The data path allocates a tuple or two per message, and CPython's cycle
    # collector would run every 700 allocations, scanning everything loaded at
    # start: bench/ingress.py measured ~25% of the compact->discard budget on it.
    # Start-up objects are frozen out of its sight; later generations are rarer.
    gc.set_threshold(50_000, 20, 20)
    reactor.callWhenRunning(gc.freeze)
    spool = Spool(
        config.spool.path,
        reactor,
        config.spool.synchronous,
        max_bytes=config.spool.max_bytes,
        read_bytes=config.spool.read_bytes,
        max_queue_bytes=config.spool.max_queue_bytes,
    )
    # Twisted's stub types the global reactor as its common interfaces only; it runs threads too.
    hub = Hub(config, cast(IHubReactor, reactor), spool)
    top = hub.service()  # listeners are added after it, so they stop first
    listen = config.listen
    http = IngressFactory(hub.ingress, HttpIngress, alpn=(b"http/1.1",))
    compact = IngressFactory(hub.ingress, CompactIngress)
    site = make_site(hub)
    entries: list[tuple[str, str, IProtocolFactory]] = [("http", d, http) for d in listen.http]
    entries += [("compact", d, compact) for d in listen.compact]
    entries += [("admin", d, site) for d in listen.admin]
    for listener in listeners(reactor, listen.backlog, entries):
        listener.setServiceParent(top)
    # Stops first: a HUP during shutdown is ignored.
    ReloadService(hub, options.conf_path, hub.reactor.callFromThread).setServiceParent(top)
    RunningService(hub.health).setServiceParent(top)
    reactor.callWhenRunning(log_summary, config)
    return top
