"""In-memory stand-ins for unit tests of the ingress protocols (no sockets, no disk)."""

from __future__ import annotations

import hashlib

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport

from msghub.config import Config, LimitsConfig, RouteConfig, User
from msghub.histogram import Histogram
from msghub.hub import Hub

TOKEN = b"s3cret-token"
USERS = {
    "feed": User("feed", token_sha256=hashlib.sha256(TOKEN).digest()),
    "other": User("other", token_sha256=hashlib.sha256(b"other-token").digest()),
}
ROUTES = (
    RouteConfig(name="quotes", match="/quotes/{symbol}", methods=(b"POST",), users=("feed",), spool="quotes"),
    RouteConfig(name="open", match="/open/{name}", methods=(b"POST", b"PUT"), discard=True),
)


class FakeSpool:
    """Records appends; each returns a Deferred the test fires (or fails) by hand."""

    def __init__(self) -> None:
        self.appends: list[tuple[str, list, Deferred]] = []
        self.healthy = True
        self.next_id = 1 << 40
        self.commits = self.failures = 0
        self.commit_seconds = Histogram()

    def file_bytes(self) -> int:
        return 0

    def reserve_ids(self, n: int) -> int:
        first = self.next_id
        self.next_id += n
        return first

    def append(self, name: str, messages: list) -> Deferred:
        d = Deferred()
        self.appends.append((name, messages, d))
        return d

    def commit_all(self) -> None:
        for _, _, d in self.appends:
            if not d.called:
                d.callback(None)

    def depths(self) -> dict[str, int]:
        return {}


class ThreadJobs:
    """Stands in for a thread pool's ``run_in_thread``: each job runs when the test says."""

    def __init__(self) -> None:
        self.jobs: list = []

    def __call__(self, f, *args) -> Deferred:
        d = Deferred()
        self.jobs.append((d, f, args))
        return d

    def run_one(self) -> None:
        d, f, args = self.jobs.pop(0)
        try:
            result = f(*args)
        except Exception as e:
            d.errback(e)
        else:
            d.callback(result)

    def run_all(self) -> None:
        while self.jobs:
            self.run_one()


def make_hub(routes=ROUTES, limits: LimitsConfig = LimitsConfig()) -> Hub:
    config = Config(path="test.toml", users=USERS, routes=routes, limits=limits)
    return Hub(config, task.Clock(), FakeSpool())


def connect(protocol_class, hub: Hub):
    """A protocol instance wired to a StringTransport."""
    protocol = protocol_class(hub.ingress)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport
