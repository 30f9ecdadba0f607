"""The compact port as a protocol over a StringTransport: acks, errors, ordering, limits."""

from msghub.compact import Ack, Error, Fatal, Ids, ReplyReader
from msghub.config import LimitsConfig, RouteConfig
from msghub.ingress.compact import CompactIngress

from fakes import TOKEN, connect, make_hub

AUTH = b"H:Authorization: Bearer " + TOKEN + b"\r\n"


def replies(transport) -> list:
    events = ReplyReader().feed(transport.value())
    transport.clear()
    return events


def test_discard_route_is_acked_once_per_read():
    hub = make_hub()
    p, t = connect(CompactIngress, hub)
    p.dataReceived(b"B:/open/\r\n" + b"+:x 3\r\nabc" * 100)
    assert replies(t) == [Ack(100)]
    assert hub.stats.accepted[hub.router.routes[1].name] == {"compact": 100}


def test_ack_waits_for_spool_commit():
    hub = make_hub()
    p, t = connect(CompactIngress, hub)
    p.dataReceived(AUTH + b"+:/quotes/A 2\r\nhi+:/quotes/B 2\r\nho")
    assert t.value() == b""
    (name, messages, d), = hub.spool.appends
    assert name == "quotes" and [m.captures["symbol"] for m in messages] == ["A", "B"]
    d.callback(None)
    assert replies(t) == [Ack(2)]


def test_later_batch_is_not_acked_before_earlier_one():
    hub = make_hub()
    p, t = connect(CompactIngress, hub)
    p.dataReceived(AUTH + b"+:/quotes/A 1\r\n1")
    p.dataReceived(b"B:/open/\r\n+:x 1\r\n2")  # discard: safe at once, but behind request 1
    assert t.value() == b""
    hub.spool.commit_all()
    assert replies(t) == [Ack(2)]


def test_errors_come_before_the_ack_that_covers_them():
    hub = make_hub()
    p, t = connect(CompactIngress, hub)
    p.dataReceived(b"+:/nowhere 1\r\nx+:/quotes/A 1\r\nx+:/open/o 1\r\nx-:/open/o\r\n")
    assert replies(t) == [
        Error(1, 404, "no route"),
        Error(2, 401, "credentials required"),
        Error(4, 405, "method not allowed"),
        Ack(4),
    ]
    assert hub.stats.rejections == {("compact", 404): 1, ("compact", 401): 1, ("compact", 405): 1}


def test_spool_failure_answers_503_for_those_messages_only():
    from msghub.sink import SinkError

    hub = make_hub()
    p, t = connect(CompactIngress, hub)
    p.dataReceived(AUTH + b"+:/quotes/A 1\r\nx+:/open/o 1\r\nx")
    hub.spool.appends[0][2].errback(SinkError(503, "spool write failed"))
    assert replies(t) == [Error(1, 503, "spool write failed"), Ack(2)]


def test_garbage_gets_x_line_after_earlier_requests_are_answered():
    hub = make_hub()
    p, t = connect(CompactIngress, hub)
    p.dataReceived(b"B:/open/\r\n+:x 1\r\nxQ:what\r\n+:x 1\r\ny")
    assert replies(t) == [Ack(1), Fatal(400, "unknown opcode 'Q:'")]
    assert t.disconnecting
    p.dataReceived(b"+:x 1\r\nz")  # ignored after the fatal error
    assert t.value() == b""


def test_unknown_register_is_fatal_for_that_connection_only():
    hub = make_hub()
    p1, t1 = connect(CompactIngress, hub)
    p2, t2 = connect(CompactIngress, hub)
    p1.dataReceived(b"<:nope\r\n")
    p2.dataReceived(b"B:/open/\r\n+:x 1\r\nx")
    assert replies(t1) == [Fatal(400, "unknown register (4 bytes)")]
    assert replies(t2) == [Ack(1)]
    assert not t2.disconnecting


def test_body_over_limit_is_413_and_the_stream_goes_on():
    hub = make_hub(limits=LimitsConfig(max_body=4))
    p, t = connect(CompactIngress, hub)
    p.dataReceived(b"B:/open/\r\n+:x 5\r\n12345+:x 1\r\nx")
    assert replies(t) == [Error(1, 413, "body too large"), Ack(2)]


