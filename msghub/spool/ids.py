"""Message ids: ``boot << SEQ_BITS | seq``, handed out in blocks with no I/O.

The boot number is a counter in the spool's meta table, incremented on every
open, so ids stay unique across restarts.  A long-lived hub (2**SEQ_BITS ids
last ~12 days at 1M msg/s) asks for the next boot number halfway through its
sequence space, so that it is committed long before this one runs out.
"""

from __future__ import annotations

from typing import Callable

from msghub.message import SEQ_BITS


class IdsExhausted(Exception):
    """The sequence space ran out before the next boot number was committed."""


class IdAllocator:
    """Hands out ids of one boot epoch; ``request_boot`` asks the store for the next boot number."""

    def __init__(self, boot: int, request_boot: Callable[[], None], seq_space: int = 1 << SEQ_BITS) -> None:
        self._request_boot = request_boot
        self._seq_space = seq_space
        self._start(boot)

    def _start(self, boot: int) -> None:
        self.boot = boot
        self._next = boot << SEQ_BITS
        self._end = self._next + self._seq_space
        self._roll_at = self._next + self._seq_space // 2
        self._next_boot: int | None = None
        self._requested = False

    def first_id(self) -> int:
        """The first id of the current epoch."""
        return self.boot << SEQ_BITS

    def reserve(self, n: int) -> int:
        """The first of ``n`` consecutive fresh ids."""
        first = self._next
        if first + n > self._roll_at:
            return self._reserve_slow(n)
        self._next = first + n
        return first

    def _reserve_slow(self, n: int) -> int:
        if not self._requested:
            self._requested = True
            self._request_boot()
        self._roll_at = self._end
        if self._next + n > self._end:
            if self._next_boot is None:
                raise IdsExhausted("message ids exhausted before the next boot number was committed")
            self._start(self._next_boot)
        first = self._next
        self._next = first + n
        return first

    def next_boot_committed(self, boot: int) -> None:
        self._next_boot = boot

    def next_boot_failed(self) -> None:
        """The request was not committed: ask again on the next reservation."""
        self._requested = False
        self._roll_at = self._next
