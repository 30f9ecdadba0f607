"""The keep-alive webhook client over StringTransports: no sockets, a Clock for timeouts.

``Connector`` stands in for the endpoint: each connection attempt waits for
the test to complete it (with a StringTransport) or fail it.  Requests are
read back with httptools' request parser, so what is checked is what a
receiver would parse; responses are fed whole, byte by byte, and split.
"""

from __future__ import annotations

import httptools
import pytest
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionRefusedError, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from msghub import __version__
from msghub.config_webhooks import WebhookTarget
from msghub.forward.webhook_client import ERROR_BODY_MAX, HttpPool, Result, request_prefix

TARGET = WebhookTarget("t", "http://hooks.example:8000/in?k=v", host="hooks.example", port=8000,
                       path=b"/in?k=v", timeout=10.0, headers=((b"X-Source", b"msghub"),))
FIELDS = b"Content-Type: application/json\r\nwebhook-id: 1-0000000001\r\n"


class Connector:
    """An endpoint's ``connect``: attempts wait for the test."""

    def __init__(self) -> None:
        self.attempts: list[tuple] = []
        self.cancelled = 0

    def __call__(self, factory) -> Deferred:
        def cancel(d: Deferred) -> None:
            self.cancelled += 1

        d: Deferred = Deferred(cancel)
        self.attempts.append((factory, d))
        return d

    def succeed(self, index: int = -1):
        factory, d = self.attempts[index]
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        d.callback(protocol)
        return protocol, transport

    def fail(self, index: int = -1) -> None:
        self.attempts[index][1].errback(Failure(ConnectionRefusedError("refused")))


class Request:
    """What a receiver parses out of the bytes written."""

    def __init__(self, data: bytes) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.url = b""
        self.complete = 0
        parser = httptools.HttpRequestParser(self)
        parser.feed_data(data)
        self.method = parser.get_method()
        self.version = parser.get_http_version()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete += 1


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def connector() -> Connector:
    return Connector()


@pytest.fixture
def pool(clock, connector) -> HttpPool:
    return HttpPool(clock, TARGET, connector)


def post(pool: HttpPool, body: bytes = b'{"a": 1}') -> list[Result]:
    results: list[Result] = []
    pool.post(FIELDS, body, results.append)
    return results


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


# -- the request ---------------------------------------------------------------------------


def test_request_carries_line_host_agent_configured_headers_fields_length_and_body(pool, connector):
    post(pool, b'{"a": 1}')
    _, transport = connector.succeed()
    request = Request(transport.value())
    assert request.complete == 1
    assert (request.method, request.url, request.version) == (b"POST", b"/in?k=v", "1.1")
    assert request.headers == [
        (b"Host", b"hooks.example:8000"),
        (b"User-Agent", b"msghub/" + __version__.encode()),
        (b"X-Source", b"msghub"),
        (b"Content-Type", b"application/json"),
        (b"webhook-id", b"1-0000000001"),
        (b"Content-Length", b"8"),
    ]
    assert request.body == b'{"a": 1}'


@pytest.mark.parametrize(
    ("url", "host", "port", "scheme", "expected"),
    [
        ("http://a.example/", "a.example", 80, "http", b"a.example"),
        ("https://a.example/", "a.example", 443, "https", b"a.example"),
        ("https://a.example:80/", "a.example", 80, "https", b"a.example:80"),
        ("http://[::1]:9000/", "::1", 9000, "http", b"[::1]:9000"),
    ],
)
def test_host_field_names_a_non_default_port_and_brackets_ipv6(url, host, port, scheme, expected):
    prefix = request_prefix(WebhookTarget("t", url, scheme=scheme, host=host, port=port))
    assert b"\r\nHost: " + expected + b"\r\n" in prefix


def test_a_configured_user_agent_replaces_msghubs():
    target = WebhookTarget("t", "http://a/", host="a", headers=((b"user-agent", b"shop/2"),))
    prefix = request_prefix(target)
    assert b"msghub/" not in prefix and b"user-agent: shop/2\r\n" in prefix


# -- responses -------------------------------------------------------------------------------


def feed(protocol, data: bytes, how: str) -> None:
    if how == "whole":
        protocol.dataReceived(data)
    elif how == "bytes":
        for i in range(len(data)):
            protocol.dataReceived(data[i:i + 1])
    else:
        half = len(data) // 2
        protocol.dataReceived(data[:half])
        protocol.dataReceived(data[half:])


@pytest.mark.parametrize("how", ["whole", "bytes", "split"])
def test_status_reason_retry_after_and_a_capped_body_excerpt_are_reported(pool, connector, how):
    results = post(pool)
    protocol, _ = connector.succeed()
    body = b"x" * (ERROR_BODY_MAX + 100)
    response = b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 30 \r\nContent-Length: %d\r\n\r\n%s" % (
        len(body), body)
    feed(protocol, response, how)
    [result] = results
    assert (result.status, result.reason, result.retry_after) == (429, b"Too Many Requests", b"30")
    assert result.body == b"x" * ERROR_BODY_MAX and result.error == ""


