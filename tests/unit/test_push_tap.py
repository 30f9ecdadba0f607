"""Subscriptions on the plain HTTP port, over StringTransports and a task.Clock."""

from __future__ import annotations

import json

import pytest

from msghub.config import Config, RouteConfig
from msghub.config_subscriptions import SubscriptionConfig
from msghub.hub import Hub
from msghub.ingress.http import HttpIngress
from msghub.push.events import EventReader, encode_event, field_text

from fakes import TOKEN, USERS, FakeSpool, connect
from twisted.internet import task

ROUTES = (
    RouteConfig(name="orders", match="/orders/{kind}", methods=(b"POST",), discard=True),
    RouteConfig(name="held", match="/held", methods=(b"POST",), spool="held"),
)


def make_hub(**options) -> Hub:
    subs = (
        SubscriptionConfig(name="orders", match="/tap/orders", route="orders", **options),
        SubscriptionConfig(name="kind", match="/tap/orders/{kind}", route="orders"),
        SubscriptionConfig(name="private", match="/tap/private", route="orders", users=("feed",)),
        SubscriptionConfig(name="cors", match="/tap/cors", route="orders", cors_origins=("https://app.example",)),
        SubscriptionConfig(name="held", match="/tap/held", route="held"),
    )
    config = Config(path="test.toml", users=USERS, routes=ROUTES, subscriptions=subs)
    return Hub(config, task.Clock(), FakeSpool())


def get(path: bytes, headers: bytes = b"Accept: text/event-stream\r\n") -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: h\r\n%s\r\n" % (path, headers)


def post(path: bytes, body: bytes) -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n%s" % (path, len(body), body)


def subscribe(hub, path=b"/tap/orders", headers=b"Accept: text/event-stream\r\n"):
    protocol, transport = connect(HttpIngress, hub)
    protocol.dataReceived(get(path, headers))
    head, _, rest = transport.value().partition(b"\r\n\r\n")
    transport.clear()
    reader = Reader(transport)
    reader.initial = reader.feed(rest)
    return protocol, transport, head, reader


class Reader(EventReader):
    """Reads what the transport holds (and clears it) when fed from it."""

    def __init__(self, transport) -> None:
        super().__init__()
        self.transport = transport

    def feed(self, data: bytes):
        self.transport.clear()
        return super().feed(data)


def publish(hub, *bodies: bytes, path: bytes = b"/orders/paper") -> None:
    protocol, transport = connect(HttpIngress, hub)
    protocol.dataReceived(b"".join(post(path, body) for body in bodies))
    assert transport.value().count(b"202 Accepted") == len(bodies)


# --- the wire format ------------------------------------------------------------------

BODIES = [b"plain", b"two\nlines\n", b"", "caf\u00e9".encode(), b"\xff\x00binary", b"base64:looks like the marker",
          b"cr\r\nlf"]


@pytest.mark.parametrize("body", BODIES)
def test_every_body_comes_back_exactly_whole_and_byte_by_byte(body):
    wire = encode_event("1-0000000001", field_text("orders"), body) + b"\n"
    events = EventReader().feed(wire)
    assert [(e.id, e.event, e.body) for e in events] == [("1-0000000001", "orders", body)]
    reader = EventReader()
    one = [e for i in range(len(wire)) for e in reader.feed(wire[i : i + 1])]
    assert one == events


def test_text_is_sent_as_lines_and_other_bodies_with_the_marker():
    assert encode_event("a", b"e", b"x\ny") == b"id: a\nevent: e\ndata: x\ndata: y\n\n"
    assert encode_event("a", b"e", b"\xff") == b"id: a\nevent: e\ndata: base64:/w==\n\n"
    assert field_text("a\nb") == b"a b"


# --- streams through the HTTP port --------------------------------------------------


