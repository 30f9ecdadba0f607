"""The publisher-confirm window: which delivery tag belongs to which batch, and what is settled.

Pure bookkeeping, no Twisted and no I/O: the forwarder (``amqp.py``) calls
``add`` for every batch it writes, feeds in the broker's basic.ack /
basic.nack / basic.return as they arrive, and acts on the batches
``settle`` reports complete.  Delivery tags are the channel's: they start at
1 on every new channel (``reset``) and count messages in the order written.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from typing import Any, Sequence

from msghub.message import Message


class Publish:
    """One batch written to the broker, waiting for its confirms.

    ``waiter`` is the caller's (the forwarder keeps the sink's Deferred
    there), ``positions`` the spool positions of a dispatcher's batch (None
    for a live one), ``written_at`` the clock's time of the write.
    """

    __slots__ = ("sink", "messages", "first", "last", "pending", "upto", "singles", "nacked", "returned",
                 "waiter", "positions", "written_at", "done")

    def __init__(self, sink: Any, messages: Sequence[Message], first: int, positions: list | None,
                 waiter: Any, written_at: float) -> None:
        self.sink = sink
        self.messages = messages
        self.first = first
        self.last = first + len(messages) - 1
        self.pending = len(messages)
        self.upto = first - 1  # every tag <= upto is settled
        self.singles: set[int] = set()  # tags settled one by one above upto
        self.nacked: list[int] = []
        self.returned: dict[int, str] = {}  # index in messages -> reply text
        self.waiter = waiter
        self.positions = positions
        self.written_at = written_at
        self.done = False

    def settle(self, tag: int, multiple: bool, nack: bool) -> int:
        """Settle ``tag`` (and, if ``multiple``, every tag before it); return how many were new."""
        if multiple:
            upto = min(tag, self.last)
            if upto <= self.upto:
                return 0
            covered = [t for t in self.singles if t <= upto]
            count = upto - self.upto - len(covered)
            if nack:
                self.nacked.extend(t for t in range(self.upto + 1, upto + 1) if t not in self.singles)
            self.singles.difference_update(covered)
            self.upto = upto
        else:
            if tag <= self.upto or tag in self.singles or not self.first <= tag <= self.last:
                return 0
            self.singles.add(tag)
            count = 1
            if nack:
                self.nacked.append(tag)
        self.pending -= count
        return count

    def nacked_indices(self) -> set[int]:
        return {tag - self.first for tag in self.nacked}

    def confirmed_indices(self) -> list[int]:
        """Indices of the messages acked so far (settled and not nacked)."""
        nacked = set(self.nacked)
        return [i for i, tag in enumerate(range(self.first, self.last + 1))
                if (tag <= self.upto or tag in self.singles) and tag not in nacked]


class ConfirmWindow:
    """Batches written and not yet settled, oldest first, and their message count."""

    def __init__(self) -> None:
        self.records: deque[Publish] = deque()
        self.unconfirmed = 0  # messages written and not settled (done records excluded)
        self.next_tag = 1

    def reset(self) -> None:
        """A new channel: tags start again at 1.  Call only once nothing is outstanding."""
        assert not self.records, "reset with batches outstanding"
        self.next_tag = 1
        self.unconfirmed = 0

    def add(self, sink: Any, messages: Sequence[Message], positions: list | None, waiter: Any,
            written_at: float) -> Publish:
        record = Publish(sink, messages, self.next_tag, positions, waiter, written_at)
        self.next_tag += len(messages)
        self.records.append(record)
        self.unconfirmed += len(messages)
        return record

    def settle(self, tag: int, multiple: bool, nack: bool) -> tuple[int, list[Publish]]:
        """A basic.ack or basic.nack: ``(messages newly settled, batches now complete, in order)``.

        A complete batch is marked done; late confirms of a done batch (one
        given up on with ``abandon``) change nothing.
        """
        settled = 0
        complete: list[Publish] = []
        for record in self.records:
            if record.first > tag:
                break
            if record.done:
                continue
            if multiple or record.first <= tag <= record.last:
                settled += record.settle(tag, multiple, nack)
                if record.pending == 0:
                    record.done = True
                    complete.append(record)
        self.unconfirmed -= settled
        records = self.records
        while records and records[0].done:
            records.popleft()
        return settled, complete

    def returned(self, message_id: int, reason: str) -> bool:
        """A basic.return for ``message_id``: remembered on its batch until that completes."""
        for record in self.records:
            if record.done:
                continue
            ids = [m.id for m in record.messages]
            index = bisect_right(ids, message_id) - 1
            if index >= 0 and ids[index] == message_id:
                record.returned[index] = reason
                return True
        return False

    def abandon(self, live_only: bool) -> list[Publish]:
        """Give up on unsettled batches (all, or only those not from a spool): marked done, returned in order."""
        out = []
        for record in self.records:
            if not record.done and (record.positions is None or not live_only):
                record.done = True
                self.unconfirmed -= record.pending
                out.append(record)
        records = self.records
        while records and records[0].done:
            records.popleft()
        return out

    def __len__(self) -> int:
        return len(self.records)
