"""The ingress factory: one protocol per connection, each given only the frozen context."""

import dataclasses

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from msghub.config import LimitsConfig
from msghub.ingress.compact import CompactIngress
from msghub.ingress.factory import IngressFactory
from msghub.ingress.http import HttpIngress

from fakes import make_hub

ADDR = IPv4Address("TCP", "127.0.0.1", 40000)


def test_the_context_is_frozen():
    hub = make_hub()
    with pytest.raises(dataclasses.FrozenInstanceError):
        hub.ingress.router = None


def test_protocols_get_the_context_not_the_hub():
    hub = make_hub()
    protocol = IngressFactory(hub.ingress, HttpIngress).buildProtocol(ADDR)
    assert protocol.context is hub.ingress
    assert not hasattr(protocol, "hub")


@pytest.mark.parametrize(
    ("protocol_class", "expected"),
    [
        (HttpIngress, b"HTTP/1.1 503 Service Unavailable\r\n"),
        (CompactIngress, b"X:503 too many connections\r\n"),
    ],
)
def test_a_connection_over_the_limit_is_refused_in_its_port_s_format(protocol_class, expected):
    hub = make_hub(limits=LimitsConfig(max_connections=1))
    factory = IngressFactory(hub.ingress, protocol_class)
    first = factory.buildProtocol(ADDR)
    first.makeConnection(StringTransport())
    refused = factory.buildProtocol(ADDR)
    transport = StringTransport()
    refused.makeConnection(transport)
    assert transport.value().startswith(expected)
    assert transport.disconnecting
    if protocol_class is HttpIngress:
        assert b"Retry-After: 1\r\n" in transport.value() and b"Connection: close\r\n" in transport.value()
    assert hub.stats.rejections == {(protocol_class.ingress, 503): 1}
