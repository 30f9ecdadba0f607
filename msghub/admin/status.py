"""The status page's feed: a snapshot of the hub, sent every second as an event stream.

``snapshot`` reads the same plain counters ``/metrics`` exports (and the
destinations' own state attributes); ``StatusFeed`` computes rates from
consecutive snapshots, once per tick whatever the number of readers, and
runs its timer only while someone reads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from msghub.config import RouteConfig
    from msghub.hub import Hub

import json

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from msghub.admin.sse import EventRequest
from msghub.push.events import encode_event


def route_destination(rc: RouteConfig) -> str:
    if rc.discard:
        return "discard"
    if rc.spool is not None:
        return f"spool {rc.spool}"
    if rc.amqp is not None:
        return f"amqp {rc.amqp.exchange or '(default)'}"
    return "webhooks " + ", ".join(rc.webhooks or ())


def destinations(hub: Hub) -> list[dict]:
    """Every destination the routes use: kind, name, state and the messages the spool holds for it."""
    depths = hub.spool.depths()
    spool_state = "ok" if hub.spool.healthy else "failing"
    out = []
    names = dict.fromkeys(rc.spool for rc in hub.config.routes if rc.spool is not None)
    for name in names:
        out.append({"kind": "spool", "name": name, "state": spool_state, "depth": depths.get(name, 0)})
    amqp = hub.amqp
    if amqp is not None:
        depth = sum(n for name, n in depths.items() if name.startswith("amqp:"))  # spooled while unavailable
        out.append({"kind": "amqp", "name": "publish", "state": amqp.state.value, "depth": depth,
                    "error": amqp.last_error})
    if hub.push_amqp is not None:
        state = "down" if hub.push_amqp.proto is None else "connected"
        out.append({"kind": "amqp", "name": "subscribe", "state": state, "depth": 0})
    webhooks = hub.webhooks
    if webhooks is not None:
        for name, deliverer in sorted(webhooks.deliverers.items()):
            health = deliverer.health  # see TargetHealth: one state, its start and the last error
            out.append({"kind": "webhook", "name": name, "state": health.state,
                        "depth": depths.get(f"webhook:{name}", 0), "error": health.error, "since": health.since})
    if any(rc.discard for rc in hub.config.routes):
        out.append({"kind": "discard", "name": "discard", "state": "ok", "depth": 0})
    return out


def snapshot(hub: Hub) -> dict:
    """What the page shows, as counters; ``StatusFeed`` adds the rates."""
    listen = hub.config.listen
    routes = []
    for rc, route in zip(hub.config.routes, hub.router.routes):
        routes.append({
            "name": route.name,
            "match": rc.match,
            "destination": route_destination(rc),
            "accepted": sum(hub.stats.accepted.get(route.name, {}).values()),
            "rejected": hub.stats.refused.get(route.name, 0),
        })
    refused: dict[str, dict[str, int]] = {}
    for (ingress, code), count in sorted(hub.stats.rejections.items()):
        refused.setdefault(ingress, {})[str(code)] = count
    ports = [
        {"ingress": ingress, "listen": list(endpoints), "connections": hub.stats.connections.get(ingress, 0)}
        for ingress, endpoints in (("http", listen.http), ("compact", listen.compact))
        if endpoints
    ]
    subscriptions = []
    if hub.push is not None:
        subscriptions = [{"name": s.name, "match": s.config.match, "subscribers": len(s.open)}
                         for s in hub.push.subscriptions]
    status = hub.config.status
    demo = None
    if status.demo_post is not None:
        demo = {"post": status.demo_post, "events": status.demo_events, "event": status.demo_event,
                "route": status.demo_route}
    return {
        "time": hub.reactor.seconds(),
        "healthy": not hub.health.problems(),
        "routes": routes,
        "refused": refused,
        "destinations": destinations(hub),
        "ports": ports,
        "subscriptions": subscriptions,
        "demo": demo,
    }


def add_rates(current: dict, previous: dict | None) -> dict:
    """Per-route ``accepted_rate`` and ``rejected_rate`` (per second) since ``previous``."""
    before = {} if previous is None else {r["name"]: r for r in previous["routes"]}
    dt = 0.0 if previous is None else current["time"] - previous["time"]
    for route in current["routes"]:
        old = before.get(route["name"])
        for key in ("accepted", "rejected"):
            rate = 0.0
            if old is not None and dt > 0:
                rate = max(0.0, (route[key] - old[key]) / dt)
            route[key + "_rate"] = round(rate, 1)
    return current


class StatusFeed(Resource):
    """``/status/events``: ``event: status`` with a JSON snapshot, at once and every ``INTERVAL``."""

    isLeaf = True
    INTERVAL = 1.0

    def __init__(self, hub: Hub, clock: IReactorTime) -> None:
        super().__init__()
        self.hub = hub
        self.clock = clock
        self.readers: set[EventRequest] = set()
        self.loop: LoopingCall | None = None
        self.last: dict | None = None
        self.seq = 0

    def render_GET(self, request: Request) -> int:
        reader = EventRequest(request, lambda: self._left(reader))
        self.readers.add(reader)
        if self.loop is None:
            self.last = add_rates(snapshot(self.hub), None)
            self.loop = LoopingCall(self.tick)
            self.loop.clock = self.clock
            self.loop.start(self.INTERVAL, now=False)
        assert self.last is not None  # set whenever the loop runs
        reader.send(self._encode(self.last))
        return NOT_DONE_YET

    def tick(self) -> None:
        self.last = add_rates(snapshot(self.hub), self.last)
        chunk = self._encode(self.last)
        for reader in list(self.readers):
            reader.send(chunk)  # a reader that does not keep up just misses snapshots

    def _encode(self, snap: dict) -> bytes:
        self.seq += 1
        return encode_event(str(self.seq), b"status", json.dumps(snap, separators=(",", ":")).encode())

    def _left(self, reader: EventRequest) -> None:
        self.readers.discard(reader)
        if not self.readers and self.loop is not None:
            self.loop.stop()
            self.loop = None
