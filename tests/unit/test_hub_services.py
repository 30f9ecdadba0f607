"""Shutdown order: ports, then connections, then the spool, one after another."""

from twisted.application.service import Service
from twisted.internet.defer import Deferred

from msghub.hub import DrainService, SequentialMultiService
from msghub.ingress.http import HttpIngress

from fakes import connect, make_hub


class Recorder(Service):
    def __init__(self, name, log, wait=None):
        self.name, self.log, self.wait = name, log, wait

    def stopService(self):
        self.log.append(self.name)
        return self.wait


def test_children_stop_one_after_another_in_reverse_order():
    log = []
    gate = Deferred()
    top = SequentialMultiService()
    Recorder("spool", log).setServiceParent(top)
    Recorder("drain", log, gate).setServiceParent(top)
    Recorder("listener", log).setServiceParent(top)
    top.startService()
    done = top.stopService()
    assert log == ["listener", "drain"]  # the spool waits for the drain
    gate.callback(None)
    assert log == ["listener", "drain", "spool"]
    assert done.called


def test_drain_closes_idle_connections_and_waits_for_busy_ones():
    hub = make_hub()
    idle, idle_t = connect(HttpIngress, hub)
    busy, busy_t = connect(HttpIngress, hub)
    busy.dataReceived(b"POST /quotes/A HTTP/1.1\r\nAuthorization: Bearer s3cret-token\r\nContent-Length: 1\r\n\r\nx")
    service = DrainService(hub.ingress, hub.reactor, timeout=5)
    service.startService()
    d = service.stopService()
    assert idle_t.disconnecting and not busy_t.disconnecting
    idle.connectionLost(None)
    hub.spool.commit_all()
    assert busy_t.value().startswith(b"HTTP/1.1 202")
    assert busy_t.disconnecting
    busy.connectionLost(None)
    hub.reactor.advance(0.1)
    assert d.called


def test_drain_ends_its_wait_when_the_last_connection_closes():
    hub = make_hub()
    first, _ = connect(HttpIngress, hub)
    second, _ = connect(HttpIngress, hub)
    service = DrainService(hub.ingress, hub.reactor, timeout=5)
    service.startService()
    d = service.stopService()
    first.connectionLost(None)
    assert not d.called
    second.connectionLost(None)  # the last one
    assert not d.called  # resumes on a fresh stack, not inside that connectionLost
    hub.reactor.advance(0)
    assert d.called
    assert hub.reactor.getDelayedCalls() == []


def test_drain_ends_its_wait_at_the_grace_deadline_if_a_connection_never_closes():
    hub = make_hub()
    busy, busy_t = connect(HttpIngress, hub)
    busy.dataReceived(b"POST /quotes/A HTTP/1.1\r\nAuthorization: Bearer s3cret-token\r\nContent-Length: 1\r\n\r\nx")
    service = DrainService(hub.ingress, hub.reactor, timeout=5)
    service.startService()
    d = service.stopService()
    hub.reactor.advance(4.99)
    assert not d.called
    hub.reactor.advance(0.01)
    hub.reactor.advance(0)
    assert d.called and d.result is None  # the grace period ends the wait; it is not a failure
    busy.connectionLost(None)
    assert hub.reactor.getDelayedCalls() == []


def test_drain_with_no_connections_is_done_at_once():
    hub = make_hub()
    service = DrainService(hub.ingress, hub.reactor, timeout=5)
    service.startService()
    d = service.stopService()
    hub.reactor.advance(0)
    assert d.called
    assert hub.reactor.getDelayedCalls() == []
