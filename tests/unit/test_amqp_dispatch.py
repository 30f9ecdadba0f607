"""The AMQP dispatcher draining a route's spool, without sockets (fakes in ``amqp_fakes.py``)."""

from __future__ import annotations

from amqp_fakes import SPOOL, Harness, ids
from msghub.forward import amqp_dispatch
from msghub.message import Message


def backlog(h: Harness, sizes: list[int]) -> list[Message]:
    """Segments of ``sizes`` messages left in the spool by an earlier run, oldest first."""
    out = []
    for n in sizes:
        messages = h.messages(n)
        h.spool.append(SPOOL, messages)
        h.spool.commit()
        out += messages
    return out


def test_the_next_segments_are_read_while_the_published_ones_wait_for_their_confirms():
    h = Harness(confirm_window=4)
    spooled = backlog(h, [2, 2, 2, 2])
    h.start()
    assert h.broker.published_ids() == ids(spooled[:4])
    assert h.sink.dispatcher.buffered == 4  # read ahead before any confirm came
    reads = len(h.spool.reads)
    h.broker.ack(2, multiple=True)
    # Published at once from what was read ahead, not after another read.
    assert h.broker.published_ids() == ids(spooled[4:6])
    assert all(after == 4 for after, _, _ in h.spool.reads[reads:])  # a later read only looks further on


def test_a_segment_larger_than_the_window_is_cut_to_fit_it():
    h = Harness(confirm_window=4)
    spooled = backlog(h, [10])
    h.start()
    assert h.broker.published_ids() == ids(spooled[:4])
    assert h.forwarder.window.unconfirmed == 4
    h.broker.ack(3, multiple=True)
    assert h.broker.published_ids() == ids(spooled[4:7])
    assert h.forwarder.window.unconfirmed == 4


def test_a_segment_published_in_several_batches_is_marked_done_once_when_all_are_confirmed():
    h = Harness(confirm_window=4)
    spooled = backlog(h, [10])
    h.start()
    for upto in (4, 8):
        h.broker.published()
        h.broker.ack(upto, multiple=True)
        assert h.spool.dones == []  # no partial update of the segment's row
    h.broker.published()
    h.broker.ack(10, multiple=True)
    assert len(h.spool.dones) == 1 and len(h.spool.dones[0]) == 10
    assert h.spool.ids() == [] and h.spool.deleted == [m.id for m in spooled]
    h.reactor.advance(1.0)
    assert not h.sink.spooling


def test_a_nack_waits_for_the_batches_in_flight_then_publishes_again_from_the_nacked_message():
    h = Harness(confirm_window=2)
    spooled = backlog(h, [2, 2, 2])
    h.start()
    assert h.broker.published_ids() == ids(spooled[:2])  # tags 1-2: the first segment
    h.broker.ack(1)
    assert h.broker.published_ids() == ids(spooled[2:3])  # tag 3
    h.broker.nack(2)
    assert h.sink.dispatcher.state == amqp_dispatch.REWINDING
    assert h.broker.published() == []  # tag 3 is still in flight: nothing read back yet
    h.broker.ack(3)
    assert h.broker.published() == []  # the broker refused: back off before offering it again
    h.reactor.advance(amqp_dispatch.NACK_BACKOFF_MIN)
    # Everything else was confirmed and marked done first, so only the nacked one comes back, then the rest.
    assert h.broker.published_ids() == ids([spooled[1], spooled[3]])
    h.broker.ack(5, multiple=True)
    assert h.broker.published_ids() == ids(spooled[4:6])
    h.broker.ack(7, multiple=True)
    assert h.spool.ids() == []
    assert sorted(h.spool.deleted) == [m.id for m in spooled]


def test_the_confirmed_part_of_a_batch_is_done_when_the_connection_drops():
    h = Harness()
    spooled = backlog(h, [3])
    h.start()
    assert h.broker.published_ids() == ids(spooled)
    h.broker.ack(1)
    h.broker.lose()
    assert h.spool.ids() == [m.id for m in spooled[1:]]
    h.reactor.advance(3.0)
    h.broker.connect()
    assert h.broker.published_ids() == ids(spooled[1:])


def test_read_ahead_and_publishes_in_flight_are_bounded_in_bytes(monkeypatch):
    monkeypatch.setattr(amqp_dispatch, "INFLIGHT_MAX_BYTES", 20)
    h = Harness()
    h.sink.dispatcher.read_bytes = h.spool.read_bytes = 30
    spooled = backlog(h, [2] * 10)  # bodies of 6 bytes: 12 per segment
    h.start()
    published = h.broker.published_ids()
    assert published == ids(spooled[:3])  # 18 bytes in flight; a fourth would pass 20
    d = h.sink.dispatcher
    assert d.inflight_bytes == 18
    assert 0 < d.buffered_bytes <= 30 + 12  # one read's bound and at most one segment beyond
    assert all(max_bytes == 30 for _, _, max_bytes in h.spool.reads)
    h.broker.ack(3, multiple=True)
    assert h.broker.published_ids() == ids(spooled[3:6])


def test_nothing_more_is_dispatched_while_the_hub_stops():
    h = Harness(confirm_window=2)
    spooled = backlog(h, [4])
    h.start()
    assert h.broker.published_ids() == ids(spooled[:2])
    stopped = h.forwarder.stopService()
    h.broker.ack(2, multiple=True)
    assert h.broker.published() == []  # the rest stays in the spool for the next run
    h.reactor.advance(0.1)
    # What was confirmed of the partly published segment is marked before the spool closes.
    assert h.spool.ids() == [m.id for m in spooled[2:]]
    h.broker.lose()
    assert stopped.called


def test_repeated_nacks_back_off_doubling_up_to_the_cap_and_a_confirmed_batch_resets_it():
    h = Harness()
    spooled = backlog(h, [1])
    h.start()
    dispatcher = h.sink.dispatcher
    waits = []
    tag = 1
    for _ in range(8):  # a broker that keeps refusing (a full reject-publish queue)
        assert h.broker.published_ids() == ids(spooled)
        h.broker.nack(tag)
        tag += 1
        waits.append(dispatcher.backoff)
        h.reactor.advance(dispatcher.backoff * 0.99)
        assert h.broker.published() == []  # not before its time
        h.reactor.advance(dispatcher.backoff * 0.02)
    assert waits == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert h.broker.published_ids() == ids(spooled)
    h.broker.ack(tag)
    assert dispatcher.backoff == 0.0 and h.spool.ids() == []


def test_a_stop_while_backing_off_leaves_nothing_scheduled():
    h = Harness()
    spooled = backlog(h, [1])
    h.start()
    assert h.broker.published_ids() == ids(spooled)
    h.broker.nack(1)
    h.sink.dispatcher.pump()  # arms the resume
    h.forwarder.stopService()
    h.reactor.advance(60)
    assert h.broker.published() == []
    assert [c for c in h.reactor.getDelayedCalls() if c.func == h.sink.dispatcher.pump] == []

