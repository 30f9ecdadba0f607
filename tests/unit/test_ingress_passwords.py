"""Requests held for a password check, on both ports: answered in order, also on a closing connection."""

import base64

import pytest
from msghub.auth import hash_password
from msghub.compact import Ack, Error, Fatal, ReplyReader
from msghub.config import LimitsConfig, RouteConfig, User
from msghub.ingress.compact import CompactIngress
from msghub.ingress.http import HttpIngress

from fakes import ThreadJobs, connect, make_hub
from test_ingress_http import responses

PASSWORD = "open sesame"
ROUTES = (RouteConfig(name="pw", match="/pw/{x}", users=("pw",), discard=True),
          RouteConfig(name="open", match="/open/{x}", discard=True))
BASIC = b"Basic " + base64.b64encode(b"pw:" + PASSWORD.encode())


def wrong(i) -> bytes:
    return b"Basic " + base64.b64encode(b"pw:wrong %d" % i)


@pytest.fixture
def hub():
    hub = make_hub(routes=ROUTES, limits=LimitsConfig(password_checks_per_peer=1))
    hub.authenticator.__init__({"pw": User("pw", password=hash_password(PASSWORD, n=16, r=1, p=1))})
    hub.verifier.run_in_thread = hub.jobs = ThreadJobs()
    return hub


def http(path: bytes, auth: bytes, extra: bytes = b"", version: bytes = b"1.1") -> bytes:
    return b"POST %s HTTP/%s\r\nAuthorization: %s\r\n%sContent-Length: 1\r\n\r\nx" % (path, version, auth, extra)


def compact_replies(transport) -> list:
    events = ReplyReader().feed(transport.value())
    transport.clear()
    return events


@pytest.mark.parametrize(
    "last",
    [http(b"/pw/b", BASIC, b"Connection: close\r\n"), http(b"/pw/b", BASIC, version=b"1.0")],
    ids=["connection-close", "http-1.0"],
)
def test_http_request_held_for_a_check_on_a_closing_connection_is_answered_before_close(hub, last):
    p, t = connect(HttpIngress, hub)
    p.dataReceived(http(b"/open/a", b"Bearer nobody") + last)
    assert not t.disconnecting  # the held request is still owed its answer
    hub.jobs.run_all()
    assert [r[0] for r in responses(t)] == [401, 202]
    assert t.disconnecting


def test_compact_held_request_then_a_malformed_line_gets_its_acks_then_x(hub):
    p, t = connect(CompactIngress, hub)
    p.dataReceived(b"B:/open/\r\n+:a 1\r\n1H:Authorization: " + BASIC + b"\r\nB:/pw/\r\n+:b 1\r\n2Q:what\r\n")
    assert not t.disconnecting
    hub.jobs.run_all()
    assert compact_replies(t) == [Ack(1), Ack(2), Fatal(400, "unknown opcode 'Q:'")]
    assert t.disconnecting


def test_compact_wrong_password_before_a_malformed_line_gets_e_then_x(hub):
    p, t = connect(CompactIngress, hub)
    p.dataReceived(b"H:Authorization: " + wrong(1) + b"\r\nB:/pw/\r\n+:b 1\r\n2Q:what\r\n")
    hub.jobs.run_all()
    assert compact_replies(t) == [Error(1, 401, "bad credentials"), Ack(1), Fatal(400, "unknown opcode 'Q:'")]


def test_check_that_raises_answers_each_held_request_500_once_and_does_not_loop(hub, monkeypatch):
    def broken(header):
        raise RuntimeError("bug")

    monkeypatch.setattr(hub.authenticator, "check", broken)
    p, t = connect(HttpIngress, hub)
    p.dataReceived(http(b"/pw/a", BASIC) * 3)
    assert len(hub.jobs.jobs) == 1
    hub.jobs.run_all()  # one check failed; the three requests it held are answered, none re-checked
    assert [r[0] for r in responses(t)] == [500, 500, 500]
    assert hub.verifier.errors == 1 and hub.verifier.checks == 1 and not hub.jobs.jobs
    assert t.producerState == "producing"


def test_over_the_per_peer_budget_a_request_gets_429_with_retry_after(hub):
    first, first_t = connect(HttpIngress, hub)
    second, second_t = connect(HttpIngress, hub)  # the same peer address
    first.dataReceived(http(b"/pw/a", wrong(1)))
    second.dataReceived(http(b"/pw/a", wrong(2)) + http(b"/open/b", b"Bearer nobody"))
    (status, headers, _), (next_status, _, _) = responses(second_t)
    assert (status, headers["retry-after"], next_status) == (429, "1", 401)
    hub.jobs.run_all()
    assert [r[0] for r in responses(first_t)] == [401]
    assert hub.verifier.refused == 1


def test_held_requests_of_a_lost_connection_are_not_delivered(hub):
    p, t = connect(HttpIngress, hub)
    p.dataReceived(http(b"/pw/a", BASIC))
    p.connectionLost(None)
    hub.jobs.run_all()
    assert hub.stats.accepted == {}


def test_thousands_of_refused_checks_in_one_read_are_answered_without_recursion(hub):
    first, _ = connect(HttpIngress, hub)
    first.dataReceived(http(b"/pw/a", wrong(0)))  # takes the peer's one check
    p, t = connect(HttpIngress, hub)
    p.dataReceived(b"".join(http(b"/pw/a", wrong(i)) for i in range(1, 3001)))
    assert [r[0] for r in responses(t)] == [429] * 3000
