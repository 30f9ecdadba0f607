"""Webhook delivery without sockets: the real spool, a Clock, and a client the test answers.

The spool is the real one on a file in ``tmp_path``, its commits run inline
when the clock turns (``settle``), so "committed", "deleted" and "dead" are
what SQLite holds.  ``FakeClient`` records each POST and lets the test answer
it with any ``Result``; signatures are checked with the ``standardwebhooks``
package, an implementation independent of ours.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from email.utils import formatdate
from typing import Any, Callable

import pytest
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry
from standardwebhooks import Webhook
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from msghub import spoolcli
from msghub.admin.metrics import webhook_metrics
from msghub.config import Config, RouteConfig
from msghub.config_webhooks import WebhookTarget, parse_secret
from msghub.sink import ISink, SinkError
from msghub.forward.webhook import (
    MARK_DELAY,
    STOP_GRACE,
    TICK,
    WINDOW_MIN,
    WebhookForwarder,
    parse_retry_after,
    sign,
)
from msghub.forward.webhook_client import Result
from msghub.hub import Hub
from msghub.message import Message, format_id
from msghub.spool import Spool

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER_SECRET = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"  # 24 bytes
JSON = ((b"Content-Type", b"application/json"), (b"X-Trace", b"t1"))


# -- fakes ------------------------------------------------------------------------------


class InlineReactor(Clock):
    def callFromThread(self, f: Callable, *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)


class InlinePool:
    """The spool's worker thread, run inline: a commit happens when the clock turns."""

    def __init__(self) -> None:
        self.fail = False

    def callInThreadWithCallback(self, on_result: Callable, f: Callable, *args: Any) -> None:
        try:
            if self.fail:
                raise OSError("disk full")
            result = f(*args)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)


class Post:
    def __init__(self, fields: bytes, body: bytes, on_done: Callable[[Result], None]) -> None:
        self.fields = fields
        self.body = body
        self.on_done = on_done
        self.headers = dict(line.split(": ", 1) for line in fields.decode().split("\r\n") if line)
        self.answered = False

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    def answer(self, status: int = 200, reason: bytes = b"OK", **kw: Any) -> None:
        assert not self.answered
        self.answered = True
        self.on_done(Result(status, reason, **kw))

    def fail(self, error: str = "connection refused", timed_out: bool = False) -> None:
        assert not self.answered
        self.answered = True
        self.on_done(Result(error=error, timed_out=timed_out))


class FakeClient:
    """``HttpPool``'s face: ``post(fields, body, on_done)``; the test answers."""

    def __init__(self) -> None:
        self.posts: list[Post] = []
        self.closed = False

    def post(self, fields: bytes, body: bytes, on_done: Callable[[Result], None]) -> None:
        self.posts.append(Post(fields, body, on_done))

    @property
    def open(self) -> list[Post]:
        return [p for p in self.posts if not p.answered]

    def close_idle(self, older_than: float) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class Route:
    name = "orders-route"


class Decision:
    route = Route()


