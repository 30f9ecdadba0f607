"""The plain HTTP/1.1 port as a protocol over a StringTransport."""

import httptools

from msghub.config import LimitsConfig
from msghub.ingress.http import HttpIngress

from fakes import TOKEN, connect, make_hub


def responses(transport) -> list[tuple[int, dict, bytes]]:
    """Parse the responses written so far: (status, headers, body)."""
    out = []

    class Collector:
        def on_message_begin(self):
            self.headers, self.body = {}, b""

        def on_header(self, name, value):
            self.headers[name.decode().lower()] = value.decode()

        def on_body(self, body):
            self.body += body

        def on_message_complete(self):
            out.append((parser.get_status_code(), self.headers, self.body))

    parser = httptools.HttpResponseParser(Collector())
    parser.feed_data(transport.value())
    transport.clear()
    return out


def post(path: bytes, body: bytes = b"x", headers: bytes = b"") -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: h\r\n%sContent-Length: %d\r\n\r\n%s" % (path, headers, len(body), body)


AUTH = b"Authorization: Bearer " + TOKEN + b"\r\n"


def test_pipelined_requests_are_answered_in_order():
    hub = make_hub()
    p, t = connect(HttpIngress, hub)
    p.dataReceived(post(b"/open/a") + post(b"/nowhere") + post(b"/open/b"))
    assert [r[0] for r in responses(t)] == [202, 404, 202]
    assert not t.disconnecting


def test_202_only_after_the_spool_commit():
    hub = make_hub()
    p, t = connect(HttpIngress, hub)
    p.dataReceived(post(b"/quotes/A", headers=AUTH))
    assert t.value() == b""
    hub.spool.commit_all()
    assert [r[0] for r in responses(t)] == [202]


def test_identical_header_blocks_share_one_state():
    hub = make_hub()
    p, t = connect(HttpIngress, hub)
    p.dataReceived(post(b"/quotes/A", b"1", AUTH) + post(b"/quotes/B", b"22", AUTH))
    first, second = hub.spool.appends[0][1]
    assert first.headers is second.headers
    assert first.body == b"1" and second.body == b"22"
    assert dict(first.headers) == {b"Host": b"h", b"Authorization": b"Bearer " + TOKEN}


def test_401_has_www_authenticate_and_403_for_wrong_user():
    hub = make_hub()
    p, t = connect(HttpIngress, hub)
    p.dataReceived(post(b"/quotes/A") + post(b"/quotes/A", headers=b"Authorization: Bearer other-token\r\n"))
    (s1, h1, _), (s2, _, _) = responses(t)
    assert (s1, s2) == (401, 403)
    assert "bearer" in h1["www-authenticate"].lower()


def test_405_carries_allow():
    hub = make_hub()
    p, t = connect(HttpIngress, hub)
    p.dataReceived(b"GET /open/a HTTP/1.1\r\nHost: h\r\n\r\n")
    ((status, headers, _),) = responses(t)
    assert status == 405 and headers["allow"] == "POST, PUT"


def test_malformed_request_is_400_and_close():
    hub = make_hub()
    p, t = connect(HttpIngress, hub)
    p.dataReceived(post(b"/open/a") + b"NOT HTTP AT ALL\r\n\r\n")
    statuses = [r[0] for r in responses(t)]
    assert statuses == [202, 400]
    assert t.disconnecting


def test_oversize_body_is_413_and_close():
    hub = make_hub(limits=LimitsConfig(max_body=10))
    p, t = connect(HttpIngress, hub)
    p.dataReceived(post(b"/open/a", b"x" * 11))
    assert [r[0] for r in responses(t)] == [413]
    assert t.disconnecting


def test_oversize_headers_is_431():
    hub = make_hub(limits=LimitsConfig(max_header_bytes=100))
    p, t = connect(HttpIngress, hub)
    p.dataReceived(post(b"/open/a", headers=b"X-Big: " + b"y" * 200 + b"\r\n"))
    assert [r[0] for r in responses(t)] == [431]


