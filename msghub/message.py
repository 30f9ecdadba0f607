"""The one message type that both ingress ports produce and every sink takes."""

from __future__ import annotations

from operator import itemgetter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from msghub.compact.state import Request
    from msghub.router import Decision

# A message id is one int: the spool's boot counter in the high bits, a
# per-boot sequence in the low ones, so ids are unique per hub across
# restarts and cost one addition to make (ingress reserves a block per read).
SEQ_BITS = 40
SEQ_MASK = (1 << SEQ_BITS) - 1


def format_id(message_id: int) -> str:
    """The text form of a message id, as forwarders pass it on: ``BOOT-SEQ`` in hex."""
    return f"{message_id >> SEQ_BITS:x}-{message_id & SEQ_MASK:010x}"


def parse_id(text: str) -> int:
    boot, _, seq = text.partition("-")
    return (int(boot, 16) << SEQ_BITS) | int(seq, 16)


class Message(tuple):
    """An accepted request on its way to a sink.

    ``(id, request, decision, received)``: ``request`` is the compact
    ``Request`` (shared ``State`` included), ``decision`` the router's cached
    verdict for its (state, target), ``received`` the reactor time of the read
    that brought it.  Built with ``tuple.__new__`` on the hot path.
    """

    __slots__ = ()

    id = property(itemgetter(0), doc="int; see format_id")
    request = property(itemgetter(1))
    decision = property(itemgetter(2))
    received = property(itemgetter(3), doc="float, reactor seconds")

    def __new__(cls, id: int, request: "Request", decision: "Decision", received: float) -> "Message":
        return tuple.__new__(cls, (id, request, decision, received))

    @property
    def id_text(self) -> str:
        return format_id(self[0])

    @property
    def method(self) -> bytes:
        return self[1][0]

    @property
    def target(self) -> bytes:
        return self[1][1]

    @property
    def body(self) -> bytes:
        return self[1][2]

    @property
    def headers(self) -> tuple[tuple[bytes, bytes], ...]:
        return self[1][3].headers

    @property
    def route(self) -> Any:
        return self[2].route

    @property
    def captures(self) -> dict[str, str]:
        return self[2].captures

    @property
    def user(self) -> str | None:
        return self[2].user
