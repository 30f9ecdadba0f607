"""The admin port's status page, feed and tail, through a real twisted.web Site on StringTransports."""

from __future__ import annotations

import json
from types import SimpleNamespace

from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from msghub.admin.status import destinations
from msghub.admin.tail import HEAD_BYTES, PER_BATCH, PER_SECOND
from msghub.admin.web import make_site
from msghub.config import Config, RouteConfig
from msghub.config_status import StatusConfig
from msghub.forward.amqp import AmqpState
from msghub.hub import Hub
from msghub.ingress.http import HttpIngress
from msghub.push.events import EventReader
from msghub.push.subscriber import Item

from fakes import USERS, FakeSpool, connect

ROUTES = (
    RouteConfig(name="orders", match="/orders/{kind}", discard=True),
    RouteConfig(name="held", match="/held", spool="held"),
    RouteConfig(name="private", match="/private", users=("feed",), discard=True),
)


def make_hub(**config) -> Hub:
    return Hub(Config(path="test.toml", users=USERS, routes=ROUTES, **config), task.Clock(), FakeSpool())


class Page:
    """One admin connection: a request in, the head and the event stream out."""

    def __init__(self, site, path: bytes) -> None:
        self.channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        self.transport = StringTransport()
        self.channel.makeConnection(self.transport)
        self.channel.dataReceived(b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % path)
        self.head, _, rest = self.transport.value().partition(b"\r\n\r\n")
        self.transport.clear()
        self.reader = EventReader()
        self.events = self.reader.feed(_unchunk(rest)) if b"chunked" in self.head else []

    def read(self) -> list:
        data = self.transport.value()
        self.transport.clear()
        return self.reader.feed(_unchunk(data))

    def close(self) -> None:
        self.channel.connectionLost(Failure(ConnectionDone()))


def _unchunk(data: bytes) -> bytes:
    out = []
    while data:
        size, _, data = data.partition(b"\r\n")
        n = int(size, 16)
        out.append(data[:n])
        data = data[n + 2:]
    return b"".join(out)


def post(hub, path: bytes, body: bytes, count: int = 1) -> None:
    protocol, transport = connect(HttpIngress, hub)
    one = b"POST %s HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n%s" % (path, len(body), body)
    protocol.dataReceived(one * count)


def test_the_page_and_its_assets_come_from_the_package():
    site = make_site(make_hub())
    page = Page(site, b"/")
    assert page.head.startswith(b"HTTP/1.1 200") and b"text/html" in page.head
    for asset in (b"/static/status.js", b"/static/status.css"):
        assert Page(site, asset).head.startswith(b"HTTP/1.1 200")
    assert Page(site, b"/static/nope.js").head.startswith(b"HTTP/1.1 404")
    assert Page(site, b"/nope").head.startswith(b"HTTP/1.1 404")


def test_the_feed_sends_a_snapshot_at_once_then_every_second_with_rates():
    hub = make_hub()
    feed = Page(make_site(hub), b"/status/events")
    assert b"text/event-stream" in feed.head
    (first,) = feed.events
    assert first.event == "status"
    assert [r["name"] for r in first.json()["routes"]] == ["orders", "held", "private"]
    post(hub, b"/orders/paper", b"x", count=10)
    post(hub, b"/private", b"x", count=3)  # no credentials: refused by that route
    hub.reactor.advance(1.0)
    (second,) = feed.read()
    routes = {r["name"]: r for r in second.json()["routes"]}
    assert routes["orders"]["accepted"] == 10 and routes["orders"]["accepted_rate"] == 10.0
    assert routes["private"]["rejected"] == 3 and routes["private"]["rejected_rate"] == 3.0
    assert second.json()["refused"] == {"http": {"401": 3}}
    assert second.json()["ports"][0] == {"ingress": "http", "listen": ["tcp:8080:interface=127.0.0.1"], "connections": 2}


def test_the_feed_timer_runs_only_while_someone_reads():
    hub = make_hub()
    site = make_site(hub)
    pages = [Page(site, b"/status/events") for _ in range(2)]
    hub.reactor.advance(1.0)
    assert [len(p.read()) for p in pages] == [1, 1]
    for p in pages:
        p.close()
    assert hub.reactor.getDelayedCalls() == []


def test_a_paused_feed_reader_misses_snapshots_instead_of_queueing_them():
    hub = make_hub()
    page = Page(make_site(hub), b"/status/events")
    page.transport.producer.pauseProducing()  # as the transport does when its buffer is full
    hub.reactor.advance(3.0)
    page.transport.producer.resumeProducing()
    hub.reactor.advance(1.0)
    assert len(page.read()) == 1


