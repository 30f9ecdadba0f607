"""The admin port's resources (twisted.web is fine here: it is not the data path).

``/`` is the status page; its assets are package data (msghub/admin/static),
read once at start: no build step, nothing fetched from elsewhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from msghub.hub import Hub

import json
from importlib.resources import files

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.web import http
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from msghub.admin.metrics import make_registry
from msghub.admin.status import StatusFeed, destinations
from msghub.admin.tail import TailFeed

ASSETS = {
    b"index.html": b"text/html; charset=utf-8",
    b"status.js": b"text/javascript; charset=utf-8",
    b"status.css": b"text/css; charset=utf-8",
}


class Health(Resource):
    isLeaf = True

    def __init__(self, hub: Hub) -> None:
        super().__init__()
        self.hub = hub

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        problems = self.hub.health.problems()
        if problems:
            request.setResponseCode(503)
            return ("\n".join(problems) + "\n").encode()
        return b"ok\n"


# Destination states in which it takes messages without spooling them.
READY_STATES = frozenset(("ok", "connected", "healthy"))


class Ready(Resource):
    """``/readyz``: 200 only when the hub is listening and every destination takes messages as they come.

    The body is JSON naming each destination with its state, so a load
    balancer can act on the status and an operator on the reasons.
    """

    isLeaf = True

    def __init__(self, hub: Hub) -> None:
        super().__init__()
        self.hub = hub

    def render_GET(self, request: Request) -> bytes:
        hub = self.hub
        problems = hub.health.problems()
        found = destinations(hub)
        for d in found:
            if d["state"] not in READY_STATES:
                why = f" ({d['error']})" if d.get("error") else ""  # a webhook target's last error
                problems.append(f"{d['kind']} {d['name']}: {d['state']}{why}")
        body = {
            "ready": not problems,
            "problems": problems,
            "destinations": found,
            "spool": {"writable": hub.spool.healthy, "bytes": hub.spool.file_bytes(), "error": hub.spool.last_error
                      if not hub.spool.healthy else ""},
        }
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        if problems:
            request.setResponseCode(503)
        return json.dumps(body, indent=1).encode() + b"\n"


class Metrics(Resource):
    isLeaf = True

    def __init__(self, hub: Hub) -> None:
        super().__init__()
        self.registry = make_registry(hub)

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self.registry)


class Asset(Resource):
    isLeaf = True

    def __init__(self, body: bytes, content_type: bytes) -> None:
        super().__init__()
        self.body = body
        self.content_type = content_type

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", self.content_type)
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.setHeader(b"Cache-Control", b"no-cache")
        return self.body


class Folder(Resource):
    """Its children, or 404 (twisted.web's own default page is deprecated: it does not escape)."""

    def getChild(self, path: bytes, request: Request) -> IResource:
        return notFound()


class Root(Folder):
    """``/`` itself is the page."""

    def __init__(self, page: Asset) -> None:
        super().__init__()
        self.page = page

    def getChild(self, path: bytes, request: Request) -> IResource:
        if path == b"" and not request.postpath:
            return self.page
        return notFound()


def load_assets() -> dict[bytes, Asset]:
    static = files("msghub.admin").joinpath("static")
    return {name: Asset(static.joinpath(name.decode()).read_bytes(), kind) for name, kind in ASSETS.items()}


def make_site(hub: Hub) -> Site:
    assets = load_assets()
    root = Root(assets.pop(b"index.html"))
    root.putChild(b"healthz", Health(hub))
    root.putChild(b"readyz", Ready(hub))
    root.putChild(b"metrics", Metrics(hub))
    status = Folder()
    status.putChild(b"events", StatusFeed(hub, hub.reactor))
    root.putChild(b"status", status)
    root.putChild(b"tail", TailFeed(hub.tails, hub.reactor))
    static = Folder()
    for name, asset in assets.items():
        static.putChild(name, asset)
    root.putChild(b"static", static)
    site = AdminSite(root)
    site.displayTracebacks = False
    return site


class AdminSite(Site):
    """The admin port's site: probes and scrapes that succeed leave no access-log line.

    Prometheus scrapes every few seconds and load balancers probe more often:
    one line each would bury what the log is for.
    """

    noisy = False  # no "Starting factory" lines
    QUIET = frozenset((b"/metrics", b"/healthz", b"/readyz"))

    def log(self, request: http.Request) -> None:
        if request.path in self.QUIET and request.code < 400:
            return
        super().log(request)
