"""The RabbitMQ forwarder without sockets (fakes in ``amqp_fakes.py``)."""

from __future__ import annotations

import pika.frame
import pika.spec
import pytest

from amqp_fakes import ROUTE, SPOOL, SPOOL_AFTER, Harness, ids, result, server
from msghub.message import Message, format_id
from msghub.auth import NO_CREDENTIALS
from msghub.router import Router
from msghub.forward import amqp_dispatch
from msghub.forward.amqp import STOP_GRACE
from msghub.sink import SinkError


# -- publishing and confirms ----------------------------------------------------------


def test_batch_is_one_write_of_every_message_and_fires_after_the_last_single_ack():
    h = Harness().start()
    messages, d = h.deliver(3, b"eu")
    assert h.broker.transport.writes == 1
    published = h.broker.published()
    assert [p.message_id for _, p, _ in published] == ids(messages)
    assert [(m.exchange, m.routing_key, m.mandatory) for m, _, _ in published] == [("ex", "orders.eu", True)] * 3
    assert [b for _, _, b in published] == [b"body 1", b"body 2", b"body 3"]
    assert h.forwarder.window.unconfirmed == 3
    h.broker.ack(3)
    h.broker.ack(1)
    assert not d.called
    assert h.forwarder.window.unconfirmed == 1
    h.broker.ack(2)
    assert result(d) is None
    assert h.forwarder.window.unconfirmed == 0
    assert h.forwarder.confirms == 3


def test_routing_key_uses_the_captures_as_the_router_decodes_them():
    h = Harness().start()
    target = b"/orders/new%20york%2Fnj?x=1"
    decision = Router([h.route], None).decide(NO_CREDENTIALS, b"POST", target)
    assert decision.captures == {"kind": "new york/nj"}
    h.deliver(1, b"new%20york%2Fnj?x=1")
    ((method, props, _),) = h.broker.published()
    assert method.routing_key == "orders.new york/nj"
    assert props.headers["x-msghub-target"] == target.decode()


@pytest.mark.parametrize("exchange, persistent", [("ex", True), ("plain", False), ("", True), ("amq.topic", True)])
def test_messages_are_persistent_exactly_when_their_exchange_is_durable(exchange, persistent):
    # The default exchange and the amq.* exchanges every vhost has are durable.
    h = Harness(exchange=exchange).start()
    h.deliver(1)
    ((method, props, _),) = h.broker.published()
    assert method.exchange == exchange
    assert props.delivery_mode == (2 if persistent else None)


def test_multiple_ack_settles_earlier_tags_across_batches_without_double_counting():
    h = Harness().start()
    _, first = h.deliver(2)
    _, second = h.deliver(3)
    h.broker.published()
    h.broker.ack(4)  # a single ack out of order, inside the second batch
    h.broker.ack(2, multiple=True)
    assert result(first) is None
    assert not second.called
    assert h.forwarder.window.unconfirmed == 2
    h.broker.ack(5, multiple=True)  # covers 3 and 5; 4 was already settled
    assert result(second) is None
    assert h.forwarder.window.unconfirmed == 0
    assert h.forwarder.confirms == 5
    h.broker.ack(5, multiple=True)  # a repeat changes nothing
    assert h.forwarder.window.unconfirmed == 0 and h.forwarder.confirms == 5
    assert not h.forwarder.window.records


def test_repeated_single_ack_is_counted_once():
    h = Harness().start()
    _, d = h.deliver(2)
    h.broker.ack(1)
    h.broker.ack(1)
    assert not d.called and h.forwarder.window.unconfirmed == 1
    h.broker.ack(2)
    assert result(d) is None


def test_nack_under_spool_policy_spools_the_nacked_messages_and_acknowledges_after_commit():
    h = Harness(policy="spool").start()
    messages, d = h.deliver(3)
    h.broker.ack(1)
    h.broker.nack(2)
    h.broker.ack(3)
    assert not d.called  # the nacked message is not safe until the spool has it
    ((name, spooled, _),) = h.spool.pending
    assert name == SPOOL and spooled == [messages[1]]
    h.spool.commit()
    assert result(d) is None
    assert h.spool.ids() == [messages[1][0]]
    assert h.forwarder.nacks == 1


