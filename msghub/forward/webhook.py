"""Webhook targets: signed POSTs from the spool, retried, isolated per target.

A route's ``WebhookSink`` appends each batch once per target, under the
spool name ``webhook:TARGET``, in one ``append_each`` (one commit, one
Deferred): the producer is acknowledged once every target's copy is on disk.
From there each target has its own ``Deliverer``: it reads its spool name in
acceptance order, keeps up to ``concurrency`` attempts in flight over its own
connection pool, and marks a message delivered only after a 2xx.  Nothing is
shared between targets but the reactor and the spool, so a dead or slow
target only ever holds its own connections, window and retry timers.

Each message's retry schedule (attempts so far, next attempt time) is recorded
in the spool beside its position, so a restart resumes it instead of starting
over.  Delivery is at-least-once: a message delivered just before a crash
whose mark was not yet committed is sent again (``webhook-id`` lets the
receiver drop the duplicate).  Reads run off the reactor thread.
"""


from __future__ import annotations

import dataclasses
import random as _random
from typing import Any, Callable, Iterable, Mapping

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from msghub.config_webhooks import WebhookTarget
from msghub.forward.webhook_client import HttpPool, parse_retry_after, sign
from msghub.forward.webhook_deliverer import (
    IDLE_CLOSE,
    MARK_DELAY,
    STOP_GRACE,
    TICK,
    WINDOW_MIN,
    Client,
    Deliverer,
)
from msghub.forward.webhook_state import LATENCY_BUCKETS, TargetStats
from msghub.idle import within
from msghub.sink import ISink

__all__ = [
    "IDLE_CLOSE", "LATENCY_BUCKETS", "MARK_DELAY", "STOP_GRACE", "TICK", "WINDOW_MIN", "Deliverer", "TargetStats",
    "WebhookForwarder", "WebhookSink", "parse_retry_after", "sign",
]

log = Logger()

# Settings a deliverer takes over in place on a reload (``Deliverer.configure``);
# a change to any other (the URL, timeout, headers, TLS) also gets a new pool.
POLICY = frozenset(("secrets", "retry", "retry_on", "rate", "disable_after", "concurrency", "ordered"))
_DERIVED = frozenset(("scheme", "host", "port", "path"))  # read from the url


@implementer(ISink)
class WebhookSink:
    """A route's ``webhooks = [...]`` destination: one spool append for all its targets."""

    def __init__(self, spool: Any, route_name: str, deliverers: list[Deliverer]) -> None:
        self.name = f"webhooks:{route_name}"
        self.deliverers = deliverers
        self.spool_names = tuple(d.name for d in deliverers)
        self._append_each = spool.append_each

    def deliver(self, messages: list) -> Deferred:
        return self._append_each(self.spool_names, messages).addCallback(self._committed)

    def _committed(self, result: None) -> None:
        for deliverer in self.deliverers:
            deliverer.wake()
        return result


