"""Compact HTTP encoder: requests in, the shortest stream it can find out.

For each request the encoder prices every place it could start from (the
current state, the initial state via ``<:``, each register it has set), adds
what it would cost to turn that into the request's state (``V:``, ``M:``,
``H:`` and ``B:`` lines) and to frame the request, and emits the cheapest.
A state built twice is stored in a register (``>:``) so that later returns
cost one ``<:`` line.  A decoder with the same ``Limits`` accepts its output:
a request over those limits raises ``UsageError`` instead of being encoded.
"""

from __future__ import annotations

from typing import Iterable

from msghub.compact.errors import UsageError
from msghub.compact.state import HTTP11, Header, Limits, Request

# (version, base, method, headers by lower-case name): what a register or the current state holds.
_Start = tuple[bytes, bytes, bytes | None, dict[bytes, Header]]
_INITIAL: _Start = (HTTP11, b"", None, {})
_SEEN_STATES = 1024  # recent state keys remembered for the register heuristic
# After this many repeats of one target the encoder moves the base onto it,
# so that each further request costs only "+: LEN" or "-:".
_REPEATS_FOR_BASE = 2


def _key(version: bytes, base: bytes, method: bytes | None, headers: dict) -> tuple:
    return (version, base, method, tuple(sorted((k, v[1]) for k, v in headers.items())))


def _dirname(target: bytes) -> bytes:
    path = target.split(b"?", 1)[0]
    return path[: path.rfind(b"/") + 1]


def _register_name(n: int) -> bytes:
    digits = b"0123456789abcdefghijklmnopqrstuvwxyz"
    out = b""
    while True:
        n, r = divmod(n, 36)
        out = digits[r : r + 1] + out
        if not n:
            return out


def check_request(request: Request, limits: Limits) -> None:
    """Raise ``UsageError`` if ``request``'s body or target is over what a decoder with ``limits`` reads.

    ``Encoder.encode`` raises the same error for the same requests; a client
    calls this before it queues a request, because an ``encode`` call that
    raises has already moved the encoder's state past the requests before it.
    """
    target, body = request[1], request[2]
    max_target = limits.max_line - 24  # "+:" SUFFIX " " up to 18 digits
    if len(body) > limits.max_body or (
        len(target) > max_target and len(target) + 3 + len(b"%d" % len(body)) > limits.max_line
    ):
        raise UsageError(
            f"request {target[:40]!r} is over the decoder's limits "
            f"(body {len(body)} > {limits.max_body} or target {len(target)} > {max_target} bytes)"
        )


