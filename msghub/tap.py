"""``twistd msghub``: Options and makeService, the only place that wires the hub."""

from __future__ import annotations

import gc
import sys
from typing import cast

from twisted.application import strports
from twisted.application.service import MultiService, Service
from twisted.python import usage

from msghub.config import ConfigError, load


class Options(usage.Options):
    synopsis = "[-c CONF] [--check]"
    longdesc = "Run the msghub HTTP-to-messaging hub described by a TOML configuration file."
    optParameters = [["conf", "c", "conf/msghub.toml", "Path to the TOML configuration file."]]
    optFlags = [["check", None, "Validate the configuration, print problems, and exit."]]

    def postOptions(self) -> None:
        try:
            self.config = load(self["conf"])
        except ConfigError as e:
            for line in e.errors:
                sys.stderr.write(line + "\n")
            raise SystemExit(1) from None
        if self["check"]:
            sys.stdout.write(f"{self['conf']}: ok\n")
            raise SystemExit(0)


class _Running(Service):
    """Added last, so it starts once every listener is up: /healthz reports it."""

    def __init__(self, hub) -> None:
        self.hub = hub

    def startService(self) -> None:
        super().startService()
        self.hub.running = True

    def stopService(self):
        self.hub.running = False
        return super().stopService()


def makeService(options: Options) -> MultiService:
    from twisted.internet import reactor

    from msghub.admin.web import make_site
    from msghub.hub import DrainService, Hub, IHubReactor, IngressFactory, SequentialMultiService
    from msghub.ingress.compact import CompactIngress
    from msghub.ingress.http import HttpIngress
    from msghub.spool import Spool, SpoolService

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
    top = SequentialMultiService()
    # Children stop one at a time in reverse order: listeners close first,
    # open connections are answered and closed, the spool commits and closes last.
    SpoolService(spool).setServiceParent(top)
    if hub.amqp is not None:
        hub.amqp.setServiceParent(top)  # stops after the drain: spools what is unconfirmed
    if hub.webhooks is not None:
        hub.webhooks.setServiceParent(top)  # stops after the drain, before the spool: last deletes commit
    if hub.push_amqp is not None:
        hub.push_amqp.setServiceParent(top)  # stops after the drain has closed its subscribers
    hub.verifier.setServiceParent(top)  # its threads stop after the drain has answered held requests
    DrainService(hub).setServiceParent(top)
    for description in config.listen.http:
        strports.service(description, IngressFactory(hub, HttpIngress)).setServiceParent(top)
    for description in config.listen.compact:
        strports.service(description, IngressFactory(hub, CompactIngress)).setServiceParent(top)
    site = make_site(hub)
    for description in config.listen.admin:
        strports.service(description, site).setServiceParent(top)
    _Running(hub).setServiceParent(top)
    return top
