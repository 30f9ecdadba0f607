"""msghub.listeners without sockets: backlog defaults, the descriptor-limit pause, one-line bind errors."""

from __future__ import annotations

import errno
import sys

import pytest
from twisted.internet.defer import fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor

from msghub.config import Listen
from msghub.listeners import DEFAULT_BACKLOG, CannotListen, DescriptorLimit, Listener, _Port, listeners, with_backlog


@pytest.mark.parametrize(
    ("description", "expected"),
    [
        ("tcp:8080:interface=127.0.0.1", "tcp:8080:interface=127.0.0.1:backlog=1024"),
        ("TCP6:8080", "TCP6:8080:backlog=1024"),
        ("ssl:8443:privateKey=k.pem", "ssl:8443:privateKey=k.pem:backlog=1024"),
        ("tcp:8080:backlog=10:interface=127.0.0.1", "tcp:8080:backlog=10:interface=127.0.0.1"),
        # an escaped colon is part of a value, not a separator
        (r"tcp:8080:interface=\:\:1", r"tcp:8080:interface=\:\:1:backlog=1024"),
        ("unix:/run/msghub.sock", "unix:/run/msghub.sock"),
        ("systemd:domain=INET:index=0", "systemd:domain=INET:index=0"),
    ],
)
def test_with_backlog_adds_one_only_to_tcp_and_ssl_listeners_naming_none(description, expected):
    assert with_backlog(description, 1024) == expected


def test_the_default_backlog_is_1024():
    assert Listen().backlog == DEFAULT_BACKLOG == 1024


def test_listeners_give_their_endpoints_the_backlog():
    reactor = MemoryReactor()
    factory = Factory.forProtocol(Protocol)
    services = listeners(reactor, 1024, [("http", "tcp:8080:interface=127.0.0.1", factory),
                                          ("compact", "tcp:8081:backlog=7", factory)])
    # Not started: that would bind real ports.
    assert [s.endpoint._backlog for s in services] == [1024, 7]


class FakeEndpoint:
    def __init__(self, result):
        self.result = result

    def listen(self, factory):
        return self.result


class FakeListeningPort:
    def getHost(self):
        from twisted.internet.address import IPv4Address

        return IPv4Address("TCP", "127.0.0.1", 8080)

    def stopListening(self):
        return succeed(None)


def test_a_port_in_use_is_one_line_and_an_exception_with_no_traceback(logged, monkeypatch):
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # restored after the test
    error = CannotListenError("127.0.0.1", 8080, OSError(errno.EADDRINUSE, "Address already in use"))
    service = Listener("http", "tcp:8080", FakeEndpoint(fail(error)), Factory(), MemoryReactor())
    with pytest.raises(CannotListen) as info:
        service.privilegedStartService()
    assert str(info.value) == "http: Address already in use"
    assert logged == ["listen: cannot listen for http on tcp:8080: Address already in use"]
    printed = []
    monkeypatch.setattr(sys, "stderr", type("W", (), {"write": lambda self, t: printed.append(t)})())
    sys.excepthook(CannotListen, info.value, None)
    assert printed == []


def test_a_listener_logs_its_kind_description_and_address(logged):
    service = Listener("admin", "tcp:8080", FakeEndpoint(succeed(FakeListeningPort())), Factory(), MemoryReactor())
    service.privilegedStartService()
    service.startService()  # listens once
    assert logged == ["listening: admin on tcp:8080 (127.0.0.1:8080)"]
    assert service.stopService().called


class FakeSocket:
    """accept() answers from a script: OSError numbers or (socket, address) pairs."""

    def __init__(self, script):
        self.script = list(script)

    def accept(self):
        step = self.script.pop(0) if self.script else errno.EAGAIN
        if isinstance(step, int):
            raise OSError(step, errno.errorcode[step])
        return step


class FakeClientSocket:
    def __init__(self):
        self.closed = False

    def close(self):
        self.closed = True


class RefusingFactory(Factory):
    def buildProtocol(self, addr):
        return None  # closes the socket without a transport


def make_port(clock, limit, script):
    reactor = MemoryReactor()
    reactor.readers = set()
    reactor.addReader = reactor.readers.add
    reactor.removeReader = reactor.readers.discard
    port = _Port(0, RefusingFactory(), 50, "127.0.0.1", reactor, limit)
    port.socket = FakeSocket(script)
    port.connected = True
    port.numberAccepts = 100
    port.getHost = FakeListeningPort().getHost
    return port, reactor


def test_at_the_descriptor_limit_a_port_pauses_logs_once_and_resumes(logged):
    clock = Clock()
    limit = DescriptorLimit(clock)
    client = FakeClientSocket()
    port, reactor = make_port(clock, limit, [errno.EMFILE, errno.EMFILE, (client, ("127.0.0.1", 5000))])
    reactor.addReader(port)
    port.doRead()
    assert port not in reactor.readers and port in limit.paused
    clock.advance(limit.retry)
    assert port in reactor.readers
    port.doRead()  # still at the limit: paused again, nothing more logged
    assert port not in reactor.readers
    clock.advance(limit.retry)
    port.doRead()  # a descriptor is free: the connection is taken
    assert client.closed  # by RefusingFactory
    assert len([line for line in logged if "out of file descriptors (EMFILE)" in line]) == 1
    clock.advance(limit.quiet + limit.retry)
    assert logged[-1] == "listen: file descriptors available again; accepting normally " \
                         "(2 accept() calls waited over 0.1 s)"
    assert clock.getDelayedCalls() == []


def test_a_connection_aborted_before_accept_is_skipped_not_fatal(logged):
    clock = Clock()
    client = FakeClientSocket()
    port, _ = make_port(clock, DescriptorLimit(clock), [errno.ECONNABORTED, (client, ("127.0.0.1", 5000))])
    port.doRead()
    assert client.closed and logged == []
