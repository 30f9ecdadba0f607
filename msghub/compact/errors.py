"""The two error families of the compact codec, after h11.

``StreamError`` means the peer sent something the spec forbids; it carries the
HTTP status the server answers with (``X:STATUS reason``) and ends the stream.
``UsageError`` means our caller misused the API (for example asked the encoder
to carry a header the compact form cannot carry); it is a bug on our side of
the wire, never something a peer can trigger.
"""

from __future__ import annotations


class CompactError(Exception):
    """Base class of every error the codec raises."""


class StreamError(CompactError):
    """The peer's stream is invalid; the connection cannot continue.

    ``status`` is the HTTP status to report, ``reason`` a short phrase safe to
    send back on the wire, ``number`` the request number the error belongs to
    when it is known (else ``None``).  A decoder that raises it puts the
    events it completed before the bad input on ``events``.
    """

    def __init__(self, status: int, reason: str, number: int | None = None) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.number = number
        self.events: list = []


class UsageError(CompactError):
    """The caller used the codec API wrongly."""
