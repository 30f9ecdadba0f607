"""Blocking clients for plain Python: ``CompactSender`` and ``HttpSender``.

Both pipeline: ``send`` queues the request and returns its number at once;
requests are encoded and written in batches (at the latest when ``flush`` is
called, or a couple of milliseconds after the previous write), and replies are
read whenever the client writes or waits.  At most ``window`` requests are
unanswered at a time; ``send`` blocks while the window is full.

On a lost connection (or ``X:503``/``X:408``) the client reconnects with
exponential backoff and, with ``resend=True`` (the default), writes every
unanswered request again on the new connection: delivery is at-least-once,
so a request whose ``A:`` was lost can arrive twice.  With ``resend=False``
those requests fail with status 0 instead.  If the hub stays unreachable for
``give_up_after`` seconds, every unanswered request fails with status 0 and
``Unreachable`` is raised.  With ``tls=True``, a certificate that does not
verify raises ``UntrustedCertificate`` (an ``Unreachable``) at the first
attempt instead: retrying would meet the same certificate.
"""

from __future__ import annotations

import select
import socket
import ssl as _ssl
import time
from collections import Counter
from itertools import islice
from time import monotonic
from typing import Any

import httptools

from msghub.client._core import (
    NO_ANSWER,
    Rejected,
    RequestMaker,
    Unreachable,
    UntrustedCertificate,
    Window,
    backoff_delays,
    credentials,
    fatal_is_permanent,
)
from msghub.compact import Ack, Encoder, Error, Fatal, Limits, ReplyReader
from msghub.compact.encoder import check_request
from msghub.compact.http11 import to_http11
from msghub.compact.state import Request

_new = tuple.__new__
_BATCH = 512  # requests encoded per write
_LINGER = 0.002  # seconds a queued request may wait for its batch to fill


