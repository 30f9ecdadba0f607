"""A target's policy and state without sockets: retry_on, rate, disable_after, and one log line per state change.

The same harness as test_webhook.py: the real spool, a ``Clock``, and a fake
client the test answers.
"""

from __future__ import annotations

import pytest
from twisted.logger import globalLogPublisher

from msghub.config_webhooks import DEFAULT_RETRY
from msghub.forward.webhook import TICK
from msghub.forward.webhook_client import Result
from msghub.forward.webhook_state import Outcomes, RateLimit

from test_webhook import make, scrape, target  # noqa: F401  (make is a fixture)


@pytest.fixture
def lines():
    """Every log event while the test runs; ``webhook(lines)`` keeps the deliverers' own."""
    events: list = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def said(events: list) -> list[str]:
    """The webhook lines, formatted, in order."""
    from twisted.logger import formatEvent

    return [formatEvent(e) for e in events if e.get("log_format", "").startswith("webhook {target}")]


# -- retry_on ----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 404, 422, 301, 500, 599, 600])
def test_by_default_every_non_2xx_but_410_is_retried_so_a_deploy_404_is_not_dead(make, status):
    h = make(target(retry=(5.0,))).start()
    h.send("orders", ("orders",), [b"1"])
    h.settle()
    client = h.clients["orders"]
    client.posts[0].answer(status, b"During Deploy")
    h.advance(5)
    assert len(client.posts) == 2 and h.dead("orders") == []
    client.posts[1].answer(204, b"No Content")
    h.settle()
    assert h.rows("orders") == [] and h.dead("orders") == []


def test_retry_on_a_list_dead_letters_the_other_statuses_at_once():
    outcomes = Outcomes(target(retry_on=((500, 599), (408, 408), (429, 429))))
    assert [outcomes(Result(s)) for s in (200, 299, 408, 429, 500, 599, 400, 404, 301, 410, 600)] == [
        "success", "success", "retry", "retry", "retry", "retry", "dead", "dead", "dead", "disabled", "dead"]
    assert outcomes(Result(error="refused")) == "error"
    assert outcomes(Result(error="slow", timed_out=True)) == "timeout"


def test_410_disables_even_when_retry_on_names_its_class():
    assert Outcomes(target(retry_on=((400, 499),)))(Result(410)) == "disabled"


def test_the_default_schedule_keeps_a_message_about_a_day_before_it_dies(make):
    h = make(target(retry=DEFAULT_RETRY)).start()
    h.send("orders", ("orders",), [b"1"])
    h.settle()
    client = h.clients["orders"]
    for delay in DEFAULT_RETRY:
        client.open[0].answer(503, b"Service Unavailable")
        h.settle()
        h.clock.advance(delay * 1.2)  # the longest the jitter makes it
        h.settle()
    assert len(client.posts) == 8 and h.dead("orders") == []
    client.open[0].answer(503, b"Service Unavailable")
    h.settle()
    [(_, error, _)] = h.dead("orders")
    assert error.startswith("gave up after 8 attempts")


# -- rate ----------------------------------------------------------------------------------


def test_rate_limits_attempts_per_second(make):
    h = make(target(rate=10.0, concurrency=100)).start()
    h.send("orders", ("orders",), [b"x"] * 100)
    h.settle()
    client = h.clients["orders"]
    assert len(client.posts) == 2  # a burst of max(2, RATE_BURST * rate)
    for post in client.open:
        post.answer(200)
    for _ in range(20):  # 2 s in steps, answering as they come
        h.clock.advance(0.1)
        for post in client.open:
            post.answer(200)
    h.settle()
    assert 21 <= len(client.posts) <= 23  # 10/s over 2 s, plus the first two


def test_rate_counts_retries_too():
    limit = RateLimit(2.0, 0.0)
    assert limit.wait(0.0) == limit.wait(0.0) == 0.0
    assert limit.wait(0.0) == pytest.approx(0.5)
    assert limit.wait(0.5) == 0.0
    assert limit.wait(10.0) == limit.wait(10.0) == 0.0 and limit.wait(10.0) == pytest.approx(0.5)  # it holds two


def test_without_rate_all_concurrency_slots_fill_at_once(make):
    h = make(target(concurrency=8)).start()
    h.send("orders", ("orders",), [b"x"] * 20)
    h.settle()
    assert len(h.clients["orders"].posts) == 8


