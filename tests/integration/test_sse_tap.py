"""Route taps pushed to real SSE clients (sseclient-py, raw sockets) by the real twistd."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest
import sseclient

from msghub.push.events import EventReader
from msghub.testing import HubProcess

SECRET = "secret"
CONF = """
[users.viewer]
token_sha256 = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"

[[routes]]
name = "orders"
match = "/orders/{kind}"
discard = true

[[subscriptions]]
match = "/tap/orders"
route = "orders"

[[subscriptions]]
match = "/tap/small"
route = "orders"
buffer_bytes = 65536

[[subscriptions]]
match = "/tap/private"
route = "orders"
users = ["viewer"]
cors_origins = ["https://app.example"]
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    process = HubProcess(tmp_path_factory.mktemp("sse") / "hub", CONF).start()
    yield process
    process.stop()


def post_all(port: int, bodies: list[bytes], path: str = "/orders/paper") -> None:
    """POST every body on one keep-alive connection; each must be accepted."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    for body in bodies:
        conn.request("POST", path, body=body)
        response = conn.getresponse()
        response.read()
        assert response.status == 202
    conn.close()


def open_stream(port: int, path: str, headers: dict | None = None, timeout: float = 20):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("GET", path, headers={"Accept": "text/event-stream", **(headers or {})})
    return conn, conn.getresponse()


class RawSubscriber:
    """A subscriber on a plain socket; ``rcvbuf`` shrinks its receive window to read slowly."""

    def __init__(self, port: int, path: str, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(20)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(b"GET %s HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n" % path.encode())
        self.reader = EventReader()
        self.head = b""
        while b"\r\n\r\n" not in self.head:
            self.head += self.sock.recv(4096)
        self.head, _, rest = self.head.partition(b"\r\n\r\n")
        self.events = self.reader.feed(rest)

    def read_until(self, done, timeout: float = 30):
        deadline = time.monotonic() + timeout
        while not done(self.events):
            assert time.monotonic() < deadline, f"only {len(self.events)} events"
            data = self.sock.recv(65536)
            assert data, "the hub closed the stream"
            self.events += self.reader.feed(data)
        return self.events


def test_sseclient_gets_exactly_the_posted_messages_in_order_with_ids(hub):
    conn, response = open_stream(hub.http_port, "/tap/orders")
    assert response.status == 200 and response.getheader("Content-Type").startswith("text/event-stream")
    bodies = [b"order %d" % i for i in range(200)] + [b"two\nlines", "caf\u00e9".encode(), b"\x00\xffbinary"]
    post_all(hub.http_port, bodies)
    events = []
    for event in sseclient.SSEClient(response).events():
        events.append(event)
        if len(events) == len(bodies):
            break
    conn.close()
    assert {e.event for e in events} == {"orders"}
    expected = [b.decode() for b in bodies[:-1]] + ["base64:AP9iaW5hcnk="]
    assert [e.data for e in events] == expected
    ids = [e.id for e in events]
    assert len(set(ids)) == len(ids) and ids == sorted(ids)


def test_two_raw_socket_subscribers_each_get_every_message(hub):
    first = RawSubscriber(hub.http_port, "/tap/orders")
    second = RawSubscriber(hub.http_port, "/tap/orders")
    assert first.head.startswith(b"HTTP/1.1 200 OK\r\n")
    post_all(hub.http_port, [b"m%d" % i for i in range(50)])
    for sub in (first, second):
        events = sub.read_until(lambda ev: len(ev) >= 50)
        assert [e.data for e in events] == [f"m{i}" for i in range(50)]
    assert first.events[0].id == second.events[0].id
    first.sock.close()
    second.sock.close()


def test_a_slow_reader_gets_a_gap_with_the_exact_count_and_the_producer_is_not_slowed(hub):
    slow = RawSubscriber(hub.http_port, "/tap/small", rcvbuf=4096)
    fast = RawSubscriber(hub.http_port, "/tap/orders")
    reading = threading.Thread(target=fast.read_until, args=(lambda ev: ev and ev[-1].data == "end",))
    reading.start()
    total = 3000
    body = b"x" * 4000
    started = time.monotonic()
    post_all(hub.http_port, [b"%05d" % i + body for i in range(total)])
    posting = time.monotonic() - started
    # The slow reader only starts reading now: what did not fit is one gap.
    events = slow.read_until(lambda ev: any(e.event == "gap" for e in ev))
    post_all(hub.http_port, [b"end"])
    events = slow.read_until(lambda ev: ev and ev[-1].data == "end")
    reading.join(30)
    assert len(fast.events) == total + 1 and not [e for e in fast.events if e.event == "gap"]
    got = [int(e.data[:5]) for e in events if e.event == "orders" and e.data != "end"]
    gaps = [e.json() for e in events if e.event == "gap"]
    assert len(got) + sum(g["missed"] for g in gaps) == total
    assert got == sorted(got) and len(set(got)) == len(got)
    first_missed = gaps[0]["from"]
    assert first_missed not in {e.id for e in events}
    print(f"posted {total} in {posting:.2f}s; slow reader got {len(got)}, {len(gaps)} gap(s)")
    slow.sock.close()
    fast.sock.close()


def metric(hub: HubProcess, name: str) -> float:
    for line in hub.get("/metrics")[1].decode().splitlines():
        if line.startswith(name):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_disconnect_frees_the_subscriber(hub):
    name = 'msghub_subscribers{subscription="/tap/orders"}'
    before = metric(hub, name)
    sub = RawSubscriber(hub.http_port, "/tap/orders")
    assert metric(hub, name) == before + 1
    sub.sock.close()
    deadline = time.monotonic() + 10
    while metric(hub, name) != before:
        assert time.monotonic() < deadline
        time.sleep(0.05)


@pytest.mark.parametrize(("path", "headers", "status"), [
    ("/tap/private", {}, 401),
    ("/tap/private", {"Authorization": "Bearer wrong"}, 401),
    ("/tap/private", {"Authorization": f"Bearer {SECRET}"}, 200),
    (f"/tap/private?token={SECRET}", {"Origin": "https://app.example"}, 200),
    (f"/tap/private?token={SECRET}", {"Origin": "https://other.example"}, 403),
])
def test_auth_and_cors_on_a_subscription(hub, path, headers, status):
    conn, response = open_stream(hub.http_port, path, headers)
    assert response.status == status
    if "app.example" in str(headers):
        assert response.getheader("Access-Control-Allow-Origin") == "https://app.example"
    conn.close()


def poll(hub, query: str) -> list:
    conn = http.client.HTTPConnection("127.0.0.1", hub.http_port, timeout=20)
    conn.request("GET", "/tap/orders?poll=1&" + query)
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("Content-Type") == "application/json"
    return json.loads(response.read())


def test_long_poll_waits_answers_and_resumes_from_its_last_id(hub):
    started = time.monotonic()
    assert poll(hub, "timeout=0.5") == []
    assert time.monotonic() - started >= 0.5
    post_all(hub.http_port, [b"p1", b"p2"])
    items = poll(hub, "last_id=0-0000000000")
    assert items[0]["event"] == "gap" and [i["data"] for i in items[-2:]] == ["p1", "p2"]
    answer: list = []
    waiting = threading.Thread(target=lambda: answer.extend(poll(hub, f"last_id={items[-1]['id']}")))
    waiting.start()
    time.sleep(0.3)
    post_all(hub.http_port, [b"p3"])
    waiting.join(20)
    assert [i["data"] for i in answer] == ["p3"]
