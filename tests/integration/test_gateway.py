"""msghub-gateway compress + decompress back to back in front of an unmodified stdlib HTTP server."""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.internet.endpoints import TCP4ServerEndpoint

from msghub.gateway import compress_factory, decompress_factory
from msghub.testing import REPO, free_port


class Recorder(BaseHTTPRequestHandler):
    """Keeps each request's bytes as received; 200, or the status named by /status/NNN."""

    protocol_version = "HTTP/1.1"
    received: list[bytes] = []

    def _any(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length)
        head = self.raw_requestline + b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in self.headers.items())
        self.received.append(head + b"\r\n" + body)
        status = int(self.path.split("/status/")[1][:3]) if "/status/" in self.path else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _any

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def upstream():
    Recorder.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def raw_exchange(port: int, data: bytes, responses: int) -> list[bytes]:
    """Write ``data`` (pipelined requests) and read ``responses`` responses (status lines)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        buf = b""
        deadline = time.monotonic() + 10
        while buf.count(b"HTTP/1.1 ") < responses or not buf.endswith((b"\r\n\r\n", b"\n")):
            assert time.monotonic() < deadline, buf
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    return [line for line in buf.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]


@pytest_twisted.inlineCallbacks
def test_gateway_pair_is_transparent(upstream):
    up = upstream.server_address[1]
    down = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        decompress_factory(reactor, f"http://127.0.0.1:{up}", connections=1))
    compact_port = down.getHost().port
    front_factory = compress_factory(reactor, f"compact://127.0.0.1:{compact_port}")
    front = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(front_factory)
    port = front.getHost().port
    try:
        plain = [
            b"POST /in/a?x=1&y=%20z HTTP/1.1\r\nHost: example.com\r\nContent-Type: application/json\r\n"
            b"X-Trace: abc\r\nContent-Length: 7\r\n\r\n{\"a\":1}",
            b"PUT /in/b HTTP/1.1\r\nHost: example.com\r\nX-Empty: \r\nContent-Length: 3\r\n\r\n\x00\xff\n",
            b"GET /in/c?q HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n",
            b"DELETE /in/d HTTP/1.1\r\nHost: example.com\r\n\r\n",
        ]
        # Hop-by-hop fields go, chunked becomes Content-Length, the rest arrives as sent.
        hop = (
            b"POST /in/e HTTP/1.1\r\nHost: example.com\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n"
            b"Keep-Alive: timeout=5\r\nTE: trailers\r\nX-Kept: yes\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )
        hop_expected = b"POST /in/e HTTP/1.1\r\nHost: example.com\r\nX-Kept: yes\r\nContent-Length: 5\r\n\r\nabcde"
        failing = b"POST /status/500 HTTP/1.1\r\nHost: example.com\r\nContent-Length: 1\r\n\r\nx"
        statuses = yield threads.deferToThread(raw_exchange, port, b"".join(plain) + hop + failing, 6)
        assert statuses == [b"HTTP/1.1 202 Accepted"] * 5 + [b"HTTP/1.1 500 Internal Server Error"]
        assert Recorder.received == plain + [hop_expected, failing]

        # One keep-alive client in turn: the upstream's statuses come back through A:/E:.
        def one_by_one():
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            statuses = []
            for path in ("/ok", "/status/404", "/status/204"):
                conn.request("POST", path, body=b"b")
                response = conn.getresponse()
                response.read()
                statuses.append(response.status)
            conn.close()
            return statuses

        assert (yield threads.deferToThread(one_by_one)) == [202, 404, 202]
    finally:
        yield front.stopListening()
        yield down.stopListening()
        yield front_factory.client.close()


def test_gateway_console_script_starts_and_relays(upstream, tmp_path):
    up = upstream.server_address[1]
    compact_port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "msghub.gateway", "decompress", "--listen", f"tcp:{compact_port}:interface=127.0.0.1",
         "--upstream", f"http://127.0.0.1:{up}"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        from msghub.client import CompactSender

        sender = CompactSender("127.0.0.1", compact_port, give_up_after=10, backoff=(0.05, 0.2))
        sender.send("/x", b"via the gateway", {"Content-Type": "text/plain"})
        sender.flush(timeout=10)
        sender.close()
        assert Recorder.received == [
            b"POST /x HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: text/plain\r\nContent-Length: 15\r\n\r\n"
            b"via the gateway" % up
        ]
    finally:
        proc.terminate()
        proc.wait(10)