def test_one_byte_at_a_time_gives_the_same_acks():
    hub = make_hub()
    p, t = connect(CompactIngress, hub)
    stream = b"B:/open/\r\n" + b"+:x 3\r\nabc" * 5
    for i in range(len(stream)):
        p.dataReceived(stream[i : i + 1])
    acks = [e for e in replies(t) if isinstance(e, Ack)]
    assert acks[-1] == Ack(5)


def test_reading_pauses_above_max_inflight_and_resumes():
    hub = make_hub(limits=LimitsConfig(max_inflight=3))
    p, t = connect(CompactIngress, hub)
    p.dataReceived(AUTH + b"+:/quotes/A 1\r\nx" * 5)
    assert t.producerState == "paused"
    hub.spool.commit_all()
    assert t.producerState == "producing"
    assert replies(t) == [Ack(5)]


def test_connection_counts_are_kept():
    hub = make_hub()
    p, t = connect(CompactIngress, hub)
    assert hub.stats.connections["compact"] == 1
    p.connectionLost(None)
    assert hub.stats.connections["compact"] == 0


def test_messages_carry_unique_ids_and_the_shared_state():
    hub = make_hub()
    p, t = connect(CompactIngress, hub)
    p.dataReceived(AUTH + b"+:/quotes/A 1\r\nx+:/quotes/A 1\r\ny")
    messages = hub.spool.appends[0][1]
    assert messages[0].id != messages[1].id
    assert messages[0].headers is messages[1].headers  # one header block per state, shared
    assert messages[0].user == "feed"


def test_drain_answers_in_flight_then_says_shutting_down():
    hub = make_hub()
    p, t = connect(CompactIngress, hub)
    p.dataReceived(AUTH + b"+:/quotes/A 1\r\nx")
    p.drain()
    assert t.producerState == "paused" and not t.disconnecting
    p.dataReceived(b"+:/quotes/A 1\r\ny")  # read before the pause took effect: ignored, never acked
    hub.spool.commit_all()
    assert replies(t) == [Ack(1), Fatal(503, "hub shutting down")]
    assert t.disconnecting


def test_idle_timeout_says_408_but_not_while_answers_are_owed():
    hub = make_hub(limits=LimitsConfig(idle_timeout=10))
    p, t = connect(CompactIngress, hub)
    p.dataReceived(AUTH + b"+:/quotes/A 1\r\nx")
    hub.reactor.advance(11)  # the spool has not committed: we owe the answer, stay open
    assert not t.disconnecting
    hub.spool.commit_all()
    hub.reactor.advance(11)
    assert replies(t) == [Ack(1), Fatal(408, "idle timeout")]
    assert t.disconnecting


def test_idle_timeout_counts_from_the_last_read_however_many_came_before():
    hub = make_hub(limits=LimitsConfig(idle_timeout=10))
    p, t = connect(CompactIngress, hub)
    for _ in range(3):  # reads at 4, 8 and 12: the timer armed at 0 fires at 10 and waits on
        hub.reactor.advance(4)
        p.dataReceived(b"B:/open/\r\n+:x 1\r\ny")
    assert replies(t) == [Ack(1), Ack(2), Ack(3)]
    hub.reactor.advance(9.5)
    assert not t.disconnecting
    hub.reactor.advance(0.5)  # exactly 10 s after the last read
    assert replies(t) == [Fatal(408, "idle timeout")]
    assert t.disconnecting