class Harness:
    """A real spool, a Clock, and a WebhookForwarder whose clients are FakeClients."""

    def __init__(self, path: str, targets: list[WebhookTarget], random: Callable[[], float] = lambda: 0.5) -> None:
        self.path = path
        self.clock = InlineReactor()
        self.clock.advance(1_700_000_000)
        self.pool = InlinePool()
        self.spool = Spool(path, self.clock, threadpool=self.pool)
        self.spool.open()
        self.clients: dict[str, FakeClient] = {}
        self.targets = {t.name: t for t in targets}
        self.forwarder = WebhookForwarder(self.targets, self.clock, self.spool, random, self._client)

    def _client(self, target: WebhookTarget) -> FakeClient:
        client = self.clients[target.name] = FakeClient()
        return client

    def start(self) -> "Harness":
        self.forwarder.startService()
        self.settle()
        return self

    def settle(self) -> None:
        """Run what is due now, and the marks recorded once per MARK_DELAY."""
        self.clock.advance(0)
        self.clock.advance(MARK_DELAY)
        self.clock.advance(0)

    def advance(self, seconds: float) -> None:
        # In small steps, so timers set by other timers run at their own time.
        step = 0.25
        while seconds > 1e-9:
            self.clock.advance(min(step, seconds))
            seconds -= step
        self.settle()

    def send(self, route: str, targets: tuple[str, ...], bodies: list[bytes], headers=JSON):
        """What ingress does: hand a batch to the route's sink; returns the Deferred's result list."""
        sink = self.forwarder.sink(route, targets)
        first = self.spool.reserve_ids(len(bodies))
        headers = tuple(headers)
        messages = [
            Message(first + i, b"POST", b"/orders/new", headers, body, "orders-route", None, {}, self.clock.seconds(),
                    i + 1)
            for i, body in enumerate(bodies)
        ]
        out: list = []
        sink.deliver(messages).addBoth(out.append)
        return out, messages

    def rows(self, target: str) -> list[Message]:
        """The target's undelivered messages (the inline pool makes the read synchronous)."""
        out: list = []
        self.spool.read(f"webhook:{target}", limit=10_000).addBoth(out.append)
        [segments] = out
        return [m for segment in segments for _, m in segment.pending()]

    def disabled(self) -> dict[str, str]:
        out: list = []
        self.spool.poll().addBoth(out.append)
        return out[0][0]

    def dead(self, target: str) -> list[tuple]:
        return self.spool._reader.execute(
            "SELECT id, error, body FROM dead WHERE name = ? ORDER BY seq", (f"webhook:{target}",)
        ).fetchall()

    def stop(self):
        d = self.forwarder.stopService()
        self.advance(STOP_GRACE + 1)
        return d

    def close(self) -> None:
        if self.forwarder.running:
            self.stop()
        self.spool.close()
        self.settle()


def scrape(forwarder: WebhookForwarder) -> str:
    """``/metrics`` as Prometheus would read the forwarder's families."""

    class Collector:
        def collect(self):
            return webhook_metrics(forwarder.deliverers)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector())
    return generate_latest(registry).decode()


def target(name: str = "orders", **kw: Any) -> WebhookTarget:
    kw.setdefault("retry", (5.0, 300.0))
    return WebhookTarget(name, f"http://127.0.0.1/{name}", **kw)


@pytest.fixture
def make(tmp_path):
    made: list[Harness] = []

    def make(*targets: WebhookTarget, **kw: Any) -> Harness:
        h = Harness(str(tmp_path / "spool.db"), list(targets) or [target()], **kw)
        made.append(h)
        return h

    yield make
    for h in made:
        if h.spool._state == "open":
            h.close()


# -- the sink: one append for all targets, one Deferred ----------------------------


def test_sink_appends_once_per_target_in_one_commit_and_acks_after_it(make):
    h = make(target("a"), target("b")).start()
    out, messages = h.send("orders", ("a", "b"), [b"1", b"2"])
    assert out == []  # nothing is safe before the commit
    commits = h.spool.commits
    h.settle()
    assert out == [None]
    assert h.spool.commits == commits + 1
    assert [r.id for r in h.rows("a")] == [m.id for m in messages]
    assert [r.id for r in h.rows("b")] == [m.id for m in messages]


def test_sink_is_an_isink_named_after_the_route(make):
    h = make()
    sink = h.forwarder.sink("orders-route", ("orders",))
    assert verifyObject(ISink, sink)
    assert sink.name == "webhooks:orders-route"


def test_sink_failure_is_a_503_for_the_producer_and_nothing_is_sent(make):
    h = make().start()
    h.pool.fail = True
    out, _ = h.send("orders", ("orders",), [b"1"])
    h.settle()
    assert isinstance(out[0], Failure) and out[0].check(SinkError) and out[0].value.status == 503
    assert h.clients["orders"].posts == []


# -- a delivery ------------------------------------------------------------------------


