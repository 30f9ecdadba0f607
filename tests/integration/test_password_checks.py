"""Uncached password checks against the real ``twistd msghub``: a flood of wrong ones stays bounded,
and requests held for a check are answered before their connection closes."""

import base64
import http.client
import socket
import subprocess
import threading
import time

import httptools
import pytest

from msghub.auth import hash_password
from msghub.compact import Ack, Error, Fatal, ReplyReader
from msghub.testing import HubProcess

# n=2**11: ~13 ms a check here, so a new producer's first answer (one check
# already running, then its own) fits well under 100 ms, while a shared,
# unbounded queue of checks makes it wait behind the flood's.
USERS = ("pw", "fresh", "curl10", "curlclose", "raw10", "compact")
CONF = "".join(
    f'[users.{name}]\npassword = "{hash_password(name + " secret", n=2**11, r=8, p=1)}"\n' for name in USERS
) + """
[[routes]]
name = "pw"
match = "/pw/{x}"
users = [%s]
discard = true
""" % ", ".join(f'"{name}"' for name in USERS)


def basic(user: str, password: str | None = None) -> str:
    password = user + " secret" if password is None else password
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def statuses(sock: socket.socket, count: int) -> list[int]:
    """Read ``count`` HTTP responses (or up to EOF) and return their status codes."""
    out: list[int] = []

    class Collector:
        def on_message_complete(self):
            out.append(parser.get_status_code())

    parser = httptools.HttpResponseParser(Collector())
    while len(out) < count:
        data = sock.recv(65536)
        if not data:
            break
        parser.feed_data(data)
    return out


def read_to_eof(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        data = sock.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    process = HubProcess(tmp_path_factory.mktemp("hub"), CONF).start()
    yield process
    process.stop()


def timed_post(conn: http.client.HTTPConnection, auth: str) -> tuple[int, float]:
    start = time.perf_counter()
    conn.request("POST", "/pw/x", body=b"x", headers={"Authorization": auth})
    response = conn.getresponse()
    response.read()
    return response.status, time.perf_counter() - start


def test_flood_of_wrong_passwords_keeps_cached_and_new_producers_under_100ms(hub):
    cached = http.client.HTTPConnection("127.0.0.1", hub.http_port, timeout=10)
    assert timed_post(cached, basic("pw"))[0] == 202  # checked once, cached from now on
    # Another address: the per-peer budget is the attackers' own.
    fresh = http.client.HTTPConnection("127.0.0.1", hub.http_port, timeout=10, source_address=("127.0.0.2", 0))
    fresh.connect()
    connections, per_connection = 40, 5  # 200 distinct wrong passwords, all sent at once
    sent = threading.Barrier(connections + 1)
    measured = threading.Event()
    results: list[list[int]] = []

    def attack(index: int) -> None:
        sock = socket.create_connection(("127.0.0.1", hub.http_port), timeout=30)
        sock.sendall(b"".join(
            b"POST /pw/x HTTP/1.1\r\nHost: h\r\nAuthorization: %s\r\nContent-Length: 1\r\n\r\nx"
            % basic("pw", f"wrong {index} {i}").encode()
            for i in range(per_connection)
        ))
        sent.wait()
        measured.wait(30)  # read later: 40 threads parsing answers here would skew the timings
        results.append(statuses(sock, per_connection))
        sock.close()

    attackers = [threading.Thread(target=attack, args=(i,)) for i in range(connections)]
    for t in attackers:
        t.start()
    sent.wait(10)  # the whole flood is in the hub's socket buffers
    status, first_answer = timed_post(fresh, basic("fresh"))
    latencies = sorted(timed_post(cached, basic("pw"))[1] for _ in range(100))
    measured.set()
    for t in attackers:
        t.join(30)
    assert status == 202
    p99 = latencies[98]
    print(f"new producer {first_answer * 1000:.1f} ms, cached p99 {p99 * 1000:.1f} ms")
    assert first_answer < 0.1, f"new producer's first answer took {first_answer * 1000:.1f} ms"
    assert p99 < 0.1, f"cached producer's p99 {p99 * 1000:.1f} ms"
    answers = [s for r in results for s in r]
    assert len(answers) == connections * per_connection and set(answers) <= {401, 429}
    assert answers.count(401) >= 2  # the attacker's checks did run, a few at a time
    _, text = hub.get("/metrics")
    assert 'msghub_password_checks_total{result="refused"}' in text.decode()


@pytest.mark.parametrize(
    ("user", "flags"), [("curl10", ["-0"]), ("curlclose", ["-H", "Connection: close"])], ids=["http-1.0", "close"]
)
def test_curl_on_a_closing_connection_gets_the_answer_to_a_request_held_for_a_check(hub, user, flags):
    result = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", *flags, "-u", f"{user}:{user} secret",
         "--data-binary", "x", f"http://127.0.0.1:{hub.http_port}/pw/a"],
        capture_output=True, text=True, timeout=30,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "202", "")


def test_http10_request_held_for_a_check_is_answered_before_close(hub):
    sock = socket.create_connection(("127.0.0.1", hub.http_port), timeout=10)
    sock.sendall(b"POST /pw/a HTTP/1.0\r\nAuthorization: %s\r\nContent-Length: 1\r\n\r\nx" % basic("raw10").encode())
    reply = read_to_eof(sock)
    assert reply.startswith(b"HTTP/1.1 202 ")


def test_compact_held_request_then_a_malformed_line_gets_acks_and_errors_then_x(hub):
    sock = socket.create_connection(("127.0.0.1", hub.compact_port), timeout=10)
    sock.sendall(
        b"B:/pw/\r\n+:a 1\r\n1"  # no credentials: 401
        + b"H:Authorization: " + basic("compact").encode() + b"\r\n+:b 1\r\n2"  # held for a check
        + b"Q:what\r\n"
    )
    replies = ReplyReader().feed(read_to_eof(sock))
    # Request 1 was answered in the turn it arrived, request 2 once its check was done.
    assert replies == [Error(1, 401, "credentials required"), Ack(1), Ack(2), Fatal(400, "unknown opcode 'Q:'")]