def test_password_check_holds_only_that_connection_until_a_worker_has_hashed_it():
    import base64

    from twisted.internet.defer import Deferred

    from msghub.auth import hash_password
    from msghub.config import RouteConfig, User

    users = {"pw": User("pw", password=hash_password("open sesame", n=16, r=1, p=1))}
    routes = (RouteConfig(name="pw", match="/pw/{x}", users=("pw",), discard=True),
              RouteConfig(name="open", match="/open/{x}", discard=True))
    hub = make_hub(routes=routes)
    hub.authenticator.__init__(users)
    jobs = []

    def run_in_thread(f, *args):
        d = Deferred()
        jobs.append((d, f, args))
        return d

    hub.verifier.run_in_thread = run_in_thread
    slow, slow_t = connect(CompactIngress, hub)
    other, other_t = connect(CompactIngress, hub)
    basic = base64.b64encode(b"pw:open sesame")
    slow.dataReceived(b"B:/open/\r\n+:a 1\r\n1H:Authorization: Basic " + basic + b"\r\nB:/pw/\r\n+:b 1\r\n2")
    assert replies(slow_t) == [Ack(1)] and slow_t.producerState == "paused"
    slow.dataReceived(b"+:c 1\r\n3")  # arrived before the pause: queued behind request 2
    other.dataReceived(b"B:/open/\r\n+:x 1\r\nx")
    assert replies(other_t) == [Ack(1)]  # not held up by the hash
    (d, f, args), = jobs
    d.callback(f(*args))
    assert replies(slow_t)[-1] == Ack(3)
    assert slow_t.producerState == "producing"
    slow.dataReceived(b"+:d 1\r\n4")  # cached now: no second hash
    assert replies(slow_t) == [Ack(4)] and len(jobs) == 1


def test_alternating_get_and_post_on_one_target_hit_the_decision_cache():
    routes = (RouteConfig(name="both", match="/both/{name}", methods=(b"GET", b"POST"), discard=True),)
    hub = make_hub(routes)
    p, t = connect(CompactIngress, hub)
    p.dataReceived(b"B:/both/\r\n" + b"-:x\r\n+:x 1\r\n1" * 50)
    p.dataReceived(b"-:x\r\n+:x 1\r\n1" * 50)
    assert replies(t) == [Ack(100), Ack(200)]
    assert p.cache.misses == 2  # one per method, then 198 hits
    assert hub.stats.decision_hits == 198


