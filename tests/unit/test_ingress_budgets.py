"""Byte budgets and backpressure of both ingress ports, over StringTransports.

The StringTransport never pauses its producer by itself, so a test calls
``pauseProducing``/``resumeProducing`` on the protocol as a TCP transport
would when its write buffer fills up and when it has drained.
"""

from msghub.compact import Ack, Error, ReplyReader
from msghub.config import LimitsConfig
from msghub.ingress.base import MESSAGE_OVERHEAD
from msghub.ingress.compact import CompactIngress
from msghub.ingress.http import HttpIngress

from fakes import TOKEN, connect, make_hub

AUTH = b"H:Authorization: Bearer " + TOKEN + b"\r\n"
QUOTE = b"+:/quotes/A 1\r\nx"  # to the spool: held until the (fake) commit
NOWHERE = b"+:/nowhere 1\r\nx"  # answered at once with E:n 404


def replies(transport) -> list:
    events = ReplyReader().feed(transport.value())
    transport.clear()
    return events


def test_protocol_is_its_transports_streaming_producer():
    p, t = connect(CompactIngress, make_hub())
    assert t.producer is p and t.streaming


def test_peer_not_reading_answers_stops_reading_until_the_buffer_drains():
    p, t = connect(CompactIngress, make_hub())
    p.dataReceived(NOWHERE * 3)
    p.pauseProducing()  # the transport's write buffer is full
    assert t.producerState == "paused"
    p.resumeProducing()  # ... and now empty
    assert t.producerState == "producing"


def test_answers_written_while_the_buffer_is_full_count_against_the_hub_budget():
    hub = make_hub()
    p, t = connect(CompactIngress, hub)
    p.pauseProducing()
    p.dataReceived(NOWHERE * 10)  # read before the pause took effect
    written = len(t.value())
    assert p.unsent == written and hub.ingress.budget.used == written
    p.resumeProducing()
    assert p.unsent == 0 and hub.ingress.budget.used == 0
    assert [e.number for e in replies(t) if isinstance(e, Error)] == list(range(1, 11))


def test_connection_over_its_byte_budget_stops_reading_until_answered():
    hub = make_hub(limits=LimitsConfig(max_connection_bytes=20 * MESSAGE_OVERHEAD))
    p, t = connect(CompactIngress, hub)
    p.dataReceived(AUTH + QUOTE * 10)
    assert t.producerState == "producing"  # 10 messages: within the budget
    p.dataReceived(QUOTE * 15)
    assert t.producerState == "paused"
    assert hub.ingress.budget.used == p.held_bytes > 20 * MESSAGE_OVERHEAD
    hub.spool.commit_all()  # the sink says "safe": the batches are answered
    assert replies(t)[-1] == Ack(25)
    assert t.producerState == "producing"
    assert p.held_bytes == 0 and hub.ingress.budget.used == 0


def test_a_request_larger_than_the_budget_still_gets_through():
    # Bytes of a request in progress are held by no batch: nothing would free
    # them, so they never stop reading (max_body bounds them).
    hub = make_hub(limits=LimitsConfig(max_connection_bytes=100, max_inflight_bytes=100))
    p, t = connect(CompactIngress, hub)
    p.dataReceived(AUTH + b"+:/quotes/A 1000\r\n")
    for _ in range(9):
        p.dataReceived(b"x" * 100)
        assert t.producerState == "producing"
    p.dataReceived(b"x" * 100)  # complete: now a batch holds it, over both budgets
    assert t.producerState == "paused"
    (_, messages, d), = hub.spool.appends
    d.callback(None)
    assert replies(t) == [Ack(1)] and hub.ingress.budget.used == 0
    assert t.producerState == "producing"


def test_hub_budget_stops_every_connection_that_adds_to_it_and_wakes_them_at_half():
    hub = make_hub(limits=LimitsConfig(max_connection_bytes=30 * MESSAGE_OVERHEAD, max_inflight_bytes=30 * MESSAGE_OVERHEAD))
    first, first_t = connect(CompactIngress, hub)
    second, second_t = connect(CompactIngress, hub)
    idle, idle_t = connect(CompactIngress, hub)
    first.dataReceived(AUTH + QUOTE * 20)
    assert first_t.producerState == "producing"  # within both budgets
    second.dataReceived(AUTH + QUOTE * 20)  # its own budget is fine; the hub's is not
    assert second_t.producerState == "paused" and first_t.producerState == "producing"
    first.dataReceived(QUOTE)
    assert first_t.producerState == "paused"
    assert idle_t.producerState == "producing"  # it added nothing
    assert hub.ingress.budget.waiting == {first, second}
    hub.spool.appends[0][2].callback(None)  # the first batch: still over half
    assert first_t.producerState == "paused" and second_t.producerState == "paused"
    hub.spool.commit_all()
    assert first_t.producerState == "producing" and second_t.producerState == "producing"
    assert replies(first_t)[-1] == Ack(21) and replies(second_t)[-1] == Ack(20)
    assert hub.ingress.budget.used == 0 and not hub.ingress.budget.waiting