def test_commit_wakes_the_deliverer_which_posts_body_content_type_and_webhook_headers(make):
    h = make(target(secrets=(parse_secret(SECRET),), headers=((b"X-Source", b"msghub"),))).start()
    _, messages = h.send("orders", ("orders",), [b'{"n": 1}'])
    h.settle()
    [post] = h.clients["orders"].posts
    assert post.body == b'{"n": 1}'
    assert post.headers["Content-Type"] == "application/json"
    assert post.headers["webhook-id"] == format_id(messages[0].id)
    assert post.headers["webhook-timestamp"] == str(int(h.clock.seconds()))
    assert post.headers["webhook-signature"].startswith("v1,")
    assert "X-Trace" not in post.headers  # only Content-Type travels from the producer


def test_a_2xx_deletes_the_row(make):
    h = make().start()
    h.send("orders", ("orders",), [b"1", b"2"])
    h.settle()
    h.clients["orders"].posts[0].answer(204, b"No Content")
    h.settle()
    assert [r.body for r in h.rows("orders")] == [b"2"]
    assert h.forwarder.deliverers["orders"].stats.attempts["success"] == 1


def test_signature_verifies_with_the_standardwebhooks_package(make):
    h = make(target(secrets=(parse_secret(SECRET),))).start()
    h.clock.advance(time.time() - h.clock.seconds())  # the package checks the timestamp against now
    body = b'{"order": 17, "note": "caf\xc3\xa9"}'
    h.send("orders", ("orders",), [body])
    h.settle()
    [post] = h.clients["orders"].posts
    assert Webhook(SECRET).verify(body, post.headers) == {"order": 17, "note": "café"}


def test_rotated_secrets_sign_with_each_so_either_key_verifies(make):
    keys = (parse_secret(SECRET), parse_secret(OTHER_SECRET))
    h = make(target(secrets=keys)).start()
    h.clock.advance(time.time() - h.clock.seconds())
    h.send("orders", ("orders",), [b"{}"])
    h.settle()
    [post] = h.clients["orders"].posts
    assert len(post.headers["webhook-signature"].split(" ")) == 2
    assert Webhook(SECRET).verify(b"{}", post.headers) == {}
    assert Webhook(OTHER_SECRET).verify(b"{}", post.headers) == {}


def test_sign_is_hmac_sha256_over_id_timestamp_and_raw_body():
    import base64
    import hashlib
    import hmac

    key = parse_secret(SECRET)
    expected = base64.b64encode(hmac.new(key, b"1-0000000001.1700000000.\xff\x00", hashlib.sha256).digest())
    assert sign([key], b"1-0000000001", 1700000000, b"\xff\x00") == b"v1," + expected


def test_unsigned_target_sends_id_and_timestamp_but_no_signature(make):
    h = make().start()
    h.send("orders", ("orders",), [b"x"], headers=())
    h.settle()
    [post] = h.clients["orders"].posts
    assert "webhook-signature" not in post.headers and "webhook-id" in post.headers
    assert "Content-Type" not in post.headers  # the producer sent none


def test_rows_from_a_previous_run_are_delivered_at_start(make):
    h = make()
    h.send("orders", ("orders",), [b"old"])
    h.settle()
    assert h.clients["orders"].posts == []  # not started yet
    h.start()
    assert [p.body for p in h.clients["orders"].posts] == [b"old"]


# -- retries ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("random", "factor"), [(0.0, 0.8), (0.5, 1.0), (1.0, 1.2)])
def test_retry_follows_the_schedule_scaled_by_the_jitter(make, random, factor):
    h = make(target(retry=(5.0, 300.0)), random=lambda: random).start()
    h.send("orders", ("orders",), [b"x"])
    h.settle()
    client = h.clients["orders"]
    client.posts[0].answer(500, b"Internal Server Error")
    h.advance(5 * factor - 0.25)
    assert len(client.posts) == 1
    h.advance(0.25)
    assert len(client.posts) == 2
    client.posts[1].fail(timed_out=True)
    h.advance(300 * factor - 0.25)
    assert len(client.posts) == 2
    h.advance(0.25)
    assert len(client.posts) == 3
    assert client.posts[2].id == client.posts[0].id
    stats = h.forwarder.deliverers["orders"].stats.attempts
    assert (stats["retry"], stats["timeout"]) == (1, 1)


