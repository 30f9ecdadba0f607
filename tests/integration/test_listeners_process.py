"""The real twistd's listeners: ssl: ports for curl, requests and openssl, the backlog,
a port in use, the start-up summary, and the file-descriptor limit."""

from __future__ import annotations

import os
import re
import socket
import ssl
import subprocess
import threading
import time

import pytest
import requests

from msghub.client import CompactSender, HttpSender
from msghub.compact import Encoder, Request
from msghub.testing import REPO, CompactClient, HubProcess, twistd_command

ROUTES = """
[[routes]]
name = "drop"
match = "/drop/{name}"
discard = true
"""


@pytest.fixture(scope="module")
def tls_hub(tmp_path_factory, tls_certificates):
    server = tls_certificates.server
    process = HubProcess(
        tmp_path_factory.mktemp("listen-tls"), ROUTES, tls=(server.cert, server.key, tls_certificates.ca)
    ).start()
    yield process
    process.stop()


def s_client(port: int, ca, *options: str, data: bytes = b"") -> str:
    """``openssl s_client`` to 127.0.0.1:port verifying against ``ca``; its stdout and stderr."""
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(ca),
         "-verify_return_error", "-verify_ip", "127.0.0.1", "-ign_eof", *options],
        input=data, capture_output=True, timeout=30,
    )
    return (done.stdout + done.stderr).decode(errors="replace")


