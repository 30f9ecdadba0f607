"""The real hub: a secret sent in every malformed shape, on both ports, never comes back or reaches the log."""

import socket
import time

from msghub.testing import HubProcess
from secret_shapes import COMPACT_SHAPES, HTTP_SHAPES, leaks


def send(port: int, data: bytes) -> bytes:
    """Send ``data``, then read until the hub closes (bounded by a 5 s deadline)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
        return out


def test_no_shape_echoes_the_secret_to_the_peer_or_the_log(tmp_path):
    with HubProcess(tmp_path / "hub") as hub:
        for shape, data in COMPACT_SHAPES.items():
            answer = send(hub.compact_port, data)
            assert answer.startswith(b"X:4"), shape
            assert leaks(answer) == [], shape
        for shape, data in HTTP_SHAPES.items():
            answer = send(hub.http_port, data)
            assert answer.startswith((b"HTTP/1.1 4", b"HTTP/1.1 5")), shape
            assert leaks(answer) == [], shape
        assert hub.get("/healthz")[0] == 200
    log = hub.log()
    assert "X:400" in log  # the refusals were logged, without their bytes
    assert leaks(log.encode()) == []
