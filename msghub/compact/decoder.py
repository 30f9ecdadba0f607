"""Compact HTTP decoder: bytes in, requests out, no I/O.

The hot path is a ``+``/``-`` line seen before under the current state: one
``find``, one slice, one dict lookup and one tuple per request.  Every other
line goes through ``_control``, which is allowed to be slow.
"""

from __future__ import annotations

from msghub.compact.errors import StreamError
from msghub.compact.replies import OPTION_MESSAGE_IDS
from msghub.compact.state import (
    FRAMING_HEADERS,
    HTTP11,
    INITIAL_STATE,
    Limits,
    Rejected,
    Request,
    State,
    is_field_value,
    is_register_name,
    is_token,
    is_vchars,
    is_version,
)

DEFAULT_LIMITS = Limits()
# What a human typing LF-terminated lines (nc, telnet without crlf) is told at once.
BARE_LF = "bare LF; lines end with CRLF"

# Lines are cached per state only while short, and only this many of them,
# so the cache stays bounded (~128 KiB) whatever the peer sends.
_CACHE_LINES = 1024
_CACHE_LINE_BYTES = 128

_new = tuple.__new__


def _opcode(line: bytes) -> str:
    """How an error reason names a line it cannot read: its opcode, never the rest.

    A misframed stream (HTTP/1.1 sent to the compact port, a body cut short)
    puts header values and tokens where opcodes belong, so an error reason,
    which is written to the log and back to the peer, shows at most the two
    bytes that stand where an opcode would.
    """
    head = line[:2]
    if len(head) == 2 and head[1:] == b":" and 0x21 <= head[0] <= 0x7E:
        return f"unknown opcode {head.decode('ascii')!r}"
    return "unknown line (no opcode)"