def test_each_attempt_has_its_own_timestamp_and_the_same_id(make):
    h = make(target(retry=(5.0,))).start()
    h.send("orders", ("orders",), [b"x"])
    h.settle()
    client = h.clients["orders"]
    client.posts[0].fail()
    h.advance(10)
    first, second = client.posts
    assert first.id == second.id
    assert int(second.headers["webhook-timestamp"]) - int(first.headers["webhook-timestamp"]) == 5


def test_after_the_last_retry_the_message_is_dead_with_the_last_error(make):
    h = make(target(retry=(5.0,))).start()
    h.send("orders", ("orders",), [b"x"])
    h.settle()
    client = h.clients["orders"]
    client.posts[0].answer(502, b"Bad Gateway")
    h.advance(5)
    client.posts[1].answer(503, b"Service Unavailable", body=b"down for maintenance")
    h.settle()
    assert h.rows("orders") == []
    [(_, error, body)] = h.dead("orders")
    assert error == "gave up after 2 attempts; last: HTTP 503 Service Unavailable: down for maintenance"
    assert body == b"x"
    assert h.forwarder.deliverers["orders"].stats.dead == 1


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_seconds_pauses_the_whole_target(make, status):
    h = make(target(retry=(5.0, 5.0), concurrency=2)).start()
    h.send("orders", ("orders",), [b"1", b"2", b"3"])
    h.settle()
    client = h.clients["orders"]
    assert len(client.posts) == 2
    client.posts[0].answer(status, b"Slow Down", retry_after=b"30")
    client.posts[1].answer(200)
    h.advance(29.75)
    assert len(client.posts) == 2  # neither the retry nor message 3 goes before 30 s
    h.advance(0.25)
    assert [p.body for p in client.posts[2:]] == [b"1", b"3"]


def test_retry_after_http_date_is_honoured(make):
    h = make(target(retry=(5.0, 600.0))).start()
    h.send("orders", ("orders",), [b"1"])
    h.settle()
    client = h.clients["orders"]
    client.posts[0].answer(503, b"Busy", retry_after=formatdate(h.clock.seconds() + 120, usegmt=True).encode())
    h.advance(119.75)
    assert len(client.posts) == 1
    h.advance(0.25)
    assert len(client.posts) == 2


def test_retry_after_is_capped_at_the_longest_retry_delay(make):
    h = make(target(retry=(5.0, 600.0))).start()
    h.send("orders", ("orders",), [b"1"])
    h.settle()
    client = h.clients["orders"]
    client.posts[0].answer(429, b"Too Many Requests", retry_after=b"86400")
    h.advance(600)
    assert len(client.posts) == 2


def test_unreadable_retry_after_falls_back_to_the_schedule(make):
    h = make(target(retry=(5.0,))).start()
    h.send("orders", ("orders",), [b"1"])
    h.settle()
    h.clients["orders"].posts[0].answer(429, b"Too Many Requests", retry_after=b"soon")
    h.advance(5)
    assert len(h.clients["orders"].posts) == 2


def test_parse_retry_after_reads_seconds_and_http_dates():
    now = 1_700_000_000.0
    assert parse_retry_after(b"120", now) == 120.0
    assert parse_retry_after(b" 0 ", now) == 0.0
    assert parse_retry_after(formatdate(now + 90, usegmt=True).encode(), now) == 90.0
    assert parse_retry_after(formatdate(now - 90, usegmt=True).encode(), now) == 0.0
    assert parse_retry_after(b"-5", now) is None
    assert parse_retry_after(b"1.5", now) is None
    assert parse_retry_after(b"tomorrow", now) is None