class _BlockingSender:
    """The transport-independent part; subclasses encode requests and parse replies."""

    default_port = 0
    # What the wire format can carry: a request over these is refused by
    # ``send`` (UsageError) before it is queued.  None: the hub decides (413).
    limits: Limits | None = None

    def __init__(
        self,
        host: str,
        port: int,
        *,
        token: str | None = None,
        username: str | None = None,
        password: str | None = None,
        tls: bool = False,
        window: int = 10_000,
        resend: bool = True,
        timeout: float = 30.0,
        give_up_after: float = 30.0,
        backoff: tuple[float, float] = (0.05, 2.0),
        ssl_context: _ssl.SSLContext | None = None,
    ) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.host = host
        self.port = port
        self.tls = tls
        self.window_size = window
        self.resend = resend
        self.timeout = timeout
        self.give_up_after = give_up_after
        self.backoff = backoff
        self.ssl_context = ssl_context
        self._maker = RequestMaker(self._extra_headers() + credentials(token, username, password))
        self._window = Window()
        self._entries = self._window.entries
        self._write_at = _BATCH  # write once this many are queued ...
        self._write_by = 0.0  # ... or at the first send after this time
        self._next = 1
        self._sock: socket.socket | None = None
        self._last_write = 0.0
        self._closed = False
        self._memo: tuple = (object(), None, None, None, None, None)
        self._max_body = self.limits.max_body if self.limits else 1 << 62  # bodies up to it need no check
        # Counters, for summaries and tests.
        self.wire_bytes = 0  # bytes written, resends included
        self.reconnects = 0
        self.resent = 0
        self.statuses: Counter[int] = Counter()  # refused requests by status (0: no answer)
        self._connect_with_backoff()

    # -- what subclasses provide --------------------------------------------

    def _extra_headers(self) -> list[tuple[bytes, bytes]]:
        return []

    def _new_codec(self) -> None:
        raise NotImplementedError

    def _encode(self, requests: list) -> bytes:
        raise NotImplementedError

    def _replies(self, data: bytes) -> list:
        raise NotImplementedError

    def _check(self, request: Request) -> None:
        """Raise ``UsageError`` for a request the wire format cannot carry, before it is queued."""
        if self.limits is not None:
            check_request(request, self.limits)

    def _writable(self) -> int:
        """How many more requests may be written now (plain HTTP may not pipeline)."""
        return len(self._window) - self._window.written

    # -- public API -----------------------------------------------------------

    @property
    def sent(self) -> int:
        """Requests passed to ``send()``."""
        return self._next - 1

    @property
    def acked(self) -> int:
        return self._window.acked

    @property
    def rejected(self) -> int:
        return self._window.rejected

    @property
    def outstanding(self) -> int:
        """Requests sent and not yet answered."""
        return len(self._window)

    def send(self, path, body=b"", headers=None, method="POST") -> int:
        """Queue one request; returns its number (1, 2, ... for this client's lifetime)."""
        # Fast path: the same path, headers and method as the previous call
        # (compared by value, so a caller may mutate its dict between calls).
        memo = self._memo
        if path == memo[0] and method == memo[2] and body.__class__ is bytes and headers == memo[1]:
            request = _new(Request, (memo[3], memo[4], body, memo[5], 0))
            if len(body) > self._max_body:
                self._check(request)
        else:
            if self._closed:
                raise ValueError("send() on a closed sender")
            request = self._maker.make(method, path, headers, body)
            self._check(request)
            copy = dict(headers) if isinstance(headers, dict) else (list(headers) if headers else headers)
            self._memo = (path, copy, method, request[0], request[1], request[3])
        self._next = number = self._next + 1
        number -= 1
        entries = self._entries
        entries.append((number, request))
        queued = len(entries)
        if queued >= self.window_size:
            self._write()
            self._wait_until(lambda: len(entries) < self.window_size, None)
        elif queued >= self._write_at or monotonic() > self._write_by:
            self._write()
            self._poll(0)
        return number

    def send_many(self, path, bodies, headers=None, method="POST") -> range:
        """``send`` for many bodies to one path with the same headers; returns their numbers.

        The same requests as a loop of ``send`` calls, built in bulk (about a
        quarter of the per-message cost), for producers whose messages differ
        only in their bodies.
        """
        if self._closed:
            raise ValueError("send() on a closed sender")
        first = self._next
        template = self._maker.make(method, path, headers, b"")
        method_, target, state = template[0], template[1], template[3]
        window = self._window
        entries = window.entries
        iterator = iter(bodies)
        while True:
            room = max(1, min(_BATCH * 8, self.window_size - len(entries)))
            chunk = list(islice(iterator, room))
            if not chunk:
                break
            for i, body in enumerate(chunk):
                if body.__class__ is not bytes:
                    chunk[i] = body = self._maker.make(method, path, headers, body)[2]
                if len(body) > self._max_body:
                    self._check(_new(Request, (method_, target, body, state, 0)))
            number = self._next
            self._next = number + len(chunk)
            requests = [_new(Request, (method_, target, b, state, 0)) for b in chunk]
            entries.extend(zip(range(number, self._next), requests))
            self._write()
            if len(entries) >= self.window_size:
                self._wait_until(lambda: len(entries) < self.window_size, None)
            else:
                self._poll(0)
        return range(first, self._next)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every request sent so far is answered.

        Raises ``Rejected`` listing the requests refused since the last
        ``flush`` (status 0: no answer and not resent), ``TimeoutError`` if
        ``timeout`` seconds pass first, ``Unreachable`` if the hub is gone.
        """
        window = self._window
        deadline = None if timeout is None else time.monotonic() + timeout
        self._write()
        self._wait_until(lambda: not len(window), deadline)
        failures = window.take_failures()
        if failures:
            raise Rejected(failures)

    def close(self) -> None:
        """Close the connection; unanswered requests are dropped (call ``flush`` first)."""
        self._closed = True
        self._memo = (object(), None, None, None, None, None)
        self._drop_socket()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.flush()
        finally:
            self.close()

    # -- the connection ------------------------------------------------------------

    def _open(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls:
            context = self.ssl_context or _ssl.create_default_context()
            sock = context.wrap_socket(sock, server_hostname=self.host)
        return sock

    def _connect_with_backoff(self) -> None:
        give_up = time.monotonic() + self.give_up_after
        last = None
        for delay in backoff_delays(*self.backoff):
            try:
                self._sock = self._open()
                break
            except _ssl.SSLCertVerificationError as e:
                failed = self._window.fail_all(NO_ANSWER, "hub certificate did not verify")
                self.statuses[NO_ANSWER] += len(failed)
                raise UntrustedCertificate(
                    f"{self.host}:{self.port}: the hub's TLS certificate did not verify: {e.verify_message}"
                ) from e
            except OSError as e:
                last = e
                if time.monotonic() + delay > give_up:
                    failed = self._window.fail_all(NO_ANSWER, "hub unreachable")
                    self.statuses[NO_ANSWER] += len(failed)
                    raise Unreachable(f"{self.host}:{self.port}: {last}") from last
                time.sleep(delay)
        self._new_codec()

    def _drop_socket(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None

    def _lost(self) -> None:
        """The connection ended: reconnect, then resend (or fail) what was unanswered."""
        self._drop_socket()
        window = self._window
        window.new_connection()
        if not self.resend:
            failed = window.fail_all(NO_ANSWER, "connection lost")
            self.statuses[NO_ANSWER] += len(failed)
        self.reconnects += 1
        self._connect_with_backoff()
        self.resent += len(window)

    def _write(self) -> None:
        while True:
            if self._sock is None:
                self._connect_with_backoff()
            n = self._writable()
            if n <= 0:
                self._write_at = self._window.written + _BATCH
                return
            requests = self._window.unwritten(n)
            data = self._encode(requests)
            assert self._sock is not None  # _connect_with_backoff connects or raises
            try:
                self._sock.sendall(data)
            except OSError:
                # The hub may have answered and closed before taking all of it
                # (a 413 for a body it will not read): those answers count.
                self._take(self._leftovers())
                self._lost()
                continue
            self.wire_bytes += len(data)
            self._last_write = now = monotonic()
            self._write_by = now + _LINGER
            self._write_at = self._window.written + _BATCH
            return

    def _poll(self, timeout: float) -> bool:
        """Read and apply whatever replies arrive within ``timeout``; False on timeout."""
        sock = self._sock
        if sock is None:
            return True
        pending = isinstance(sock, _ssl.SSLSocket) and sock.pending()
        if not pending:
            try:
                readable, _, _ = select.select([sock], [], [], timeout)
            except (OSError, ValueError):
                readable = [sock]
            if not readable:
                return False
        try:
            data = sock.recv(262144)
        except (BlockingIOError, _ssl.SSLWantReadError):
            return True
        except OSError:
            data = b""
        if not data:
            self._lost()
            self._write()
            return True
        self._apply(data)
        return True

    def _leftovers(self) -> bytes:
        """What the socket still holds to read, without waiting (after a write failed)."""
        sock = self._sock
        chunks = []
        if sock is not None:
            try:
                sock.setblocking(False)
                while data := sock.recv(262144):
                    chunks.append(data)
            except (OSError, ValueError):
                pass  # nothing more (or reset): what came before it is kept
        return b"".join(chunks)

    def _apply(self, data: bytes) -> None:
        if self._take(data):
            self._lost()
            self._write()
        elif len(self._window) > self._window.written:
            self._write()

    def _take(self, data: bytes) -> bool:
        """Apply replies to the window; True when they end the connection (a fatal line, or garbage)."""
        if not data:
            return False
        try:
            events = self._replies(data)
        except Exception:  # garbage from the server: start over on a new connection
            return True
        window = self._window
        _, refused, fatal = window.feed(events)
        for _, status, _ in refused:
            self.statuses[status] += 1
        if fatal is not None:
            if fatal_is_permanent(fatal):
                # Our stream was refused: what is written and unanswered would be refused again.
                written = [window.entries[i][0] for i in range(window.written)]
                for _ in written:
                    window.entries.popleft()
                window.written = 0
                window.failures.extend((n, fatal.status, fatal.reason) for n in written)
                window.rejected += len(written)
                self.statuses[fatal.status] += len(written)
            return True
        return False

    def _wait_until(self, condition, deadline: float | None) -> None:
        while not condition():
            if self._sock is None:
                self._connect_with_backoff()
                self._write()
                continue
            remaining = self.timeout if deadline is None else min(self.timeout, deadline - time.monotonic())
            if remaining <= 0:
                raise TimeoutError(f"{len(self._window)} request(s) still unanswered")
            if not self._poll(remaining) and (deadline is None or time.monotonic() < deadline):
                # No reply for `timeout` seconds with requests outstanding: the hub is stuck.
                if deadline is None:
                    self._lost()
                    self._write()


class CompactSender(_BlockingSender):
    """Send requests over one compact HTTP connection (``docs/compact-http.md``).

    The codec's ``Encoder`` writes each header once per connection and uses
    the base and registers when shorter, so a stream of similar messages
    costs a few octets each beyond its body (73 for a 66-octet OPRA quote).
    """

    limits = Limits()  # the hub's defaults, which its Encoder keeps to

    def _new_codec(self) -> None:
        self._encoder = Encoder(self.limits)
        self._reader = ReplyReader()

    def _encode(self, requests: list) -> bytes:
        return self._encoder.encode(requests)

    def _replies(self, data: bytes) -> list:
        return self._reader.feed(data)


class _ResponseReader:
    """httptools callbacks turning HTTP responses into ``Ack``/``Error`` events in order."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.number = 0
        self.events: list = []
        self.reason = b""
        self.close = False

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_message_complete(self) -> None:
        self.number += 1
        status = self.parser.get_status_code()
        if 200 <= status < 300:
            self.events.append(Ack(self.number))
        else:
            reason = self.reason.decode("ascii", "replace")[:200]
            self.events += [Error(self.number, status, reason), Ack(self.number)]
        self.reason = b""
        if not self.parser.should_keep_alive():
            self.close = True

    def feed(self, data: bytes) -> list:
        self.parser.feed_data(data)
        events, self.events = self.events, []
        if self.close:
            events.append(Fatal(503, "server closed the connection"))  # reconnect, resend the rest
        return events


class HttpSender(_BlockingSender):
    """The same API over plain HTTP/1.1 keep-alive, for hubs whose compact port is not reachable.

    Requests are pipelined up to ``pipeline`` in flight on the connection (1:
    one at a time, for servers that do not pipeline); every 2xx counts as
    acknowledged, anything else as refused with that status.
    """

    def __init__(self, host: str, port: int, *, pipeline: int = 64, **kwargs: Any) -> None:
        self.pipeline = max(1, pipeline)
        super().__init__(host, port, **kwargs)

    def _extra_headers(self) -> list[tuple[bytes, bytes]]:
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return [(b"Host", f"{host}:{self.port}".encode("ascii"))]

    def _new_codec(self) -> None:
        self._reader = _ResponseReader()

    def _writable(self) -> int:
        window = self._window
        return min(len(window) - window.written, self.pipeline - window.written)

    def _encode(self, requests: list) -> bytes:
        return b"".join(map(to_http11, requests))

    def _replies(self, data: bytes) -> list:
        return self._reader.feed(data)
