"""The hub's listening ports: ``[listen]`` endpoint strings -> one service per listener.

What this adds to Twisted's own ``strports.service``:

- a listen backlog of ``[listen] backlog`` (default 1024) on ``tcp:``,
  ``tcp6:`` and ``ssl:`` listeners that do not name one (Twisted's is 50,
  which a burst of reconnecting producers overflows);
- a port that cannot be bound is one line naming the listener, and exit
  status 1, instead of a traceback;
- at the file-descriptor limit (``EMFILE``), accepting pauses on every port
  for a moment, one line is logged, open connections keep being served, and
  waiting clients stay in the backlog until a descriptor is free.  Twisted's
  own ``tcp.Port`` instead accepts and closes every waiting connection (a
  reset for the client) and logs three lines for each;
- one ``listening: KIND on DESCRIPTION (ADDRESS)`` line per listener.

Endpoint strings are still parsed by ``serverFromString``, so every endpoint
type and plugin works; the TCP and TLS ones are handed a reactor front
(``_ListeningReactor``) whose ``listenTCP``/``listenSSL`` make our ``_Port``.
"""

from __future__ import annotations

import errno
import re
import socket
import sys
from typing import Any, Iterable

from twisted.application.service import Service
from twisted.internet import tcp
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IReactorSSL, IReactorTCP, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python import failure
from zope.interface import implementer

log = Logger()

DEFAULT_BACKLOG = 1024
# The endpoint kinds that call listenTCP/listenSSL with a backlog argument.
BACKLOG_KINDS = frozenset(("tcp", "tcp6", "ssl"))
# accept() failing for want of descriptors or memory: wait for some to be freed.
_EXHAUSTED = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
# accept() failing for that one connection only (it was reset or filtered before we took it).
_SKIP = frozenset((errno.EPERM, errno.ECONNABORTED, errno.EPROTO))
_SEPARATOR = re.compile(r"(?<!\\):")


def with_backlog(description: str, backlog: int) -> str:
    """``description`` with ``:backlog=N`` added, if it is a TCP or TLS listener naming none."""
    parts = _SEPARATOR.split(description)
    if parts[0].lower() not in BACKLOG_KINDS or any(p.startswith("backlog=") for p in parts[1:]):
        return description
    return f"{description}:backlog={backlog}"


class DescriptorLimit:
    """Shared by every port: pauses accepting at the descriptor limit, and logs it once.

    Ports that hit it stop reading and are resumed every ``retry`` seconds
    (one accept() each, so the cost while the limit lasts is ten failed
    system calls a second per port).  The episode ends -- one more line --
    after ``quiet`` seconds without a failure, so a hub hovering at the limit
    logs two lines, not two per retry.
    """

    retry = 0.1
    quiet = 10.0

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.paused: set[_Port] = set()
        self.started: float | None = None  # when the current episode began
        self.last = 0.0  # the latest failure
        self.failures = 0  # accept() calls refused in this episode
        self._tick: Any = None

    def exhausted(self, port: _Port, code: int) -> None:
        now = self.clock.seconds()
        self.last = now
        self.failures += 1
        if self.started is None:
            self.started = now
            host = port.getHost()
            log.info("{text}", text=
                f"listen: out of file descriptors ({errno.errorcode.get(code, code)}) accepting on "
                f"{getattr(host, 'host', '?')}:{getattr(host, 'port', '?')}; new connections wait in the "
                f"backlog, retried every {self.retry:g} s on every port, open connections are served "
                "(raise the descriptor limit, ulimit -n / LimitNOFILE, or lower limits.max_connections)"
            )
        port.stopReading()
        self.paused.add(port)
        if self._tick is None:
            self._tick = self.clock.callLater(self.retry, self._resume)

    def _resume(self) -> None:
        self._tick = None
        paused, self.paused = self.paused, set()
        for port in paused:
            if port.connected and not port.disconnecting:
                port.startReading()
        if self.started is None:
            return
        now = self.clock.seconds()
        if now - self.last >= self.quiet:
            log.info("{text}", text=
                f"listen: file descriptors available again; accepting normally "
                f"({self.failures} accept() calls waited over {self.last - self.started:.1f} s)"
            )
            self.started, self.failures = None, 0
        else:
            self._tick = self.clock.callLater(self.retry, self._resume)


class _Port(tcp.Port):
    """``tcp.Port`` whose accept loop pauses at the descriptor limit (see ``DescriptorLimit``)."""

    def __init__(self, port: int, factory: Factory, backlog: int, interface: str, reactor: Any,
                 limit: DescriptorLimit) -> None:
        super().__init__(port, factory, backlog, interface, reactor)
        self.limit = limit

    def doRead(self) -> None:
        # Twisted's loop, less its accept-and-close recovery from EMFILE.
        accepted = attempts = 0
        try:
            while attempts < self.numberAccepts:
                attempts += 1
                try:
                    skt, addr = self.socket.accept()
                except OSError as e:
                    if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                        break
                    if e.errno in _EXHAUSTED:
                        self.limit.exhausted(self, e.errno)
                        break
                    if e.errno in _SKIP:
                        continue
                    raise
                accepted += 1
                self._serve(skt, addr)
        except Exception:
            log.failure("listen: accepting a connection failed", failure.Failure())
        # Scale the accept loop to the traffic, as Twisted's does.
        if accepted == self.numberAccepts:
            self.numberAccepts += 20
        else:
            self.numberAccepts = max(1, accepted)

    def _serve(self, skt: socket.socket, addr: Any) -> None:
        if len(addr) == 4:  # IPv6: keep the scope id
            host = socket.getnameinfo(addr, socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)
            addr = (host[0], *addr[1:])
        factory: Any = self.factory
        protocol = factory.buildProtocol(self._buildAddr(addr))
        if protocol is None:
            skt.close()
            return
        session = self.sessionno
        self.sessionno = session + 1
        protocol.makeConnection(self.transport(skt, protocol, addr, self, session, self.reactor))


