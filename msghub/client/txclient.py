"""The Twisted compact client: ``send`` returns a Deferred that fires on that request's answer.

    client = TxCompactSender(reactor, "127.0.0.1", 8081)
    d = client.send("/opra/IBM", quote, {"Content-Type": "application/x-opra-quote"})
    d.addCallbacks(lambda number: ..., lambda failure: failure.trap(RequestRefused))

The Deferred fires with the request number when an ``A:`` covers it, or
fails with ``RequestRefused`` (``.number``, ``.status``, ``.reason``) on
``E:``, on a permanent ``X:`` (our stream was malformed), and, with status 0,
when the connection was lost and ``resend=False``, the hub stayed
unreachable for ``give_up_after`` seconds, or (``tls=True``) its certificate
did not verify.  Reconnecting uses exponential backoff; a connection lost
during the TLS handshake counts as a failed attempt.  With ``resend=True``
every unanswered request is written again on the new connection
(at-least-once).  At most ``window`` requests are on the wire unanswered;
later ones wait in memory, in order.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from msghub.client._core import (
    NO_ANSWER,
    Body,
    Headers,
    RequestMaker,
    Text,
    Window,
    backoff_delays,
    credentials,
    fatal_is_permanent,
)
from msghub.compact import Encoder, Limits, ReplyReader, Request
from msghub.compact.encoder import check_request
from msghub.transport import IStreamTransport

log = Logger()


class RequestRefused(Exception):
    """One request was refused (``status`` 0: it got no answer and was not resent)."""

    def __init__(self, number: int, status: int, reason: str) -> None:
        super().__init__(f"request {number}: {status} {reason}")
        self.number = number
        self.status = status
        self.reason = reason


@implementer(IHandshakeListener)
class _Wire(Protocol):
    transport: IStreamTransport  # connected: see msghub.transport

    def __init__(self, client: "TxCompactSender") -> None:
        self.client = client

    def handshakeCompleted(self) -> None:
        self.client._established(self)

    def dataReceived(self, data: bytes) -> None:
        self.client._data(self, data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.client._connection_lost(self, reason)


def _certificate_problem(reason: Failure | None) -> str | None:
    """Why the hub's certificate was refused, if that is how the TLS handshake ended."""
    if reason is None:
        return None
    from OpenSSL.SSL import Error as SSLError  # a TLS connection: pyOpenSSL is loaded already
    from service_identity import VerificationError

    if reason.check(VerificationError):
        return "the hub's TLS certificate is for another host"
    if reason.check(SSLError) and "certificate verify failed" in str(reason.value):
        return "the hub's TLS certificate did not verify"
    return None


