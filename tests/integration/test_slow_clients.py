"""Slow and odd clients against the real hub: head and body deadlines, HTTP/0.9."""

import socket
import time

import pytest

from msghub.testing import HubProcess

CONF = """
[limits]
head_timeout = 2
body_timeout = 3
idle_timeout = 300

[[routes]]
name = "drop"
match = "/drop/{name}"
discard = true
"""


@pytest.fixture
def hub(tmp_path):
    process = HubProcess(tmp_path / "hub", CONF).start()
    yield process
    process.stop()


def dribble(port: int, data: bytes, every: float, limit: float) -> tuple[bytes, float]:
    """Send ``data`` a byte every ``every`` seconds; what came back once the hub closed, and when."""
    start = time.monotonic()
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as s:
        s.settimeout(every)
        for byte in data:
            try:
                s.sendall(bytes([byte]))
            except OSError:
                break
            try:
                chunk = s.recv(4096)
            except socket.timeout:
                continue
            got += chunk
            if not chunk or got.endswith(b"\n") and b"408" in got:
                break
            if time.monotonic() - start > limit:
                break
    return got, time.monotonic() - start


def test_a_dribbled_http_head_gets_408_after_head_timeout(hub):
    got, seconds = dribble(hub.http_port, b"POST /drop/a HTTP/1.1\r\nX-Slow: " + b"y" * 200, 0.25, 20)
    assert got.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), got
    assert 1.9 < seconds < 6, seconds


def test_a_dribbled_compact_line_gets_x408(hub):
    got, seconds = dribble(hub.compact_port, b"H:X-Slow: " + b"y" * 200, 0.25, 20)
    assert got == b"X:408 request head not complete within 2 s\r\n", got
    assert 1.9 < seconds < 6, seconds


def test_a_stalled_body_gets_408_after_body_timeout(hub):
    with socket.create_connection(("127.0.0.1", hub.http_port), timeout=20) as s:
        s.sendall(b"POST /drop/a HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
        start = time.monotonic()
        got = s.recv(4096)
        assert got.startswith(b"HTTP/1.1 408"), got
        assert 2.9 < time.monotonic() - start < 8


def test_an_http_0_9_request_line_is_answered_400_at_once(hub):
    with socket.create_connection(("127.0.0.1", hub.http_port), timeout=5) as s:
        s.sendall(b"GET /drop/a\r\n")
        start = time.monotonic()
        got = s.recv(4096)
        assert got.startswith(b"HTTP/1.1 400 Bad Request\r\n"), got
        assert time.monotonic() - start < 1
