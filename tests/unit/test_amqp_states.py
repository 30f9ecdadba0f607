"""The forwarder's states (``AmqpState``): transitions, timers on stop, login refusals, nack back-off."""

from __future__ import annotations

import pika.spec
import pytest

from amqp_fakes import SPOOL, Harness, ids, result, server
from msghub.forward import amqp_dispatch
from msghub.forward.amqp import RETRY_INITIAL, RETRY_MAX, STOP_GRACE, TRANSITIONS, AmqpState

S = AmqpState
EVENTS = ("made", "ready", "ready_blocked", "block", "unblock", "lost", "refused", "stop")


def test_every_state_has_a_transition_for_every_event_it_can_receive():
    # From DOWN a connection is made before any setup event, so those are bugs there.
    impossible = {(S.DOWN, e) for e in ("ready", "ready_blocked", "block", "unblock")}
    impossible |= {(S.READY, e) for e in ("made", "ready", "ready_blocked")}
    impossible |= {(S.BLOCKED, e) for e in ("made", "ready", "ready_blocked")}
    for state in AmqpState:
        for event in EVENTS:
            assert ((state, event) in TRANSITIONS) != ((state, event) in impossible), (state, event)
    assert all(TRANSITIONS[(S.STOPPING, e)] is S.STOPPING for e in EVENTS)



def advance_to_next_attempt(h: Harness) -> None:
    attempts = len(h.reactor.tcpClients)
    h.reactor.advance(RETRY_MAX + 1)
    assert len(h.reactor.tcpClients) == attempts + 1


def retry_delay(h: Harness) -> float:
    now = h.reactor.seconds()
    (delay,) = [c.getTime() - now for c in h.reactor.getDelayedCalls() if c.func != h.forwarder._tick]
    return delay


def test_states_follow_the_connection():
    h = Harness().start(connect=False)
    assert h.forwarder.state is S.CONNECTING
    h.broker.fail_attempt()
    assert h.forwarder.state is S.DOWN and "nobody listening" in h.forwarder.last_error
    advance_to_next_attempt(h)
    h.broker.connect(handshake=False)
    assert h.forwarder.state is S.CONNECTING
    h.broker.lose()
    assert h.forwarder.state is S.DOWN
    advance_to_next_attempt(h)
    h.broker.connect()
    assert h.forwarder.state is S.READY and h.forwarder.last_error == ""
    h.broker.feed(server(pika.spec.Connection.Blocked(reason="low on memory"), 0))
    assert h.forwarder.state is S.BLOCKED
    h.broker.feed(server(pika.spec.Connection.Unblocked(), 0))
    assert h.forwarder.state is S.READY
    h.forwarder.stopService()
    assert h.forwarder.state is S.STOPPING


def reach(h: Harness, state: AmqpState) -> bool:
    """Bring ``h`` into ``state`` with a batch written or waiting; True if a connection is left open."""
    if state is S.DOWN:
        h.start(connect=False)
        h.deliver(1)  # waits for the broker: the spool_after timer is armed
        h.broker.fail_attempt()
        return False
    if state is S.AUTH_FAILED:
        h.start(connect=False)
        h.deliver(1)
        h.broker.refuse_login()
        return False
    if state is S.CONNECTING:
        h.start(connect=False)
        h.deliver(1)
        h.broker.connect(handshake=False)
        return True
    h.start()
    h.deliver(1)  # written, unconfirmed
    if state is S.BLOCKED:
        h.broker.feed(server(pika.spec.Connection.Blocked(reason="low on memory"), 0))
    h.deliver(1)  # waits for room in the window: the spool_after timer is armed
    return True


@pytest.mark.parametrize("state", [S.DOWN, S.CONNECTING, S.READY, S.BLOCKED, S.AUTH_FAILED])
def test_stop_in_any_state_leaves_nothing_that_fires(state):
    h = Harness(confirm_window=1)
    connected = reach(h, state)
    assert h.forwarder.state is state
    assert h.reactor.getDelayedCalls()  # timers were running
    stopped = h.forwarder.stopService()
    h.reactor.advance(STOP_GRACE)
    h.reactor.advance(0)
    if connected:
        assert h.broker.transport.disconnecting
        h.broker.lose()
    assert stopped.called
    assert h.reactor.getDelayedCalls() == []
    attempts, writes = len(h.reactor.tcpClients), h.broker.transport.writes if h.broker.transport else 0
    h.reactor.advance(3600)
    assert len(h.reactor.tcpClients) == attempts  # no reconnect
    assert (h.broker.transport.writes if h.broker.transport else 0) == writes
    h.spool.commit()
    assert not h.spool.pending and len(h.spool.ids()) == (1 if state in (S.DOWN, S.CONNECTING, S.AUTH_FAILED) else 2)