def test_nack_under_reject_policy_refuses_only_the_nacked_messages_with_503():
    h = Harness(policy="reject").start()
    messages, d = h.deliver(4)
    h.broker.nack(2, multiple=True)
    h.broker.ack(4, multiple=True)
    refused = result(d)
    assert set(refused) == {messages[0].id, messages[1].id}
    assert all(isinstance(e, SinkError) and e.status == 503 for e in refused.values())
    assert not h.spool.pending and not h.spool.rows


def test_unroutable_mandatory_message_is_refused_with_404_and_the_rest_acknowledged():
    h = Harness().start()
    messages, d = h.deliver(3)
    published = h.broker.published()
    method, props, body = published[1]
    # What RabbitMQ sends for an unroutable mandatory publish: basic.return
    # with the message, then the ack.
    h.broker.feed(
        server(pika.spec.Basic.Return(reply_code=312, reply_text="NO_ROUTE", exchange=method.exchange,
                                      routing_key=method.routing_key))
        + pika.frame.Header(1, len(body), props).marshal()
        + pika.frame.Body(1, body).marshal()
        + server(pika.spec.Basic.Ack(delivery_tag=3, multiple=True))
    )
    refused = result(d)
    assert list(refused) == [messages[1].id]
    assert refused[messages[1].id].status == 404
    assert "NO_ROUTE" in refused[messages[1].id].reason
    assert h.forwarder.returns == 1


def test_confirm_window_bounds_unconfirmed_messages_to_window_plus_one_batch():
    h = Harness(confirm_window=10).start()
    deferreds = [h.deliver(4)[1] for _ in range(6)]
    # 0, 4, 8 unconfirmed when the first three were written: the fourth waits.
    assert h.forwarder.window.unconfirmed == 12
    assert len(h.broker.published()) == 12
    published = 12
    for tag in range(2, 25, 2):
        h.broker.ack(tag, multiple=True)
        published += len(h.broker.published())
        assert h.forwarder.window.unconfirmed == published - tag <= 10 + 4
    assert published == 24
    assert all(result(d) is None for d in deferreds)
    assert h.forwarder.window.unconfirmed == 0 and not h.forwarder.waiting


def test_batches_that_wait_longer_than_spool_after_for_a_full_window_are_spooled():
    h = Harness(confirm_window=2).start()
    _, live = h.deliver(2)
    waiting_messages, waiting = h.deliver(1)
    h.broker.published()
    h.reactor.advance(SPOOL_AFTER - 0.5)
    assert not waiting.called and not h.spool.pending
    h.reactor.advance(0.5)
    assert [m for _, ms, _ in h.spool.pending for m in ms] == waiting_messages
    h.spool.commit()
    assert result(waiting) is None
    assert not live.called  # still waiting for its confirms, not spooled


# -- broker down or blocked -------------------------------------------------------------


def test_batch_waits_for_the_broker_and_is_published_if_it_comes_back_in_time():
    h = Harness().start(connect=False)
    messages, d = h.deliver(2)
    h.reactor.advance(1.0)
    assert not d.called and not h.spool.pending
    h.broker.connect()
    assert h.broker.published_ids() == ids(messages)
    h.broker.ack(2, multiple=True)
    assert result(d) is None
    assert not h.spool.rows


def test_batch_waiting_for_a_down_broker_is_spooled_after_spool_after():
    h = Harness(policy="spool").start(connect=False)
    messages, d = h.deliver(2)
    h.reactor.advance(SPOOL_AFTER - 0.5)
    assert not d.called and not h.spool.pending
    h.reactor.advance(0.5)
    assert not d.called  # acknowledged on commit, not before
    h.spool.commit()
    assert result(d) is None
    assert h.spool.ids() == [m[0] for m in messages]
    assert h.sink.spooling


