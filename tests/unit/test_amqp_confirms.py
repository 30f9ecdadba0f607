"""The confirm window's bookkeeping on its own: no Twisted, no clock, no broker."""

from __future__ import annotations

import subprocess
import sys

from msghub.forward.amqp_confirms import ConfirmWindow
from msghub.message import Message


def batch(first_id: int, n: int) -> list[Message]:
    return [Message(first_id + i, b"POST", b"/t", (), b"x", "r", None, {}, 0.0, i) for i in range(n)]


def test_the_module_imports_no_twisted():
    code = "import sys, msghub.forward.amqp_confirms; print([m for m in sys.modules if m.startswith('twisted')])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_tags_count_messages_in_write_order_and_a_batch_completes_at_its_last_confirm():
    w = ConfirmWindow()
    a = w.add("sink", batch(10, 2), None, "a", 1.0)
    b = w.add("sink", batch(20, 3), None, "b", 2.0)
    assert (a.first, a.last, b.first, b.last) == (1, 2, 3, 5)
    assert w.unconfirmed == 5
    assert w.settle(4, False, False) == (1, [])
    assert w.settle(2, True, False) == (2, [a])
    assert w.settle(5, True, False) == (2, [b])  # 3 and 5: 4 was settled already
    assert w.unconfirmed == 0 and len(w) == 0
    assert w.settle(5, True, False) == (0, [])  # a repeat changes nothing


def test_nacks_are_reported_by_index_and_acks_are_the_rest():
    w = ConfirmWindow()
    r = w.add("sink", batch(10, 4), None, None, 0.0)
    w.settle(1, False, False)
    w.settle(3, True, True)  # nacks 2 and 3
    assert r.nacked_indices() == {1, 2}
    assert r.confirmed_indices() == [0]
    settled, complete = w.settle(4, False, False)
    assert complete == [r] and r.confirmed_indices() == [0, 3]


def test_a_return_is_kept_on_the_batch_holding_that_message_id():
    w = ConfirmWindow()
    w.add("sink", batch(10, 2), None, None, 0.0)
    r = w.add("sink", batch(20, 2), None, None, 0.0)
    assert w.returned(21, "unroutable: NO_ROUTE")
    assert not w.returned(99, "unroutable: NO_ROUTE")
    assert r.returned == {1: "unroutable: NO_ROUTE"}


def test_abandoned_batches_are_done_and_their_late_confirms_ignored():
    w = ConfirmWindow()
    spooled = w.add("sink", batch(10, 2), [(1, 0), (1, 1)], None, 0.0)
    live = w.add("sink", batch(20, 2), None, "d", 0.0)
    assert w.abandon(live_only=True) == [live]
    assert w.unconfirmed == 2  # the spooled batch still counts
    assert w.settle(4, True, False) == (2, [spooled])
    assert w.unconfirmed == 0 and len(w) == 0
    w.reset()
    assert w.add("sink", batch(30, 1), None, None, 0.0).first == 1  # a new channel: tags from 1