def test_https_port_answers_curl_with_verified_tls_and_alpn_http11(tls_hub, tls_certificates):
    done = subprocess.run(
        ["curl", "-sS", "-v", "--cacert", str(tls_certificates.ca), "--data-binary", "hello",
         f"https://127.0.0.1:{tls_hub.http_port}/drop/curl"],
        capture_output=True, timeout=30,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert b"ALPN: server accepted http/1.1" in done.stderr
    assert b"< HTTP/1.1 202" in done.stderr


def test_https_ports_answer_requests(tls_hub, tls_certificates):
    ca = str(tls_certificates.ca)  # per request: a session's verify loses to REQUESTS_CA_BUNDLE
    with requests.Session() as session:
        for i in range(3):  # one kept-alive connection
            answer = session.post(f"https://127.0.0.1:{tls_hub.http_port}/drop/r", data=b"m%d" % i, verify=ca,
                                  timeout=10)
            assert answer.status_code == 202
        refused = session.post(f"https://127.0.0.1:{tls_hub.http_port}/nowhere", data=b"x", verify=ca, timeout=10)
        assert refused.status_code == 404
        health = session.get(f"https://127.0.0.1:{tls_hub.admin_port}/healthz", verify=ca, timeout=10)
        assert (health.status_code, health.text) == (200, "ok\n")
        metrics = session.get(f"https://127.0.0.1:{tls_hub.admin_port}/metrics", verify=ca, timeout=10)
        assert metrics.status_code == 200 and "msghub_" in metrics.text


def test_admin_port_answers_curl_with_alpn_http11(tls_hub, tls_certificates):
    done = subprocess.run(
        ["curl", "-sS", "-v", "--cacert", str(tls_certificates.ca), f"https://127.0.0.1:{tls_hub.admin_port}/healthz"],
        capture_output=True, timeout=30,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert b"ALPN: server accepted http/1.1" in done.stderr
    assert done.stdout == b"ok\n"


@pytest.mark.parametrize(
    ("port", "request_", "answer"),
    [
        ("http_port", b"POST /drop/s HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
         "HTTP/1.1 202 Accepted"),
        ("admin_port", b"GET /healthz HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", "HTTP/1.1 200 OK"),
    ],
)
def test_openssl_s_client_negotiates_http11_on_the_http_ports(tls_hub, tls_certificates, port, request_, answer):
    out = s_client(getattr(tls_hub, port), tls_certificates.ca, "-alpn", "h2,http/1.1", data=request_)
    assert "Verify return code: 0 (ok)" in out
    assert "ALPN protocol: http/1.1" in out
    assert answer in out


def test_compact_port_over_openssl_s_client_acks_without_alpn(tls_hub, tls_certificates):
    wire = Encoder().encode([Request(b"POST", b"/drop/tls", body=b"q%d" % i) for i in range(3)])
    # The compact port never closes on its own: read until the last ack, then stop.
    client = subprocess.Popen(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{tls_hub.compact_port}", "-CAfile", str(tls_certificates.ca),
         "-verify_return_error", "-verify_ip", "127.0.0.1", "-quiet"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    watchdog = threading.Timer(20, client.kill)  # readline() below cannot time out by itself
    watchdog.start()
    try:
        client.stdin.write(wire)
        client.stdin.flush()
        replies = b""
        while b"A:3\r\n" not in replies and (line := client.stdout.readline()):
            replies += line
        assert b"A:3\r\n" in replies, replies
    finally:
        watchdog.cancel()
        client.kill()
        client.wait(10)


@pytest.mark.parametrize("cls", [CompactSender, HttpSender])
def test_our_senders_get_acks_from_the_hubs_own_ssl_ports(tls_hub, tls_certificates, cls):
    port = tls_hub.compact_port if cls is CompactSender else tls_hub.http_port
    trusting = ssl.create_default_context(cafile=str(tls_certificates.ca))
    with cls("127.0.0.1", port, tls=True, ssl_context=trusting) as sender:
        sender.send_many("/drop/tls", [b"q" * 66] * 500, {"Content-Type": "text/plain"})
        sender.flush(timeout=20)
        assert sender.acked == 500


def test_start_up_summary_names_each_listener_and_no_factory_lines(tls_hub):
    log = tls_hub.log()
    ports = {"http": tls_hub.http_port, "compact": tls_hub.compact_port, "admin": tls_hub.admin_port}
    for kind, port in ports.items():
        line = rf"listening: {kind} on ssl:{port}:interface=127\.0\.0\.1:\S+ \(127\.0\.0\.1:{port}\)"
        assert re.search(line, log), log
    assert "Starting factory" not in log


def test_listen_backlog_is_1024_unless_a_description_names_one(tmp_path):
    with HubProcess(tmp_path, ROUTES) as hub:
        listening = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True, timeout=10).stdout
    backlogs = {}
    for line in listening.splitlines():
        fields = line.split()  # State Recv-Q Send-Q Local Peer; Send-Q is the backlog of a listener
        backlogs[fields[3]] = int(fields[2])
    for port in (hub.http_port, hub.compact_port, hub.admin_port):
        assert backlogs[f"127.0.0.1:{port}"] == 1024


def test_a_port_in_use_is_one_line_and_exit_status_1(tmp_path):
    hub = HubProcess(tmp_path, ROUTES)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", hub.compact_port))
        squatter.listen()
        with pytest.raises(RuntimeError, match="hub exited with 1"):
            hub.start(timeout=30)
    hub.stop()
    log = hub.log()
    assert (
        f"listen: cannot listen for compact on tcp:{hub.compact_port}:interface=127.0.0.1: Address already in use\n"
        in log
    )
    assert "Traceback" not in log and "CannotListenError" not in log
    assert len([line for line in log.splitlines() if "[stderr#error]" in line]) == 0


def test_a_port_in_use_ends_a_daemonizing_twistd_with_status_1_and_says_why(tmp_path):
    # Without -n, twistd's parent waits for its daemon's word: it must get one.
    hub = HubProcess(tmp_path, ROUTES)
    log = tmp_path / "daemon.log"
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", hub.http_port))
        squatter.listen()
        env = dict(os.environ, PYTHONPATH=str(REPO))
        done = subprocess.run(
            twistd_command() + [f"--pidfile={tmp_path / 'twistd.pid'}", f"--logfile={log}", "msghub",
                                "-c", str(hub.conf_path)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
        )
    assert done.returncode == 1
    assert "CannotListen: http: Address already in use" in done.stderr
    # The daemon tells its parent first, then removes its pid file and exits.
    pidfile = tmp_path / "twistd.pid"
    deadline = time.monotonic() + 10
    while pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pidfile.exists()
    text = log.read_text()
    assert f"listen: cannot listen for http on tcp:{hub.http_port}:interface=127.0.0.1: Address already in use" in text
    assert "Traceback" not in text


def _answered(client: CompactClient, number: int, timeout: float) -> bool:
    try:
        client.read_until(number, timeout)
    except (TimeoutError, OSError):
        return False
    return client.acked >= number or number in client.errors or client.closed


def test_at_the_descriptor_limit_connections_wait_then_get_served(tmp_path):
    # ~18 descriptors at rest; the rest of 48 go to producers until accept() fails.
    with HubProcess(tmp_path, ROUTES, max_files=48) as hub:
        clients: list[CompactClient] = []
        stuck: CompactClient | None = None
        deadline = time.monotonic() + 60
        while stuck is None and len(clients) < 60 and time.monotonic() < deadline:
            client = CompactClient(hub.compact_port)  # the kernel completes the handshake either way
            client.send([Request(b"POST", b"/drop/fd", body=b"x")])
            if not _answered(client, 1, 2.0):
                if "out of file descriptors" in hub.log():
                    stuck = client
                    break
                # Only slow (a busy machine): give it the time it needs.
                assert _answered(client, 1, 10.0), "no answer, and no descriptor shortage logged"
            assert client.acked == 1, client.errors
            clients.append(client)
        assert stuck is not None, f"{len(clients)} connections and no limit reached"
        log = hub.wait_for_log("out of file descriptors")
        # Open connections are still served while new ones wait.
        first = clients[0]
        first.send([Request(b"POST", b"/drop/fd", body=b"again")])
        first.read_until(2, 10)
        assert first.acked == 2
        # A descriptor freed: the waiting connection is taken and answered
        # (acknowledged, or 503 when limits.max_connections says so).
        for client in clients[-3:]:
            client.close()
        assert _answered(stuck, 1, 10.0), "the waiting connection was never answered"
        assert stuck.acked == 1 or stuck.errors[1].status == 503
        assert hub.get("/metrics")[0] == 200
        log = hub.log()
        assert log.count("out of file descriptors") == 1, log
        assert "EMFILE recovery" not in log and "Could not accept" not in log
        for client in clients + [stuck]:
            client.close()
