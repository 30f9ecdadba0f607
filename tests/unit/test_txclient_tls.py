"""TxCompactSender over TLS, without sockets: what a connection lost during the handshake means."""

from __future__ import annotations

from OpenSSL.SSL import Error as SSLError
from service_identity import VerificationError
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from msghub.client.txclient import RequestRefused, TxCompactSender

VERIFY_FAILED = SSLError([("SSL routines", "", "certificate verify failed")])
WRONG_VERSION = SSLError([("SSL routines", "", "wrong version number")])


class Endpoint:
    """Each connect() gets a protocol on a StringTransport, as if TCP connected at once."""

    def __init__(self) -> None:
        self.wires: list = []

    def connect(self, factory) -> defer.Deferred:
        wire = factory.buildProtocol(None)
        wire.makeConnection(StringTransport())
        self.wires.append(wire)
        return defer.succeed(wire)


def make_client(**kwargs) -> tuple[TxCompactSender, Endpoint, MemoryReactorClock]:
    clock = MemoryReactorClock()
    client = TxCompactSender(clock, "127.0.0.1", 8081, tls=True, tls_options=object(), **kwargs)
    client._endpoint = endpoint = Endpoint()  # the TLS layer itself is what the fake stands for
    return client, endpoint, clock


def failures(deferreds) -> list[tuple[int, str]]:
    """A list that fills with ``(status, reason)`` as the Deferreds fail with RequestRefused."""
    out: list[tuple[int, str]] = []

    def refused(failure: Failure) -> None:
        failure.trap(RequestRefused)
        out.append((failure.value.status, failure.value.reason))

    for d in deferreds:
        d.addErrback(refused)
    return out


def test_refused_certificate_fails_every_request_without_retrying():
    client, endpoint, clock = make_client(give_up_after=600)
    refused = failures([client.send("/a", b"1"), client.send("/a", b"2")])
    endpoint.wires[0].connectionLost(Failure(VERIFY_FAILED))
    assert refused == [(0, "the hub's TLS certificate did not verify")] * 2
    clock.advance(10)
    assert len(endpoint.wires) == 1 and not client.connected and client.outstanding == 0


def test_certificate_for_another_host_names_the_problem():
    client, endpoint, _ = make_client()
    refused = failures([client.send("/a", b"1")])
    endpoint.wires[0].connectionLost(Failure(VerificationError(errors=[])))
    assert refused == [(0, "the hub's TLS certificate is for another host")]


def test_other_handshake_failures_back_off_then_give_up():
    client, endpoint, clock = make_client(give_up_after=1.0, backoff=(0.25, 0.25), resend=False)
    refused = failures([client.send("/a", b"1")])
    endpoint.wires[0].connectionLost(Failure(WRONG_VERSION))
    assert len(endpoint.wires) == 1  # no immediate reconnect
    clock.advance(0.25)
    assert len(endpoint.wires) == 2 and refused == []  # never reached the hub: not "connection lost"
    for _ in range(4):
        endpoint.wires[-1].connectionLost(Failure(WRONG_VERSION))
        clock.advance(0.25)
    assert refused == [(0, "hub unreachable")]
    assert client.reconnects == 0


def test_loss_after_the_handshake_is_a_lost_connection():
    client, endpoint, _ = make_client(resend=False)
    refused = failures([client.send("/a", b"1")])
    endpoint.wires[0].handshakeCompleted()
    endpoint.wires[0].connectionLost(Failure(WRONG_VERSION))
    assert refused == [(0, "connection lost")]
    client.send("/a", b"2")
    endpoint.wires[1].handshakeCompleted()
    assert client.reconnects == 1 and client.connected
