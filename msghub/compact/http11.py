"""Translation between ``Request`` objects and plain HTTP/1.1 request bytes, sans-IO.

``to_http11`` writes one request.  ``Http11Reader`` reads a stream of them with
httptools (llhttp) rather than a parser of ours, and produces the same
``Request`` values the compact ``Decoder`` does, so both ingress ports hand
one type to the router.

Framing is the reader's business, not the request's: ``Content-Length`` and
``Transfer-Encoding`` are consumed and dropped (chunked bodies arrive
de-chunked), exactly as the compact ``+`` line frames bodies without a header.
"""

from __future__ import annotations

import httptools

from msghub.compact.errors import StreamError, UsageError
from msghub.compact.state import FRAMING_HEADERS, HTTP11, Limits, Request, State, combine_fields, is_vchars

__all__ = ["Http11Reader", "to_http11"]

DEFAULT_LIMITS = Limits()

# RFC 9110 8.6: a user agent sends Content-Length with these even when the
# body is empty, because the method defines a meaning for content.
_CONTENT_METHODS = frozenset((b"POST", b"PUT", b"PATCH"))

_VERSIONS = {"1.1": HTTP11, "1.0": b"HTTP/1.0"}

# The raw head also holds the method, the version, separators and optional
# whitespace, none of which the per-part limits count.
_HEAD_SLACK = 1024

# Fields the reader consumes instead of passing on: the framing and Expect.
_READER_FIELDS = FRAMING_HEADERS | {b"expect"}
_READER_LENGTHS = frozenset(map(len, _READER_FIELDS))

_new = tuple.__new__


def to_http11(request: Request) -> bytes:
    """The HTTP/1.1 bytes of ``request``: request line, fields in order, framing, body.

    ``Content-Length`` is added when the body is non-empty or the method is
    POST, PUT or PATCH (RFC 9110 8.6).  Requests whose version is not
    ``HTTP/1.x`` raise ``UsageError``: this framing would misdescribe them.
    """
    method, target, body, state = request[0], request[1], request[2], request[3]
    version = state.version
    if not version.startswith(b"HTTP/1."):
        raise UsageError(f"{version.decode()} requests cannot be written as HTTP/1.1")
    out = [b"%s %s %s\r\n" % (method, target, version)]
    out.extend(b"%s: %s\r\n" % field for field in state.headers)
    if body or method in _CONTENT_METHODS:
        out.append(b"Content-Length: %d\r\n" % len(body))
    out.append(b"\r\n")
    out.append(body)
    return b"".join(out)


def _printable(text: str) -> str:
    """A short wire-safe reason: the peer's bytes may appear in it."""
    return "".join(c if " " <= c <= "~" else "?" for c in text[:100])


