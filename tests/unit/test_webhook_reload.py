"""WebhookForwarder.reload without sockets: targets added, removed and changed; the others untouched."""

from __future__ import annotations

from twisted.logger import formatEvent, globalLogPublisher

from msghub.config_webhooks import WebhookTarget

from test_webhook import make, target  # noqa: F401  (make is a fixture)


def reload(h, *targets) -> list[str]:
    events: list = []
    globalLogPublisher.addObserver(events.append)
    try:
        h.targets = {t.name: t for t in targets}
        h.forwarder.reload(h.targets)
        h.settle()
    finally:
        globalLogPublisher.removeObserver(events.append)
    return [formatEvent(e) for e in events if e.get("log_format", "").startswith("webhook {target}")]


def test_an_unchanged_target_keeps_its_retry_timers_and_client(make):
    h = make(target("a", retry=(5.0, 300.0)), target("b")).start()
    h.send("orders", ("a",), [b"1"])
    h.settle()
    client = h.clients["a"]
    client.posts[0].answer(503, b"Service Unavailable")  # the retry is due in 5 s
    h.advance(3)
    deliverer = h.forwarder.deliverers["a"]
    [pending] = deliverer.waiting
    timer = pending.timer
    lines = reload(h, target("a", retry=(5.0, 300.0)), target("c"))  # b removed, c added, a as it was
    assert not any(line.startswith("webhook a:") for line in lines)
    assert h.forwarder.deliverers["a"] is deliverer and deliverer.client is client
    assert pending.timer is timer and timer.active()
    h.advance(2)
    assert len(client.posts) == 2  # at its first time, not 5 s after the reload


def test_a_changed_schedule_applies_to_the_next_attempt_and_a_new_url_to_a_new_pool(make):
    h = make(target("a", retry=(5.0, 300.0, 300.0))).start()
    h.send("orders", ("a",), [b"1"])
    h.settle()
    old = h.clients["a"]
    old.posts[0].answer(503, b"Service Unavailable")
    h.settle()
    new_target = WebhookTarget("a", "http://127.0.0.1/moved", path=b"/moved", retry=(5.0, 10.0, 10.0))
    lines = reload(h, new_target)
    assert lines == ["webhook a: url, retry changed by the reload; applies from the next attempt"]
    new = h.clients["a"]
    assert new is not old and h.forwarder.deliverers["a"].client is new
    h.advance(5)  # the running timer kept its time
    [post] = new.posts  # attempt 2, on the new pool
    post.answer(503, b"Service Unavailable")
    h.advance(10)  # the new schedule's second delay, not the old 300 s
    assert len(new.posts) == 2 and len(old.posts) == 1
    h.advance(2)
    assert old.closed  # once its attempts could no longer be in flight


def test_a_removed_target_stops_and_its_queue_stays_in_the_spool(make):
    h = make(target("a"), target("b")).start()
    h.send("orders", ("a", "b"), [b"1", b"2"])
    h.settle()
    held = h.clients["b"]
    lines = reload(h, target("a"))
    assert lines == ["webhook b: removed by the reload; its 2 queued messages stay in the spool as webhook:b"]
    assert "b" not in h.forwarder.deliverers
    for post in held.open:
        post.answer(200)  # answered after the removal: still recorded
    h.advance(10)
    assert [m.body for m in h.rows("b")] == [] and held.closed
    h.send("orders", ("a",), [b"3"])
    h.advance(10)
    assert len(held.posts) == 2


def test_a_removed_target_that_was_failing_keeps_every_message(make):
    h = make(target("a"), target("b")).start()
    h.send("orders", ("a", "b"), [b"1", b"2"])
    h.settle()
    for post in h.clients["b"].open:
        post.fail()
    reload(h, target("a"))
    h.advance(400)
    assert [m.body for m in h.rows("b")] == [b"1", b"2"]


def test_a_new_target_starts_delivering_its_queue(make):
    h = make(target("a")).start()
    lines = reload(h, target("a"), target("n"))
    assert lines == ["webhook n: added by the reload"]
    h.send("orders", ("n",), [b"1"])
    h.settle()
    [post] = h.clients["n"].posts
    post.answer(204)
    h.settle()
    assert h.rows("n") == []