def test_batch_waiting_for_a_down_broker_is_refused_with_503_under_reject():
    h = Harness(policy="reject").start(connect=False)
    _, d = h.deliver(2)
    h.reactor.advance(SPOOL_AFTER - 0.5)
    assert not d.called
    h.reactor.advance(0.5)
    error = result(d)
    assert isinstance(error, SinkError) and error.status == 503
    assert not h.spool.pending and not h.spool.rows


def test_batch_arriving_after_the_broker_was_down_for_spool_after_is_diverted_at_once():
    spooling = Harness(policy="spool").start(connect=False)
    rejecting = Harness(policy="reject").start(connect=False)
    for h in (spooling, rejecting):
        h.reactor.advance(SPOOL_AFTER + 1)
    _, d = spooling.deliver(1)
    assert spooling.spool.pending
    spooling.spool.commit()
    assert result(d) is None
    _, d = rejecting.deliver(1)
    assert result(d).status == 503


def test_blocked_broker_holds_batches_and_spools_them_after_spool_after():
    h = Harness().start()
    h.broker.feed(server(pika.spec.Connection.Blocked(reason="low on memory"), 0))
    _, held = h.deliver(1)
    h.reactor.advance(1.0)
    assert h.broker.published() == [] and not held.called
    h.broker.feed(server(pika.spec.Connection.Unblocked(), 0))
    assert len(h.broker.published()) == 1  # unblocked in time: published
    h.broker.ack(1)
    assert result(held) is None

    h.broker.feed(server(pika.spec.Connection.Blocked(reason="low on disk"), 0))
    messages, d = h.deliver(2)
    h.reactor.advance(SPOOL_AFTER)
    assert h.broker.published() == []
    h.spool.commit()
    assert result(d) is None
    assert h.spool.ids() == [m[0] for m in messages]


def test_batch_written_just_before_the_broker_blocked_is_spooled_after_spool_after():
    # RabbitMQ sends connection.blocked only once a publish arrives after the
    # alarm, and then stops reading: that batch is not confirmed until the alarm clears.
    h = Harness(policy="spool").start()
    written, d = h.deliver(2)
    assert h.broker.published_ids() == ids(written)
    h.broker.feed(server(pika.spec.Connection.Blocked(reason="low on memory"), 0))
    h.reactor.advance(SPOOL_AFTER - 0.5)
    assert not d.called and not h.spool.pending
    h.reactor.advance(0.5)
    h.spool.commit()
    assert result(d) is None
    assert h.spool.ids() == [m[0] for m in written]
    assert h.forwarder.window.unconfirmed == 0
    later, d2 = h.deliver(1)  # still blocked: spooled at once, behind the others
    h.spool.commit()
    assert result(d2) is None
    assert h.spool.ids() == [m[0] for m in written + later]
    # The alarm clears: the broker confirms what it had, and the spooled copies
    # are published again (duplicates with the same id, never losses).
    h.broker.feed(server(pika.spec.Connection.Unblocked(), 0))
    h.broker.ack(2, multiple=True)
    assert h.forwarder.window.unconfirmed == 3  # only the dispatcher's publishes count
    assert h.broker.published_ids() == ids(written + later)
    h.broker.ack(5, multiple=True)
    assert h.spool.ids() == [] and h.forwarder.window.unconfirmed == 0


def test_batch_written_just_before_the_broker_blocked_is_refused_with_503_under_reject():
    h = Harness(policy="reject").start()
    _, d = h.deliver(2)
    h.broker.feed(server(pika.spec.Connection.Blocked(reason="low on memory"), 0))
    h.reactor.advance(SPOOL_AFTER)
    assert result(d).status == 503
    h.broker.feed(server(pika.spec.Connection.Unblocked(), 0))
    h.broker.ack(2, multiple=True)  # late confirms of a refused batch change nothing
    assert h.forwarder.window.unconfirmed == 0