# -- 4xx, 410, enable ---------------------------------------------------------------------------


OLD_RETRY_ON = ((500, 599), (408, 408), (429, 429))  # retry_on = ["5xx", 408, 429]


@pytest.mark.parametrize(("status", "reason"), [(400, b"Bad Request"), (404, b"Not Found"), (301, b"Moved")])
def test_statuses_not_in_retry_on_dead_letter_at_once_with_the_error_kept(make, status, reason):
    h = make(target(retry_on=OLD_RETRY_ON)).start()
    h.send("orders", ("orders",), [b"bad", b"good"])
    h.settle()
    client = h.clients["orders"]
    client.posts[0].answer(status, reason, body=b"field 'x' is required\n")
    client.posts[1].answer(200)
    h.settle()
    assert h.rows("orders") == []
    [(_, error, body)] = h.dead("orders")
    assert error == f"HTTP {status} {reason.decode()}: field 'x' is required"
    assert body == b"bad"
    h.advance(10_000)
    assert len(client.posts) == 2  # never retried
    stats = h.forwarder.deliverers["orders"].stats
    assert (stats.attempts["dead"], stats.dead) == (1, 1)


def test_408_is_retried_like_a_timeout(make):
    h = make(target(retry=(5.0,))).start()
    h.send("orders", ("orders",), [b"1"])
    h.settle()
    h.clients["orders"].posts[0].answer(408, b"Request Timeout")
    h.advance(5)
    assert len(h.clients["orders"].posts) == 2


def test_410_disables_the_target_persistently_and_enable_resumes_it(make, capsys):
    h = make(target(concurrency=2)).start()
    h.send("orders", ("orders",), [b"1", b"2", b"3"])
    h.settle()
    client = h.clients["orders"]
    client.posts[0].answer(410, b"Gone")
    client.posts[1].answer(200)  # in flight when the 410 came: still counts
    h.advance(3600)
    assert len(client.posts) == 2
    deliverer = h.forwarder.deliverers["orders"]
    assert deliverer.disabled and deliverer.stats.disabled
    assert deliverer.stats.attempts["disabled"] == 1
    assert [r.body for r in h.rows("orders")] == [b"1", b"3"]  # nothing lost, nothing dead
    assert h.dead("orders") == []
    assert list(h.disabled()) == ["webhook:orders"]

    # A restart keeps it disabled.
    h.stop()
    h.forwarder = WebhookForwarder(h.targets, h.clock, h.spool, lambda: 0.5, h._client)
    h.start()
    client = h.clients["orders"]
    assert client.posts == [] and h.forwarder.deliverers["orders"].disabled

    assert spoolcli.main(["--db", h.path, "enable", "orders"]) == 0
    assert capsys.readouterr().out == "enabled webhook:orders\n"
    h.advance(TICK)
    assert [p.body for p in client.posts] == [b"1", b"3"]  # in acceptance order, the 410'd first
    assert not h.forwarder.deliverers["orders"].disabled


def test_410_is_logged_once(make):
    from twisted.logger import globalLogPublisher

    lines: list = []
    globalLogPublisher.addObserver(lines.append)
    try:
        h = make(target(concurrency=3)).start()
        h.send("orders", ("orders",), [b"1", b"2", b"3"])
        h.settle()
        for post in h.clients["orders"].posts:
            post.answer(410, b"Gone")
        h.settle()
    finally:
        globalLogPublisher.removeObserver(lines.append)
    assert len([e for e in lines if "disabled" in e.get("log_format", "")]) == 1


def test_disable_from_msghub_spool_holds_deliveries_until_enabled(make, capsys):
    h = make().start()
    assert spoolcli.main(["--db", h.path, "disable", "orders", "--reason", "maintenance"]) == 0
    h.advance(TICK)
    h.send("orders", ("orders",), [b"1"])
    h.advance(10)
    assert h.clients["orders"].posts == []
    assert spoolcli.main(["--db", h.path, "enable", "webhook:orders"]) == 0
    h.advance(TICK)
    assert [p.body for p in h.clients["orders"].posts] == [b"1"]


