"""ca_file, client_cert and client_key in [amqp] and [webhooks.NAME]: read and checked once, at load."""

from __future__ import annotations

from pathlib import Path

import pytest
from integration.loopback_tls import make_certificates
from OpenSSL.SSL import Error as SSLError
from twisted.python.failure import Failure

from msghub.config import ConfigError, load
from msghub.tls import ClientTLS, client_options, tls_problem


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("certs"))


def conf(tmp_path: Path, text: str) -> str:
    path = tmp_path / "hub.toml"
    path.write_text(text)
    return str(path)


def errors(tmp_path: Path, text: str) -> list[str]:
    path = conf(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(path)
    return [line.removeprefix(f"{path}: ") for line in info.value.errors]


def amqps(keys: str) -> str:
    return f'[amqp]\nurl = "amqps://u:p@broker.example:5671/%2f"\n{keys}\n'


def webhook(keys: str, url: str = "https://hooks.example/in") -> str:
    return f'[webhooks.t]\nurl = "{url}"\n{keys}\n'


def test_amqp_and_webhook_targets_keep_their_tls_files(tmp_path, certs):
    keys = f'ca_file = "{certs.ca}"\nclient_cert = "{certs.client.cert}"\nclient_key = "{certs.client.key}"'
    config = load(conf(tmp_path, amqps(keys) + webhook(keys)))
    expected = ClientTLS(str(certs.ca), str(certs.client.cert), str(certs.client.key))
    assert config.amqp.client_tls == expected
    assert config.webhooks["t"].client_tls == expected
    client_options("hooks.example", expected)  # builds: the files are what Twisted wants


def test_without_tls_keys_the_system_cas_are_trusted(tmp_path):
    config = load(conf(tmp_path, amqps("") + webhook("")))
    assert config.amqp.client_tls == ClientTLS() == config.webhooks["t"].client_tls


def test_a_ca_file_with_several_certificates_trusts_each(tmp_path, certs):
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(certs.ca.read_bytes() + certs.server.cert.read_bytes())
    config = load(conf(tmp_path, webhook(f'ca_file = "{bundle}"')))
    client_options("hooks.example", config.webhooks["t"].client_tls)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (amqps('ca_file = "/nonexistent/ca.pem"'),
         "amqp.ca_file: cannot read /nonexistent/ca.pem: No such file or directory"),
        (amqps("ca_file = 1"), "amqp.ca_file: must be the path of a PEM file"),
        ('[amqp]\nurl = "amqp://127.0.0.1"\nca_file = "{ca}"\n',
         "amqp.ca_file: is for an amqps:// url; this one is amqp://"),
        (webhook('ca_file = "{ca}"', "http://hooks.example/in"),
         "webhooks.t.ca_file: is for an https:// url; this one is http://"),
        (webhook('ca_file = "{key}"'), "webhooks.t.ca_file: {key} holds no PEM certificate, or a broken one"),
        (webhook('client_cert = "{cert}"'),
         "webhooks.t.client_cert: client_cert and client_key go together: set both or neither"),
        (webhook('client_cert = "{cert}"\nclient_key = "{cert}"'),
         "webhooks.t.client_key: {cert} holds no unencrypted PEM private key"),
        (webhook('client_cert = "{cert}"\nclient_key = "{other_key}"'),
         "webhooks.t.client_key: {other_key} is not the key of {cert}"),
    ],
)
def test_each_tls_problem_is_one_line_naming_the_key(tmp_path, certs, text, line):
    names = {"ca": certs.ca, "cert": certs.client.cert, "key": certs.client.key, "other_key": certs.other_client.key}
    assert errors(tmp_path, text.format(**names)) == [line.format(**names)]


def test_tls_problem_finds_the_openssl_reason_however_wrapped():
    error = SSLError([("SSL routines", "", "certificate verify failed")])
    wrapped = Failure(ConnectionError(Failure(error)))
    assert tls_problem(wrapped) == "TLS: certificate verify failed"
    assert tls_problem(Failure(ConnectionError("reset"))) is None