def test_connection_lost_spools_every_unconfirmed_batch():
    h = Harness(policy="spool").start()
    first, d1 = h.deliver(2)
    second, d2 = h.deliver(2)
    h.broker.ack(1)  # only part of the first batch is confirmed
    h.broker.lose()
    assert not d1.called and not d2.called
    h.spool.commit()
    assert result(d1) is None and result(d2) is None
    # All of an unconfirmed batch is spooled, even its confirmed part: duplicates, never loss.
    assert h.spool.ids() == [m[0] for m in first + second]
    assert h.forwarder.window.unconfirmed == 0 and not h.forwarder.window.records


def test_connection_lost_refuses_unconfirmed_batches_with_503_under_reject():
    h = Harness(policy="reject").start()
    _, d = h.deliver(2)
    h.broker.lose()
    assert result(d).status == 503
    assert not h.spool.rows


# -- spooling mode and the dispatcher ---------------------------------------------------------


def spool_while_down(h: Harness, n: int) -> list[Message]:
    messages, d = h.deliver(n)
    h.reactor.advance(SPOOL_AFTER)
    h.spool.commit()
    assert result(d) is None
    return messages


def test_spooling_route_keeps_new_messages_in_the_spool_in_order_until_drained():
    h = Harness().start(connect=False)
    a = spool_while_down(h, 3)
    h.broker.connect()
    # The dispatcher publishes the spooled messages...
    assert h.broker.published_ids() == ids(a)
    # ...and new ones join the spool behind them instead of overtaking them.
    b, db = h.deliver(2)
    assert h.broker.published() == []
    h.spool.commit()
    assert result(db) is None
    assert h.spool.ids() == [m[0] for m in a + b]
    h.broker.ack(3, multiple=True)
    assert h.spool.ids() == [m[0] for m in b]  # confirmed rows deleted
    assert h.broker.published_ids() == ids(b)
    h.broker.ack(5, multiple=True)
    assert h.spool.ids() == []
    assert not h.sink.spooling
    c, dc = h.deliver(1)
    assert h.broker.published_ids() == ids(c)  # drained: published directly again
    h.broker.ack(6)
    assert result(dc) is None


def test_dispatcher_deletes_only_confirmed_rows_and_retries_nacked_ones():
    h = Harness().start(connect=False)
    a = spool_while_down(h, 3)
    h.broker.connect()
    assert h.broker.published_ids() == ids(a)
    h.broker.ack(1)
    h.broker.nack(2)
    h.broker.ack(3)
    assert h.spool.ids() == [a[1][0]]  # the nacked row stays...
    assert h.broker.published() == []  # ...waits out the back-off...
    h.reactor.advance(amqp_dispatch.NACK_BACKOFF_MIN)
    assert h.broker.published_ids() == ids(a[1:2])  # ...and is published again
    h.broker.ack(4)
    assert h.spool.ids() == []


def test_dispatcher_leaves_unconfirmed_rows_in_the_spool_when_the_connection_drops():
    h = Harness().start(connect=False)
    a = spool_while_down(h, 3)
    h.broker.connect()
    assert h.broker.published_ids() == ids(a)
    h.broker.lose()
    assert h.spool.ids() == [m[0] for m in a]
    assert not h.spool.pending  # not spooled a second time
    h.reactor.advance(3.0)
    h.broker.connect()
    assert h.broker.published_ids() == ids(a)  # read again from the first unconfirmed row
    h.broker.ack(3, multiple=True)
    assert h.spool.ids() == []


def test_spool_left_by_a_previous_run_is_drained_after_connecting():
    h = Harness()
    leftover = h.messages(2)
    h.spool.append(SPOOL, leftover)
    h.spool.commit()
    h.start()
    assert h.sink.spooling
    assert h.broker.published_ids() == ids(leftover)
    _, d = h.deliver(1)  # queued behind the leftovers
    assert h.broker.published() == []
    h.broker.ack(2, multiple=True)
    h.spool.commit()
    assert result(d) is None
    assert len(h.broker.published()) == 1


