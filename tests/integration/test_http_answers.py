"""What producers see from the real hub: 100 Continue, final answers at once, and the ids of their messages."""

import socket
import subprocess

import pytest

from msghub.spoolcli import main as spool_main
from msghub.testing import CompactClient, HubProcess

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
BIG = 2_000_000  # over curl's 1 MiB threshold: curl sends Expect: 100-continue


@pytest.fixture
def hub(tmp_path):
    process = HubProcess(tmp_path / "hub", ROUTES).start()
    yield process
    process.stop()


def curl(url: str, body_file, *extra: str) -> tuple[str, float]:
    """curl's response head and total time (it waits 1 s for a 100 Continue that never comes)."""
    out = subprocess.run(
        ["curl", "-s", "-i", "-o", "-", "-w", "\n%{time_total}", "--data-binary", f"@{body_file}", *extra, url],
        capture_output=True, timeout=30, check=True,
    ).stdout.decode("latin-1")
    head, _, seconds = out.rpartition("\n")
    return head, float(seconds)


@pytest.fixture
def big(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(b"q" * BIG)
    return path


def test_curl_with_a_2_mb_body_does_not_wait_for_100_continue(hub, big):
    times = []
    for _ in range(5):
        head, seconds = curl(f"http://127.0.0.1:{hub.http_port}/drop/a", big)
        assert "HTTP/1.1 100 Continue" in head and "HTTP/1.1 202 Accepted" in head
        times.append(seconds)
    # curl's own wait would make each at least 1 s; measured here: 5-20 ms.
    assert min(times) < 0.3, times


def test_a_refused_expecting_request_is_answered_at_once_without_its_body(hub, big):
    head, seconds = curl(f"http://127.0.0.1:{hub.http_port}/nowhere", big)
    assert "100 Continue" not in head and head.startswith("HTTP/1.1 404")
    assert seconds < 0.5


def test_each_202_names_its_message_as_the_spool_dump_does(hub, tmp_path, capsys):
    ids = []
    for i in range(3):
        head, _ = curl(f"http://127.0.0.1:{hub.http_port}/held/m{i}", big, "-H", "Expect:")
        (line,) = [h for h in head.splitlines() if h.lower().startswith("message-id:")]
        ids.append(line.split(":", 1)[1].strip())
    assert len(set(ids)) == 3
    hub.stop()
    assert spool_main(["--db", hub.spool_path, "dump", "held"]) == 0
    out = capsys.readouterr().out
    assert all(i in out for i in ids), (ids, out[:500])


def test_a_compact_producer_that_asks_gets_the_ids_of_its_messages(hub, capsys):
    client = CompactClient(hub.compact_port)
    client.send_raw(b"O:message-ids\r\n" + b"".join(b"+:/held/c%d 3\r\nabc" % i for i in range(5)))
    client.read_until(5)
    client.close()
    assert client.ids and client.acked == 5
    by_number = {}
    for line in client.ids:  # each line names its request and those after it, up to the next line
        by_number.update({n: line.id_of(n) for n in range(line.number, 6)})
    hub.stop()
    assert spool_main(["--db", hub.spool_path, "dump", "held"]) == 0
    out = capsys.readouterr().out
    assert all(by_number[n] in out for n in range(1, 6)), (by_number, out[:500])


def raw_answer(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out


def test_hostile_heads_and_trailers_get_their_status_at_once_and_one_log_line(hub):
    port = hub.http_port
    # curl --http2-prior-knowledge: was 400 "Pause on PRI/Upgrade", llhttp's words.
    assert raw_answer(port, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").startswith(b"HTTP/1.1 505 ")
    # One read holding a 40 kB field line: was no answer until head_timeout.
    assert raw_answer(port, b"POST /drop/a HTTP/1.1\r\nX: " + b"a" * 40_000).startswith(b"HTTP/1.1 431 ")
    # A trailer line that never ends: was kept in memory without bound.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /drop/a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\nT: ")
        answer = b""
        try:
            for _ in range(100):  # 800 kB at most; the budget is about 17 kB
                sock.sendall(b"v" * 8192)
        except OSError:
            pass  # closed after the 431: the answer is waiting in the socket
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 431 ") and answer.endswith(b"trailer section too large\n")
    log = hub.wait_for_log("431 trailer section too large")
    assert "505 HTTP/2 connection preface" in log and "431 header section too large" in log
    assert "Traceback" not in log
