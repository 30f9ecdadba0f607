"""The event-stream wire format, sans I/O: events in, bytes out, and bytes in, events out.

No Twisted here.  The hub, the tests and ``bench/push.py`` all use this one
encoder and this one reader, so there is a single definition of what an
event looks like.

A body is sent as text, one ``data:`` line per body line, when it is UTF-8
without CR or NUL and does not start with ``base64:``; a client that joins
the data lines with LF (as ``EventSource`` does) gets the body back exactly.
Any other body is sent as one line ``data: base64:`` + its base64, so the
marker can never be mistaken for a text body.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

MARKER = b"base64:"
HEARTBEAT = b": heartbeat\n"
HELLO = b": ok\n\n"  # first bytes of every stream: the subscriber is attached
_B64 = b"data: " + MARKER


class PeerError(Exception):
    """A reader got bytes that are not an event stream (or exceed its limits)."""


def is_text(body: bytes) -> bool:
    if b"\r" in body or b"\0" in body or body.startswith(MARKER):
        return False
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def field_text(value: str) -> bytes:
    """An ``id:`` or ``event:`` value: one line, whatever the source sent."""
    return value.replace("\r", " ").replace("\n", " ").encode("utf-8", "replace")


def encode_event(event_id: str, event: bytes, body: bytes) -> bytes:
    """One event; ``event`` is already ``field_text``-safe (cached per route or key)."""
    head = b"id: %s\nevent: %s\n" % (event_id.encode("ascii"), event)
    if is_text(body):
        if b"\n" in body:
            return head + b"data: " + body.replace(b"\n", b"\ndata: ") + b"\n\n"
        return head + b"data: " + body + b"\n\n"
    return head + _B64 + base64.b64encode(body) + b"\n\n"


def encode_gap(missed: int | None, first: str | None, last: str | None) -> bytes:
    """``event: gap``: ``missed`` events were dropped (None: how many is unknown), ``first``..``last`` their ids.

    It has no ``id:``, so a reconnecting client still names the last event it got.
    """
    data = json.dumps({"missed": missed, "from": first, "to": last}, separators=(",", ":"))
    return b"event: gap\ndata: " + data.encode() + b"\n\n"


def encode_overflow(missed: int, first: str | None, buffer_bytes: int) -> bytes:
    data = json.dumps({"missed": missed, "from": first, "buffer_bytes": buffer_bytes}, separators=(",", ":"))
    return b"event: overflow\ndata: " + data.encode() + b"\n\n"


def poll_item(event_id: str, event: str, body: bytes) -> dict:
    """One event of a ``?poll=1`` answer; binary bodies as ``data_base64``."""
    if is_text(body):
        return {"id": event_id, "event": event, "data": body.decode("utf-8")}
    return {"id": event_id, "event": event, "data_base64": base64.b64encode(body).decode("ascii")}


@dataclass(frozen=True)
class Event:
    """What a reader saw: ``data`` is the joined data lines, ``body`` what was sent."""

    id: str | None
    event: str
    data: str

    @property
    def body(self) -> bytes:
        if self.data.startswith("base64:"):
            return base64.b64decode(self.data[7:])
        return self.data.encode("utf-8")

    def json(self) -> object:
        return json.loads(self.data)


class EventReader:
    """Parses an event stream (after the HTTP head) into ``Event``s.

    Follows the EventSource rules that matter here: lines end in LF, CRLF or
    CR; ``:`` lines are comments; a blank line dispatches; ``id`` persists as
    the last event id.  ``comments`` counts comment lines (heartbeats).  A
    line longer than ``max_line`` bytes is a ``PeerError``.
    """

    def __init__(self, max_line: int = 16 << 20) -> None:
        self.max_line = max_line
        self.buffer = b""
        self.last_id: str | None = None
        self.comments = 0
        self._id: str | None = None
        self._event = ""
        self._data: list[str] = []

    def feed(self, data: bytes) -> list[Event]:
        buffer = self.buffer + data
        held = b""
        if buffer.endswith(b"\r"):  # maybe the first half of a CRLF split across reads
            buffer, held = buffer[:-1], b"\r"
        buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buffer.split(b"\n")
        self.buffer = lines.pop() + held
        if len(self.buffer) > self.max_line:
            raise PeerError(f"event-stream line longer than {self.max_line} bytes")
        out = []
        for raw in lines:
            line = raw.decode("utf-8", "replace")
            if not line:
                if self._data or self._event:
                    out.append(Event(self._id, self._event or "message", "\n".join(self._data)))
                self._id, self._event, self._data = self.last_id, "", []
                continue
            if line.startswith(":"):
                self.comments += 1
                continue
            name, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if name == "data":
                self._data.append(value)
            elif name == "event":
                self._event = value
            elif name == "id":
                self._id = self.last_id = value
        return out
