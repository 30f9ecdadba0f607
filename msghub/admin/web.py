"""The admin port's resources (twisted.web is fine here: it is not the data path)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.web.resource import Resource
from twisted.web.server import Site

from msghub.admin.metrics import make_registry


class Health(Resource):
    isLeaf = True

    def __init__(self, hub) -> None:
        super().__init__()
        self.hub = hub

    def render_GET(self, request):
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        problems = self.hub.health_problems()
        if problems:
            request.setResponseCode(503)
            return ("\n".join(problems) + "\n").encode()
        return b"ok\n"


class Metrics(Resource):
    isLeaf = True

    def __init__(self, hub) -> None:
        super().__init__()
        self.registry = make_registry(hub)

    def render_GET(self, request):
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self.registry)


def make_site(hub) -> Site:
    root = Resource()
    root.putChild(b"healthz", Health(hub))
    root.putChild(b"metrics", Metrics(hub))
    site = Site(root)
    site.displayTracebacks = False
    return site