class Http11Reader:
    """Read one connection's HTTP/1.1 requests, in any split, pipelined.

    The one HTTP/1.1 reader: the plain port, the gateway and the CLI all use
    it.  ``feed(data)`` returns the requests completed so far, in order.
    Repeated fields are combined (``combine_fields``); a repeated Set-Cookie is
    refused.  Requests issued with the same version, method and fields share
    one ``State`` object (up to ``MAX_STATES`` of them), as the compact
    decoder's do, so consumers can cache per state and the ``Encoder`` takes
    its fast path.

    Once a request that closes the connection has been read (HTTP/1.0 without
    keep-alive, or ``Connection: close``), ``done`` is true and the bytes after
    it are not read, as a server that is about to close would not read them
    (h11's ``MUST_CLOSE``).

    Bad input raises ``StreamError`` carrying the requests completed before
    it as ``.events``; after that the reader is dead and every further call
    raises the same error.  An exception of any other type is a bug on our
    side, never the peer's bytes, and is raised as it is.  The maxima come from
    ``limits`` and are the compact decoder's, so whatever this reader accepts,
    a ``Decoder`` with the same ``Limits`` accepts once ``Encoder`` has encoded
    it:

    ==========================================================  ======
    breach                                                      status
    ==========================================================  ======
    request-target over ``max_line`` (less its ``+:`` framing)  414
    field lines over ``max_header_bytes`` (``len(name) +        431
    len(value) + 4`` each, before combining; CL/TE excluded)
    more than ``max_headers`` distinct field names              431
    a combined field over ``max_line`` as an ``H:`` line        431
    the raw head over ``max_line + max_header_bytes + 1024``    431
    (bounds a head whose line never ends; counted over the
    reads spent inside one head, except a read in which
    earlier requests ended)
    trailer fields over ``max_header_bytes`` (then dropped)     431
    the raw trailer section over ``max_header_bytes + 1024``    431
    (counted the same way, from the read after the last chunk's)
    ``Content-Length`` over ``max_body`` (before the body)      413
    body over ``max_body`` (counted as it arrives)              413
    a version other than HTTP/1.0 or HTTP/1.1                   505
    HTTP/2's connection preface (``PRI * HTTP/2.0``)            505
    a request line without a version (HTTP/0.9), at once        400
    an ``Expect`` other than ``100-continue``                   417
    a transfer coding other than chunked (RFC 9112 6.1)         501
    an Upgrade or CONNECT request with a chunked body           501
    anything httptools refuses                                  400
    ==========================================================  ======

    ``Upgrade`` is declined by ignoring it (RFC 9110 7.8): the request is
    an ordinary request, its ``Content-Length`` body is read, and the bytes
    after it are read as the next request.  So ``curl --http2`` against an
    ``http://`` URL, which offers ``Upgrade: h2c``, gets its answer in
    HTTP/1.1.  CONNECT is passed on as an ordinary request the same way (the
    router has no route for an authority-form target).
    """

    MAX_STATES = 64  # header blocks remembered; the cache is emptied when full

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self._head_budget = limits.max_line + limits.max_header_bytes + _HEAD_SLACK
        self._trailer_budget = limits.max_header_bytes + _HEAD_SLACK
        self._proto = _Protocol(limits, self.MAX_STATES)
        self._parser = httptools.HttpRequestParser(self._proto)
        self._proto.parser = self._parser
        self._error: StreamError | None = None
        self._closed = False
        # (head bytes, body length, method, target, State) of the last request
        # read alone from a read of its own: see _repeated.
        self._repeat: tuple | None = None

    @property
    def at_boundary(self) -> bool:
        """True when the bytes fed so far end between two requests."""
        return self._error is None and not self._proto.in_message

    @property
    def number(self) -> int:
        """Requests begun so far: the number of the open one, when there is one."""
        return self._proto.count

    @property
    def in_head(self) -> bool:
        """True when the bytes so far end inside a request head."""
        return self._proto.in_head

    @property
    def in_body(self) -> bool:
        """True when the bytes so far end inside a request body."""
        proto = self._proto
        return proto.in_message and not proto.in_head

    def expectation(self) -> Request | None:
        """The request whose head asked for ``100 Continue`` and whose body has not come yet, once.

        Its body is empty here; the complete request comes out of ``feed`` as
        usual.  ``Expect`` is consumed (never among the fields); an
        expectation other than ``100-continue`` is 417.  HTTP/1.0 requests and
        requests without a body are never returned.
        """
        found = self._proto.expecting
        self._proto.expecting = None
        return found

    @property
    def done(self) -> bool:
        """True once a request that closes the connection has been read: nothing after it is."""
        return self._proto.done

    def feed(self, data: bytes) -> list[Request]:
        if self._error is not None:
            raise self._error
        if self._closed:
            raise UsageError("feed() after close()")
        proto = self._proto
        if proto.done:
            return []
        repeat = self._repeat
        if repeat is not None and not proto.in_message and data.startswith(repeat[0]):
            data = self._repeated(data, repeat)
            if not data:
                out = proto.out
                proto.out = []
                return out
        single = not proto.in_message and not proto.out and data[:1] not in (b"\r", b"\n")
        parser = self._parser
        body_before = proto.body_len
        try:
            if proto.body_left:  # inside the body of a declined Upgrade
                data = proto.take_body(data)
            while data and not proto.done:
                try:
                    parser.feed_data(data)
                    break
                except httptools.HttpParserUpgrade as e:
                    # The head is read; carry on as HTTP/1.1 (see class doc).
                    data = data[e.args[0] :]
                    if proto.body_left:
                        data = proto.take_body(data)
        except httptools.HttpParserError as e:
            cause = e.__context__
            if isinstance(cause, _Stop):  # a closing request: the rest is not read
                pass
            elif isinstance(cause, StreamError):  # raised by one of our callbacks
                e.__context__ = None  # no cycle: cause -> e -> cause
                cause.__suppress_context__ = True  # llhttp's "callback error" adds nothing
                self._fail(cause)
                raise cause  # noqa: B904 (it carries its own __cause__, e.g. a UsageError)
            elif cause is not None:  # a bug in a callback, not the peer's fault
                raise cause  # noqa: B904 (the bug itself, with its own traceback)
            elif e.__class__ is httptools.HttpParserError and parser.get_method() == b"PRI":
                # llhttp stops at HTTP/2's connection preface (prior knowledge, RFC 9113 3.4).
                error = StreamError(505, "HTTP/2 connection preface not supported (HTTP/1.x only)", proto.count)
                self._fail(error)
                raise error from e
            else:
                error = StreamError(400, _printable(str(e)), proto.count or None)
                self._fail(error)
                raise error from e
        except _Stop:  # take_body completed a closing request
            pass
        except StreamError as failed:  # from take_body
            self._fail(failed)
            raise
        if proto.in_head:
            if proto.url_len and parser.get_http_version() == "0.0" and self._line_ended(data):
                # llhttp reads a request line without a version as HTTP/0.9 and
                # waits for fields; an HTTP/0.9 client waits for a response.
                error = StreamError(400, "HTTP/0.9 request line (no version) not supported", proto.count)
                self._fail(error)
                raise error
            # httptools keeps a field line it has not finished to itself, so an
            # endless line is bounded here by the bytes fed while the head stayed
            # open.  A head that began in this feed is all of it but leading blank
            # lines, unless requests ended in this feed too: where it began is
            # then unknown, and that one read is not counted.
            if proto.fresh:
                proto.fresh = False
                if not proto.out:
                    proto.head_fed = len(data.lstrip(b"\r\n"))
            else:
                proto.head_fed += len(data)
            if proto.head_fed > self._head_budget:
                error = StreamError(431, "header section too large", proto.count)
                self._fail(error)
                raise error
        elif proto.chunk_open:
            # After a chunk's size line, a feed that adds nothing to the body is
            # in the trailer section, whose unfinished line httptools also keeps
            # to itself: bounded the same way (it used to grow without end).
            if proto.chunk_fresh:
                proto.chunk_fresh = False
                proto.trailer_fed = 0
            elif proto.body_len == body_before:
                proto.trailer_fed += len(data)
                if proto.trailer_fed > self._trailer_budget:
                    error = StreamError(431, "trailer section too large", proto.count)
                    self._fail(error)
                    raise error
        out = proto.out
        proto.out = []
        if single and len(out) == 1 and proto.plain and not proto.in_message and not proto.done:
            self._remember(data, out[0])
        return out

    def _remember(self, data: bytes, request: Request) -> None:
        """``data`` was exactly one plain request: the next read of the same head and length skips the parser."""
        body = request[2]
        cut = len(data) - len(body)
        head = data[:cut]
        if head.endswith(b"\r\n\r\n") and data.endswith(body) and self._proto.length == len(body):
            self._repeat = (head, len(body), request[0], request[1], request[3])

    def _repeated(self, data: bytes, repeat: tuple) -> bytes:
        """Requests whose bytes repeat the remembered head and length: parsed once, so not again.

        llhttp would read identical bytes identically (same limits, same
        State), so they come out as ``feed`` would make them; what follows
        them is returned for the parser.  This is what a producer that sends
        the same headers on every request (wrk, most clients) costs: a
        comparison and a slice instead of eight parser callbacks.
        """
        head, length, method, target, state = repeat
        proto = self._proto
        out = proto.out
        size = len(head) + length
        pos = 0
        end = len(data)
        while end - pos >= size and data.startswith(head, pos):
            proto.count += 1
            out.append(_new(Request, (method, target, data[pos + len(head) : pos + size], state, proto.count)))
            pos += size
        return data[pos:] if pos else data

    def _line_ended(self, data: bytes) -> bool:
        """Whether ``data`` holds a line end after the start of the open head (when that can be told)."""
        proto = self._proto
        if not proto.fresh:  # the head began before this feed
            return b"\n" in data
        if proto.out:  # requests ended in this feed too: where the head began is unknown
            return False  # (the head timeout ends it)
        return b"\n" in data.lstrip(b"\r\n")  # it began this feed, after blank lines at most

    def close(self) -> None:
        """Declare the end of the stream; ``StreamError`` (400) if it ended inside a request."""
        if self._error is not None:
            raise self._error
        self._closed = True
        if self._proto.in_message:
            error = StreamError(400, "stream ended inside a request", self._proto.count)
            self._fail(error)
            raise error

    def _fail(self, error: StreamError) -> None:
        error.events = self._proto.out
        self._proto.out = []
        self._error = error


