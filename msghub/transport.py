"""The one type our stream protocols give their ``transport``.

Twisted declares ``Protocol.transport`` as ``ITransport | None``; once
``connectionMade`` has run it is a TCP or TLS connection, which is also the
consumer we register as producer for and a push producer we pause.  Zope
interfaces compose by extension, so this interface names that combination
for the type checker; nothing checks it at run time.
"""

from twisted.internet.interfaces import IConsumer, IPushProducer, ITCPTransport


class IStreamTransport(ITCPTransport, IConsumer, IPushProducer):
    """A connected TCP or TLS transport: write, pause, resume, close, abort."""