def test_the_tail_shows_the_first_bytes_of_each_accepted_message():
    hub = make_hub()
    tail = Page(make_site(hub), b"/tail?route=orders")
    assert tail.head.startswith(b"HTTP/1.1 200") and b"text/event-stream" in tail.head
    post(hub, b"/orders/paper", b"a" * 500)
    post(hub, b"/held", b"not tailed")
    (event,) = tail.read()
    shown = event.json()
    assert event.event == "tail" and event.id == shown["id"]
    assert shown["head"] == "a" * HEAD_BYTES and shown["bytes"] == 500 and shown["more"] is True


def test_the_tail_samples_a_big_batch_and_counts_what_it_skipped():
    hub = make_hub()
    tail = Page(make_site(hub), b"/tail?route=orders")
    post(hub, b"/orders/paper", b"m", count=PER_BATCH + 5)
    events = tail.read()
    assert len(events) == PER_BATCH
    assert [e.json()["skipped"] for e in events[:2]] == [5, 0]


def test_the_tail_shows_at_most_per_second_and_counts_the_rest():
    hub = make_hub()
    tail = Page(make_site(hub), b"/tail?route=orders")
    hub.reactor.advance(10)
    batches = PER_SECOND // PER_BATCH + 2
    for _ in range(batches):
        post(hub, b"/orders/paper", b"m", count=PER_BATCH)
    first = tail.read()
    assert len(first) == PER_SECOND
    hub.reactor.advance(1.0)
    post(hub, b"/orders/paper", b"m")
    (event,) = tail.read()
    skipped = sum(e.json()["skipped"] for e in [*first, event])
    assert skipped == batches * PER_BATCH - PER_SECOND


def test_a_tail_left_by_its_reader_frees_the_tap():
    hub = make_hub()
    tail = Page(make_site(hub), b"/tail?route=orders")
    assert hub.tails["orders"].subscribers == 1
    tail.close()
    assert hub.tails["orders"].subscribers == 0


def test_a_tail_of_an_unknown_route_is_404():
    assert Page(make_site(make_hub()), b"/tail?route=nope").head.startswith(b"HTTP/1.1 404")


def test_destination_states_come_from_the_forwarders():
    hub = make_hub()
    hub.spool.depths = lambda: {"held": 4, "amqp:orders": 2, "webhook:a": 7}
    hub.amqp = SimpleNamespace(state=AmqpState.DOWN, last_error="Connection refused")
    hub.webhooks = SimpleNamespace(deliverers={
        "a": SimpleNamespace(health=SimpleNamespace(state="healthy", error="", since=0.0)),
        "b": SimpleNamespace(health=SimpleNamespace(state="retrying", error="HTTP 503", since=5.0)),
        "c": SimpleNamespace(health=SimpleNamespace(state="disabled", error="HTTP 410 Gone", since=9.0)),
    })
    states = {(d["kind"], d["name"]): (d["state"], d["depth"]) for d in destinations(hub)}
    assert states == {
        ("spool", "held"): ("ok", 4),
        ("amqp", "publish"): ("down", 2),
        ("webhook", "a"): ("healthy", 7),
        ("webhook", "b"): ("retrying", 0),
        ("webhook", "c"): ("disabled", 0),
        ("discard", "discard"): ("ok", 0),
    }
    assert [d["error"] for d in destinations(hub) if d["kind"] == "amqp"] == ["Connection refused"]
    for state in AmqpState:
        hub.amqp.state = state
        assert {d["state"] for d in destinations(hub) if d["kind"] == "amqp"} == {state.value}
    errors = {d["name"]: (d["error"], d["since"]) for d in destinations(hub) if d["kind"] == "webhook"}
    assert errors == {"a": ("", 0.0), "b": ("HTTP 503", 5.0), "c": ("HTTP 410 Gone", 9.0)}


def test_the_snapshot_names_the_demo_urls():
    status = StatusConfig("http://h:1/orders/v", "http://h:1/tap/v", "orders", "orders")
    feed = Page(make_site(make_hub(status=status)), b"/status/events")
    assert feed.events[0].json()["demo"] == {
        "post": "http://h:1/orders/v", "events": "http://h:1/tap/v", "event": "orders", "route": "orders",
    }


def test_a_tap_item_and_a_tail_share_one_id():
    hub = make_hub()
    tail = Page(make_site(hub), b"/tail?route=orders")
    hub.tails["orders"].groups[()][0].deliver([Item("1-00000000ff", "orders", b"hi", b"")])
    assert [e.id for e in tail.read()] == ["1-00000000ff"]
