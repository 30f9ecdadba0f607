"""The one message type: what both ingress ports produce, every sink takes, and the spool gives back."""

from __future__ import annotations

from typing import Mapping, NamedTuple

# A message id is one int: the spool's boot counter in the high bits, a
# per-boot sequence in the low ones, so ids are unique per hub across
# restarts and cost one addition to make (ingress reserves a block per read).
SEQ_BITS = 40
SEQ_MASK = (1 << SEQ_BITS) - 1

Headers = tuple[tuple[bytes, bytes], ...]
NO_CAPTURES: Mapping[str, str] = {}


def format_id(message_id: int) -> str:
    """The text form of a message id, as forwarders pass it on: ``BOOT-SEQ`` in hex."""
    return f"{message_id >> SEQ_BITS:x}-{message_id & SEQ_MASK:010x}"


def parse_id(text: str) -> int:
    boot, _, seq = text.partition("-")
    return (int(boot, 16) << SEQ_BITS) | int(seq, 16)


class Message(NamedTuple):
    """An accepted request on its way to a sink, flat and immutable.

    ``headers`` is the request's header block as the producer sent it (one
    tuple shared by every message of a compact state, so sinks can cache work
    per header block by identity); once spooled, credentials are left out.
    ``route`` is the accepting route's name; ``user`` who was authenticated
    (``None``: anonymous); ``captures`` the route template's path captures
    (shared per routing decision: never mutate it).  ``received`` is the
    reactor time of the read that brought it.  ``number`` is the request's
    position on its connection, for the answer; 0 once read back from the spool.

    Ingress builds these with ``tuple.__new__`` in field order (one allocation
    per message); everything else reads them by name.
    """

    id: int
    method: bytes
    target: bytes
    headers: Headers
    body: bytes
    route: str
    user: str | None
    captures: Mapping[str, str]
    received: float
    number: int = 0

    @property
    def id_text(self) -> str:
        return format_id(self.id)
