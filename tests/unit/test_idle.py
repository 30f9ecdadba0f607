"""IdleWaiters and within: the stop paths' grace waits, on a Clock."""

from twisted.internet.task import Clock

from msghub.idle import IdleWaiters, within


def test_fire_answers_every_waiter_once_and_cancels_their_deadlines():
    clock = Clock()
    waiters = IdleWaiters()
    fired: list = []
    for _ in range(2):
        within(waiters.wait(), 5.0, clock).addCallback(fired.append)
    assert waiters and fired == []
    waiters.fire()
    assert fired == [] and not waiters  # on the next reactor turn, not inside fire()
    clock.advance(0)
    assert fired == [None, None]
    assert clock.getDelayedCalls() == []
    waiters.fire()  # nobody waits any more: nothing happens
    assert fired == [None, None]


def test_the_deadline_ends_the_wait_with_none_and_forgets_the_waiter():
    clock = Clock()
    waiters = IdleWaiters()
    fired: list = []
    within(waiters.wait(), 5.0, clock).addBoth(fired.append)
    clock.advance(4.99)
    assert fired == []
    clock.advance(0.01)
    clock.advance(0)
    assert fired == [None] and not waiters
    waiters.fire()  # the owner becoming idle later is harmless
    assert fired == [None] and clock.getDelayedCalls() == []