def test_a_subscriber_gets_accepted_messages_in_order_with_ids_and_route_name():
    hub = make_hub()
    _, transport, head, reader = subscribe(hub)
    assert head.startswith(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream")
    publish(hub, b"one", b"two\nlines")
    events = reader.feed(transport.value())
    assert [(e.event, e.data) for e in events] == [("orders", "one"), ("orders", "two\nlines")]
    ids = [e.id for e in events]
    assert ids == sorted(ids) and len(set(ids)) == 2


def test_a_tap_sees_a_spooled_message_only_once_committed():
    hub = make_hub()
    _, transport, _, reader = subscribe(hub, b"/tap/held")
    p, t = connect(HttpIngress, hub)
    p.dataReceived(post(b"/held", b"kept"))
    assert reader.feed(transport.value()) == []
    hub.spool.commit_all()
    assert [e.data for e in reader.feed(transport.value())] == ["kept"]


def test_a_capture_in_the_subscription_path_filters_the_route():
    hub = make_hub()
    _, transport, _, reader = subscribe(hub, b"/tap/orders/paper")
    publish(hub, b"p1", path=b"/orders/paper")
    publish(hub, b"s1", path=b"/orders/stone")
    assert [e.data for e in reader.feed(transport.value())] == ["p1"]


def test_posts_before_a_subscribe_on_one_connection_are_answered_first():
    hub = make_hub()
    protocol, transport = connect(HttpIngress, hub)
    protocol.dataReceived(post(b"/orders/a", b"x") + get(b"/tap/orders"))
    out = transport.value()
    assert out.index(b"202 Accepted") < out.index(b"200 OK")


def test_a_slow_reader_gets_what_fit_then_a_gap_with_count_and_ids():
    hub = make_hub(buffer_bytes=200)
    protocol, transport, _, reader = subscribe(hub)
    subscriber = protocol.subscriber
    subscriber.pauseProducing()  # as the transport does once its buffer is full
    publish(hub, *[b"message %d" % i for i in range(10)])
    assert transport.value() == b""
    subscriber.resumeProducing()
    events = reader.feed(transport.value())
    got = [e for e in events if e.event == "orders"]
    gap = [e for e in events if e.event == "gap"]
    assert events[-1] is gap[0]
    assert [e.data for e in got] == [f"message {i}" for i in range(len(got))]
    assert 0 < len(got) < 10 and gap[0].json()["missed"] == 10 - len(got)
    publish(hub, b"after")
    assert [e.data for e in reader.feed(transport.value())] == ["after"]


def test_overflow_close_ends_the_stream_with_an_overflow_event():
    hub = make_hub(buffer_bytes=200, overflow="close")
    protocol, transport, _, reader = subscribe(hub)
    protocol.subscriber.pauseProducing()
    publish(hub, *[b"message %d" % i for i in range(10)])
    events = reader.feed(transport.value())
    assert events[-1].event == "overflow" and events[-1].json()["buffer_bytes"] == 200
    assert transport.disconnecting
    assert hub.push.subscriptions[0].open == set()


def test_a_disconnect_frees_the_subscriber_at_once():
    hub = make_hub()
    protocol, transport, _, _ = subscribe(hub)
    tap = hub.push.taps["orders"][0]
    assert tap.subscribers == 1
    protocol.connectionLost(None)
    assert tap.subscribers == 0 and hub.push.subscriptions[0].open == set()


def test_heartbeats_are_comments_every_interval():
    hub = make_hub(heartbeat=5)
    _, transport, _, reader = subscribe(hub)
    hub.reactor.advance(5)
    hub.reactor.advance(5)
    reader.feed(transport.value())
    assert reader.comments == 3  # ": ok" first, then two heartbeats


def test_last_event_id_replays_the_history_after_it():
    hub = make_hub()
    _, transport, _, reader = subscribe(hub)
    publish(hub, b"a", b"b", b"c")
    first = reader.feed(transport.value())[0]
    last = b"Accept: text/event-stream\r\nLast-Event-ID: %s\r\n" % first.id.encode()
    _, _, _, again = subscribe(hub, headers=last)
    assert [e.data for e in again.initial] == ["b", "c"]


def test_an_id_the_history_does_not_hold_gets_a_gap_of_unknown_size_first():
    hub = make_hub()
    publish(hub, b"a")
    protocol, transport = connect(HttpIngress, hub)
    protocol.dataReceived(get(b"/tap/orders", b"Accept: text/event-stream\r\nLast-Event-ID: 0-0000000001\r\n"))
    events = EventReader().feed(transport.value().partition(b"\r\n\r\n")[2])
    assert events[0].event == "gap" and events[0].json()["missed"] is None
    assert [e.data for e in events[1:]] == ["a"]


# --- refusals ---------------------------------------------------------------------------


def status(transport) -> int:
    return int(transport.value().split(b" ", 2)[1])


@pytest.mark.parametrize(("path", "headers", "code"), [
    (b"/tap/private", b"Accept: text/event-stream\r\n", 401),
    (b"/tap/private", b"Accept: text/event-stream\r\nAuthorization: Bearer other-token\r\n", 403),
    (b"/tap/private", b"Accept: text/event-stream\r\nAuthorization: Bearer " + TOKEN + b"\r\n", 200),
    (b"/tap/private?token=" + TOKEN, b"Accept: text/event-stream\r\n", 200),
    (b"/tap/private?token=wrong", b"Accept: text/event-stream\r\n", 401),
    (b"/tap/orders", b"", 406),
    (b"/tap/orders", b"Accept: text/event-stream\r\nLast-Event-ID: nonsense\r\n", 400),
    (b"/tap/cors", b"Accept: text/event-stream\r\nOrigin: https://evil.example\r\n", 403),
    (b"/tap/cors", b"Accept: text/event-stream\r\nOrigin: https://app.example\r\n", 200),
])
def test_auth_accept_cors_and_ids_are_checked_before_streaming(path, headers, code):
    hub = make_hub()
    protocol, transport = connect(HttpIngress, hub)
    protocol.dataReceived(get(path, headers))
    assert status(transport) == code
    if code != 200:
        assert transport.disconnecting
    if b"app.example" in headers:
        assert b"Access-Control-Allow-Origin: https://app.example\r\n" in transport.value()


def test_a_preflight_from_an_allowed_origin_gets_204_with_cors_headers():
    hub = make_hub()
    protocol, transport = connect(HttpIngress, hub)
    protocol.dataReceived(b"OPTIONS /tap/cors HTTP/1.1\r\nHost: h\r\nOrigin: https://app.example\r\n\r\n")
    out = transport.value()
    assert out.startswith(b"HTTP/1.1 204 No Content\r\n") and b"Access-Control-Allow-Headers: Authorization" in out


def test_a_post_to_a_subscription_path_is_still_routed():
    hub = make_hub()
    protocol, transport = connect(HttpIngress, hub)
    protocol.dataReceived(post(b"/tap/orders", b"x"))
    assert status(transport) == 404


# --- long-poll --------------------------------------------------------------------------


def poll(hub, path=b"/tap/orders?poll=1"):
    protocol, transport = connect(HttpIngress, hub)
    protocol.dataReceived(get(path, b""))
    return protocol, transport


def poll_answer(transport) -> list:
    head, _, body = transport.value().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\nContent-Type: application/json")
    return json.loads(body)


def test_a_poll_waits_for_the_next_event_and_answers_a_json_array():
    hub = make_hub()
    _, transport = poll(hub)
    assert transport.value() == b""
    publish(hub, b"one", b"\xffbin")
    answer = poll_answer(transport)
    assert [(a["event"], a.get("data"), a.get("data_base64")) for a in answer] == [
        ("orders", "one", None), ("orders", None, "/2Jpbg==")
    ]
    assert transport.disconnecting


def test_a_poll_answers_an_empty_array_after_its_timeout():
    hub = make_hub(poll_timeout=7)
    _, transport = poll(hub)
    hub.reactor.advance(6.9)
    assert transport.value() == b""
    hub.reactor.advance(0.2)
    assert poll_answer(transport) == []


def test_a_poll_with_last_id_gets_what_came_since_at_once():
    hub = make_hub()
    publish(hub, b"a", b"b", b"c")
    _, first = poll(hub, b"/tap/orders?poll=1&last_id=0-0000000000")
    items = poll_answer(first)
    assert items[0]["event"] == "gap" and [i["data"] for i in items[1:]] == ["a", "b", "c"]
    _, second = poll(hub, b"/tap/orders?poll=1&last_id=" + items[1]["id"].encode())
    assert [i["data"] for i in poll_answer(second)] == ["b", "c"]


def test_a_subscriber_over_the_password_budget_gets_429_and_no_check_runs_for_it():
    import base64

    from msghub.auth import hash_password
    from msghub.config import LimitsConfig, User

    from fakes import ThreadJobs

    users = {"pw": User("pw", password=hash_password("pw secret", n=16, r=1, p=1))}
    subs = (SubscriptionConfig(name="private", match="/tap/private", route="orders", users=("pw",)),)
    limits = LimitsConfig(password_checks_per_peer=1)
    hub = Hub(Config(path="test.toml", users=users, routes=ROUTES, subscriptions=subs, limits=limits),
              task.Clock(), FakeSpool())
    hub.verifier.run_in_thread = jobs = ThreadJobs()

    def basic(user_pass: bytes) -> bytes:
        return b"Accept: text/event-stream\r\nAuthorization: Basic " + base64.b64encode(user_pass) + b"\r\n"

    first, _ = connect(HttpIngress, hub)
    first.dataReceived(get(b"/tap/private", basic(b"pw:wrong")))  # takes the address's one check
    second, transport = connect(HttpIngress, hub)
    second.dataReceived(get(b"/tap/private", basic(b"pw:pw secret")))
    assert transport.value().startswith(b"HTTP/1.1 429 ") and b"Retry-After: 1" in transport.value()
    assert len(jobs.jobs) == 1