def test_lost_connection_releases_unsent_answers_and_later_its_batches():
    hub = make_hub()
    p, t = connect(CompactIngress, hub)
    p.dataReceived(AUTH + QUOTE * 3)
    p.pauseProducing()
    p.dataReceived(NOWHERE)  # no answer yet: it waits behind the quotes
    held = p.held_bytes
    hub.spool.commit_all()  # answers all four while the buffer is full
    unsent = p.unsent
    assert unsent > 0 and hub.ingress.budget.used == unsent
    p.connectionLost()
    assert hub.ingress.budget.used == 0
    p2, _ = connect(CompactIngress, hub)
    p2.dataReceived(AUTH + QUOTE)
    assert hub.ingress.budget.used == p2.held_bytes > 0 and held > 0
    p2.connectionLost()
    hub.spool.commit_all()  # the sink lets go after the loss
    assert hub.ingress.budget.used == 0


def test_close_unregisters_the_producer_so_the_transport_can_close():
    p, t = connect(CompactIngress, make_hub())
    p.dataReceived(NOWHERE)
    p.pauseProducing()
    p.readConnectionLost()
    assert t.producer is None and t.disconnecting


def test_peer_that_never_reads_its_answers_is_aborted_after_idle_timeout():
    hub = make_hub(limits=LimitsConfig(idle_timeout=10))
    p, t = connect(CompactIngress, hub)
    p.dataReceived(NOWHERE)
    p.pauseProducing()
    hub.reactor.advance(10)
    assert t.disconnected  # abortConnection: a graceful close would wait forever


def test_draining_answers_reset_the_idle_timer():
    hub = make_hub(limits=LimitsConfig(idle_timeout=10))
    p, t = connect(CompactIngress, hub)
    p.dataReceived(NOWHERE)
    p.pauseProducing()
    hub.reactor.advance(9)
    p.resumeProducing()
    hub.reactor.advance(9)
    assert not t.disconnecting


def test_http_pipelined_404s_to_a_peer_not_reading_stop_reading():
    hub = make_hub()
    p, t = connect(HttpIngress, hub)
    request = b"POST /nowhere HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx"
    p.dataReceived(request * 100)
    assert t.value().count(b"404 Not Found") == 100
    p.pauseProducing()
    assert t.producerState == "paused"
    p.dataReceived(request * 100)  # already in flight: answered and counted
    assert p.unsent > 0 and hub.ingress.budget.used == p.unsent
    p.resumeProducing()
    assert t.producerState == "producing" and hub.ingress.budget.used == 0


def test_http_connection_over_its_byte_budget_stops_reading_until_the_spool_commits():
    hub = make_hub(limits=LimitsConfig(max_connection_bytes=10 * MESSAGE_OVERHEAD))
    p, t = connect(HttpIngress, hub)
    auth = b"Authorization: Bearer " + TOKEN + b"\r\n"
    request = b"POST /quotes/A HTTP/1.1\r\nHost: h\r\n" + auth + b"Content-Length: 1\r\n\r\nx"
    p.dataReceived(request * 20)
    assert t.producerState == "paused"
    hub.spool.commit_all()
    assert t.value().count(b"202 Accepted") == 20
    assert t.producerState == "producing" and hub.ingress.budget.used == 0


def test_a_read_answered_at_once_does_not_stop_reading_even_over_the_budget():
    # Discard answers in the same turn: its bytes are freed before the check,
    # so the hot path never stops and restarts reading.
    hub = make_hub(limits=LimitsConfig(max_connection_bytes=MESSAGE_OVERHEAD, max_inflight_bytes=MESSAGE_OVERHEAD))
    p, t = connect(CompactIngress, hub)
    pauses = []
    t.pauseProducing = lambda: pauses.append(True)
    p.dataReceived(b"B:/open/\r\n" + b"+:x 3\r\nabc" * 100)
    assert replies(t) == [Ack(100)]
    assert not pauses and p.reading and hub.ingress.budget.used == 0
