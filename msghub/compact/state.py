"""The value types of the compact codec: limits, state snapshots, requests.

A ``State`` is what the compact stream's ``V:``, ``B:``, ``M:`` and ``H:`` lines
build up and what ``>:`` stores in a register.  Every request issued while the
state is unchanged refers to the *same* ``State`` object, so consumers can cache
routing and authentication per state (the point of the 2009 article).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from operator import itemgetter
from typing import Iterable, Sequence

from msghub.compact.errors import UsageError

Header = tuple[bytes, bytes]

HTTP11 = b"HTTP/1.1"

# RFC 9110 5.6.2 token; RFC 9112 2.3 HTTP-version.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]")
# Visible ASCII: targets never contain spaces or controls.
_VCHARS = re.compile(rb"[\x21-\x7e]*")
# RFC 9110 5.5 field-value, already stripped of surrounding whitespace.
_FIELD_VALUE = re.compile(rb"(?:[\x21-\x7e\x80-\xff](?:[\x20\x09\x21-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?")
_REGISTER = re.compile(rb"[A-Za-z0-9._~-]+")

# Body framing belongs to the ``+`` line; these can never be set by ``H:``.
FRAMING_HEADERS = frozenset((b"content-length", b"transfer-encoding"))

is_token = _TOKEN.fullmatch
is_version = _VERSION.fullmatch
is_vchars = _VCHARS.fullmatch
is_field_value = _FIELD_VALUE.fullmatch
is_register_name = _REGISTER.fullmatch


@dataclass(frozen=True)
class Limits:
    """Every buffer the decoder keeps has a maximum; these are the defaults.

    See ``docs/compact-http.md`` ("Limits") for the status each breach produces.
    """

    max_line: int = 8192  # bytes in one line, CRLF excluded
    max_headers: int = 100  # header fields in the current state
    max_header_bytes: int = 16384  # sum of len(name) + len(value) + 4 over them
    max_registers: int = 64
    max_register_name: int = 64
    max_body: int = 4 * 1024 * 1024

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if not isinstance(value, int) or value < 1:
                raise UsageError(f"Limits.{name} must be a positive integer, not {value!r}")


class State:
    """An immutable snapshot of the per-connection request state.

    ``method`` is ``None`` until an ``M:`` line sets it: then ``-`` means GET
    and ``+`` means POST.  ``headers`` is a tuple of ``(name, value)`` pairs in
    order of first appearance, one per name (compared case-insensitively).
    Equality and hashing are semantic: header names case-insensitive, the
    order of differently named fields insignificant (RFC 9110 5.3).
    """

    __slots__ = ("version", "base", "method", "headers", "_by_name", "_key", "_hash", "__weakref__")

    version: bytes
    base: bytes
    method: bytes | None
    headers: tuple[Header, ...]
    _by_name: dict[bytes, Header]  # lower-case name -> (name, value)
    _key: tuple
    _hash: int

    def __init__(
        self,
        version: bytes = HTTP11,
        base: bytes = b"",
        method: bytes | None = None,
        headers: Iterable[Header] = (),
    ) -> None:
        headers = tuple(headers)
        by_name = {name.lower(): (name, value) for name, value in headers}
        setattr_ = object.__setattr__
        setattr_(self, "version", version)
        setattr_(self, "base", base)
        setattr_(self, "method", method)
        setattr_(self, "headers", headers)
        setattr_(self, "_by_name", by_name)
        key = (version, base, method, tuple(sorted((k, v[1]) for k, v in by_name.items())))
        setattr_(self, "_key", key)
        setattr_(self, "_hash", hash(key))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("State is immutable")

    def header(self, name: bytes) -> bytes | None:
        """The value of header ``name`` (any case), or ``None``."""
        found = self._by_name.get(name.lower())
        return None if found is None else found[1]

    def field_bytes(self) -> int:
        """Size of the headers as HTTP/1.1 field lines (``Name: value CRLF``)."""
        return sum(len(n) + len(v) + 4 for n, v in self.headers)

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, State):
            return NotImplemented
        return self._hash == other._hash and self._key == other._key

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return (
            f"State(version={self.version!r}, base={self.base!r}, "
            f"method={self.method!r}, headers={self.headers!r})"
        )


INITIAL_STATE = State()


def check_headers(headers: Iterable[Header]) -> tuple[Header, ...]:
    """Validate request headers for the compact form; raise ``UsageError``."""
    seen: set[bytes] = set()
    out = []
    for name, value in headers:
        if not (isinstance(name, bytes) and isinstance(value, bytes)):
            raise UsageError(f"header names and values must be bytes: {name!r}: {value!r}")
        if not is_token(name):
            raise UsageError(f"invalid header name {name!r}")
        lname = name.lower()
        if lname in FRAMING_HEADERS:
            raise UsageError(f"{name.decode()} is carried by the + line, not as a header")
        if lname in seen:
            raise UsageError(f"header {name.decode()} repeated: combine the fields first")
        value = value.strip(b" \t")
        if not is_field_value(value):
            raise UsageError(f"invalid value for header {name.decode()}: {value!r}")
        seen.add(lname)
        out.append((name, value))
    return tuple(out)


class Request(tuple):
    """One HTTP request: ``method``, ``target``, ``version``, ``headers``, ``body``.

    ``state`` is the snapshot the request was issued under (shared by every
    request of that state) and ``number`` its 1-based position on its
    connection (0 when built by hand).  Equality is HTTP-semantic: it ignores
    ``state`` identity, ``number``, header-name case and the order of
    differently named fields.

    The decoder builds these with ``tuple.__new__`` on its hot path; the public
    constructor validates its arguments.
    """

    __slots__ = ()

    method = property(itemgetter(0), doc="bytes, e.g. b'POST'")
    target = property(itemgetter(1), doc="bytes, the request-target (base + suffix)")
    body = property(itemgetter(2), doc="bytes, empty for a bodyless request")
    state = property(itemgetter(3), doc="the State this request was issued under")
    number = property(itemgetter(4), doc="1-based request number on its connection")

    def __new__(
        cls,
        method: bytes,
        target: bytes,
        headers: Iterable[Header] = (),
        body: bytes = b"",
        version: bytes = HTTP11,
    ) -> "Request":
        if not (isinstance(method, bytes) and is_token(method)):
            raise UsageError(f"invalid method {method!r}")
        if not (isinstance(target, bytes) and target and is_vchars(target)):
            raise UsageError(f"invalid request-target {target!r}")
        if not (isinstance(version, bytes) and is_version(version)):
            raise UsageError(f"invalid HTTP version {version!r}")
        if not isinstance(body, bytes):
            raise UsageError("body must be bytes")
        state = State(version, b"", method, check_headers(headers))
        return tuple.__new__(cls, (method, target, body, state, 0))

    @property
    def version(self) -> bytes:
        return self[3].version

    @property
    def headers(self) -> tuple[Header, ...]:
        return self[3].headers

    def semantic_key(self) -> tuple:
        state = self[3]
        return (self[0], self[1], state.version, state._key[3], self[2])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Request):
            return NotImplemented
        return self.semantic_key() == other.semantic_key()

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    def __hash__(self) -> int:
        return hash(self.semantic_key())

    def __repr__(self) -> str:
        return (
            f"Request(method={self[0]!r}, target={self[1]!r}, headers={self.headers!r}, "
            f"body={self[2]!r}, version={self.version!r})"
        )


@dataclass(frozen=True, slots=True)
class Rejected:
    """A request the decoder framed but refused (its body was too large).

    The stream goes on; the server answers ``E:number status reason``.
    """

    number: int
    status: int
    reason: str


def combine_fields(fields: Sequence[Header]) -> tuple[Header, ...]:
    """Combine repeated field lines into one per name (RFC 9110 5.3).

    Cookie lines are joined with ``"; "`` (RFC 6265 5.4), others with ``", "``.
    Set-Cookie cannot be combined (RFC 9110 5.3), so repeating it is refused.
    Order of first appearance is kept.
    """
    merged: dict[bytes, list] = {}
    for name, value in fields:
        lname = name.lower()
        slot = merged.get(lname)
        if slot is None:
            merged[lname] = [name, value.strip(b" \t")]
        elif lname == b"set-cookie":
            raise UsageError("repeated Set-Cookie fields cannot be combined")
        else:
            sep = b"; " if lname == b"cookie" else b", "
            slot[1] = slot[1] + sep + value.strip(b" \t")
    return tuple((n, v) for n, v in merged.values())