def test_no_read_size_or_offset_turns_valid_requests_into_a_refusal():
    # As on the plain port: limits bound a line or a head, never the bytes of one read,
    # wherever in the stream a read begins.
    opening = b"H:Content-Type: application/x-opra-quote\r\nB:/open/\r\n"
    one = b"+:x 67\r\n" + b"q" * 67
    for size in (1, 7, 64, 1000, 25_601, 65_536, 262_144):
        count = min(4_000, 3 * size // len(one) + 20)
        stream = opening + one * count
        for offset in range(len(opening) + len(one) + 1):
            hub = make_hub()
            p, t = connect(CompactIngress, hub)
            p.dataReceived(stream[:offset])
            for i in range(offset, len(stream), size):
                p.dataReceived(stream[i : i + size])
            events = replies(t)
            assert events and all(isinstance(e, Ack) for e in events), (size, offset, events[-3:])
            assert events[-1] == Ack(count), (size, offset, events[-1])
            assert not t.disconnecting, (size, offset)


def test_a_bug_in_our_decoder_is_answered_x500_logged_and_counted_apart_from_peer_errors(monkeypatch):
    hub = make_hub()
    p, t = connect(CompactIngress, hub)
    errors = []
    monkeypatch.setattr("msghub.ingress.base.log.failure", lambda fmt, failure=None, **kw: errors.append(failure))

    def broken(data):
        raise KeyError("bug")

    monkeypatch.setattr(p.decoder, "feed", broken)
    p.dataReceived(b"+:/open/x 1\r\nx")
    assert replies(t) == [Fatal(500, "internal error")]
    assert t.disconnecting
    assert [f.type for f in errors] == [KeyError]
    assert hub.stats.internal_errors == {"compact": 1}
    assert hub.stats.rejections == {}


def test_a_bug_while_routing_answers_what_came_before_then_x500(monkeypatch):
    hub = make_hub()
    p, t = connect(CompactIngress, hub)
    errors = []
    monkeypatch.setattr("msghub.ingress.base.log.failure", lambda fmt, failure=None, **kw: errors.append(failure))
    p.dataReceived(b"+:/open/x 1\r\nx")
    assert replies(t) == [Ack(1)]

    def broken(*args):
        raise KeyError("bug")

    monkeypatch.setattr("msghub.router.DecisionCache.decide", broken)
    p.dataReceived(b"+:/open/other 1\r\nx")
    assert replies(t) == [Fatal(500, "internal error")]
    assert t.disconnecting
    assert [f.type for f in errors] == [KeyError]
    assert hub.stats.internal_errors == {"compact": 1}


def test_message_ids_are_sent_per_batch_once_asked_for_and_match_the_messages():
    from msghub.message import format_id

    hub = make_hub()
    p, t = connect(CompactIngress, hub)
    p.dataReceived(b"+:/open/x 1\r\nx")
    assert replies(t) == [Ack(1)]  # not asked for: no I: line
    p.dataReceived(b"O:message-ids\r\nH:Authorization: Bearer " + TOKEN + b"\r\n+:/quotes/a 1\r\na-:/nowhere\r\n+:/quotes/b 1\r\nb")
    hub.spool.commit_all()
    got = replies(t)
    assert [type(r) for r in got] == [Ids, Error, Ack]
    spooled = [format_id(m.id) for _, messages, _ in hub.spool.appends for m in messages]
    assert got[0].number == 2 and [got[0].id_of(2), got[0].id_of(4)] == spooled


def test_message_ids_name_only_the_requests_after_the_option_line():
    # The batch's first request came before O:message-ids: it used to be the one the I: line named.
    hub = make_hub()
    p, t = connect(CompactIngress, hub)
    p.dataReceived(b"+:/open/x 1\r\nxO:message-ids\r\n+:/open/y 1\r\ny+:/open/z 1\r\nz")
    got = replies(t)
    assert [type(r) for r in got] == [Ids, Ack] and got[0].number == 2 and got[1].number == 3
    p.dataReceived(b"+:/open/x 1\r\nxO:message-ids\r\n")  # asked again: changes nothing
    assert [(type(r), r.number) for r in replies(t)] == [(Ids, 4), (Ack, 4)]


def test_an_option_line_after_the_last_request_of_a_read_names_none_of_them():
    hub = make_hub()
    p, t = connect(CompactIngress, hub)
    p.dataReceived(b"+:/open/x 1\r\nxO:message-ids\r\n")
    assert replies(t) == [Ack(1)]
    p.dataReceived(b"+:/open/x 1\r\nx")
    assert [(type(r), r.number) for r in replies(t)] == [(Ids, 2), (Ack, 2)]


def test_an_unknown_option_is_x400_naming_only_its_length():
    hub = make_hub()
    p, t = connect(CompactIngress, hub)
    p.dataReceived(b"O:secret-stuff\r\n")
    assert replies(t) == [Fatal(400, "unknown option (12 bytes)")]


def test_compact_line_dribbled_gets_x408_but_state_lines_then_a_late_request_do_not():
    hub = make_hub(limits=LimitsConfig(head_timeout=30, idle_timeout=300))
    p, t = connect(CompactIngress, hub)
    p.dataReceived(b"H:Content-Type: text/plain\r\n")
    hub.reactor.advance(100)  # a producer may set its state long before its first request
    p.dataReceived(b"+:/open/x 1\r\nx")
    assert replies(t) == [Ack(1)]
    for byte in b"H:X-Slow: a long value":
        hub.reactor.advance(2)
        p.dataReceived(bytes([byte]))
        if t.disconnecting:
            break
    assert replies(t) == [Fatal(408, "request head not complete within 30 s")]


def test_compact_body_stalled_gets_x408():
    hub = make_hub(limits=LimitsConfig(body_timeout=60))
    p, t = connect(CompactIngress, hub)
    p.dataReceived(b"+:/open/x 10\r\nabc")
    hub.reactor.advance(59)
    p.dataReceived(b"d")
    hub.reactor.advance(59)
    assert replies(t) == [] and not t.disconnecting
    hub.reactor.advance(2)
    assert replies(t) == [Fatal(408, "request body stalled within 60 s")]


def test_a_version_the_hub_does_not_serve_is_e505_per_request_as_on_the_plain_port():
    hub = make_hub()
    p, t = connect(CompactIngress, hub)
    p.dataReceived(b"V:HTTP/2.0\r\n+:/open/x 1\r\nxV:HTTP/1.0\r\n+:/open/y 1\r\ny")
    assert replies(t) == [Error(1, 505, "HTTP version not supported"), Ack(2)]
