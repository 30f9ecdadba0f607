"""The hub publishing over amqps:// to the session broker's TLS listener, trusting the session CA."""

from __future__ import annotations

import http.client

from test_amqp import delete, read_queue, unique

from msghub.testing import HubProcess


def amqps_conf(url: str, tls_keys: str, exchange: str, queue: str) -> str:
    return f"""
[amqp]
url = "{url}"
spool_after = 1
{tls_keys}

[[amqp.exchanges]]
name = "{exchange}"
type = "direct"

[[amqp.queues]]
name = "{queue}"
bind = [{{exchange = "{exchange}", key = "k"}}]

[[routes]]
match = "/tls/{{name}}"
amqp = {{exchange = "{exchange}", routing_key = "k"}}
"""


def test_hub_publishes_over_amqps_trusting_its_ca_file(rabbit, tls_certificates, tmp_path):
    exchange, queue = unique("tls"), unique("tls-q")
    conf = amqps_conf(rabbit.tls_url, f'ca_file = "{tls_certificates.ca}"', exchange, queue)
    with HubProcess(tmp_path / "hub", conf) as hub:
        hub.wait_for_log(f"amqp: connected to 127.0.0.1:{rabbit.tls_port}", timeout=20)
        conn = http.client.HTTPConnection("127.0.0.1", hub.http_port, timeout=30)
        for i in range(3):
            conn.request("POST", "/tls/x", body=b"over tls %d" % i)
            response = conn.getresponse()
            response.read()
            assert response.status == 202
        conn.close()
        # Confirmed by the broker, not spooled: the TLS connection carried them.
        assert b"msghub_amqp_confirms_total 3.0" in hub.get("/metrics")[1]
        assert "certificate verify failed" not in hub.log()
    got = read_queue(rabbit, queue, 3)
    delete(rabbit, [queue], [exchange])
    assert [body for _, _, body in got] == [b"over tls 0", b"over tls 1", b"over tls 2"]


def test_hub_refuses_the_broker_certificate_without_the_ca_and_spools(rabbit, tmp_path):
    exchange, queue = unique("tls-untrusted"), unique("tls-untrusted-q")
    conf = amqps_conf(rabbit.tls_url, "", exchange, queue)
    with HubProcess(tmp_path / "hub", conf) as hub:
        conn = http.client.HTTPConnection("127.0.0.1", hub.http_port, timeout=30)
        conn.request("POST", "/tls/x", body=b"kept")
        response = conn.getresponse()
        response.read()
        assert response.status == 202  # after spool_after, acknowledged on the spool's commit
        log = hub.wait_for_log("failed: TLS: certificate verify failed "
                               "(the broker's certificate: [amqp] ca_file names the CA that signed it)")
    assert "amqp: connected" not in log
    assert "Starting factory" not in log
    delete(rabbit, [queue], [exchange])