# -- dead letters and replay through msghub-spool ------------------------------------------------


def test_replayed_dead_letters_go_to_the_end_of_the_queue_and_are_delivered(make, capsys):
    h = make(target(concurrency=1, retry_on=OLD_RETRY_ON)).start()
    _, messages = h.send("orders", ("orders",), [b"a", b"b"])
    h.settle()
    client = h.clients["orders"]
    client.posts[0].answer(422, b"Unprocessable Entity")
    h.settle()
    h.send("orders", ("orders",), [b"c"])
    h.settle()
    assert spoolcli.main(["--db", h.path, "dead", "orders"]) == 0
    out = capsys.readouterr().out
    assert format_id(messages[0].id) in out and "error: HTTP 422 Unprocessable Entity" in out

    assert spoolcli.main(["--db", h.path, "replay", "orders", "--id", format_id(messages[0].id)]) == 0
    assert capsys.readouterr().out == "replayed 1 messages to webhook:orders\n"
    assert [r.body for r in h.rows("orders")] == [b"b", b"c", b"a"]
    h.advance(TICK)  # the poll finds rows written beside the hub
    for _ in range(3):
        client.open[0].answer(200)
        h.settle()
    assert [p.body for p in client.posts] == [b"a", b"b", b"c", b"a"]
    assert [p.id for p in client.posts][-1] == format_id(messages[0].id)  # same webhook-id: receivers dedup
    assert h.rows("orders") == [] and h.dead("orders") == []
    assert h.spool.depth("webhook:orders") == 0  # depths refreshed after the outside write


# -- ordering, concurrency, isolation ----------------------------------------------------


def test_ordered_target_keeps_acceptance_order_through_retries(make):
    h = make(target(ordered=True, concurrency=1, retry=(5.0, 5.0))).start()
    h.send("orders", ("orders",), [b"1", b"2"])
    h.send("orders", ("orders",), [b"3"])
    h.settle()
    client = h.clients["orders"]
    assert [p.body for p in client.posts] == [b"1"]
    client.posts[0].answer(500, b"Oops")
    h.advance(4)
    assert [p.body for p in client.posts] == [b"1"]  # 2 waits behind the retrying 1
    h.advance(1)
    client.posts[1].fail()
    h.advance(5)
    client.posts[2].answer(200)
    h.settle()
    client.posts[3].answer(200)
    h.settle()
    client.posts[4].answer(200)
    h.settle()
    assert [p.body for p in client.posts] == [b"1", b"1", b"1", b"2", b"3"]


def test_ordered_target_moves_on_after_a_dead_letter(make):
    h = make(target(ordered=True, concurrency=1, retry_on=OLD_RETRY_ON)).start()
    h.send("orders", ("orders",), [b"1", b"2"])
    h.settle()
    client = h.clients["orders"]
    client.posts[0].answer(400, b"Bad Request")
    h.settle()
    assert [p.body for p in client.posts] == [b"1", b"2"]


def test_unordered_target_lets_others_pass_a_retrying_message(make):
    h = make(target(concurrency=1)).start()
    h.send("orders", ("orders",), [b"1", b"2"])
    h.settle()
    client = h.clients["orders"]
    client.posts[0].answer(500, b"Oops")
    h.settle()
    assert [p.body for p in client.posts] == [b"1", b"2"]


def test_no_more_than_concurrency_attempts_are_in_flight(make):
    h = make(target(concurrency=3)).start()
    h.send("orders", ("orders",), [b"%d" % i for i in range(20)])
    h.settle()
    client = h.clients["orders"]
    assert len(client.open) == 3
    client.open[1].answer(200)
    h.settle()
    assert len(client.open) == 3 and len(client.posts) == 4
    while client.open:
        client.open[0].answer(200)
        h.settle()
        assert len(client.open) <= 3
    assert len(client.posts) == 20 and h.rows("orders") == []


