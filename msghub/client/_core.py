"""What every msghub client shares, sans-IO: requests, credentials, the unanswered window.

A client numbers what its caller sends (``send`` returns that number, 1, 2,
3, ... for the client's lifetime) and keeps every request until the hub has
answered it.  On the wire the hub numbers requests per connection, so the
window maps wire numbers to the caller's numbers; after a reconnect the
unanswered requests are written again in order and get new wire numbers.
"""

from __future__ import annotations

import base64
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping
from urllib.parse import urlsplit

from msghub.compact import Ack, Error, Fatal
from msghub.compact.errors import UsageError
from msghub.compact.state import HTTP11, Request, State, check_headers, combine_fields, is_token, is_vchars

_new = tuple.__new__
NO_ANSWER = 0  # the status of a request failed without an answer (connection lost, not resent)


class Rejected(Exception):
    """Some requests were refused: ``failures`` lists ``(number, status, reason)``.

    ``status`` is the HTTP status the hub gave, or 0 when the request got no
    answer and was not resent (``resend=False``, or the hub stayed unreachable).
    """

    def __init__(self, failures: list[tuple[int, int, str]]) -> None:
        self.failures = sorted(failures)
        shown = ", ".join(f"{n}: {s} {r}" for n, s, r in self.failures[:5])
        more = f" and {len(self.failures) - 5} more" if len(self.failures) > 5 else ""
        super().__init__(f"{len(self.failures)} request(s) refused ({shown}{more})")


class Unreachable(ConnectionError):
    """The hub could not be reached (or stopped answering) within the client's patience."""


class UntrustedCertificate(Unreachable):
    """The hub's TLS certificate did not verify (unknown CA, another host's name, expired).

    Raised at the first failed handshake: trying again would meet the same
    certificate, so the client does not wait out ``give_up_after``.
    """


@dataclass(frozen=True)
class Target:
    """A parsed ``compact://``, ``compacts://``, ``http://`` or ``https://`` URL."""

    scheme: str  # "compact" or "http"
    tls: bool
    host: str
    port: int
    path: str  # the path and query, "/" if empty
    username: str | None = None
    password: str | None = None


_SCHEMES = {"compact": ("compact", False, 8081), "compacts": ("compact", True, 8081),
            "http": ("http", False, 8080), "https": ("http", True, 443)}


def parse_url(url: str) -> Target:
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise ValueError(f"{url!r}: the scheme must be compact, compacts, http or https")
    scheme, tls, default_port = _SCHEMES[parts.scheme]
    if not parts.hostname:
        raise ValueError(f"{url!r}: no host")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(scheme, tls, parts.hostname, parts.port or default_port, path,
                  parts.username, parts.password)


def credentials(token: str | None, username: str | None, password: str | None) -> list[tuple[bytes, bytes]]:
    """The ``Authorization`` field for a bearer token or a user and password, or nothing."""
    if token and username:
        raise UsageError("give a token or a username and password, not both")
    if token:
        return [(b"Authorization", b"Bearer " + token.encode("ascii"))]
    if username is not None:
        if password is None:
            raise UsageError("a username needs a password")
        pair = f"{username}:{password}".encode("utf-8")
        return [(b"Authorization", b"Basic " + base64.b64encode(pair))]
    return []


# What a caller may pass: text is encoded (ASCII, or UTF-8 for a body), bytes-likes copied.
Text = str | bytes
Body = str | bytes | bytearray | memoryview
Headers = Mapping[Text, Text] | Iterable[tuple[Text, Text]]