class Decoder:
    """Decode one connection's compact HTTP stream.

    ``feed(data)`` accepts any split of the stream and returns the requests
    completed so far, in order: ``Request`` objects, and ``Rejected`` events for
    requests that were framed but refused (body over ``limits.max_body``).
    A stream the spec forbids raises ``StreamError``; the events decoded
    before the bad line are on the exception as ``.events``.  After that the
    decoder is dead: every further ``feed`` raises the same error.

    ``message_ids=False`` is for a server that cannot send ``I:`` lines (the
    gateway): ``O:message-ids`` is then an unknown option, ``X:400``, as the
    spec asks, instead of a promise nobody keeps.
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS, message_ids: bool = True) -> None:
        self.limits = limits
        self._options = (OPTION_MESSAGE_IDS,) if message_ids else ()  # O: lines this server knows
        self._parts: list[bytes] = []  # unparsed bytes, joined lazily
        self._have = 0  # total length of _parts
        self._need = 1  # parse again once _have reaches this
        self._skip = 0  # bytes of a refused body still to discard
        self._body_wait = False  # the buffer ends inside a body (else inside a line)
        self._consumed = 0  # bytes parsed into complete lines and bodies
        self._count = 0  # requests framed so far
        self._error: StreamError | None = None
        # The state under construction ...
        self._version = HTTP11
        self._base = b""
        self._method: bytes | None = None
        self._headers: dict[bytes, tuple[bytes, bytes]] = {}
        # ... and its snapshot, or None while V/B/M/H lines have changed it.
        self._state: State | None = INITIAL_STATE
        self._registers: dict[bytes, State] = {}
        self._lines: dict[bytes, tuple] = {}  # line -> (method, target, length|None)
        # ``O:message-ids`` was read: the server sends ``I:`` lines from then on.
        self.message_ids = False
        self.message_ids_from = 0  # ... for the requests from this number on (0: not asked)

    @property
    def requests_framed(self) -> int:
        """How many ``+``/``-`` lines have been completed (accepted or rejected)."""
        return self._count

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a completed request or state line."""
        return self._have

    @property
    def consumed(self) -> int:
        """Bytes parsed so far into complete lines and bodies: where the open line or body begins."""
        return self._consumed

    @property
    def in_body(self) -> bool:
        """True when the bytes so far end inside a request body (else inside a line, or between)."""
        return self._skip > 0 or self._body_wait

    @property
    def state(self) -> State:
        """The current state snapshot."""
        return self._snapshot()

    def feed(self, data: bytes) -> list:
        if self._error is not None:
            raise self._error
        if self._skip:
            if len(data) <= self._skip:
                self._skip -= len(data)
                return []
            data = data[self._skip :]
            self._skip = 0
        if data:
            self._parts.append(data)
            self._have += len(data)
        if self._have < self._need:
            return []
        parts = self._parts
        buf = parts[0] if len(parts) == 1 else b"".join(parts)
        out: list = []
        try:
            pos = self._parse(buf, out)
        except StreamError as e:
            e.events = out
            self._error = e
            self._parts = []
            self._have = 0
            raise
        self._consumed += pos
        rest = buf[pos:] if pos < len(buf) else b""
        self._parts = [rest] if rest else []
        self._have = len(rest)
        if self._need <= self._have:  # waiting for a line, not a body
            self._need = self._have + 1
        return out

    def _parse(self, buf: bytes, out: list) -> int:
        limits = self.limits
        max_line = limits.max_line
        append = out.append
        find = buf.find
        blen = len(buf)
        lines = self._lines
        get = lines.get
        state = self._state
        num = self._count
        pos = 0
        self._need = 0
        self._body_wait = False
        while True:
            eol = find(b"\r\n", pos)
            if eol < 0:
                lf = find(b"\n", pos)
                # A line longer than max_line + 1 (a CR may follow) is too long
                # before its LF arrives: the same error however it was split.
                if 0 <= lf and lf - pos <= max_line + 1:  # no CRLF after pos, so this LF is bare
                    self._count = num
                    raise self._bare_lf(buf[pos : pos + 1], num)
                if blen - pos > max_line + 1:
                    self._count = num
                    raise self._too_long(buf[pos : pos + 1], num)
                break
            line = buf[pos:eol]
            hit = get(line)
            if hit is not None:
                length = hit[2]
                num += 1
                if length is None:
                    append(_new(Request, (hit[0], hit[1], b"", state, num)))
                    pos = eol + 2
                    continue
                start = eol + 2
                end = start + length
                if end > blen:
                    num -= 1
                    self._need = end - pos
                    self._body_wait = True
                    break
                append(_new(Request, (hit[0], hit[1], buf[start:end], state, num)))
                pos = end
                continue
            # Slow path: a line not seen under this state.
            self._count = num
            lf = line.find(b"\n")
            if 0 <= lf <= max_line + 1:
                raise self._bare_lf(line[:1], num)
            if eol - pos > max_line:
                raise self._too_long(line[:1], num)
            op = line[:2]
            if op == b"+:":
                suffix, space, digits = line.rpartition(b" ")
                if not space or not digits.isdigit() or len(digits) > 18:
                    raise StreamError(400, "malformed + line: expected '+:SUFFIX LEN'", num + 1)
                suffix = suffix[2:]
                length = int(digits)
            elif op == b"-:":
                suffix = line[2:]
                length = None
            else:
                self._control(line)
                pos = eol + 2
                lines = self._lines
                get = lines.get
                state = self._state
                continue
            if not is_vchars(suffix):
                raise StreamError(400, "request-target suffix has spaces or control bytes", num + 1)
            if state is None:
                state = self._snapshot()
            if length is not None and length > limits.max_body:
                num += 1
                append(Rejected(num, 413, "body too large"))
                start = eol + 2
                if start + length <= blen:
                    pos = start + length
                    continue
                self._skip = start + length - blen
                self._count = num
                return blen
            method = state.method or (b"GET" if length is None else b"POST")
            entry = (method, state.base + suffix or b"/", length)
            if eol - pos <= _CACHE_LINE_BYTES:
                if len(lines) >= _CACHE_LINES:
                    lines.clear()
                lines[line] = entry
                continue  # the loop now finds it in the cache
            num += 1
            if length is None:
                append(_new(Request, (entry[0], entry[1], b"", state, num)))
                pos = eol + 2
                continue
            start = eol + 2
            end = start + length
            if end > blen:
                num -= 1
                self._need = end - pos
                self._body_wait = True
                break
            append(_new(Request, (entry[0], entry[1], buf[start:end], state, num)))
            pos = end
        self._count = num
        return pos

    def _bare_lf(self, opcode: bytes, num: int) -> StreamError:
        return StreamError(400, BARE_LF, num + 1 if opcode in (b"-", b"+") else None)

    def _too_long(self, opcode: bytes, num: int) -> StreamError:
        if opcode == b"H":
            return StreamError(431, "header line too long")
        if opcode in (b"B", b"-", b"+"):
            return StreamError(414, "request-target line too long", None if opcode == b"B" else num + 1)
        return StreamError(400, "line too long")

    def _snapshot(self) -> State:
        state = self._state
        if state is None:
            state = State(self._version, self._base, self._method, self._headers.values())
            self._state = state
        return state

    def _changed(self) -> None:
        self._state = None
        self._lines = {}

    def _control(self, line: bytes) -> None:
        op = line[:2]
        arg = line[2:]
        if op == b"H:":
            self._header(arg)
        elif op == b"B:":
            if not is_vchars(arg):
                raise StreamError(400, "base URL has spaces or control bytes")
            if arg != self._base:
                self._base = arg
                self._changed()
        elif op == b"M:":
            if arg and not is_token(arg):
                raise StreamError(400, "method is not a token")
            method = arg or None
            if method != self._method:
                self._method = method
                self._changed()
        elif op == b"V:":
            if not is_version(arg):
                raise StreamError(400, "version must be HTTP/d.d")
            if arg != self._version:
                self._version = arg
                self._changed()
        elif op == b">:":
            self._store(arg)
        elif op == b"<:":
            self._load(arg)
        elif op == b"O:":
            if arg not in self._options:
                raise StreamError(400, f"unknown option ({len(arg)} bytes)")
            if not self.message_ids:
                self.message_ids = True
                self.message_ids_from = self._count + 1
        else:
            raise StreamError(400, _opcode(line))

    def _header(self, arg: bytes) -> None:
        name, colon, value = arg.partition(b":")
        if not is_token(name):
            raise StreamError(400, "header name is not a token")
        lname = name.lower()
        headers = self._headers
        if not colon:
            if headers.pop(lname, None) is not None:
                self._changed()
            return
        if lname in FRAMING_HEADERS:
            raise StreamError(400, f"{name.decode()} cannot be set by H: (the + line frames bodies)")
        value = value.strip(b" \t")
        if not is_field_value(value):
            raise StreamError(400, "header value has control bytes")
        entry = (name, value)
        old = headers.get(lname)
        if old == entry:
            return
        limits = self.limits
        if old is None and len(headers) >= limits.max_headers:
            raise StreamError(431, "too many headers")
        size = sum(len(n) + len(v) + 4 for n, v in headers.values())
        size += len(name) + len(value) + 4 - (0 if old is None else len(old[0]) + len(old[1]) + 4)
        if size > limits.max_header_bytes:
            raise StreamError(431, "headers too large")
        headers[lname] = entry  # a replaced name keeps its position
        self._changed()

    def _store(self, name: bytes) -> None:
        limits = self.limits
        if not name or len(name) > limits.max_register_name or not is_register_name(name):
            raise StreamError(400, "invalid register name")
        registers = self._registers
        if name not in registers and len(registers) >= limits.max_registers:
            raise StreamError(400, "too many registers")
        registers[name] = self._snapshot()

    def _load(self, name: bytes) -> None:
        if name:
            state = self._registers.get(name)
            if state is None:
                raise StreamError(400, f"unknown register ({len(name)} bytes)")
        else:
            state = INITIAL_STATE
        if state is self._state:
            return
        self._version = state.version
        self._base = state.base
        self._method = state.method
        self._headers = {n.lower(): (n, v) for n, v in state.headers}
        self._state = state
        self._lines = {}