def test_a_hung_target_does_not_delay_another(make):
    h = make(target("slow", concurrency=2), target("fast", concurrency=2)).start()
    out, _ = h.send("orders", ("slow", "fast"), [b"%d" % i for i in range(10)])
    h.settle()
    assert out == [None]  # the producer is answered once both copies are spooled
    slow, fast = h.clients["slow"], h.clients["fast"]
    for _ in range(10):
        fast.open[0].answer(200)
        h.settle()
    assert len(fast.posts) == 10 and h.rows("fast") == []
    assert len(slow.posts) == 2 and len(h.rows("slow")) == 10  # still on its first two


def test_a_deliverer_holds_a_bounded_window_of_rows(make):
    h = make(target(concurrency=1)).start()
    h.send("orders", ("orders",), [b"x"] * (3 * WINDOW_MIN))
    h.settle()
    assert h.forwarder.deliverers["orders"].loaded == WINDOW_MIN
    client = h.clients["orders"]
    for _ in range(3 * WINDOW_MIN):
        client.open[0].answer(200)
        h.settle()
    assert h.rows("orders") == []


# -- stopping, metrics, wiring ----------------------------------------------------------


def stop_with_two_in_flight(make) -> tuple[Harness, FakeClient, list]:
    """Three rows, two of them in flight, and ``stopService`` called: its results collect in the list."""
    h = make(target(concurrency=2)).start()
    h.send("orders", ("orders",), [b"1", b"2", b"3"])
    h.settle()
    stopped: list = []
    h.forwarder.stopService().addBoth(stopped.append)
    return h, h.clients["orders"], stopped


def test_stop_ends_its_wait_when_the_last_attempt_in_flight_is_answered(make):
    h, client, stopped = stop_with_two_in_flight(make)
    client.posts[0].answer(200)
    assert stopped == [] and not client.closed
    client.posts[1].answer(200)  # the last one: the stop goes on at the next reactor turn
    h.clock.advance(0)  # (and the inline pool commits the deletes)
    assert stopped == [None] and client.closed
    assert [r.body for r in h.rows("orders")] == [b"3"]
    assert h.clock.getDelayedCalls() == []  # no poll, no tick, no mark timer left behind
    h.spool.close()
    h.clock.advance(STOP_GRACE)
    assert len(client.posts) == 2


def test_stop_ends_its_wait_at_the_grace_deadline_if_an_attempt_never_answers(make):
    h = make(target(concurrency=1)).start()
    h.send("orders", ("orders",), [b"1"])
    h.settle()
    client = h.clients["orders"]
    stopped: list = []
    h.forwarder.stopService().addBoth(stopped.append)
    h.clock.advance(STOP_GRACE - 0.01)
    assert stopped == [] and not client.closed
    h.clock.advance(0.01)
    h.clock.advance(0)
    assert stopped == [None] and client.closed
    assert h.clock.getDelayedCalls() == []
    client.posts[0].fail("connection aborted")  # as close() ends it: that schedules nothing either
    assert h.clock.getDelayedCalls() == []


def test_stop_waits_for_attempts_in_flight_and_commits_their_deletes(make):
    h, client, stopped = stop_with_two_in_flight(make)
    client.posts[0].answer(200)
    h.advance(0.1)
    assert stopped == [] and not client.closed  # the second is still in flight
    h.advance(STOP_GRACE)
    assert stopped == [None] and client.closed
    assert [r.body for r in h.rows("orders")] == [b"2", b"3"]  # read again next start
    assert len(client.posts) == 2