class _Stop(Exception):
    """Raised from ``on_message_complete`` to stop parsing after a closing request."""


class _Protocol:
    """The httptools callbacks: assemble each message into a ``Request``."""

    parser: httptools.HttpRequestParser

    def __init__(self, limits: Limits, max_states: int) -> None:
        self.max_line = limits.max_line
        self.max_headers = limits.max_headers
        self.max_header_bytes = limits.max_header_bytes
        self.max_body = limits.max_body
        self.max_states = max_states
        self.out: list[Request] = []
        self.count = 0  # messages begun
        self.in_message = False
        self.in_head = False
        self.fresh = False  # the open head began during the current feed
        self.head_fed = 0
        self.done = False  # a request that closes the connection was read
        self.version = HTTP11
        self.method = b""
        self.states: dict[tuple, State] = {}  # (version, method, fields) -> State
        # The message being read (reset by on_message_begin).
        self.url: list[bytes] = []
        self.url_len = 0
        self.fields: list[tuple[bytes, bytes]] = []
        self.field_bytes = 0
        self.trailer_bytes = 0
        self.body: list[bytes] = []
        self.body_len = 0
        self.length = 0  # the Content-Length value
        self.chunked = False
        self.expect = False  # the head asked for 100 Continue
        self.plain = False  # the last head framed its body by Content-Length alone: no upgrade, Expect or chunks
        self.expecting: Request | None = None  # its request, body still to come, until asked for
        self.body_left = 0  # Content-Length bytes of a declined Upgrade not yet read
        self.chunk_open = False  # after a chunk's size line, before its end (the last one's: after trailers)
        self.chunk_fresh = False  # that size line was read in the current feed
        self.trailer_fed = 0  # bytes fed since, while the body did not grow

    def on_message_begin(self) -> None:
        self.count += 1
        self.in_message = self.in_head = self.fresh = True
        self.head_fed = 0
        self.url = []
        self.url_len = 0
        self.fields = []
        self.field_bytes = 0
        self.trailer_bytes = 0
        self.body = []
        self.body_len = 0
        self.length = 0
        self.chunked = False
        self.expect = False
        self.chunk_open = False

    def on_chunk_header(self) -> None:
        self.chunk_open = self.chunk_fresh = True

    def on_chunk_complete(self) -> None:
        self.chunk_open = False

    def on_url(self, data: bytes) -> None:
        self.url.append(data)
        self.url_len += len(data)
        if self.url_len > self.max_line:
            raise StreamError(414, "request-target too long", self.count)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.in_head:
            self._trailer(name, value)
            return
        # Lengths first: most fields are not Content-Length, Transfer-Encoding or Expect.
        if len(name) in _READER_LENGTHS and (lname := name.lower()) in _READER_FIELDS:
            self._framing(lname, value)
            return
        self.field_bytes += len(name) + len(value) + 4
        if self.field_bytes > self.max_header_bytes:
            raise StreamError(431, "header section too large", self.count)
        self.fields.append((name, value))

    def _framing(self, lname: bytes, value: bytes) -> None:
        """Content-Length or Transfer-Encoding (httptools frames the body: note how) or Expect."""
        value = value.strip(b" \t")
        if lname == b"expect":
            # RFC 9110 10.1.1: 100-continue is the only expectation defined.
            if value.lower() != b"100-continue":
                raise StreamError(417, "expectation not supported", self.count)
            self.expect = True
        elif lname == b"transfer-encoding":
            # De-chunking is all httptools does; any other coding would reach
            # the router still encoded, with its label dropped.
            if value.lower() != b"chunked":
                raise StreamError(501, "transfer coding not supported", self.count)
            self.chunked = True
        else:  # llhttp has checked the digits
            self.length = int(value)
            if self.length > self.max_body:
                raise StreamError(413, "body too large", self.count)

    def _trailer(self, name: bytes, value: bytes) -> None:
        """A trailer field after a chunked body: counted against the limit, then dropped."""
        self.trailer_bytes += len(name) + len(value) + 4
        if self.trailer_bytes > self.max_header_bytes:
            raise StreamError(431, "trailer section too large", self.count)

    def on_headers_complete(self) -> None:
        self.in_head = False
        parser = self.parser
        version = _VERSIONS.get(parser.get_http_version())
        if version is None:
            raise StreamError(505, "HTTP version not supported", self.count)
        self.version = version
        self.method = parser.get_method()
        if self.expect and (self.length or self.chunked) and version == HTTP11:
            # A HTTP/1.0 client is never sent 100 Continue (RFC 9110 15.2).
            target = self._target()
            self.expecting = _new(Request, (self.method, target, b"", self._lookup(target), self.count))
        self.plain = not (self.chunked or self.expect or parser.should_upgrade())
        if parser.should_upgrade():
            # httptools hands the bytes after the head back to us (HttpParserUpgrade).
            if self.chunked:
                raise StreamError(501, "Upgrade or CONNECT with a chunked body not supported", self.count)
            self.body_left = self.length

    def on_body(self, data: bytes) -> None:
        self.body_len += len(data)
        if self.body_len > self.max_body:
            raise StreamError(413, "body too large", self.count)
        self.body.append(data)

    def take_body(self, data: bytes) -> bytes:
        """Read the body of a declined Upgrade from ``data``; return the bytes after it."""
        n = self.body_left
        if len(data) < n:
            self.body.append(data)
            self.body_left = n - len(data)
            return b""
        self.body.append(data[:n])
        self.body_left = 0
        self._complete()
        return data[n:]

    def on_message_complete(self) -> None:
        if self.body_left:
            return  # a declined Upgrade's body comes after httptools stops (take_body)
        self._complete()

    def _target(self) -> bytes:
        url = self.url
        return url[0] if len(url) == 1 else b"".join(url)

    def _lookup(self, target: bytes) -> State:
        """The shared State of the current request's version, method and fields (validated when new)."""
        fields = tuple(self.fields)
        key = (self.version, self.method, fields)
        state = self.states.get(key)
        if state is None:
            state = self._state(target, fields)
            if len(self.states) >= self.max_states:
                self.states.clear()
            self.states[key] = state
        elif not (target and is_vchars(target)):
            raise StreamError(400, "invalid request-target", self.count)
        return state

    def _complete(self) -> None:
        self.expecting = None
        target = self._target()
        parts = self.body
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        # The compact line that will carry this target: '+:' TARGET ' ' LENGTH
        # (at most 19 digits, so the precise sum is rarely needed).
        if len(target) + 22 > self.max_line and len(target) + len(b"%d" % len(body)) + 3 > self.max_line:
            raise StreamError(414, "request-target too long", self.count)
        state = self._lookup(target)
        self.out.append(_new(Request, (self.method, target, body, state, self.count)))
        self.in_message = False
        if not self.parser.should_keep_alive():
            self.done = True
            raise _Stop  # nothing after a closing request is read

    def _state(self, target: bytes, fields: tuple) -> State:
        """Validate a request with new fields (the slow path) and return its State."""
        try:
            state = Request(self.method, target, combine_fields(fields), b"", self.version).state
        except UsageError as e:
            raise StreamError(400, _printable(str(e)), self.count) from e
        headers = state.headers
        if len(headers) > self.max_headers:
            raise StreamError(431, "too many headers", self.count)
        for name, value in headers:
            if len(name) + len(value) + 3 > self.max_line:  # as 'H:name:value'
                raise StreamError(431, "header line too long", self.count)
        return state