def test_interim_1xx_responses_are_skipped(pool, connector):
    results = post(pool)
    protocol, _ = connector.succeed()
    protocol.dataReceived(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n")
    assert results == []
    protocol.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert [r.status for r in results] == [204]


def test_a_response_delimited_by_close_completes_when_the_connection_closes(pool, connector):
    results = post(pool)
    protocol, _ = connector.succeed()
    protocol.dataReceived(b"HTTP/1.0 500 Internal Server Error\r\n\r\npartial")
    assert results == []
    protocol.connectionLost(Failure(ConnectionDone()))
    assert [(r.status, r.body) for r in results] == [(500, b"partial")]


def test_garbage_is_an_error_result_and_aborts_the_connection(pool, connector):
    results = post(pool)
    protocol, transport = connector.succeed()
    protocol.dataReceived(b"SSH-2.0-OpenSSH_9.6\r\n")
    [result] = results
    assert result.status == 0 and result.error.startswith("bad response:")
    assert transport.disconnected
    protocol.connectionLost(Failure(ConnectionLost()))
    assert len(results) == 1


# -- connections -----------------------------------------------------------------------------


def test_a_kept_alive_connection_carries_the_next_request(pool, connector):
    first = post(pool)
    protocol, transport = connector.succeed()
    protocol.dataReceived(OK)
    transport.clear()
    second = post(pool)
    assert len(connector.attempts) == 1
    assert Request(transport.value()).complete == 1
    protocol.dataReceived(OK)
    assert [r.status for r in first + second] == [200, 200]


def test_connection_close_in_a_response_is_honoured(pool, connector):
    post(pool)
    protocol, transport = connector.succeed()
    protocol.dataReceived(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
    assert transport.disconnecting
    post(pool)
    assert len(connector.attempts) == 2


def test_the_pool_opens_no_more_connections_than_requests_in_flight(pool, connector):
    for _ in range(3):
        post(pool)
    assert len(connector.attempts) == 3
    protocols = [connector.succeed(i)[0] for i in range(3)]
    for protocol in protocols:
        protocol.dataReceived(OK)
    for _ in range(3):
        post(pool)
    assert len(connector.attempts) == 3 and pool.busy == 3


def test_a_connect_failure_is_an_error_result(pool, connector):
    results = post(pool)
    connector.fail()
    [result] = results
    assert result.status == 0 and not result.timed_out and "connect failed" in result.error


def test_a_reused_connection_closed_before_any_response_is_resent_once_on_a_new_one(pool, connector):
    post(pool)
    protocol, _ = connector.succeed()
    protocol.dataReceived(OK)
    results = post(pool)
    protocol.connectionLost(Failure(ConnectionDone()))  # the receiver's idle timeout won the race
    assert results == [] and len(connector.attempts) == 2
    fresh, transport = connector.succeed()
    assert Request(transport.value()).complete == 1
    fresh.connectionLost(Failure(ConnectionDone()))  # and again: now it is an error
    [result] = results
    assert result.status == 0 and "connection lost" in result.error
    assert len(connector.attempts) == 2


def test_a_new_connection_closed_before_any_response_is_an_error(pool, connector):
    results = post(pool)
    protocol, _ = connector.succeed()
    protocol.connectionLost(Failure(ConnectionLost()))
    assert [r.error.startswith("connection lost") for r in results] == [True]
    assert len(connector.attempts) == 1


def test_unsolicited_bytes_on_an_idle_connection_close_it(pool, connector):
    post(pool)
    protocol, transport = connector.succeed()
    protocol.dataReceived(OK)
    protocol.dataReceived(b"HTTP/1.1 200 OK\r\n\r\n")
    assert transport.disconnected
    protocol.connectionLost(Failure(ConnectionLost()))
    post(pool)
    assert len(connector.attempts) == 2


def test_close_idle_closes_only_connections_idle_longer_than_asked(pool, connector, clock):
    post(pool)
    post(pool)
    (old, old_t), (new, new_t) = connector.succeed(0), connector.succeed(1)
    old.dataReceived(OK)
    new.dataReceived(OK)
    clock.advance(20)
    post(pool)  # idle connections are reused last-in first-out: "new" takes it
    new.dataReceived(OK)
    clock.advance(15)
    pool.close_idle(30)
    assert old_t.disconnecting and not new_t.disconnecting
    assert pool.idle == [new]


# -- timeouts ----------------------------------------------------------------------------


def test_no_response_within_the_timeout_aborts_and_reports_timed_out(pool, connector, clock):
    results = post(pool)
    protocol, transport = connector.succeed()
    clock.advance(9.9)
    assert results == []
    clock.advance(0.1)
    [result] = results
    assert result.timed_out and result.status == 0 and result.error == "no response within 10 s"
    assert transport.disconnected
    protocol.dataReceived(OK)  # too late: each request is answered once
    protocol.connectionLost(Failure(ConnectionLost()))
    assert len(results) == 1


def test_the_timeout_covers_connecting(pool, connector, clock):
    results = post(pool)
    clock.advance(10)
    assert [r.timed_out for r in results] == [True]
    assert connector.cancelled == 1


def test_an_answered_request_leaves_no_timer_behind(pool, connector, clock):
    post(pool)
    protocol, _ = connector.succeed()
    protocol.dataReceived(OK)
    assert clock.getDelayedCalls() == []


def test_close_aborts_every_connection_and_requests_in_flight_end_with_an_error(pool, connector):
    results = post(pool)
    post(pool)
    protocol, transport = connector.succeed(0)
    idle, idle_t = connector.succeed(1)
    idle.dataReceived(OK)
    pool.close()
    assert transport.disconnected and idle_t.disconnecting
    protocol.connectionLost(Failure(ConnectionLost()))
    assert [r.status for r in results] == [0]
