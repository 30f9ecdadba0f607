"""https webhook targets with a per-target CA and client certificate, against a receiver that requires one."""

from __future__ import annotations

import ssl

import pytest
import test_webhooks
from test_webhooks import Producer, Receiver, bodies, route_conf, spool_cli, start_hub, target_conf, wait_until

# The receivers and hubs of test_webhooks, stopped the same way (hubs first).
receivers = test_webhooks.receivers
hubs = test_webhooks.hubs


def requiring_client_certificates(tls_certificates) -> ssl.SSLContext:
    """The receiver's side: the session CA's localhost certificate, and client certificates from that CA only."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tls_certificates.ca))
    context.load_cert_chain(tls_certificates.server.cert, tls_certificates.server.key)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def tls_keys(ca=None, client=None) -> dict[str, str]:
    keys = {}
    if ca is not None:
        keys["ca_file"] = f'"{ca}"'
    if client is not None:
        keys["client_cert"], keys["client_key"] = f'"{client.cert}"', f'"{client.key}"'
    return keys


def test_https_target_with_ca_file_and_client_certificate_gets_every_message(
    tmp_path, tls_certificates, receivers, hubs
):
    receiver = Receiver(tls=requiring_client_certificates(tls_certificates))
    receivers.append(receiver)
    conf = target_conf("secure", receiver.url, **tls_keys(tls_certificates.ca, tls_certificates.client))
    hub = start_hub(hubs, tmp_path / "hub", conf + route_conf("orders", ["secure"]))
    sent = bodies(20, "tls")
    producer = Producer(hub)
    for body in sent:
        producer.post("/orders/x", body)
    producer.close()
    wait_until(lambda: len(receiver.delivered()) == 20, what="every message over TLS")
    assert sorted(r.body for r in receiver.delivered()) == sorted(sent)
    assert receiver.url.startswith("https://")


@pytest.mark.parametrize(
    ("case", "problem"),
    [
        # The receiver's alerts (TLS 1.3 sends "certificate required"), or our own verification.
        ("no client certificate", "connection lost: TLS: tlsv13 alert certificate required"),
        ("a client certificate from another CA", "connection lost: TLS: tlsv1 alert unknown ca"),
        ("no ca_file: the system's CAs", "connection lost: TLS: certificate verify failed"),
    ],
)
def test_https_target_refused_on_either_side_dead_letters_with_the_tls_reason(
    tmp_path, tls_certificates, receivers, hubs, capsys, case, problem
):
    receiver = Receiver(tls=requiring_client_certificates(tls_certificates))
    receivers.append(receiver)
    keys = {
        "no client certificate": tls_keys(tls_certificates.ca),
        "a client certificate from another CA": tls_keys(tls_certificates.ca, tls_certificates.other_client),
        "no ca_file: the system's CAs": tls_keys(None, tls_certificates.client),
    }[case]
    conf = target_conf("refused", receiver.url, **keys) + route_conf("orders", ["refused"])
    hub = start_hub(hubs, tmp_path / "hub", conf)
    producer = Producer(hub)
    producer.post("/orders/x", b"{}")
    producer.close()
    # Counted when decided, listed once committed.
    listing = wait_until(lambda: spool_cli(capsys, "-c", str(hub.conf_path), "dead", "refused"), what="the dead letter")
    assert receiver.delivered() == [] and receiver.arrived == []
    assert problem in listing, listing
    assert "Failure instance" not in listing