def test_metrics_export_attempts_latency_histogram_dead_and_disabled(make):
    h = make(target("a", retry_on=OLD_RETRY_ON), target("b")).start()
    h.send("orders", ("a", "b"), [b"1", b"2"])
    h.settle()
    a, b = h.clients["a"], h.clients["b"]
    h.clock.advance(0.02)
    a.posts[0].answer(200)
    a.posts[1].answer(400, b"Bad Request")
    b.posts[0].answer(410, b"Gone")
    h.settle()
    text = scrape(h.forwarder)
    assert 'msghub_webhook_attempts_total{outcome="success",target="a"} 1.0' in text
    assert 'msghub_webhook_attempts_total{outcome="dead",target="a"} 1.0' in text
    assert 'msghub_webhook_attempts_total{outcome="disabled",target="b"} 1.0' in text
    assert 'msghub_webhook_dead_total{target="a"} 1.0' in text
    assert 'msghub_webhook_disabled{target="b"} 1.0' in text
    # Sent at 0, answered after the settle's MARK_DELAY and 0.02 s more: 0.07 s.
    assert 'msghub_webhook_latency_seconds_bucket{le="0.05",target="a"} 0.0' in text
    assert 'msghub_webhook_latency_seconds_bucket{le="0.1",target="a"} 2.0' in text
    assert 'msghub_webhook_latency_seconds_bucket{le="+Inf",target="a"} 2.0' in text
    assert 'msghub_webhook_latency_seconds_count{target="a"} 2.0' in text


def test_hub_builds_one_forwarder_for_all_targets_and_a_sink_per_route(tmp_path):
    targets = {"a": target("a"), "b": target("b")}
    routes = (RouteConfig(name="orders", match="/orders/{kind}", webhooks=("a", "b")),)
    spool = SimpleNamespace(append_each=lambda names, messages: None, reserve_ids=lambda n: 1)
    hub = Hub(Config(path="t.toml", routes=routes, webhooks=targets), Clock(), spool)
    assert set(hub.webhooks.deliverers) == {"a", "b"}
    sink = hub.router.routes[0].sink
    assert sink.spool_names == ("webhook:a", "webhook:b")


def test_dead_letters_are_logged_at_most_once_a_second(make):
    from twisted.logger import globalLogPublisher

    lines: list = []
    globalLogPublisher.addObserver(lines.append)
    try:
        h = make(target(concurrency=50, retry_on=OLD_RETRY_ON)).start()
        h.send("orders", ("orders",), [b"x"] * 50)
        h.settle()
        for post in h.clients["orders"].posts:
            post.answer(400, b"Bad Request")
        h.settle()
        dead_lines = [e for e in lines if "dead-lettered" in e.get("log_format", "")]
        assert [e["n"] for e in dead_lines] == [1]
        h.advance(TICK)
        dead_lines = [e for e in lines if "dead-lettered" in e.get("log_format", "")]
        assert [e["n"] for e in dead_lines] == [1, 49]
    finally:
        globalLogPublisher.removeObserver(lines.append)


def test_a_restart_resumes_each_messages_retry_schedule_instead_of_starting_over(make, tmp_path):
    h = make(target(retry=(5.0, 300.0))).start()
    h.send("orders", ("orders",), [b"1"])
    h.settle()
    h.clients["orders"].posts[0].answer(503, b"Service Unavailable")  # attempt 1; the next is due in 5 s
    h.settle()
    h.advance(2.0)
    stopped_at = h.clock.seconds()
    h.spool.close()  # as a kill would: no graceful stop of the forwarder
    h.settle()

    again = Harness(str(tmp_path / "spool.db"), [target(retry=(5.0, 300.0))])
    again.clock.advance(stopped_at - again.clock.seconds())  # the same wall clock
    again.start()
    try:
        client = again.clients["orders"]
        assert client.posts == []  # not sent again at once: it is still waiting out its first delay
        again.advance(2.5)
        assert client.posts == []
        again.advance(1.0)
        [post] = client.posts  # attempt 2, at its scheduled time
        post.answer(503, b"Service Unavailable")
        again.settle()
        again.advance(60.0)
        assert len(client.posts) == 1  # the 300 s delay of attempt 3: the schedule went on, not over
    finally:
        again.close()