def test_spool_order_is_acceptance_order_when_a_lost_batch_a_waiting_batch_and_a_new_one_meet():
    h = Harness(confirm_window=2).start()
    a, da = h.deliver(2)  # written, unconfirmed
    b, db = h.deliver(1)  # waits: the window is full
    h.broker.lose()  # a is spooled; the route is now spooling
    c, dc = h.deliver(1)  # arrives while b still waits
    h.reactor.advance(SPOOL_AFTER)
    h.spool.commit()
    assert [result(d) for d in (da, db, dc)] == [None, None, None]
    assert h.spool.ids() == [m[0] for m in a + b + c]


def test_stop_spools_what_is_still_unconfirmed():
    h = Harness().start()
    messages, d = h.deliver(2)
    stopped = h.forwarder.stopService()
    h.reactor.advance(6.0)  # the stop waits up to 5 s for confirms
    h.spool.commit()
    assert result(d) is None
    assert h.spool.ids() == [m[0] for m in messages]
    h.broker.lose()
    assert stopped.called


def test_stop_while_confirms_are_in_flight_ends_its_wait_at_the_last_confirm():
    h = Harness().start()
    messages, d = h.deliver(2)
    stopped = h.forwarder.stopService()
    h.broker.ack(1)
    assert not h.broker.transport.disconnecting  # one confirm is still owed
    h.broker.ack(2)  # the last one: the stop goes on at the next reactor turn
    h.reactor.advance(0)
    assert result(d) is None and not h.spool.pending  # confirmed, not spooled
    assert h.broker.transport.disconnecting
    h.broker.lose()
    assert stopped.called
    assert h.reactor.getDelayedCalls() == []


def test_stop_ends_its_wait_at_the_grace_deadline_when_confirms_never_come():
    h = Harness().start()
    messages, d = h.deliver(2)
    stopped = h.forwarder.stopService()
    h.reactor.advance(STOP_GRACE - 0.01)
    assert not h.spool.pending and not h.broker.transport.disconnecting
    h.reactor.advance(0.01)
    h.reactor.advance(0)
    h.spool.commit()
    assert result(d) is None and h.spool.ids() == [m[0] for m in messages]
    h.broker.lose()
    assert stopped.called
    assert h.reactor.getDelayedCalls() == []


@pytest.mark.parametrize("blocked", [False, True])
def test_stop_leaves_nothing_scheduled_with_batches_waiting(blocked):
    h = Harness(confirm_window=1).start()
    h.deliver(1)
    if blocked:  # the spool_after timer re-arms itself while the broker blocks
        h.broker.feed(server(pika.spec.Connection.Blocked(reason="low on memory"), 0))
    h.deliver(1)  # waits for room in the window: the spool_after timer is armed
    stopped = h.forwarder.stopService()
    h.reactor.advance(STOP_GRACE)
    h.broker.lose()
    assert stopped.called
    assert h.reactor.getDelayedCalls() == []


def test_a_full_window_with_confirms_flowing_is_load_not_an_outage():
    h = Harness(confirm_window=2).start()
    h.deliver(2)
    waiting_messages, waiting = h.deliver(1)
    h.broker.published()
    h.reactor.advance(SPOOL_AFTER - 0.5)
    h.broker.ack(1)  # progress: the broker is slow, not gone
    h.reactor.advance(SPOOL_AFTER - 0.5)
    assert not h.spool.pending and not waiting.called