def test_chunked_body_is_accepted():
    hub = make_hub()
    p, t = connect(HttpIngress, hub)
    p.dataReceived(b"POST /open/a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    assert [r[0] for r in responses(t)] == [202]


def test_http10_without_keep_alive_closes_after_answer():
    hub = make_hub()
    p, t = connect(HttpIngress, hub)
    p.dataReceived(b"POST /open/a HTTP/1.0\r\nContent-Length: 1\r\n\r\nx")
    ((status, headers, _),) = responses(t)
    assert status == 202 and headers["connection"] == "close"
    assert t.disconnecting


def test_connection_close_stops_reading_further_requests():
    hub = make_hub()
    p, t = connect(HttpIngress, hub)
    p.dataReceived(post(b"/open/a", headers=b"Connection: close\r\n") + post(b"/open/b"))
    assert [r[0] for r in responses(t)] == [202]
    assert t.disconnecting


def test_split_at_every_byte():
    hub = make_hub()
    p, t = connect(HttpIngress, hub)
    data = post(b"/open/a", b"hello") * 3
    for i in range(len(data)):
        p.dataReceived(data[i : i + 1])
    assert [r[0] for r in responses(t)] == [202, 202, 202]


def test_upgrade_is_declined_and_the_request_routed_as_http11():
    hub = make_hub()
    p, t = connect(HttpIngress, hub)
    p.dataReceived(b"GET /open/a HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    assert [r[0] for r in responses(t)] == [405]  # the route takes POST; no 101, no 400
    assert not t.disconnecting


def test_endless_header_line_is_refused_before_it_ends():
    hub = make_hub(limits=LimitsConfig(max_line=100, max_header_bytes=100))
    p, t = connect(HttpIngress, hub)
    p.dataReceived(b"POST /open/a HTTP/1.1\r\nX-Endless: ")
    for _ in range(10):
        p.dataReceived(b"y" * 200)
    assert [r[0] for r in responses(t)] == [431]
    assert t.disconnecting


def test_a_post_offering_h2c_upgrade_is_accepted_with_its_body():
    # curl --http2 http://... sends this; the body follows the head as usual.
    hub = make_hub()
    p, t = connect(HttpIngress, hub)
    upgrade = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
    p.dataReceived(post(b"/quotes/A", b"hello", headers=AUTH + upgrade) + post(b"/quotes/B", headers=AUTH))
    hub.spool.commit_all()
    assert [r[0] for r in responses(t)] == [202, 202]
    assert [m.body for _, messages, _ in hub.spool.appends for m in messages] == [b"hello", b"x"]


def test_upgrade_request_with_a_chunked_body_is_501_and_close():
    hub = make_hub()
    p, t = connect(HttpIngress, hub)
    p.dataReceived(b"POST /open/a HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert [r[0] for r in responses(t)] == [501]
    assert t.disconnecting


def test_half_closed_producer_still_gets_its_answers():
    hub = make_hub()
    p, t = connect(HttpIngress, hub)
    p.dataReceived(post(b"/quotes/A", headers=AUTH))
    p.readConnectionLost()
    assert not t.disconnecting
    hub.spool.commit_all()
    assert [r[0] for r in responses(t)] == [202]
    assert t.disconnecting


def test_idle_connection_is_closed_after_idle_timeout():
    hub = make_hub(limits=LimitsConfig(idle_timeout=30))
    p, t = connect(HttpIngress, hub)
    hub.reactor.advance(29)
    p.dataReceived(post(b"/open/a"))
    hub.reactor.advance(29)
    assert not t.disconnecting
    hub.reactor.advance(2)
    assert t.disconnecting


def test_large_read_that_finishes_a_head_and_pipelines_more_is_not_a_long_head():
    # One read ends inside a head; the next finishes it and carries far more
    # than a head's worth of further requests: all are answered, none is 431.
    hub = make_hub(limits=LimitsConfig(max_line=100, max_header_bytes=100))
    p, t = connect(HttpIngress, hub)
    stream = post(b"/open/a") * 500
    p.dataReceived(stream[:20])
    p.dataReceived(stream[20:])
    assert [r[0] for r in responses(t)] == [202] * 500
    assert not t.disconnecting


# Reads of every size class, each starting at every offset of the first request head: the head
# limits bound a head, never the bytes of one read (the probe's false 431 began mid-head in a read
# of more than max_line + max_header_bytes + 1024 bytes).
READ_SIZES = (1, 2, 7, 64, 1000, 4096, 25_599, 25_600, 25_601, 65_536, 262_144)


def test_no_read_size_or_offset_turns_valid_pipelined_requests_into_a_refusal():
    one = post(b"/open/a", b"q" * 67)
    head = one.index(b"\r\n\r\n") + 4
    for size in READ_SIZES:
        count = min(2_500, 3 * size // len(one) + 20)
        stream = one * count
        for offset in range(head + 1):
            hub = make_hub()
            p, t = connect(HttpIngress, hub)
            p.dataReceived(stream[:offset])
            for i in range(offset, len(stream), size):
                p.dataReceived(stream[i : i + size])
            statuses = [r[0] for r in responses(t)]
            assert statuses == [202] * count, (size, offset, [s for s in statuses if s != 202][:3])
            assert not t.disconnecting, (size, offset)


def test_a_bug_in_our_own_callback_is_answered_500_logged_and_counted_apart_from_peer_errors(monkeypatch):
    hub = make_hub()
    p, t = connect(HttpIngress, hub)
    errors = []
    monkeypatch.setattr("msghub.ingress.base.log.failure", lambda fmt, failure=None, **kw: errors.append(failure))

    class BrokenPush:  # push.match runs inside the parser's on_message_complete
        def match(self, target):
            raise KeyError("bug")

    p.push = BrokenPush()
    p.dataReceived(b"GET /open/a HTTP/1.1\r\nHost: h\r\n\r\n")
    ((status, headers, _),) = responses(t)
    assert status == 500 and headers["connection"] == "close"
    assert t.disconnecting
    assert [f.type for f in errors] == [KeyError]
    assert hub.stats.internal_errors == {"http": 1}
    assert hub.stats.rejections == {}


def test_garbage_from_the_peer_is_still_400_and_counted_as_a_rejection():
    hub = make_hub()
    p, t = connect(HttpIngress, hub)
    p.dataReceived(b"\x00\x01 nonsense\r\n\r\n")
    assert [r[0] for r in responses(t)] == [400]
    assert hub.stats.rejections == {("http", 400): 1}
    assert hub.stats.internal_errors == {}


def test_a_bug_while_routing_is_answered_500_and_close_after_what_came_before(monkeypatch):
    hub = make_hub()
    p, t = connect(HttpIngress, hub)
    errors = []
    monkeypatch.setattr("msghub.ingress.base.log.failure", lambda fmt, failure=None, **kw: errors.append(failure))
    p.dataReceived(post(b"/open/a"))

    def broken(*args):
        raise KeyError("bug")

    monkeypatch.setattr("msghub.router.DecisionCache.decide", broken)
    p.dataReceived(post(b"/open/other"))
    ((status, _, _), (status2, headers, _)) = responses(t)
    assert (status, status2, headers["connection"]) == (202, 500, "close")
    assert t.disconnecting
    assert [f.type for f in errors] == [KeyError]
    assert hub.stats.internal_errors == {"http": 1}


def test_connection_close_in_the_middle_of_a_read_is_answered_last_with_close():
    hub = make_hub()
    p, t = connect(HttpIngress, hub)
    p.dataReceived(post(b"/open/a") + post(b"/open/b", headers=b"Connection: close\r\n") + post(b"/open/c"))
    got = responses(t)
    assert [r[0] for r in got] == [202, 202]
    assert [r[1].get("connection") for r in got] == [None, "close"]
    assert t.disconnecting


def test_each_202_names_the_id_of_the_message_it_accepted():
    from msghub.message import format_id

    hub = make_hub()
    p, t = connect(HttpIngress, hub)
    p.dataReceived(post(b"/quotes/A", headers=AUTH) + post(b"/nowhere") + post(b"/quotes/B", headers=AUTH))
    hub.spool.commit_all()
    got = responses(t)
    assert [r[0] for r in got] == [202, 404, 202]
    spooled = [format_id(m.id) for _, messages, _ in hub.spool.appends for m in messages]
    assert [got[0][1]["message-id"], got[2][1]["message-id"]] == spooled
    assert len(set(spooled)) == 2 and "message-id" not in got[1][1]


def expect_head(path: bytes, headers: bytes = b"", length: int = 2_000_000, version: bytes = b"1.1") -> bytes:
    return b"POST %s HTTP/%s\r\nHost: h\r\n%sExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % (
        path, version, headers, length)


def test_expect_100_continue_gets_100_when_the_route_would_take_it():
    hub = make_hub()
    p, t = connect(HttpIngress, hub)
    p.dataReceived(expect_head(b"/open/a", length=5))
    assert t.value() == b"HTTP/1.1 100 Continue\r\n\r\n"
    t.clear()
    p.dataReceived(b"hello")
    assert [r[0] for r in responses(t)] == [202]
    assert not t.disconnecting


def test_expect_100_continue_is_answered_with_the_final_refusal_without_reading_the_body():
    hub = make_hub()
    for path, headers, status in [
        (b"/nowhere", b"", 404),
        (b"/quotes/A", b"", 401),
        (b"/quotes/A", b"Authorization: Bearer other-token\r\n", 403),
    ]:
        p, t = connect(HttpIngress, hub)
        p.dataReceived(expect_head(path, headers))
        assert [r[0] for r in responses(t)] == [status], path
        assert t.disconnecting


def test_expect_with_a_body_over_max_body_is_413_at_once():
    hub = make_hub(limits=LimitsConfig(max_body=1000))
    p, t = connect(HttpIngress, hub)
    p.dataReceived(expect_head(b"/open/a", length=1001))
    assert [r[0] for r in responses(t)] == [413]
    assert t.disconnecting


def test_no_100_continue_for_http_1_0_and_behind_unanswered_requests_only_once_they_are_answered():
    hub = make_hub()
    p, t = connect(HttpIngress, hub)
    p.dataReceived(expect_head(b"/open/a", length=5, version=b"1.0"))
    assert t.value() == b""
    p, t = connect(HttpIngress, hub)
    p.dataReceived(post(b"/quotes/A", headers=AUTH) + expect_head(b"/open/a", length=5))
    assert t.value() == b""  # the first is waiting for its commit: an interim answer would come first
    hub.spool.commit_all()
    assert t.value().endswith(b"\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n")
    t.clear()
    p.dataReceived(b"hello")
    assert [r[0] for r in responses(t)] == [202]


def test_a_deferred_expectation_is_refused_at_once_once_earlier_answers_are_out():
    hub = make_hub()
    p, t = connect(HttpIngress, hub)
    p.dataReceived(post(b"/quotes/A", headers=AUTH) + expect_head(b"/nowhere", length=5))
    hub.spool.commit_all()
    assert [r[0] for r in responses(t)] == [202, 404]
    assert t.disconnecting


def test_no_late_100_continue_once_the_body_came_anyway():
    hub = make_hub()
    p, t = connect(HttpIngress, hub)
    p.dataReceived(post(b"/quotes/A", headers=AUTH) + expect_head(b"/open/a", length=5))
    p.dataReceived(b"hello")  # the client did not wait
    hub.spool.commit_all()
    assert b"100 Continue" not in t.value()
    assert [r[0] for r in responses(t)] == [202, 202]


def test_an_expectation_other_than_100_continue_is_417():
    hub = make_hub()
    p, t = connect(HttpIngress, hub)
    p.dataReceived(b"POST /open/a HTTP/1.1\r\nExpect: teapot\r\nContent-Length: 1\r\n\r\nx")
    assert [r[0] for r in responses(t)] == [417]


def test_a_head_dribbled_a_byte_at_a_time_gets_408_after_head_timeout():
    hub = make_hub(limits=LimitsConfig(head_timeout=30, idle_timeout=300))
    p, t = connect(HttpIngress, hub)
    p.dataReceived(post(b"/open/a"))
    for byte in b"POST /open/b HTTP/1.1\r\nX-Slow: ":
        hub.reactor.advance(1)
        p.dataReceived(bytes([byte]))
        if t.disconnecting:
            break
    assert [r[0] for r in responses(t)] == [202, 408]
    assert hub.reactor.seconds() == 31  # the head's first byte came at 1 s


def test_head_deadline_counts_from_the_head_s_first_byte_and_pipelined_heads_each_get_their_own():
    hub = make_hub(limits=LimitsConfig(head_timeout=30))
    p, t = connect(HttpIngress, hub)
    stream = post(b"/open/a") * 200
    # Every read ends inside a head, a new head each time: never a timeout.
    for i in range(0, len(stream), 97):
        hub.reactor.advance(5)
        p.dataReceived(stream[i : i + 97])
    assert [r[0] for r in responses(t)] == [202] * 200
    assert not t.disconnecting
    p.dataReceived(b"POST /open/b HT")
    hub.reactor.advance(29)
    assert responses(t) == []
    hub.reactor.advance(2)
    ((status, headers, _),) = responses(t)
    assert (status, headers["connection"]) == (408, "close") and t.disconnecting


def test_a_stalled_body_gets_408_after_body_timeout_and_a_growing_one_does_not():
    hub = make_hub(limits=LimitsConfig(body_timeout=60))
    p, t = connect(HttpIngress, hub)
    p.dataReceived(b"POST /open/a HTTP/1.1\r\nContent-Length: 100\r\n\r\n")
    for _ in range(50):
        hub.reactor.advance(50)
        p.dataReceived(b"x")  # 2,500 s of a growing body
    assert responses(t) == [] and not t.disconnecting
    hub.reactor.advance(61)
    assert [r[0] for r in responses(t)] == [408] and t.disconnecting


def test_no_slow_request_timer_is_left_once_the_connection_is_gone():
    hub = make_hub()
    p, t = connect(HttpIngress, hub)
    p.dataReceived(b"POST /open/a HT")
    p.connectionLost(None)
    assert p.slow_call is None
