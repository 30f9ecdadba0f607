"""Fixtures for tests against real services on loopback."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from loopback_tls import Certificates, ServerCertificate, TLSTerminator, make_certificates

from msghub.testing_broker import RABBITMQ_SERVER, RabbitBroker, installed
from msghub.testing_cluster import RabbitCluster


@pytest.fixture(scope="session")
def rabbit(tmp_path_factory: pytest.TempPathFactory, tls_certificates: Certificates) -> Iterator[RabbitBroker]:
    """One private RabbitMQ node for the whole session, started on first use.

    Tests share it, so each declares its own uniquely named queues; a test may
    ``restart()`` it but must leave it running. It also listens for TLS
    (``tls_url``) with the session CA's localhost certificate.
    """
    require_rabbitmq()
    server = tls_certificates.server
    broker = RabbitBroker(tmp_path_factory.mktemp("rabbit"), tls=(server.cert, server.key, tls_certificates.ca))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def rabbit_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitCluster]:
    """Three private RabbitMQ nodes in one cluster, for the module that asks for it.

    Module-scoped, so the three nodes run only while their tests do.  A test
    may ``stop_node(i)`` but must ``start_node(i)`` again before it ends.
    """
    require_rabbitmq()
    cluster = RabbitCluster(tmp_path_factory.mktemp("rabbit-cluster"), size=3)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def require_rabbitmq() -> None:
    if not installed():
        # A failure, not a skip: a green run without the broker tests would
        # hide that the AMQP forwarder was never exercised.
        pytest.fail(
            f"RabbitMQ is not installed ({RABBITMQ_SERVER} or epmd is missing); "
            "run `scripts/bootstrap test` to install it",
            pytrace=False,
        )


class RecordingReceiver:
    """A keep-alive webhook receiver on 127.0.0.1 that answers 204 and records (webhook-id, body)."""

    def __init__(self, port: int = 0) -> None:
        self.lock = threading.Lock()
        self.delivered: list[tuple[str, bytes]] = []
        self._sockets: set[socket.socket] = set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 10

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                try:
                    self.send_response(204)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    self.wfile.flush()
                except OSError:  # the hub died first: it never saw the answer
                    self.close_connection = True
                    return
                # Recorded once answered: what the hub may have taken as delivered.
                with receiver.lock:
                    receiver.delivered.append((self.headers["webhook-id"], body))

            def log_message(self, format: str, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = False
            block_on_close = True

            def process_request(self, request: socket.socket, client_address: object) -> None:
                with receiver.lock:
                    receiver._sockets.add(request)
                super().process_request(request, client_address)

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # a connection the killed hub left behind

        self.server = Server(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/in"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        with self.lock:
            sockets = list(self._sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.server.server_close()
        self.thread.join(10.0)
        assert not self.thread.is_alive()


@pytest.fixture
def recording_receiver() -> Iterator[Callable[..., RecordingReceiver]]:
    """Start ``RecordingReceiver(port)`` receivers; all are stopped after the test (after its hubs
    if the test requests this fixture before theirs)."""
    started: list[RecordingReceiver] = []

    def start(port: int = 0) -> RecordingReceiver:
        receiver = RecordingReceiver(port)
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.stop()


@pytest.fixture(scope="session")
def tls_certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A private CA and the server certificates it signed, made once per session."""
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_terminator(tls_certificates: Certificates) -> Iterator[Callable[..., TLSTerminator]]:
    """Start ``TLSTerminator(upstream_port, certificate)`` (default: the localhost certificate);
    all are stopped after the test."""
    started: list[TLSTerminator] = []

    def start(upstream: int, certificate: ServerCertificate | None = None) -> TLSTerminator:
        terminator = TLSTerminator(upstream, certificate or tls_certificates.server)
        started.append(terminator)
        return terminator

    yield start
    for terminator in started:
        terminator.stop()