def _bytes(value: object, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8" if what == "body" else "ascii")
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise UsageError(f"{what} must be bytes or str, not {type(value).__name__}")


class RequestMaker:
    """Build ``Request`` tuples cheaply: one ``State`` per distinct (method, headers).

    The codec's ``Encoder`` takes its fast path when consecutive requests
    share a ``State`` object, so reusing them is what makes repeated headers
    cost nothing after the first request.
    """

    MAX_STATES = 256

    def __init__(self, extra_headers: list[tuple[bytes, bytes]]) -> None:
        self.extra = extra_headers
        self.states: dict[tuple, State] = {}
        self.last_target: bytes | None = None

    def make(self, method: Text, path: Text, headers: Headers | None, body: Body) -> Request:
        method = _bytes(method, "method")
        target = _bytes(path, "path")
        body = _bytes(body, "body")
        if target is not self.last_target:
            if not (target and is_vchars(target)):
                raise UsageError(f"invalid request path {target[:60]!r}")
            self.last_target = target
        if headers:
            items = headers.items() if hasattr(headers, "items") else headers
            key = (method, tuple((_bytes(n, "header name"), _bytes(v, "header value")) for n, v in items))
        else:
            key = (method, ())
        state = self.states.get(key)
        if state is None:
            if not is_token(method):
                raise UsageError(f"invalid method {method!r}")
            fields = check_headers(combine_fields(list(key[1]) + self.extra))
            if len(self.states) >= self.MAX_STATES:
                self.states.clear()
            state = self.states[key] = State(HTTP11, b"", method, fields)
        return _new(Request, (method, target, body, state, 0))


class Window:
    """The requests sent and not yet answered, in wire order, and the answers so far.

    ``entries`` holds ``[number, request]``; the first entry's wire number on
    the current connection is ``base``.  ``feed(events)`` applies the hub's
    replies and returns ``(acked, failed, fatal)`` counts/info for the caller.
    """

    def __init__(self) -> None:
        self.entries: deque[tuple[int, Request]] = deque()
        self.written = 0  # entries[:written] were written on the current connection
        self.base = 1  # wire number of entries[0] on the current connection
        self.errors: dict[int, tuple[int, str]] = {}  # wire number -> (status, reason)
        self.failures: list[tuple[int, int, str]] = []  # not yet reported by flush()
        self.acked = 0
        self.rejected = 0

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, number: int, request: Request) -> None:
        self.entries.append((number, request))

    def unwritten(self, limit: int | None = None) -> list[Request]:
        """Up to ``limit`` requests not yet written on this connection; marks them written."""
        entries = self.entries
        start = self.written
        end = len(entries) if limit is None else min(len(entries), start + limit)
        self.written = end
        if start == 0 and end == len(entries):
            return [e[1] for e in entries]
        return [entries[i][1] for i in range(start, end)]

    def new_connection(self) -> None:
        """The connection is gone: everything unanswered is unwritten again, numbering restarts."""
        self.written = 0
        self.base = 1
        self.errors = {}

    def fail_all(self, status: int, reason: str) -> list[int]:
        failed = [number for number, _ in self.entries]
        self.failures.extend((n, status, reason) for n in failed)
        self.rejected += len(failed)
        self.entries.clear()
        self.written = 0
        return failed

    def feed(self, events: Iterable[Any]) -> tuple[list[int], list[tuple[int, int, str]], Fatal | None]:
        # events: Ack, Error and Fatal replies, told apart by class (which mypy does not narrow on).
        """Apply replies; returns the caller numbers acked, those refused, and a ``Fatal`` if any."""
        acked: list[int] = []
        refused: list[tuple[int, int, str]] = []
        fatal = None
        entries = self.entries
        for event in events:
            kind = event.__class__
            if kind is Ack:
                upto = event.number - self.base + 1
                if upto > self.written:
                    raise UsageError(f"A:{event.number} acknowledges requests never sent")
                errors = self.errors
                base = self.base
                for i in range(upto):
                    number, _ = entries.popleft()
                    wire = base + i
                    error = errors.pop(wire, None) if errors else None
                    if error is None:
                        acked.append(number)
                    else:
                        refused.append((number, error[0], error[1]))
                self.base += upto
                self.written -= upto
            elif kind is Error:
                self.errors[event.number] = (event.status, event.reason)
            elif kind is Fatal:
                fatal = event
            # Ids lines (only after O:message-ids, which these clients do not send) change nothing.
        if fatal is not None and self.errors:
            # E: lines not yet covered by an A: still answer their requests.
            for wire in sorted(self.errors):
                i = wire - self.base
                if 0 <= i < self.written:
                    number, _ = entries[i]
                    refused.append((number, *self.errors[wire]))
            done = {n for n, _, _ in refused}
            kept = [e for e in entries if e[0] not in done]
            self.written -= len(entries) - len(kept)
            entries.clear()
            entries.extend(kept)
            self.errors = {}
        self.acked += len(acked)
        self.rejected += len(refused)
        self.failures.extend(refused)
        return acked, refused, fatal

    def take_failures(self) -> list[tuple[int, int, str]]:
        failures, self.failures = self.failures, []
        return failures


# X: statuses after which resending the same bytes cannot help: our stream was malformed.
def fatal_is_permanent(fatal: Fatal) -> bool:
    return fatal.status in (400, 414, 431)


def backoff_delays(initial: float, maximum: float, factor: float = 2.0) -> Iterator[float]:
    delay = initial
    while True:
        yield delay
        delay = min(maximum, delay * factor)


__all__ = [
    "NO_ANSWER",
    "Rejected",
    "RequestMaker",
    "Target",
    "Unreachable",
    "UntrustedCertificate",
    "Window",
    "backoff_delays",
    "credentials",
    "fatal_is_permanent",
    "parse_url",
]