class TxCompactSender:
    """A compact HTTP producer for Twisted programs; see the module docstring."""

    limits = Limits()  # the hub's defaults, which its Encoder keeps to

    def __init__(
        self,
        reactor: IReactorTime,
        host: str,
        port: int,
        *,
        token: str | None = None,
        username: str | None = None,
        password: str | None = None,
        tls: bool = False,
        window: int = 10_000,
        resend: bool = True,
        give_up_after: float = 30.0,
        backoff: tuple[float, float] = (0.05, 2.0),
        tls_options: IOpenSSLClientConnectionCreator | None = None,
    ) -> None:
        self.reactor = reactor
        self.host = host
        self.port = port
        self.window_size = window
        self.resend = resend
        self.give_up_after = give_up_after
        self.backoff = backoff
        self._tls = tls
        endpoint: IStreamClientEndpoint = HostnameEndpoint(reactor, host, port)
        if tls:  # needs pyOpenSSL (pip install 'twisted[tls]')
            from twisted.internet.ssl import optionsForClientTLS

            endpoint = wrapClientTLS(tls_options or optionsForClientTLS(host), endpoint)
        self._endpoint = endpoint
        self._maker = RequestMaker(credentials(token, username, password))
        self._window = Window()
        self._waiting: dict[int, defer.Deferred] = {}
        self._flushes: list[defer.Deferred[None]] = []
        self._on_lost: defer.Deferred[None] | None = None  # close() waits on it
        self._next = 1
        self._wire: _Wire | None = None
        self._connecting = False
        self._write_call: IDelayedCall | None = None
        self._retry_call: IDelayedCall | None = None
        self._closed = False
        self._ever_connected = False
        self.wire_bytes = 0
        self.reconnects = 0
        self.resent = 0

    # -- public API ------------------------------------------------------------

    @property
    def outstanding(self) -> int:
        return len(self._window)

    @property
    def connected(self) -> bool:
        return self._wire is not None

    def send(
        self, path: Text, body: Body = b"", headers: Headers | None = None, method: Text = "POST"
    ) -> defer.Deferred:
        """Queue one request; the Deferred fires with its number once acknowledged."""
        return self.send_request(self._maker.make(method, path, headers, body))

    def send_request(self, request: Request) -> defer.Deferred:
        """Queue a ready-made ``msghub.compact.Request`` (its state's headers are sent as they are).

        A request the wire format cannot carry (a body over ``limits.max_body``,
        a target over ``max_line``) raises ``UsageError`` here and is not queued.
        """
        if self._closed:
            return defer.fail(RuntimeError("send() on a closed client"))
        check_request(request, self.limits)
        number = self._next
        self._next = number + 1
        self._window.add(number, request)
        d = self._waiting[number] = defer.Deferred()
        if self._wire is None:
            self._connect()
        elif self._write_call is None:
            self._write_call = self.reactor.callLater(0, self._write)
        return d

    def flush(self) -> defer.Deferred:
        """Fires (with None) once every request sent so far is answered, however it was answered."""
        if not self._waiting:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._flushes.append(d)
        return d

    def close(self) -> defer.Deferred:
        """Stop reconnecting and close; unanswered requests fail with status 0."""
        self._closed = True
        for call in (self._write_call, self._retry_call):
            if call is not None and call.active():
                call.cancel()
        self._fail_all("client closed")
        if self._wire is not None and self._wire.transport is not None:
            done: defer.Deferred[None] = defer.Deferred()
            self._on_lost = done
            self._wire.transport.loseConnection()
            return done
        return defer.succeed(None)

    # -- connection -----------------------------------------------------------------

    def _connect(self) -> None:
        if self._connecting or self._closed:
            return
        self._connecting = True
        self._delays = backoff_delays(*self.backoff)
        self._give_up = self.reactor.seconds() + self.give_up_after
        self._attempt()

    def _attempt(self) -> None:
        self._retry_call = None
        d = self._endpoint.connect(Factory.forProtocol(lambda: _Wire(self)))
        d.addCallbacks(self._connected, self._connect_failed)

    def _connected(self, wire: _Wire) -> None:
        if self._closed:
            self._connecting = False
            wire.transport.loseConnection()
            return
        self._wire = wire
        self._encoder = Encoder(self.limits)
        self._reader = ReplyReader()
        self._write()  # over TLS, held until the handshake is done
        if not self._tls:
            self._established(wire)

    def _established(self, wire: _Wire) -> None:
        """TCP is connected, and over TLS the handshake is done: the connection attempt succeeded."""
        if wire is not self._wire:
            return
        self._connecting = False
        if self._ever_connected:
            self.reconnects += 1
        self._ever_connected = True

    def _connect_failed(self, failure) -> None:
        if self._closed:
            self._connecting = False
            return
        delay = next(self._delays)
        if self.reactor.seconds() + delay > self._give_up:
            self._connecting = False
            self._fail_all("hub unreachable")
            return
        self._retry_call = self.reactor.callLater(delay, self._attempt)

    def _connection_lost(self, wire: _Wire, reason: Failure | None = None) -> None:
        if wire is not self._wire:
            return
        self._wire = None
        window = self._window
        unanswered_written = window.written
        window.new_connection()
        on_lost = self._on_lost
        if on_lost is not None:
            self._on_lost = None
            on_lost.callback(None)
        if self._closed:
            self._connecting = False
            return
        if self._connecting:
            # Lost during the TLS handshake: nothing reached the hub, so this is
            # a failed attempt (backoff, give_up_after), not a lost connection;
            # unless the certificate was refused, which trying again cannot change.
            problem = _certificate_problem(reason)
            if problem is None:
                self._connect_failed(reason)
            else:
                self._connecting = False
                self._fail_all(problem)
            return
        if not self.resend:
            self._fail_all("connection lost")
        if len(window):
            self.resent += unanswered_written if self.resend else 0
            self._connect()

    # -- data ----------------------------------------------------------------------

    def _write(self) -> None:
        self._write_call = None
        wire = self._wire
        if wire is None:
            return
        window = self._window
        room = self.window_size - window.written
        if room <= 0 or window.written >= len(window):
            return
        data = self._encoder.encode(window.unwritten(room))
        self.wire_bytes += len(data)
        wire.transport.write(data)

    def _data(self, wire: _Wire, data: bytes) -> None:
        if wire is not self._wire:
            return
        try:
            events = self._reader.feed(data)
        except Exception:
            log.failure("msghub client: bad reply from the hub; reconnecting")
            wire.transport.abortConnection()
            return
        window = self._window
        acked, refused, fatal = window.feed(events)
        waiting = self._waiting
        for number in acked:
            waiting.pop(number).callback(number)
        for number, status, reason in refused:
            waiting.pop(number).errback(RequestRefused(number, status, reason))
        if fatal is not None:
            if fatal_is_permanent(fatal):
                for _ in range(window.written):
                    number, _req = window.entries.popleft()
                    window.rejected += 1
                    waiting.pop(number).errback(RequestRefused(number, fatal.status, fatal.reason))
                window.written = 0
            wire.transport.loseConnection()
        elif len(window) > window.written:
            self._write()
        window.failures.clear()  # the Deferreds carried them
        self._check_flushes()

    def _fail_all(self, reason: str) -> None:
        window = self._window
        failed = window.fail_all(NO_ANSWER, reason)
        window.failures.clear()
        for number in failed:
            self._waiting.pop(number).errback(RequestRefused(number, NO_ANSWER, reason))
        self._check_flushes()

    def _check_flushes(self) -> None:
        if not self._waiting and self._flushes:
            flushes, self._flushes = self._flushes, []
            for d in flushes:
                d.callback(None)
