"""The real twistd started from another folder, with --rundir: relative paths follow the conf file."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from msghub.testing import REPO, free_port, twistd_command

ROUTE = '[[routes]]\nname = "{name}"\nmatch = "/{name}/{{x}}"\nspool = "{name}"\n'


def conf(admin_port: int, *routes: str) -> str:
    return (
        '[listen]\nhttp = ["unix:hub.sock"]\ncompact = []\n'
        f'admin = ["tcp:{admin_port}:interface=127.0.0.1"]\n'
        '[spool]\npath = "../data/hub.db"\n' + "".join(ROUTE.format(name=name) for name in routes)
    )


def post_unix(path: Path, target: str, body: bytes) -> bytes:
    """One HTTP/1.1 request over a Unix socket; the status line of the answer."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(b"POST %s HTTP/1.1\r\nHost: hub\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                  % (target.encode(), len(body), body))
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer.split(b"\r\n", 1)[0]


def wait_for(predicate, what: str, log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not seen in {timeout} s:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def test_hub_started_elsewhere_uses_the_conf_folder_and_a_sighup_resolves_it_the_same_way(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "run").mkdir()
    admin_port = free_port()
    conf_file = tmp_path / "etc" / "hub.toml"
    conf_file.write_text(conf(admin_port, "held"))
    log = tmp_path / "hub.log"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(log, "ab") as out:
        # -c relative to the shell's folder, then twistd moves to --rundir: neither is the conf's folder.
        hub = subprocess.Popen(
            twistd_command() + ["-n", "--pidfile=", "--rundir", "run", "msghub", "-c", "etc/hub.toml"],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: hub.poll() is not None or healthy(admin_port), "/healthz 200", log)
        assert hub.poll() is None, log.read_text()
        assert post_unix(tmp_path / "etc" / "hub.sock", "/held/a", b"first") == b"HTTP/1.1 202 Accepted"
        assert (tmp_path / "data" / "hub.db").exists() and not (tmp_path / "run" / "data").exists()

        conf_file.write_text(conf(admin_port, "held", "audit"))
        hub.send_signal(signal.SIGHUP)
        wait_for(lambda: " applied (" in log.read_text() or "reload refused" in log.read_text(), "a reload", log)
        text = log.read_text()
        assert "applied (0 users, 2 routes)" in text
        assert "changed; the running value is kept" not in text  # same listen and spool after resolution
        assert post_unix(tmp_path / "etc" / "hub.sock", "/audit/a", b"second") == b"HTTP/1.1 202 Accepted"

        # msghub-spool from yet another folder finds the same spool through the same conf.
        dump = subprocess.run(
            [sys.executable, "-m", "msghub.spoolcli", "-c", "../etc/hub.toml", "dump", "audit", "--body"],
            cwd=tmp_path / "run", env=env, capture_output=True, text=True, timeout=60,
        )
        assert dump.returncode == 0, dump.stderr
        assert "body: b'second'" in dump.stdout
    finally:
        if hub.poll() is None:
            hub.send_signal(signal.SIGTERM)
            try:
                hub.wait(20)
            except subprocess.TimeoutExpired:
                hub.kill()
                hub.wait(5)
