"""Helpers for testing against a real hub (cf. ``treq.testing``).

``HubProcess`` runs the real ``twistd -n msghub`` on free loopback ports with a
generated configuration; ``CompactClient`` speaks the compact protocol over a
plain blocking socket.  Both are bounded in time: nothing here waits forever.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from msghub.compact import Ack, Encoder, Error, Fatal, Ids, ReplyReader, Request

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def twistd_command() -> list[str]:
    script = Path(sys.executable).with_name("twistd")
    if script.exists():
        return [str(script)]
    found = shutil.which("twistd")
    if found:
        return [found]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


class HubProcess:
    """The real hub in a child process.

    ``conf`` is the TOML text *without* ``[listen]`` and ``[spool]``: those are
    generated (free ports, a spool under ``workdir``) unless ``spool`` is given.
    ``tls=(certificate, key, ca)`` (PEM files) makes every port an ``ssl:``
    listener, and ``get()`` trust ``ca``. ``max_files`` is the hub's
    descriptor limit (``ulimit -n``), for tests at that limit.
    """

    def __init__(
        self,
        workdir: Path,
        conf: str = "",
        spool_path: str | None = None,
        twistd_args: tuple[str, ...] = (),
        *,
        tls: tuple[str | Path, str | Path, str | Path] | None = None,
        max_files: int | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.twistd_args = twistd_args  # options for twistd itself, before "msghub"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.http_port = free_port()
        self.compact_port = free_port()
        self.admin_port = free_port()
        self.max_files = max_files
        self.ssl_context: ssl.SSLContext | None = None
        kind, keys = "tcp", ""
        if tls is not None:
            cert, key, ca = tls
            kind, keys = "ssl", f":privateKey={key}:certKey={cert}"
            self.ssl_context = ssl.create_default_context(cafile=str(ca))
        self.scheme = "https" if tls else "http"
        self.spool_path = spool_path or str(self.workdir / "spool.db")
        self.conf_path = self.workdir / "msghub.toml"
        self.conf_path.write_text(
            "[listen]\n"
            f'http = ["{kind}:{self.http_port}:interface=127.0.0.1{keys}"]\n'
            f'compact = ["{kind}:{self.compact_port}:interface=127.0.0.1{keys}"]\n'
            f'admin = ["{kind}:{self.admin_port}:interface=127.0.0.1{keys}"]\n'
            "[spool]\n"
            f'path = "{self.spool_path}"\n' + conf
        )
        self.log_path = self.workdir / "hub.log"
        self.process: subprocess.Popen | None = None

    def _limit_files(self) -> None:  # in the child, before exec
        if self.max_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.max_files, self.max_files))

    def start(self, timeout: float = 20.0, healthy: bool = True) -> "HubProcess":
        """Run the hub; return once ``/healthz`` says 200 (any answer with ``healthy=False``)."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("this hub is already running (use `with HubProcess(...)` or start(), not both)")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            twistd_command() + ["-n", "--pidfile=", *self.twistd_args, "msghub", "-c", str(self.conf_path)],
            cwd=self.workdir,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=self._limit_files if self.max_files is not None else None,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"hub exited with {self.process.returncode}:\n{self.log()}")
            try:
                if self.get("/healthz")[0] == 200 or not healthy:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"hub not healthy after {timeout}s:\n{self.log()}")

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; returns the exit status (-15 is a clean twistd stop)."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()
        code = self.process.returncode
        self.process = None
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, text: str, count: int = 1, timeout: float = 10.0) -> str:
        """Wait until ``text`` appears ``count`` times in the log; return the log."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log()
            if log.count(text) >= count:
                return log
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not logged {count} time(s) in {timeout} s:\n{log}")
            time.sleep(0.05)

    def reload(self, timeout: float = 10.0) -> str:
        """SIGHUP, as ``systemctl reload`` sends; return the log once the hub has applied or refused the conf."""
        assert self.process is not None

        def ended(log: str) -> int:  # the last line of each reload, applied or refused
            return log.count("reload refused") + log.count(" applied (")

        done = ended(self.log())
        self.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while ended(log := self.log()) <= done:
            if time.monotonic() > deadline:
                raise AssertionError(f"no reload logged in {timeout} s:\n{log}")
            time.sleep(0.05)
        time.sleep(0.1)  # the rest of a multi-line entry
        return self.log()

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        """GET from the admin port."""
        try:
            url = f"{self.scheme}://127.0.0.1:{self.admin_port}{path}"
            with urllib.request.urlopen(url, timeout=timeout, context=self.ssl_context) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def __enter__(self) -> "HubProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class CompactClient:
    """A blocking compact-HTTP client: send requests, read ``A:``/``E:``/``X:`` replies."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.encoder = Encoder()
        self.reader = ReplyReader()
        self.acked = 0
        self.errors: dict[int, Error] = {}
        self.fatal: Fatal | None = None
        self.ids: list[Ids] = []  # I: lines, after O:message-ids
        self.closed = False

    def send(self, requests: list[Request]) -> None:
        self.sock.sendall(self.encoder.encode(requests))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_until(self, number: int, timeout: float = 10.0) -> None:
        """Read replies until request ``number`` is acked or refused, or the server closes."""
        deadline = time.monotonic() + timeout
        while self.acked < number and number not in self.errors and not self.closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no answer for request {number} (acked {self.acked})")
            self.sock.settimeout(remaining)
            data = self.sock.recv(65536)
            if not data:
                self.closed = True
                break
            for event in self.reader.feed(data):
                if isinstance(event, Error):
                    self.errors[event.number] = event
                elif isinstance(event, Fatal):
                    self.fatal = event
                elif isinstance(event, Ids):
                    self.ids.append(event)
                elif isinstance(event, Ack):
                    self.acked = max(self.acked, event.number)

    def read_to_close(self, timeout: float = 10.0) -> None:
        self.read_until(sys.maxsize, timeout)

    def close(self) -> None:
        self.sock.close()