def test_a_block_during_setup_ends_with_its_connection():
    h = Harness().start(connect=False)
    h.broker.connect(handshake=False)
    h.broker.feed(server(pika.spec.Connection.Blocked(reason="low on memory"), 0))
    assert h.forwarder.state is S.CONNECTING
    h.broker.lose()
    assert h.forwarder.state is S.DOWN
    h.reactor.advance(10)  # no spool_after timer re-arming itself for a block that ended with its connection
    assert [c for c in h.reactor.getDelayedCalls() if c.func == h.forwarder._expire] == []
    h.broker.connect()
    assert h.forwarder.state is S.READY
    messages, d = h.deliver(1)
    assert h.broker.published_ids() == ids(messages)


def test_a_block_before_setup_ends_makes_the_connection_blocked_when_ready():
    h = Harness().start(connect=False)
    h.broker.connect(handshake=False)
    h.broker.feed(server(pika.spec.Connection.Blocked(reason="low on disk"), 0))
    h.broker.lose()
    advance_to_next_attempt(h)
    h.broker.connect()  # a fresh connection: not blocked
    assert h.forwarder.state is S.READY


def test_a_refused_login_is_logged_once_and_backs_off_without_resetting(logged):
    h = Harness().start(connect=False)
    delays = []
    for _ in range(8):
        h.broker.refuse_login()
        assert h.forwarder.state is S.AUTH_FAILED
        assert "403 ACCESS_REFUSED" in h.forwarder.last_error
        delays.append(retry_delay(h))
        advance_to_next_attempt(h)
        assert h.forwarder.state is S.AUTH_FAILED  # a new attempt does not hide the refusal
    assert len([line for line in logged if "ACCESS_REFUSED" in line]) == 1
    assert delays[-1] >= RETRY_INITIAL * 1.5**8  # grown: ClientService alone would stay at its first delay
    assert delays[0] < RETRY_INITIAL * 1.5 + 1
    h.broker.connect()
    assert h.forwarder.state is S.READY and h.forwarder.last_error == "" and h.forwarder.failures == 0


def test_a_directly_published_batch_that_is_nacked_is_retried_after_a_growing_back_off():
    h = Harness(policy="spool").start()
    messages, d = h.deliver(2)
    h.broker.published()
    h.broker.nack(2, multiple=True)
    h.spool.commit()
    assert result(d) is None and h.spool.ids() == [m.id for m in messages]
    h.reactor.advance(amqp_dispatch.NACK_BACKOFF_MIN * 0.9)
    assert h.broker.published() == []  # not at once
    h.reactor.advance(amqp_dispatch.NACK_BACKOFF_MIN * 0.1)
    assert h.broker.published_ids() == ids(messages)
    h.broker.nack(4, multiple=True)  # refused again: the back-off doubles
    h.reactor.advance(amqp_dispatch.NACK_BACKOFF_MIN * 1.9)
    assert h.broker.published() == []
    h.reactor.advance(amqp_dispatch.NACK_BACKOFF_MIN * 0.1)
    assert h.broker.published_ids() == ids(messages)
    h.broker.ack(6, multiple=True)
    assert h.spool.ids(SPOOL) == []


def test_confirms_split_across_reads_settle_as_whole_ones():
    h = Harness().start()
    _, d = h.deliver(3)
    data = server(pika.spec.Basic.Ack(delivery_tag=2, multiple=True)) + server(pika.spec.Basic.Ack(delivery_tag=3))
    for i in range(len(data)):
        h.broker.feed(data[i : i + 1])
    assert result(d) is None and h.forwarder.window.unconfirmed == 0


def test_the_same_failure_on_every_retry_is_logged_once_until_a_connection_is_ready(logged):
    h = Harness().start(connect=False)
    for _ in range(4):  # the broker accepts and closes at once, as one starting up does
        h.broker.connect(handshake=False)
        h.broker.lose()
        assert h.forwarder.state is S.DOWN
        advance_to_next_attempt(h)
    h.broker.connect()
    h.broker.lose()
    assert len([line for line in logged if "amqp: connecting to" in line]) == 1
    assert len([line for line in logged if "amqp: connection lost" in line]) == 1


def test_confirms_count_as_proof_of_life_for_the_heartbeat_check():
    # txamqp aborts a connection that sent nothing for three heartbeats; it never sees the confirms.
    h = Harness(heartbeat=10).start()
    for tag in range(1, 11):
        h.deliver(1)
        h.reactor.advance(20)
        h.broker.ack(tag)
    assert not h.broker.transport.disconnected and h.forwarder.state is S.READY
    h.reactor.advance(31)  # silence for more than three heartbeats: aborted, as txamqp does
    assert h.broker.transport.disconnected