class WebhookForwarder(Service):
    """Every target's deliverer, and the poll that ties them to the spool database."""

    def __init__(
        self,
        targets: Mapping[str, WebhookTarget],
        reactor: Any,
        spool: Any,
        random: Callable[[], float] = _random.random,
        client_factory: Callable[[WebhookTarget], Client] | None = None,
    ) -> None:
        self.reactor = reactor
        self.spool = spool
        self.random = random
        self.make_client = client_factory or (lambda target: HttpPool(reactor, target))
        self.deliverers = {name: self._deliverer(target) for name, target in targets.items()}
        self._tick_call: Any = None
        self._changes = 0
        self._started_up = False  # the first poll came back and the deliverers started
        self._disabled: Mapping[str, str] = {}  # the last poll's disabled targets

    def _deliverer(self, target: WebhookTarget) -> Deliverer:
        return Deliverer(target, self.reactor, self.spool, self.make_client(target), self.random)

    def reload(self, targets: Mapping[str, WebhookTarget]) -> None:
        """Apply a reloaded ``[webhooks]``: one log line per target added, removed or changed.

        A new target starts delivering its queue (disabled if the spool says
        so).  A removed one stops; its queue stays in the spool for a later
        configuration.  A changed one takes its new settings from its next
        attempt; messages keep their attempts so far and running retry
        timers.  Unchanged targets are not touched at all.
        """
        for name in sorted(self.deliverers.keys() - targets.keys()):
            self._retire(self.deliverers.pop(name))
        for name, target in targets.items():
            deliverer = self.deliverers.get(name)
            if deliverer is None:
                deliverer = self.deliverers[name] = self._deliverer(target)
                log.info("webhook {target}: added by the reload", target=name)
                if self._started_up and self.running:
                    deliverer.start(self._disabled.get(deliverer.name))
            elif deliverer.target != target:
                changed = [f.name for f in dataclasses.fields(target)
                           if getattr(target, f.name) != getattr(deliverer.target, f.name)]
                if not POLICY.issuperset(changed):
                    old = deliverer.client
                    deliverer.client = self.make_client(target)
                    old.close_idle(0.0)
                    # Attempts in flight on the old pool end by their old timeout at the latest.
                    self.reactor.callLater(deliverer.target.timeout + 1.0, old.close)
                deliverer.configure(target)
                keys = ", ".join("secret" if k == "secrets" else k for k in changed if k not in _DERIVED)
                log.info("webhook {target}: {keys} changed by the reload; applies from the next attempt",
                         target=name, keys=keys)

    def _retire(self, deliverer: Deliverer) -> None:
        log.warn("webhook {target}: removed by the reload; its {n} queued messages stay in the spool as {name}",
                 target=deliverer.target.name, n=self.spool.depths().get(deliverer.name, 0), name=deliverer.name)
        deliverer.stop()

        def close(_: Any) -> None:
            deliverer.flush()
            deliverer.client.close()

        within(deliverer.when_idle(), STOP_GRACE, self.reactor).addCallback(close)

    def sink(self, route_name: str, target_names: Iterable[str]) -> WebhookSink:
        return WebhookSink(self.spool, route_name, [self.deliverers[name] for name in target_names])

    def startService(self) -> None:
        super().startService()
        # The spool is open now (SpoolService starts first); deliverers start
        # once the poll says which targets are disabled.
        self.spool.poll().addCallbacks(self._started, self._poll_failed)

    def _started(self, polled: tuple[Mapping[str, str], int]) -> None:
        if not self.running:
            return
        disabled, self._changes = polled
        self._disabled, self._started_up = disabled, True
        for deliverer in self.deliverers.values():
            deliverer.start(disabled.get(deliverer.name))
        self._tick_call = self.reactor.callLater(TICK, self._tick)

    def _poll_failed(self, failure: Failure) -> None:
        log.warn("webhooks: polling the spool failed: {error}", error=failure.getErrorMessage())
        if self.running and self._tick_call is None:
            self._tick_call = self.reactor.callLater(TICK, self._retry_start)

    def _retry_start(self) -> None:
        self._tick_call = None
        self.spool.poll().addCallbacks(self._started, self._poll_failed)

    def _tick(self) -> None:
        self._tick_call = self.reactor.callLater(TICK, self._tick)
        self.spool.poll().addCallbacks(self._ticked, self._poll_failed_tick)

    def _poll_failed_tick(self, failure: Failure) -> None:
        log.warn("webhooks: polling the spool failed: {error}", error=failure.getErrorMessage())

    def _ticked(self, polled: tuple[Mapping[str, str], int]) -> None:
        if not self.running:
            return
        disabled, changes = polled
        self._disabled = disabled
        if changes != self._changes:  # msghub-spool wrote beside us: depths went stale
            self._changes = changes
            self.spool.refresh_depths().addErrback(lambda f: log.failure("refreshing depths failed", f))
        for deliverer in self.deliverers.values():
            deliverer.tick(disabled)

    def stopService(self) -> Deferred:
        super().stopService()
        if self._tick_call is not None and self._tick_call.active():
            self._tick_call.cancel()
        deliverers = list(self.deliverers.values())
        for deliverer in deliverers:
            deliverer.stop()  # no new attempts; what is in flight may still finish

        def close(_: Any) -> None:
            for deliverer in deliverers:
                deliverer.flush()  # deletes of the last answers, before the spool closes
                deliverer.client.close()

        idle = gatherResults([deliverer.when_idle() for deliverer in deliverers], consumeErrors=True)
        return within(idle, STOP_GRACE, self.reactor).addCallback(close)
