"""Server -> client lines of the compact protocol: ``A:n``, ``E:n STATUS reason``, ``X:STATUS reason``, ``I:n ID``.

Writers for the server and a ``ReplyReader`` for clients.  Like the decoder,
no I/O: bytes in, events out.
"""

from __future__ import annotations

from dataclasses import dataclass

from msghub.compact.errors import StreamError, UsageError

MAX_REPLY_LINE = 1024
# The client line ``O:message-ids`` asks for ``I:`` lines (docs/compact-http.md, section 6).
OPTION_MESSAGE_IDS = b"message-ids"
MESSAGE_IDS_LINE = b"O:message-ids\r\n"


@dataclass(frozen=True, slots=True)
class Ack:
    """Every request up to ``number`` not answered by an ``E:`` line is safe."""

    number: int


@dataclass(frozen=True, slots=True)
class Error:
    """Request ``number`` was refused with HTTP ``status``."""

    number: int
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class Fatal:
    """The server ends the stream with HTTP ``status``; no request after the last ``A:`` is safe."""

    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class Ids:
    """Request ``number`` and those after it, up to the next ``I:`` line, have consecutive message ids.

    ``first`` is the id of request ``number`` as text (``BOOT-SEQ`` in hex,
    as the hub prints ids); ``id_of(n)`` gives request n's.  A request
    refused by an ``E:`` line has no message, so its id names nothing.
    """

    number: int
    first: str

    def id_of(self, number: int) -> str:
        boot, _, seq = self.first.partition("-")
        return f"{boot}-{int(seq, 16) + number - self.number:010x}"


def _reason(reason: str) -> bytes:
    data = reason.encode("ascii", "replace")
    if b"\r" in data or b"\n" in data or len(data) > 200:
        raise UsageError("reason must be one short line")
    return data


def ack_line(number: int) -> bytes:
    return b"A:%d\r\n" % number


def error_line(number: int, status: int, reason: str) -> bytes:
    return b"E:%d %d %s\r\n" % (number, status, _reason(reason))


def fatal_line(status: int, reason: str) -> bytes:
    return b"X:%d %s\r\n" % (status, _reason(reason))


def ids_line(number: int, boot: int, seq: int) -> bytes:
    return b"I:%d %x-%010x\r\n" % (number, boot, seq)


def _is_hex(data: bytes) -> bool:
    return bool(data) and all(c in b"0123456789abcdef" for c in data)


def _status(data: bytes) -> int:
    if len(data) != 3 or not data.isdigit():
        raise ValueError(data)
    return int(data)


class ReplyReader:
    """Parse the server's reply lines; raises ``StreamError`` on garbage."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[Ack | Error | Fatal | Ids]:
        buf = self._buf + data
        out: list[Ack | Error | Fatal | Ids] = []
        pos = 0
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            out.append(self._line(buf[pos:eol]))
            pos = eol + 2
        self._buf = buf[pos:]
        if len(self._buf) > MAX_REPLY_LINE:
            raise StreamError(400, "reply line too long")
        return out

    @staticmethod
    def _line(line: bytes) -> Ack | Error | Fatal | Ids:
        op, arg = line[:2], line[2:]
        try:
            if op == b"A:" and arg.isdigit():
                return Ack(int(arg))
            if op == b"E:":
                number, status, reason = arg.split(b" ", 2)
                if number.isdigit():
                    return Error(int(number), _status(status), reason.decode("ascii", "replace"))
            if op == b"I:":
                number, first = arg.split(b" ")
                boot, dash, seq = first.partition(b"-")
                if number.isdigit() and dash and _is_hex(boot) and _is_hex(seq):
                    return Ids(int(number), first.decode("ascii"))
            if op == b"X:":
                status, _, reason = arg.partition(b" ")
                return Fatal(_status(status), reason.decode("ascii", "replace"))
        except ValueError:
            pass
        raise StreamError(400, f"bad reply line {line[:40]!r}")
