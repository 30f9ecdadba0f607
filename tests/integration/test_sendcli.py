"""msghub-send end to end against the real hub: exit statuses and the summary."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys

import pytest

from msghub.sendcli import main
from msghub.testing import REPO, HubProcess, free_port

ROUTES = """
[[routes]]
name = "drop"
match = "/drop/{name}"
discard = true

[users.feed]
token_sha256 = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"

[[routes]]
name = "private"
match = "/private/{name}"
users = ["feed"]
discard = true
"""
SUMMARY = re.compile(
    r"msghub-send: sent (\d+), acknowledged (\d+), rejected (\d+)(?: \(([^)]*)\))?, missing (\d+), "
    r"([\d.]+) wire bytes/message, [\d,]+ msg/s in [\d.]+ s"
)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    process = HubProcess(tmp_path_factory.mktemp("send") / "hub", ROUTES).start()
    yield process
    process.stop()


def run(monkeypatch, capsys, argv, stdin: bytes = b""):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    code = main(argv)
    err = capsys.readouterr().err
    match = SUMMARY.search(err)
    return code, err, match


def test_lines_from_stdin_all_acknowledged(hub, monkeypatch, capsys):
    bodies = b"".join(b"quote %05d %s\n" % (i, b"x" * 55) for i in range(5000))
    code, err, m = run(monkeypatch, capsys, [f"compact://127.0.0.1:{hub.compact_port}/drop/opra"], bodies)
    assert code == 0, err
    assert m.group(1, 2, 3, 5) == ("5000", "5000", "0", "0")
    assert float(m.group(6)) < 80  # 66-octet bodies: 73 per message after the first three
    assert "\r" not in err  # no progress bar when stderr is not a terminal


def test_plain_http_and_jsonl_with_rejections_exit_1(hub, monkeypatch, capsys, tmp_path):
    lines = [
        {"path": "/drop/a", "body": "one", "headers": {"Content-Type": "text/plain"}},
        {"path": "/nowhere", "body": "two"},
        {"path": "/private/x", "body_base64": base64.b64encode(b"\x00\xff").decode()},
        {"body": "default path"},
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(map(json.dumps, lines)) + "\n")
    code, err, m = run(monkeypatch, capsys, ["--jsonl", f"http://127.0.0.1:{hub.http_port}/drop/default", str(path)])
    assert code == 1, err
    assert m.group(1, 2, 3, 4, 5) == ("4", "2", "2", "401: 1, 404: 1", "0")


def test_token_authorises(hub, monkeypatch, capsys):
    url = f"compact://127.0.0.1:{hub.compact_port}/private/x"
    code, err, m = run(monkeypatch, capsys, ["--token", "secret", url], b"a\nb\n")
    assert code == 0 and m.group(2) == "2", err
    code, err, m = run(monkeypatch, capsys, ["--token", "wrong", url], b"a\n")
    assert code == 1 and m.group(4) == "401: 1", err


def test_unreachable_hub_exits_2(monkeypatch, capsys):
    code, err, _ = run(monkeypatch, capsys, ["--retry-for", "0.2", f"compact://127.0.0.1:{free_port()}/x"], b"a\n")
    assert code == 2
    assert "hub unreachable" in err


def test_console_script_runs_as_a_process(hub):
    done = subprocess.run(
        [sys.executable, "-m", "msghub.sendcli", "-H", "Content-Type: text/plain",
         f"compact://127.0.0.1:{hub.compact_port}/drop/p"],
        input=b"x\r\ny\n", capture_output=True, timeout=30, cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    assert SUMMARY.search(done.stderr.decode()).group(1, 2) == ("2", "2")


def test_missing_answers_exit_2(monkeypatch, capsys):
    # A server that reads and hangs up without answering, every time.
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)

    threading.Thread(target=serve, daemon=True).start()
    try:
        url = f"compact://127.0.0.1:{server.getsockname()[1]}/x"
        code, err, m = run(monkeypatch, capsys, ["--no-resend", url], b"a\nb\nc\n")
    finally:
        server.close()
    assert code == 2, err
    assert m.group(1, 2, 5) == ("3", "0", "3")


def test_progress_bar_on_request(hub, monkeypatch, capsys):
    code, err, m = run(monkeypatch, capsys, ["--progress", "always", f"compact://127.0.0.1:{hub.compact_port}/drop/p"],
                       b"x\n" * 3000)
    assert code == 0, err
    assert "sent: " in err and "msg/s" in err  # tqdm: "sent: 3.00kmsg [..., N msg/s]"