@implementer(IReactorTCP, IReactorSSL)
class _ListeningReactor:
    """The reactor, except that ``listenTCP`` and ``listenSSL`` make ``_Port``\\ s."""

    def __init__(self, reactor: Any, limit: DescriptorLimit) -> None:
        self._reactor = reactor
        self._limit = limit

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> _Port:
        p = _Port(port, factory, backlog, interface, self._reactor, self._limit)
        p.startListening()
        return p

    def listenSSL(self, port: int, factory: Any, contextFactory: Any, backlog: int = 50,
                  interface: str = "") -> _Port:
        from twisted.protocols.tls import TLSMemoryBIOFactory

        # As the reactor's own listenSSL: TLS in memory over a TCP port.
        tls = TLSMemoryBIOFactory(contextFactory, False, factory)
        p = self.listenTCP(port, tls, backlog, interface)
        p._type = "TLS"
        return p


def _address(port: IListeningPort) -> str:
    host: Any = port.getHost()
    if hasattr(host, "port"):
        return f"{host.host}:{host.port}" if ":" not in host.host else f"[{host.host}]:{host.port}"
    return str(getattr(host, "name", host))


class CannotListen(Exception):
    """A ``[listen]`` port could not be bound; its one line is already logged."""


def _quiet_exit_for(kind: type[BaseException]) -> None:
    """Let an uncaught ``kind`` end the process with status 1 and no traceback.

    twistd must see an Exception: in daemon mode it reports one to the
    waiting parent through its status pipe (the parent would wait forever
    for a SystemExit), and the parent prints it and exits 1.  With ``-n`` the
    exception reaches the interpreter, whose traceback would bury the one
    line that says what happened; the process is ending anyway.
    """
    previous = sys.excepthook

    def hook(cls: type[BaseException], value: BaseException, tb: Any) -> None:
        if not isinstance(value, kind):
            previous(cls, value, tb)

    sys.excepthook = hook


class Listener(Service):
    """One ``[listen]`` entry: listens when the application starts, stops listening first at shutdown."""

    def __init__(self, kind: str, description: str, endpoint: Any, factory: IProtocolFactory, reactor: Any) -> None:
        self.kind = kind
        self.description = description
        self.endpoint = endpoint
        self.factory = factory
        self.reactor = reactor
        self.port: IListeningPort | None = None
        self._waiting: Deferred | None = None

    def privilegedStartService(self) -> None:
        # twistd calls this before dropping privileges, so ports below 1024 work.
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        if self._waiting is None:
            self._listen()

    def _listen(self) -> None:
        self._waiting = self.endpoint.listen(self.factory)
        failed: list[failure.Failure] = []
        self._waiting.addCallbacks(self._listening, failed.append)
        if failed:
            # Every built-in endpoint listens at once, before the reactor runs.
            line, why = self._cannot(failed[0])
            log.info("{text}", text=line)
            _quiet_exit_for(CannotListen)
            # Short: a daemonizing twistd's parent prints its first 100 bytes.
            raise CannotListen(f"{self.kind}: {why}")
        self._waiting.addErrback(self._failed_later)

    def _listening(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        log.info("{text}", text=f"listening: {self.kind} on {self.description} ({_address(port)})")
        return port

    def _cannot(self, reason: failure.Failure) -> tuple[str, str]:
        """The line to log, and just the reason."""
        if isinstance(reason.value, CannotListenError):
            cause = reason.value.socketError
            why = getattr(cause, "strerror", None) or str(cause)
        else:
            why = reason.getErrorMessage()
        return f"listen: cannot listen for {self.kind} on {self.description}: {why}", why

    def _failed_later(self, reason: failure.Failure) -> None:
        # An endpoint plugin that listens asynchronously: the reactor is running.
        if not reason.check(CancelledError):
            log.info("{text}", text=self._cannot(reason)[0] + "; stopping")
            self.reactor.stop()

    def stopService(self) -> Deferred | None:
        super().stopService()
        waiting, self._waiting = self._waiting, None
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        if waiting is not None:
            waiting.cancel()
        return None


def listeners(reactor: Any, backlog: int, entries: Iterable[tuple[str, str, IProtocolFactory]]) -> list[Listener]:
    """``(kind, description, factory)`` entries -> their services, sharing one ``DescriptorLimit``."""
    front = _ListeningReactor(reactor, DescriptorLimit(reactor))
    return [
        Listener(kind, description, serverFromString(front, with_backlog(description, backlog)), factory, reactor)
        for kind, description, factory in entries
    ]