# -- state: healthy, retrying, disabled; one line per change ----------------------------------------


def test_a_target_that_fails_logs_retrying_once_and_recovered_once(make, lines):
    h = make(target(retry=(1.0,) * 20, concurrency=4)).start()
    deliverer = h.forwarder.deliverers["orders"]
    assert deliverer.state == "healthy"
    h.send("orders", ("orders",), [b"1", b"2", b"3"])
    h.settle()
    client = h.clients["orders"]
    for _ in range(10):  # 10 rounds of failures, about 30 failed attempts
        for post in client.open:
            post.fail("connect failed: Connection refused")
        h.advance(1.25)
    assert deliverer.state == "retrying"
    assert deliverer.health.error == "connect failed: Connection refused"
    assert said(lines) == ["webhook orders: retrying: connect failed: Connection refused"]
    for post in client.open:
        post.answer(200)
    h.advance(1.25)
    for post in client.open:
        post.answer(200)
    h.settle()
    assert deliverer.state == "healthy" and deliverer.health.error == ""
    [_, recovered] = said(lines)
    assert recovered.startswith("webhook orders: recovered after 1") and "failed attempts" in recovered
    assert h.rows("orders") == []


def test_disable_after_of_continuous_failure_disables_keeps_the_queue_and_logs_once(make, lines, capsys):
    from msghub import spoolcli

    h = make(target(retry=(5.0,) * 100, disable_after=60.0)).start()
    h.send("orders", ("orders",), [b"1", b"2"])
    h.settle()
    client = h.clients["orders"]
    for _ in range(14):  # 70 s of HTTP 503
        for post in client.open:
            post.answer(503, b"Service Unavailable")
        h.advance(5)
    deliverer = h.forwarder.deliverers["orders"]
    assert deliverer.state == "disabled" and deliverer.disabled
    assert "failing for 6" in deliverer.health.error and "HTTP 503" in deliverer.health.error
    sent = len(client.posts)
    h.advance(3600)
    assert len(client.posts) == sent  # nothing more is sent
    assert [m.body for m in h.rows("orders")] == [b"1", b"2"] and h.dead("orders") == []  # kept, not dead
    assert list(h.disabled()) == ["webhook:orders"]  # recorded: a restart keeps it disabled
    states = said(lines)
    assert len([s for s in states if "disabled (" in s]) == 1
    assert states[0].startswith("webhook orders: retrying: HTTP 503")

    assert spoolcli.main(["--db", h.path, "enable", "orders"]) == 0
    h.advance(TICK)
    assert deliverer.state == "healthy"
    for post in client.open:
        post.answer(200)
    h.settle()
    assert h.rows("orders") == []


def test_disable_after_is_checked_between_attempts_hours_apart(make):
    h = make(target(retry=(36000.0,), disable_after=60.0)).start()
    h.send("orders", ("orders",), [b"1"])
    h.settle()
    h.clients["orders"].posts[0].answer(500, b"Internal Server Error")
    h.advance(61)
    assert h.forwarder.deliverers["orders"].state == "disabled"


def test_a_dead_letter_for_a_status_not_in_retry_on_leaves_the_target_healthy(make):
    h = make(target(retry_on=((500, 599),))).start()
    h.send("orders", ("orders",), [b"1"])
    h.settle()
    h.clients["orders"].posts[0].answer(400, b"Bad Request")
    h.settle()
    assert h.forwarder.deliverers["orders"].state == "healthy" and len(h.dead("orders")) == 1


def test_the_state_gauge_has_one_1_per_target(make):
    h = make(target("a"), target("b")).start()
    h.send("orders", ("a", "b"), [b"1"])
    h.settle()
    h.clients["a"].posts[0].answer(200)
    h.clients["b"].posts[0].answer(503, b"Service Unavailable")
    h.settle()
    text = scrape(h.forwarder)
    for name, state, value in (("a", "healthy", 1), ("a", "retrying", 0), ("b", "retrying", 1), ("b", "healthy", 0),
                               ("b", "disabled", 0)):
        assert f'msghub_webhook_target_state{{state="{state}",target="{name}"}} {value}.0' in text