def test_a_message_published_from_the_spool_carries_exactly_what_a_direct_one_does():
    h = Harness(policy="spool").start(connect=False)
    headers = ((b"Content-Type", b"text/plain"), (b"X-Trace", b"t-9"), (b"Authorization", b"Bearer secret"))
    captures = {"kind": "new york/nj"}

    def message(body: bytes) -> Message:
        h.next_id += 1
        return Message(h.next_id, b"PUT", b"/orders/new%20york%2Fnj?x=1", headers, body, ROUTE, "feed", captures,
                       1700000000.0, 1)

    spooled = message(b"same body")
    d = h.sink.deliver([spooled])
    h.reactor.advance(SPOOL_AFTER)
    h.spool.commit()
    assert result(d) is None and h.sink.spooling
    h.broker.connect()
    h.reactor.advance(0)
    [(method_a, props_a, body_a)] = h.broker.published()
    h.broker.ack(1)
    h.reactor.advance(1.0)  # the dispatcher finds the spool empty: direct publishing again
    assert not h.sink.spooling
    direct = message(b"same body")
    h.sink.deliver([direct])
    [(method_b, props_b, body_b)] = h.broker.published()
    assert (method_a.exchange, method_a.routing_key, method_a.mandatory) == (
        method_b.exchange, method_b.routing_key, method_b.mandatory)
    assert method_a.routing_key == "orders.new york/nj"
    assert body_a == body_b
    for name in ("content_type", "content_encoding", "delivery_mode", "timestamp", "app_id", "headers"):
        assert getattr(props_a, name) == getattr(props_b, name), name
    assert props_a.headers["x-msghub-user"] == "feed"
    assert "Authorization" not in props_a.headers
    assert (props_a.message_id, props_b.message_id) == (format_id(spooled.id), format_id(direct.id))


def test_batches_waiting_for_the_window_are_bounded_in_bytes(monkeypatch):
    from msghub.forward import amqp

    monkeypatch.setattr(amqp, "WAITING_MAX_BYTES", 20)
    h = Harness(policy="spool").start(connect=False)
    _, first = h.deliver(2)  # 12 bytes of bodies: waits for the broker
    assert not h.spool.pending and h.forwarder.waiting_bytes == 12
    _, second = h.deliver(2)  # would pass 20 bytes: spooled at once, behind the first
    assert [m.body for _, ms, _ in h.spool.pending for m in ms] == [b"body 1", b"body 2", b"body 3", b"body 4"]
    assert h.forwarder.waiting_bytes == 0 and not h.forwarder.waiting
    h.spool.commit()
    assert result(first) is None and result(second) is None


def test_metrics_export_confirms_nacks_returns_and_the_connection_state():
    from prometheus_client import CollectorRegistry, generate_latest

    from msghub.admin.metrics import amqp_metrics

    h = Harness().start(connect=False)

    class Collector:
        def collect(self):
            return amqp_metrics(h.forwarder)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector())
    text = generate_latest(registry).decode()
    assert 'msghub_amqp_state{state="connecting"} 1.0' in text  # the first attempt is under way
    assert 'msghub_amqp_state{state="connected"} 0.0' in text
    a = spool_while_down(h, 3)
    h.broker.connect()
    assert h.broker.published_ids() == ids(a)
    h.broker.ack(1)
    h.broker.nack(2)
    h.broker.ack(3)
    text = generate_latest(registry).decode()
    assert "msghub_amqp_confirms_total 3.0" in text
    assert "msghub_amqp_nacks_total 1.0" in text
    assert "msghub_amqp_returns_total 0.0" in text
    assert 'msghub_amqp_state{state="connected"} 1.0' in text and 'msghub_amqp_state{state="down"} 0.0' in text
    assert "msghub_amqp_unconfirmed 0.0" in text
    assert "msghub_amqp_confirm_seconds_count 1.0" in text  # one batch, settled at once
    h.reactor.advance(amqp_dispatch.NACK_BACKOFF_MIN)
    text = generate_latest(registry).decode()
    assert "msghub_amqp_unconfirmed 1.0" in text  # the nacked message, published again after the back-off


def test_a_route_logs_one_line_when_it_starts_spooling_and_one_when_drained(logged):
    h = Harness().start(connect=False)
    a = spool_while_down(h, 3)
    spool_while_down(h, 2)  # still spooling: no second line
    h.broker.connect()
    h.broker.ack(5, multiple=True)
    assert not h.sink.spooling and a
    assert len([line for line in logged if ": spooling;" in line]) == 1
    assert len([line for line in logged if ": spool drained;" in line]) == 1
