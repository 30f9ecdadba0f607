"""AMQP subscriptions against the private broker: bindings, streams, resume across a hub restart."""

from __future__ import annotations

import http.client
import json
import time
import uuid

import pika
import pytest
import sseclient

from msghub.testing import HubProcess

from test_sse_tap import RawSubscriber, post_all


def conf(rabbit, exchange: str, stream: str) -> str:
    return f"""
[amqp]
url = "{rabbit.url}"
[[amqp.exchanges]]
name = "{exchange}"
type = "topic"

[[routes]]
name = "quotes"
match = "/q/{{symbol}}"
amqp = {{exchange = "{exchange}", routing_key = "opra.{{symbol}}"}}
[[routes]]
name = "log"
match = "/log"
amqp = {{exchange = "{exchange}", routing_key = "log"}}

[[subscriptions]]
match = "/sub/q/{{symbol}}"
amqp = {{exchange = "{exchange}", binding = "opra.{{symbol}}"}}
[[subscriptions]]
match = "/sub/log"
amqp = {{stream = "{stream}", prefetch = 20}}
"""


def declare_stream(rabbit, exchange: str, stream: str, **arguments) -> None:
    params = pika.URLParameters(rabbit.url)
    with pika.BlockingConnection(params) as connection:
        channel = connection.channel()
        channel.exchange_declare(exchange, "topic", durable=True)
        channel.queue_declare(stream, durable=True, arguments={"x-queue-type": "stream", **arguments})
        channel.queue_bind(stream, exchange, "log")


def queues(rabbit) -> list[str]:
    return rabbit.ctl("list_queues", "-q", "name").split()


class _Closing:
    """Closes the response too: http.client's socket lives as long as the response does."""

    def __init__(self, conn, response) -> None:
        self.conn, self.response = conn, response

    def close(self) -> None:
        self.response.close()
        self.conn.close()


def stream_events(port: int, path: str, count: int, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    conn.request("GET", path, headers={"Accept": "text/event-stream", **(headers or {})})
    response = conn.getresponse()
    assert response.status == 200
    return _Closing(conn, response), sseclient.SSEClient(response).events()


def take(events, count: int) -> list:
    out = []
    for event in events:
        out.append(event)
        if len(out) == count:
            break
    return out


@pytest.fixture
def names():
    tag = uuid.uuid4().hex[:8]
    return f"push.{tag}", f"push.log.{tag}"


def test_a_binding_subscriber_gets_its_routing_keys_in_order_and_frees_its_queue(rabbit, tmp_path, names):
    exchange, stream = names
    declare_stream(rabbit, exchange, stream)
    with HubProcess(tmp_path / "hub", conf(rabbit, exchange, stream)) as hub:
        before = set(queues(rabbit))
        conn, events = stream_events(hub.http_port, "/sub/q/IBM", 0)
        assert len(set(queues(rabbit)) - before) == 1  # its exclusive queue, declared before the 200
        other = RawSubscriber(hub.http_port, "/sub/q/AAPL")
        post_all(hub.http_port, [b"ibm %d" % i for i in range(30)], "/q/IBM")
        post_all(hub.http_port, [b"aapl"], "/q/AAPL")
        got = take(events, 30)
        assert [e.data for e in got] == [f"ibm {i}" for i in range(30)]
        assert {e.event for e in got} == {"opra.IBM"}
        ids = [e.id for e in got]
        assert ids == sorted(ids) and "-" in ids[0]  # the hub's message ids
        assert [e.data for e in other.read_until(lambda ev: len(ev) >= 1)] == ["aapl"]
        conn.close()
        other.sock.close()
        deadline = time.monotonic() + 10
        while set(queues(rabbit)) - before:
            assert time.monotonic() < deadline, "a subscriber's queue outlived it"
            time.sleep(0.1)


def test_a_stream_resumes_after_last_event_id_across_a_hub_restart(rabbit, tmp_path, names):
    exchange, stream = names
    declare_stream(rabbit, exchange, stream)
    hub = HubProcess(tmp_path / "hub", conf(rabbit, exchange, stream)).start()
    try:
        conn, events = stream_events(hub.http_port, "/sub/log", 0)
        post_all(hub.http_port, [b"log %d" % i for i in range(20)], "/log")
        first = take(events, 20)
        assert [e.data for e in first] == [f"log {i}" for i in range(20)]
        offsets = [int(e.id) for e in first]
        assert offsets == list(range(offsets[0], offsets[0] + 20))
        conn.close()
        post_all(hub.http_port, [b"later %d" % i for i in range(10)], "/log")
    finally:
        hub.stop()
    hub = HubProcess(tmp_path / "hub", conf(rabbit, exchange, stream), spool_path=hub.spool_path)
    hub.start()
    try:
        conn, events = stream_events(hub.http_port, "/sub/log", 0, {"Last-Event-ID": first[-1].id})
        post_all(hub.http_port, [b"after restart"], "/log")
        again = take(events, 11)
        assert [e.data for e in again] == [f"later {i}" for i in range(10)] + ["after restart"]
        assert [int(e.id) for e in again] == list(range(offsets[-1] + 1, offsets[-1] + 12))
        conn.close()
    finally:
        hub.stop()


def test_a_stream_id_older_than_retention_gets_a_gap_first(rabbit, tmp_path, names):
    exchange, stream = names
    declare_stream(rabbit, exchange, stream, **{
        "x-max-length-bytes": 20000, "x-stream-max-segment-size-bytes": 5000,
    })
    with HubProcess(tmp_path / "hub", conf(rabbit, exchange, stream)) as hub:
        post_all(hub.http_port, [b"%04d" % i + b"y" * 500 for i in range(300)], "/log")
        conn, events = stream_events(hub.http_port, "/sub/log", 0, {"Last-Event-ID": "0"})
        gap, *rest = take(events, 11)
        assert gap.event == "gap"
        missed = json.loads(gap.data)
        # Offsets skipped: RabbitMQ's offsets are not one per message across
        # truncated segments, so this is an upper bound on the messages lost.
        assert missed["from"] == "1" and missed["missed"] == int(rest[0].id) - 1 > 0
        kept = [int(e.data[:4]) for e in rest]
        assert kept[0] > 0 and kept == list(range(kept[0], kept[0] + 10))
        conn.close()


def test_without_a_broker_a_subscriber_gets_503(tmp_path, names):
    exchange, stream = names
    body = conf(type("NoBroker", (), {"url": "amqp://guest:guest@127.0.0.1:1/%2f"})(), exchange, stream)
    with HubProcess(tmp_path / "hub", body) as hub:
        conn = http.client.HTTPConnection("127.0.0.1", hub.http_port, timeout=10)
        conn.request("GET", "/sub/log", headers={"Accept": "text/event-stream"})
        assert conn.getresponse().status == 503
