"""One factory for both producer ports: a protocol per connection, up to ``limits.max_connections``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.interfaces import IAddress, IProtocolNegotiationFactory
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from msghub.transport import IStreamTransport

if TYPE_CHECKING:
    from msghub.ingress.base import IngressProtocol
    from msghub.ingress.context import IngressContext


class _Refuse(Protocol):
    """Writes one refusal and closes: a connection over the limit."""

    transport: IStreamTransport  # connected: see msghub.transport

    def __init__(self, message: bytes) -> None:
        self.message = message

    def connectionMade(self) -> None:
        self.transport.write(self.message)
        self.transport.loseConnection()


@implementer(IProtocolNegotiationFactory)
class IngressFactory(Factory):
    """Builds ``protocol(context)`` per connection; over the limit, the port's own 503.

    ``alpn`` is what an ``ssl:`` listener offers in the TLS handshake: a
    client that sends ALPN (curl, requests, browsers) and finds no protocol
    in common is refused with alert 80, so the HTTP port offers
    ``http/1.1``; the compact port has no registered ALPN name and offers none
    (its clients send no ALPN).
    """

    protocol: type[IngressProtocol]
    noisy = False  # no "Starting factory" lines: the listener's own line says what it is

    def __init__(self, context: IngressContext, protocol: type[IngressProtocol], alpn: tuple[bytes, ...] = ()) -> None:
        self.context = context
        self.protocol = protocol
        self.alpn = alpn

    def acceptableProtocols(self) -> list[bytes]:
        return list(self.alpn)

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        context = self.context
        ingress = self.protocol.ingress
        if context.stats.connections.get(ingress, 0) >= context.limits.max_connections:
            context.stats.rejected(ingress, {0: (503,)})
            return _Refuse(self.protocol.connection_refusal(503, "too many connections"))
        p = self.protocol(context)
        p.factory = self
        return p