class Encoder:
    """Encode one connection's requests; keeps the state the decoder will have.

    ``encode(requests)`` may be called any number of times; each call returns
    the bytes to append to the stream.
    """

    def __init__(self, limits: Limits = Limits()) -> None:
        self.limits = limits
        self._version, self._base, self._method = HTTP11, b"", None
        self._headers: dict[bytes, Header] = {}
        self._registers: dict[bytes, _Start] = {}  # name -> (version, base, method, headers)
        self._register_keys: dict[tuple, bytes] = {}  # state key -> name
        self._seen: dict[tuple, None] = {}
        self._next_register = 0
        self._last_state = None  # the Request.state last encoded with no change
        self._last_dir = b""
        self._last_target = b""
        self._repeats = 0  # how many requests in a row had the same target

    def encode(self, requests: Iterable[Request]) -> bytes:
        out: list[bytes] = []
        append = out.append
        max_body = self.limits.max_body
        max_target = self.limits.max_line - 24  # "+:" SUFFIX " " up to 18 digits
        for req in requests:
            method, target, body, state = req[0], req[1], req[2], req[3]
            if len(body) > max_body or len(target) > max_target:
                check_request(req, self.limits)  # raises when it is really over
            if target is self._last_target or target == self._last_target:
                self._repeats += 1
            else:
                self._last_target = target
                self._repeats = 0
            base = self._base
            # Fast path: same state as the last request, and no reason to move the
            # base (an empty base is worth a look whenever a long target changes).
            if (
                state is self._last_state
                and target.startswith(base)
                and (self._repeats < _REPEATS_FOR_BASE or base == target or len(target) < 2)
                and (base or self._repeats or len(target) < 8)
            ):
                current = self._method
                suffix = target[len(base) :] if (base or target != b"/") else b""
                if body:
                    if (current or b"POST") == method:
                        append(b"+:%s %d\r\n%s" % (suffix, len(body), body))
                        continue
                elif (current or b"GET") == method:
                    append(b"-:%s\r\n" % suffix)
                    continue
                elif (current or b"POST") == method:
                    append(b"+:%s 0\r\n" % suffix)
                    continue
            self._slow(req, append)
        return b"".join(out)

    # -- the general case --------------------------------------------------

    def _slow(self, req: Request, append) -> None:
        method, target, body, state = req[0], req[1], req[2], req[3]
        want = {n.lower(): (n, v) for n, v in state.headers}
        limits = self.limits
        if len(want) > limits.max_headers or state.field_bytes() > limits.max_header_bytes:
            raise UsageError(f"request {target[:40]!r} has more headers than the decoder's limits allow")
        if any(len(n) + len(v) + 3 > limits.max_line for n, v in want.values()):
            raise UsageError(f"request {target[:40]!r} has a header line over {limits.max_line} bytes")
        version = state.version
        directory = _dirname(target)
        if self._repeats >= _REPEATS_FOR_BASE and len(target) > 1:
            preferred = target
        elif directory == self._last_dir and len(directory) >= 4:
            preferred = directory
        else:
            preferred = None
        self._last_dir = directory

        current: _Start = (self._version, self._base, self._method, self._headers)
        candidates: list[tuple[int, bytes | None, _Start]] = [(0, None, current), (4, b"", _INITIAL)]
        for register, saved in self._registers.items():
            candidates.append((4 + len(register), register, saved))
        best: tuple[int, bytes | None, _Start, tuple] | None = None
        for load_cost, name, start in candidates:
            plan = self._plan(start, method, target, body, version, want, preferred)
            cost = load_cost + plan[0]
            if best is None or cost < best[0]:
                best = (cost, name, start, plan)
        assert best is not None  # there is always a candidate: the current state
        _, name, start, (_, lines, new_base, new_method, opcode) = best
        if name is not None:
            append(b"<:%s\r\n" % name)
        for line in lines:
            append(line)
        self._version = version
        self._base = new_base
        self._method = new_method
        self._headers = want if (lines or name is not None) else self._headers
        if lines:
            store = self._remember()
            if store:
                append(store)
        self._last_state = state
        suffix = b"" if (not new_base and target == b"/") else target[len(new_base) :]
        if opcode == b"-":
            append(b"-:%s\r\n" % suffix)
        else:
            append(b"+:%s %d\r\n%s" % (suffix, len(body), body))

    def _plan(self, start, method, target, body, version, want, preferred):
        """Price turning ``start`` into what ``req`` needs: (cost, lines, base, method, opcode)."""
        s_version, s_base, s_method, s_headers = start
        lines = []
        if s_version != version:
            lines.append(b"V:%s\r\n" % version)
        for lname, (name, value) in want.items():
            have = s_headers.get(lname)
            if have is None or have[1] != value:
                lines.append(b"H:%s:%s\r\n" % (name, value))
        for lname, (name, _) in s_headers.items():
            if lname not in want:
                lines.append(b"H:%s\r\n" % name)
        # Method and opcode: a bodied request needs '+'; an empty one may use either.
        options: list[tuple[int, bytes, bytes | None, bytes | None]] = []  # (cost, opcode, method, M: line)
        for opcode, default, extra in ((b"+", b"POST", 3), (b"-", b"GET", 0)):
            if opcode == b"-" and body:
                continue
            if (s_method or default) == method:
                options.append((extra, opcode, s_method, None))
            elif method == default:
                options.append((extra + 4, opcode, None, b"M:\r\n"))
            else:
                options.append((extra + 4 + len(method), opcode, method, b"M:%s\r\n" % method))
        extra, opcode, new_method, method_line = min(options, key=lambda o: o[0])
        if method_line:
            lines.append(method_line)
        new_base = s_base
        if preferred is not None and s_base != preferred:
            new_base = preferred
        elif not target.startswith(s_base):
            new_base = b""
        if new_base != s_base:
            lines.append(b"B:%s\r\n" % new_base)
        suffix_len = len(target) - len(new_base) if (new_base or target != b"/") else 0
        # ``lines`` already holds the M: line priced into ``extra``: count it once.
        cost = sum(map(len, lines)) + 4 + suffix_len + (len(b"%d" % len(body)) + 1 if opcode == b"+" else 0)
        return cost, lines, new_base, new_method, opcode

    def _remember(self) -> bytes | None:
        """The ``>:`` line storing the new state, the second time it is built."""
        key = _key(self._version, self._base, self._method, self._headers)
        if key in self._register_keys:
            return None
        seen = self._seen
        if key not in seen:
            if len(seen) >= _SEEN_STATES:
                del seen[next(iter(seen))]
            seen[key] = None
            return None
        registers = self._registers
        if len(registers) < self.limits.max_registers:
            name = _register_name(self._next_register)
            if len(name) > self.limits.max_register_name:
                return None  # no short name left: do without this register
            self._next_register += 1
        else:  # overwrite the oldest register
            name = next(iter(registers))
            del self._register_keys[_key(*registers.pop(name))]
        registers[name] = (self._version, self._base, self._method, self._headers)
        self._register_keys[key] = name
        return b">:%s\r\n" % name
