"""The clients over TLS (tls=True, compacts://, https://), through a TLS terminator in front of the real hub.

The terminator (tests/integration/loopback_tls.py) speaks only TLS and holds
a certificate from a CA made for the session; clients trust that CA
explicitly, and refuse the certificate when they do not, or when it names
another host.
"""

from __future__ import annotations

import io
import ssl
import subprocess
import sys

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.ssl import Certificate, optionsForClientTLS

from msghub.client import CompactSender, HttpSender, Rejected, Unreachable, UntrustedCertificate
from msghub.client.txclient import RequestRefused, TxCompactSender
from msghub.sendcli import main as send_main
from msghub.testing import REPO, HubProcess

ROUTES = """
[[routes]]
name = "drop"
match = "/drop/{name}"
discard = true
"""
OPRA = {"Content-Type": "application/x-opra-quote"}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    process = HubProcess(tmp_path_factory.mktemp("tls") / "hub", ROUTES).start()
    yield process
    process.stop()


@pytest.fixture
def trusting(tls_certificates) -> ssl.SSLContext:
    """A client context that trusts only the session's CA (hostname checked, as by default)."""
    return ssl.create_default_context(cafile=str(tls_certificates.ca))


@pytest.mark.parametrize("cls", [CompactSender, HttpSender])
def test_blocking_sender_over_verified_tls_gets_acks_and_refusals(hub, tls_terminator, trusting, cls):
    upstream = hub.compact_port if cls is CompactSender else hub.http_port
    proxy = tls_terminator(upstream)
    with cls("127.0.0.1", proxy.port, tls=True, ssl_context=trusting) as sender:
        sender.send_many("/drop/opra", [b"q" * 66] * 3000, OPRA)
        sender.send("/nowhere", b"x")
        with pytest.raises(Rejected) as info:
            sender.flush(timeout=20)
        assert [(n, s) for n, s, _ in info.value.failures] == [(3001, 404)]
        assert sender.acked == 3000 and sender.reconnects == 0


def test_blocking_sender_refuses_a_certificate_from_an_unknown_ca_at_once(hub, tls_terminator):
    proxy = tls_terminator(hub.compact_port)
    # The system's CAs do not include the session's. give_up_after is long:
    # a refused certificate must end the first attempt, not be retried.
    with pytest.raises(UntrustedCertificate, match="did not verify: unable to get local issuer certificate"):
        CompactSender("127.0.0.1", proxy.port, tls=True, give_up_after=600)


def test_blocking_sender_refuses_a_certificate_for_another_host(hub, tls_terminator, tls_certificates, trusting):
    proxy = tls_terminator(hub.http_port, tls_certificates.wrong_name)
    with pytest.raises(UntrustedCertificate, match="mismatch, certificate is not valid for '127.0.0.1'"):
        HttpSender("127.0.0.1", proxy.port, tls=True, ssl_context=trusting, give_up_after=600)


def _trust_root(tls_certificates) -> Certificate:
    return Certificate.loadPEM(tls_certificates.ca.read_bytes())


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
@pytest_twisted.inlineCallbacks
def test_twisted_client_over_verified_tls_fires_acks_and_refusals(hub, tls_terminator, tls_certificates, host):
    proxy = tls_terminator(hub.compact_port)
    options = optionsForClientTLS(host, trustRoot=_trust_root(tls_certificates))
    client = TxCompactSender(reactor, host, proxy.port, tls=True, tls_options=options)
    try:
        sent = [client.send("/drop/opra", b"q" * 66, OPRA) for _ in range(1000)]
        refused = client.send("/nowhere", b"x")
        numbers = yield defer.gatherResults(sent).addTimeout(20, reactor)
        assert numbers == list(range(1, 1001))
        with pytest.raises(RequestRefused) as info:
            yield refused
        assert (info.value.number, info.value.status) == (1001, 404)
        assert client.reconnects == 0
    finally:
        yield client.close()


