"""A private RabbitMQ node for integration tests (cf. ``msghub.testing``).

``RabbitBroker`` runs Debian's ``rabbitmq-server`` as a child process with its
own epmd, ports, Erlang cookie, data and log directories, all on loopback, so
it never meets a system broker or another test run (``msghub.testing_cluster``
joins several, sharing one epmd and cookie).  Every wait is bounded;
a failure raises ``BrokerError`` carrying the tail of the broker's logs.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import signal
import socket
import ssl
import string
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Callable

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
# The /usr/sbin wrappers switch to the rabbitmq user and its HOME (and so its
# cookie and data); the scripts underneath take everything from our env.
RABBITMQ_SERVER = RABBITMQ_BIN / "rabbitmq-server"
RABBITMQCTL = RABBITMQ_BIN / "rabbitmqctl"

# Below the ephemeral range (32768+): there an outgoing connection can take a
# port while the node is down, and restart() then fails with
# dist_port_already_used.
PORT_RANGE = range(20000, 30000)

# Distribution listens on all interfaces unless told otherwise.
LOOPBACK_DIST = "-kernel inet_dist_use_interface {127,0,0,1}"

AMQP_HEADER = b"AMQP\x00\x00\x09\x01"


class BrokerError(RuntimeError):
    """The broker did not start, stop or answer ``rabbitmqctl`` in time."""


def installed() -> bool:
    """Whether Debian's rabbitmq-server (and epmd, from erlang-base) is here."""
    return RABBITMQ_SERVER.exists() and shutil.which("epmd") is not None


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports in ``PORT_RANGE`` that were free a moment ago.

    Random order, so that concurrent test runs rarely try the same ports.
    """
    ports: list[int] = []
    for port in random.sample(PORT_RANGE, len(PORT_RANGE)):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise BrokerError(f"fewer than {count} free ports in {PORT_RANGE}")


def _answers_amqp(port: int) -> bool:
    """True once the node is booted: its listener only opens at the end of boot."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(AMQP_HEADER)
            return s.recv(1) == b"\x01"  # a method frame: connection.start
    except OSError:
        return False


def _answers_tls(port: int) -> bool:
    """True once the TLS listener completes a handshake (certificate not checked: only whether it is up)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            with context.wrap_socket(s) as tls:
                tls.sendall(AMQP_HEADER)
                return tls.recv(1) == b"\x01"
    except OSError:  # ssl.SSLError included
        return False


def _answers_http(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as r:
            return r.status == 200
    except OSError:  # URLError and HTTPError included
        return False


def _epmd_answers(port: int) -> bool:
    """Ask epmd for its names (NAMES_REQ): a bare connect makes it log an error."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"\x00\x01n")
            return len(s.recv(4)) > 0
    except OSError:
        return False


def log_tail(path: Path, lines: int = 60) -> str:
    if not path.exists():
        return f"({path} does not exist)"
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return f"--- {path} (last {len(text)} lines) ---\n" + "\n".join(text)


