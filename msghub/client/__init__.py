"""Producer clients for msghub: blocking and Twisted, compact HTTP or plain HTTP.

    from msghub.client import CompactSender
    with CompactSender("127.0.0.1", 8081) as hub:
        for quote in quotes:
            hub.send("/opra/IBM", quote, {"Content-Type": "application/x-opra-quote"})
    # leaving the block flushed: every request was acknowledged, or Rejected was raised

See ``docs/clients.md``.  The Twisted client lives in ``msghub.client.txclient``
(imported lazily, so the blocking clients do not load the reactor).
"""

from typing import Any

from msghub.client._core import NO_ANSWER, Rejected, Target, Unreachable, UntrustedCertificate, parse_url
from msghub.client.blocking import CompactSender, HttpSender


def open_sender(url: str, **kwargs: Any) -> tuple[CompactSender | HttpSender, str]:
    """A blocking sender for ``compact://``, ``compacts://``, ``http://`` or ``https://`` HOST:PORT.

    Returns ``(sender, path)``: the URL's path (and query) is the caller's default target.
    """
    target = parse_url(url)
    if target.username is not None and "username" not in kwargs and "token" not in kwargs:
        kwargs["username"] = target.username
        kwargs["password"] = target.password
    cls = CompactSender if target.scheme == "compact" else HttpSender
    return cls(target.host, target.port, tls=target.tls, **kwargs), target.path


__all__ = [
    "NO_ANSWER",
    "CompactSender",
    "HttpSender",
    "Rejected",
    "Target",
    "Unreachable",
    "UntrustedCertificate",
    "open_sender",
    "parse_url",
]