@pytest.mark.parametrize("trust", ["system", "wrong name"])
@pytest_twisted.inlineCallbacks
def test_twisted_client_fails_requests_on_a_refused_certificate(hub, tls_terminator, tls_certificates, trust):
    if trust == "system":
        proxy, options, problem = tls_terminator(hub.compact_port), None, "did not verify"
    else:
        proxy = tls_terminator(hub.compact_port, tls_certificates.wrong_name)
        options = optionsForClientTLS("127.0.0.1", trustRoot=_trust_root(tls_certificates))
        problem = "is for another host"
    client = TxCompactSender(reactor, "127.0.0.1", proxy.port, tls=True, tls_options=options, give_up_after=600)
    try:
        # Bounded: before the fix this reconnected in a tight loop and never answered.
        sent = [client.send("/drop/x", b"x") for _ in range(3)]
        results = yield defer.DeferredList(sent).addTimeout(20, reactor)
        for ok, failure in results:
            assert not ok and failure.check(RequestRefused)
            assert failure.value.status == 0 and problem in failure.value.reason
        assert not client.connected and client.outstanding == 0
    finally:
        yield client.close()


def run_send(monkeypatch, capsys, argv: list[str], stdin: bytes) -> tuple[int, str]:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    code = send_main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("scheme", ["compacts", "https"])
def test_msghub_send_with_cacert_gets_every_ack(hub, tls_terminator, tls_certificates, monkeypatch, capsys, scheme):
    proxy = tls_terminator(hub.compact_port if scheme == "compacts" else hub.http_port)
    url = f"{scheme}://127.0.0.1:{proxy.port}/drop/opra"
    bodies = b"".join(b"quote %05d\n" % i for i in range(2000))
    code, err = run_send(monkeypatch, capsys, ["--cacert", str(tls_certificates.ca), url], bodies)
    assert code == 0, err
    assert "sent 2000, acknowledged 2000, rejected 0, missing 0" in err


def test_msghub_send_without_the_ca_exits_2_and_names_the_option(hub, tls_terminator, monkeypatch, capsys):
    proxy = tls_terminator(hub.compact_port)
    code, err = run_send(monkeypatch, capsys, [f"compacts://127.0.0.1:{proxy.port}/drop/x"], b"x\n")
    assert code == 2
    assert err == (
        f"msghub-send: 127.0.0.1:{proxy.port}: the hub's TLS certificate did not verify: "
        "unable to get local issuer certificate (--cacert FILE trusts the CA that signed it)\n"
    )


def test_msghub_send_cacert_with_a_plain_url_exits_2(hub, tls_certificates, monkeypatch, capsys):
    url = f"compact://127.0.0.1:{hub.compact_port}/drop/x"
    code, err = run_send(monkeypatch, capsys, ["--cacert", str(tls_certificates.ca), url], b"x\n")
    assert code == 2 and "is not compacts:// or https://" in err


def test_msghub_send_as_a_process_over_https_to_localhost(hub, tls_terminator, tls_certificates):
    proxy = tls_terminator(hub.http_port)
    done = subprocess.run(
        [sys.executable, "-m", "msghub.sendcli", "--cacert", str(tls_certificates.ca),
         f"https://localhost:{proxy.port}/drop/cli"],
        input=b"one\ntwo\nthree\n", capture_output=True, timeout=60, cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    assert b"sent 3, acknowledged 3, rejected 0, missing 0" in done.stderr


def test_blocking_sender_retries_a_failed_handshake_then_gives_up(hub, trusting):
    # TLS to the plain compact port: the handshake fails, but not on the
    # certificate, so it counts as the hub being unreachable.
    with pytest.raises(Unreachable) as info:
        CompactSender("127.0.0.1", hub.compact_port, tls=True, ssl_context=trusting, give_up_after=0.5)
    assert not isinstance(info.value, UntrustedCertificate)


@pytest_twisted.inlineCallbacks
def test_twisted_client_retries_a_failed_handshake_then_gives_up(hub, tls_certificates):
    options = optionsForClientTLS("127.0.0.1", trustRoot=_trust_root(tls_certificates))
    client = TxCompactSender(reactor, "127.0.0.1", hub.compact_port, tls=True, tls_options=options,
                             give_up_after=0.5)
    try:
        with pytest.raises(RequestRefused) as info:
            yield client.send("/drop/x", b"x").addTimeout(20, reactor)
        assert (info.value.status, info.value.reason) == (0, "hub unreachable")
    finally:
        yield client.close()