def start_epmd(port: int, log: Path, cwd: Path, deadline: float) -> subprocess.Popen[bytes]:
    """An epmd of our own on loopback ``port``, answering before ``deadline``.

    A node would otherwise spawn a daemon epmd on all interfaces that outlives
    us, and a node booting before its epmd listens fails with no_epmd_port.
    """
    with open(log, "ab") as out:
        epmd = subprocess.Popen(
            [shutil.which("epmd") or "epmd", "-port", str(port), "-address", "127.0.0.1"],
            cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    while not _epmd_answers(port):
        if epmd.poll() is not None or time.monotonic() > deadline:
            terminate(epmd, 5)
            raise BrokerError(f"epmd on port {port} did not answer in time\n{log_tail(log)}")
        time.sleep(0.1)
    return epmd


def terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM ``proc``, wait up to ``timeout``, then SIGKILL what is left of its process group."""
    if proc.poll() is None:
        # rabbitmq-server is a shell script that traps TERM and stops the VM
        # cleanly (queues flushed), which restart() relies on.
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    # Whatever is left in its group (beam.smp, erl_child_setup) goes too.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(5)


class RabbitBroker:
    """A private RabbitMQ node under ``workdir``; ``guest``/``guest`` on 127.0.0.1.

    ``tls=(certificate, key, ca)`` (PEM files) adds a TLS listener on
    ``tls_port`` (``tls_url`` is its ``amqps://`` URL). It asks for no client
    certificate, and verifies one that is sent against ``ca``.
    """

    def __init__(
        self,
        workdir: Path,
        management: bool = False,
        tls: tuple[str | Path, str | Path, str | Path] | None = None,
        *,
        ports: tuple[int, int, int] | None = None,
        shared_epmd: bool = False,
        cookie: str | None = None,
    ) -> None:
        """``ports`` is (AMQP, distribution, epmd), free ones by default.

        With ``shared_epmd`` the caller runs the epmd on that port (one per
        cluster: nodes find each other there) and ``start()`` leaves it alone.
        Nodes of one cluster share one ``cookie`` (a random one by default).
        """
        self.workdir = Path(workdir)
        if ports is None:
            free = free_ports(5)
            ports = (free[0], free[1], free[2])
            spare = free[3:]
        else:
            # Drawn from more, since the given ports are not bound yet and could come up again.
            spare = [p for p in free_ports(5) if p not in ports]
        self.management_port: int | None = spare[0] if management else None
        self.tls = tls
        self.tls_port: int | None = spare[1] if tls else None
        self.port, self.dist_port, self.epmd_port = ports
        self._own_epmd = not shared_epmd
        self._cookie = cookie or "".join(secrets.choice(string.ascii_uppercase) for _ in range(20))
        self.nodename = f"msghub-{self.port}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/%2f"
        self.tls_url = f"amqps://guest:guest@127.0.0.1:{self.tls_port}/%2f" if tls else None
        self.log_dir = self.workdir / "log"
        self.console_log = self.log_dir / "console.log"
        self.node_log = self.log_dir / f"{self.nodename}.log"
        self._node: subprocess.Popen[bytes] | None = None
        self._epmd: subprocess.Popen[bytes] | None = None
        self.env = self._configure(management)

    def _configure(self, management: bool) -> dict[str, str]:
        home = self.workdir / "home"
        for d in (home, self.log_dir, self.workdir / "mnesia"):
            d.mkdir(parents=True, exist_ok=True)
        # Our own cookie, written before boot, so ctl() never races the node
        # creating one and never reads the user's ~/.erlang.cookie.
        cookie = home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(self._cookie)
            cookie.chmod(0o400)
        # The node log is the one log; the console keeps only pre-boot and crash output.
        conf = ["loopback_users.guest = true", "log.console = false"]
        if self.management_port is not None:
            conf += [f"management.tcp.port = {self.management_port}", "management.tcp.ip = 127.0.0.1"]
        if self.tls is not None:
            cert, key, ca = self.tls
            conf += [
                f"listeners.ssl.default = 127.0.0.1:{self.tls_port}",
                f"ssl_options.cacertfile = {ca}",
                f"ssl_options.certfile = {cert}",
                f"ssl_options.keyfile = {key}",
                "ssl_options.verify = verify_none",
                "ssl_options.fail_if_no_peer_cert = false",
            ]
        (self.workdir / "rabbitmq.conf").write_text("\n".join(conf) + "\n")
        plugins = "[rabbitmq_management]." if management else "[]."
        (self.workdir / "enabled_plugins").write_text(plugins + "\n")
        # An empty env file stands in for /etc/rabbitmq/rabbitmq-env.conf.
        (self.workdir / "rabbitmq-env.conf").write_text("")
        # Inherited RABBITMQ_*/ERL_* settings (e.g. RABBITMQ_ALLOW_INPUT, which
        # disables the SIGTERM handler) would make this node someone else's.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(home),
            LC_ALL="C.UTF-8",  # the Elixir CLI warns (and mangles names) otherwise
            ERL_EPMD_PORT=str(self.epmd_port),
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=LOOPBACK_DIST,
            RABBITMQ_CTL_ERL_ARGS=LOOPBACK_DIST,
            RABBITMQ_MNESIA_BASE=str(self.workdir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.log_dir),
            RABBITMQ_PID_FILE=str(self.workdir / "rabbitmq.pid"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.workdir / "enabled_plugins"),
            RABBITMQ_CONFIG_FILE=str(self.workdir / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.workdir / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(self.workdir / "rabbitmq-env.conf"),
        )
        return env

    def _spawn(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        # A session of its own, so that stop() can kill the whole group and
        # a Ctrl-C meant for pytest does not reach the broker half-way.
        with open(log, "ab") as out:
            return subprocess.Popen(
                argv, cwd=self.workdir, env=self.env, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def _wait(
        self, ready: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, deadline: float
    ) -> None:
        while not ready():
            if proc.poll() is not None:
                raise BrokerError(f"{what} exited with {proc.returncode}\n{self.logs()}")
            if time.monotonic() > deadline:
                raise BrokerError(f"{what} not ready in time\n{self.logs()}")
            time.sleep(0.1)

    def start(self, timeout: float = 60.0) -> "RabbitBroker":
        """Start epmd (if not running) and the node; return once it takes AMQP connections."""
        deadline = time.monotonic() + timeout
        try:
            if self._own_epmd and self._epmd is None:
                self._epmd = start_epmd(self.epmd_port, self.log_dir / "epmd.log", self.workdir, deadline)
            if self._node is None:
                self._node = self._spawn([str(RABBITMQ_SERVER)], self.console_log)
            self._wait(lambda: _answers_amqp(self.port), self._node, "rabbitmq-server", deadline)
            if self.management_port is not None:
                port = self.management_port
                self._wait(lambda: _answers_http(port), self._node, "management plugin", deadline)
            if self.tls_port is not None:
                tls_port = self.tls_port
                self._wait(lambda: _answers_tls(tls_port), self._node, "TLS listener", deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def _stop_node(self, timeout: float) -> None:
        if self._node is not None:
            node, self._node = self._node, None
            terminate(node, timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the node and its epmd; safe to call twice."""
        self._stop_node(timeout)
        if self._epmd is not None:
            epmd, self._epmd = self._epmd, None
            terminate(epmd, 5)

    def restart(self, timeout: float = 60.0) -> "RabbitBroker":
        """Stop the node cleanly and start it again on the same ports and data."""
        self._stop_node(30.0)
        return self.start(timeout)

    @property
    def pid(self) -> int | None:
        """The pid (and process group) of the running ``rabbitmq-server``, else None."""
        return None if self._node is None else self._node.pid

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``rabbitmqctl ARGS`` against this node; return its stdout."""
        try:
            done = subprocess.run(
                [str(RABBITMQCTL), *args], cwd=self.workdir, env=self.env, stdin=subprocess.DEVNULL,
                capture_output=True, text=True, timeout=timeout,
            )
        except subprocess.TimeoutExpired as e:
            raise BrokerError(f"rabbitmqctl {' '.join(args)}: no answer in {timeout}s") from e
        if done.returncode != 0:
            raise BrokerError(
                f"rabbitmqctl {' '.join(args)} exited with {done.returncode}:\n{done.stdout}{done.stderr}"
            )
        return done.stdout

    def logs(self) -> str:
        """The tails of the console output, the node log and (if it is ours) epmd's output."""
        epmd = [self.log_dir / "epmd.log"] if self._own_epmd else []
        return "\n".join(log_tail(p) for p in (self.console_log, self.node_log, *epmd))

    def __enter__(self) -> "RabbitBroker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
