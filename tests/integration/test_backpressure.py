"""A producer that sends and never reads must not grow the real hub's memory.

Each test starts its own ``twistd`` (so one test's peak cannot hide the next
one's growth), pipelines one kind of request for ``SEND_SECONDS`` without
reading a byte, and samples the hub's resident set from ``/proc``.  Then the
producer reads: every request it completed must be answered, in order, which
shows the hub resumed reading once its answers could be written.
"""

from __future__ import annotations

import select
import socket
import time

import pytest

from msghub.compact import Encoder, Error, Fatal, ReplyReader, Request
from msghub.testing import HubProcess

ROUTES = """
[[routes]]
name = "held"
match = "/held/{name}"
spool = "held"

[[routes]]
name = "drop"
match = "/drop/{name}"
discard = true
"""
SEND_SECONDS = 3.0
# Growth allowed over the idle hub's RSS.  Before the byte budgets, 3 s of
# these producers grew it by 55-135 MB; with them it grows by a few MB.
RSS_GROWTH_BOUND = 24 * 1024 * 1024


def rss(pid: int) -> int:
    """Resident set size of ``pid`` in bytes (VmRSS in /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def flood(port: int, prefix: bytes, unit: bytes, seconds: float, pid: int) -> tuple[socket.socket, bytes, int, int]:
    """Send ``prefix`` then ``unit`` over and over for ``seconds``, never reading.

    Returns the socket, the bytes that complete the request in progress, the
    number of whole ``unit``s the stream then holds, and the hub's peak RSS.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setblocking(False)
    sent = 0
    peak = rss(pid)
    data = memoryview(prefix + unit * 64)
    offset = 0
    deadline = time.monotonic() + seconds
    next_sample = 0.0
    while (now := time.monotonic()) < deadline:
        if now >= next_sample:
            peak = max(peak, rss(pid))
            next_sample = now + 0.05
        try:
            n = sock.send(data[offset:])
        except BlockingIOError:
            select.select([], [sock], [], 0.05)
            continue
        sent += n
        offset += n
        if offset == len(data):
            data = memoryview(unit * 64)
            offset = 0
    time.sleep(0.3)  # let the hub finish what it already read
    peak = max(peak, rss(pid))
    if sent <= len(prefix):
        return sock, prefix[sent:], 0, peak
    units, into = divmod(sent - len(prefix), len(unit))
    if into:
        return sock, unit[into:], units + 1, peak
    return sock, b"", units, peak


def finish(sock: socket.socket, tail: bytes, timeout: float = 20.0) -> bytes:
    """Send ``tail``, half-close, and read every answer until the hub closes."""
    received = []
    out = memoryview(tail)
    deadline = time.monotonic() + timeout
    shut = False
    while time.monotonic() < deadline:
        if not out and not shut:
            sock.shutdown(socket.SHUT_WR)
            shut = True
        readable, writable, _ = select.select([sock], [sock] if out else [], [], 0.5)
        if writable:
            n = sock.send(out)
            out = out[n:]
        if readable:
            chunk = sock.recv(1 << 20)
            if not chunk:
                sock.close()
                return b"".join(received)
            received.append(chunk)
    sock.close()
    raise TimeoutError(f"hub did not answer and close within {timeout}s ({sum(map(len, received))} bytes)")


@pytest.fixture
def hub(tmp_path):
    process = HubProcess(tmp_path / "hub", ROUTES).start()
    yield process
    process.stop()


def run_http(hub: HubProcess, request: bytes) -> tuple[int, int, int, bytes]:
    pid = hub.process.pid
    idle = rss(pid)
    sock, tail, requests, peak = flood(hub.http_port, b"", request, SEND_SECONDS, pid)
    return idle, peak, requests, finish(sock, tail)


def run_compact(hub: HubProcess, request: Request) -> tuple[int, int, int, list]:
    pid = hub.process.pid
    idle = rss(pid)
    encoder = Encoder()
    prefix = encoder.encode([request] * 4)
    unit = encoder.encode([request])
    assert encoder.encode([request]) == unit  # steady state: the unit repeats
    sock, tail, units, peak = flood(hub.compact_port, prefix, unit, SEND_SECONDS, pid)
    replies = ReplyReader().feed(finish(sock, tail))
    return idle, peak, 4 + units, replies


def test_pipelined_plain_http_posts_to_a_spool_route_keep_rss_flat(hub):
    request = b"POST /held/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    idle, peak, requests, answers = run_http(hub, request)
    print(f"http 202 spool: idle {idle >> 20} MB, peak {peak >> 20} MB, {requests} requests")
    assert peak - idle < RSS_GROWTH_BOUND
    assert answers.count(b"HTTP/1.1 202 Accepted\r\n") == requests


def test_pipelined_plain_http_404s_keep_rss_flat(hub):
    request = b"POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    idle, peak, requests, answers = run_http(hub, request)
    print(f"http 404: idle {idle >> 20} MB, peak {peak >> 20} MB, {requests} requests")
    assert peak - idle < RSS_GROWTH_BOUND
    assert answers.count(b"HTTP/1.1 404 Not Found\r\n") == requests


def test_compact_requests_answered_with_error_lines_keep_rss_flat(hub):
    idle, peak, requests, replies = run_compact(hub, Request(b"POST", b"/nowhere/x", [], b"hello"))
    print(f"compact E:404: idle {idle >> 20} MB, peak {peak >> 20} MB, {requests} requests")
    assert peak - idle < RSS_GROWTH_BOUND
    errors = [r for r in replies if isinstance(r, Error)]
    assert [e.number for e in errors] == list(range(1, requests + 1))
    assert {e.status for e in errors} == {404}
    assert not any(isinstance(r, Fatal) for r in replies)


def test_acked_compact_requests_to_a_discard_route_keep_rss_flat(hub):
    idle, peak, requests, replies = run_compact(hub, Request(b"POST", b"/drop/x", [], b"hello"))
    print(f"compact A: discard: idle {idle >> 20} MB, peak {peak >> 20} MB, {requests} requests")
    assert peak - idle < RSS_GROWTH_BOUND
    assert not any(isinstance(r, (Error, Fatal)) for r in replies)
    assert max(r.number for r in replies) == requests
