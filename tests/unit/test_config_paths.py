"""Relative paths in the conf are taken from the conf file's folder, not from the working directory."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet.endpoints import _parse

from msghub.config import ConfigError, Listen, load
from msghub.config_paths import resolve_endpoint
from msghub.reload import ReloadService
from msghub.tap import Options

from fakes import make_hub

FOLDER = "/etc/msghub"


def parsed(description: str) -> tuple[list, dict]:
    """What Twisted's own parser makes of a description: the oracle for the rewritten strings."""
    return _parse(description)


# --- endpoint strings ----------------------------------------------------------------


@pytest.mark.parametrize(
    "written, args, kwargs",
    [
        ("ssl:8443:privateKey=key.pem:certKey=tls/cert.pem",
         ["ssl", "8443"], {"privateKey": "/etc/msghub/key.pem", "certKey": "/etc/msghub/tls/cert.pem"}),
        ("ssl:8443:privateKey=k.pem:extraCertChain=chain.pem:dhParameters=dh.pem",
         ["ssl", "8443"], {"privateKey": "/etc/msghub/k.pem", "extraCertChain": "/etc/msghub/chain.pem",
                           "dhParameters": "/etc/msghub/dh.pem"}),
        # By position: port, privateKey, certKey.
        ("ssl:8443:key.pem:cert.pem", ["ssl", "8443", "/etc/msghub/key.pem", "/etc/msghub/cert.pem"], {}),
        # Without privateKey Twisted reads server.pem from the working directory; here, from the conf's folder.
        ("ssl:8443:interface=127.0.0.1",
         ["ssl", "8443"], {"interface": "127.0.0.1", "privateKey": "/etc/msghub/server.pem"}),
        ("ssl:8443:privateKey=/srv/k.pem:certKey=c.pem",
         ["ssl", "8443"], {"privateKey": "/srv/k.pem", "certKey": "/etc/msghub/c.pem"}),
        ("unix:run/hub.sock:mode=600", ["unix", "/etc/msghub/run/hub.sock"], {"mode": "600"}),
        ("unix:address=hub.sock:lockfile=0", ["unix"], {"address": "/etc/msghub/hub.sock", "lockfile": "0"}),
        # The PROXY protocol wrapper: the endpoint it wraps follows.
        ("haproxy:ssl:8443:privateKey=k.pem", ["haproxy", "ssl", "8443"], {"privateKey": "/etc/msghub/k.pem"}),
        ("haproxy:unix:hub.sock", ["haproxy", "unix", "/etc/msghub/hub.sock"], {}),
        ("HAProxy:unix:hub.sock", ["HAProxy", "unix", "/etc/msghub/hub.sock"], {}),
        # Escapes survive the round trip: a colon and an equals sign inside a file name.
        (r"ssl:8443:privateKey=a\:b=c.pem", ["ssl", "8443"], {"privateKey": "/etc/msghub/a:b=c.pem"}),
    ],
)
def test_relative_file_paths_of_ssl_and_unix_endpoints_are_put_under_the_conf_folder(written, args, kwargs):
    assert parsed(resolve_endpoint(written, FOLDER)) == (args, kwargs)


@pytest.mark.parametrize(
    "written",
    [
        "tcp:8080:interface=127.0.0.1",
        "tcp6:8080:interface=\\:\\:1",
        "haproxy:tcp:8080:interface=127.0.0.1",
        "systemd:domain=INET:index=0",
        "unix:/run/msghub/hub.sock:mode=660",
        "unix:@msghub",  # Linux's abstract namespace: no file
        "ssl:8443:privateKey=/k.pem:certKey=/c.pem",
        "le:certs:tcp:443",  # a plugin's arguments are its own
        "ssl:8443:privateKey=key.pem\\",  # does not parse: left for the endpoint check to report
    ],
)
def test_descriptions_without_relative_paths_are_returned_as_written(written):
    assert resolve_endpoint(written, FOLDER) == written


# --- load() ----------------------------------------------------------------------------


def write_key_and_cert(folder: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (folder / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


CONF = """\
[listen]
http = ["ssl:0:privateKey=key.pem:certKey=cert.pem:interface=127.0.0.1"]
compact = ["unix:hub.sock"]
admin = []
[spool]
path = "data/hub.db"
"""


@pytest.fixture
def elsewhere(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """A conf folder with its TLS files, and the working directory: another folder."""
    conf = tmp_path / "etc"
    conf.mkdir()
    write_key_and_cert(conf)
    (conf / "hub.toml").write_text(CONF)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return conf, cwd


def test_spool_path_and_endpoint_files_are_found_beside_the_conf_from_another_working_directory(elsewhere):
    conf, _ = elsewhere
    config = load("../etc/hub.toml")
    assert config.path == "../etc/hub.toml"  # problems still name the file as the operator wrote it
    folder = Path.cwd() / "../etc"
    assert config.spool.path == str(folder / "data/hub.db")
    assert config.listen == Listen(
        http=(f"ssl:0:privateKey={folder}/key.pem:certKey={folder}/cert.pem:interface=127.0.0.1",),
        compact=(f"unix:{folder}/hub.sock",),
        admin=(),
    )


def test_a_missing_key_file_is_reported_where_it_was_looked_for(elsewhere):
    conf, _ = elsewhere
    (conf / "key.pem").unlink()
    with pytest.raises(ConfigError) as info:
        load(str(conf / "hub.toml"))
    [line] = info.value.errors
    assert line.startswith(f"{conf}/hub.toml: listen.http[0]: not a Twisted server endpoint description: ")
    assert f"{conf}/key.pem" in line


def test_an_absolute_spool_path_is_kept(tmp_path):
    (tmp_path / "hub.toml").write_text('[spool]\npath = "/var/lib/msghub/hub.db"\n')
    assert load(str(tmp_path / "hub.toml")).spool.path == "/var/lib/msghub/hub.db"


def test_a_sighup_after_a_change_of_directory_reads_the_same_file_and_resolves_it_the_same_way(elsewhere, monkeypatch):
    conf, cwd = elsewhere
    options = Options()
    options.parseOptions(["-c", "../etc/hub.toml"])  # relative, as typed on the command line
    hub = make_hub()
    monkeypatch.chdir(cwd.parent)  # as twistd --rundir does, after the options are parsed
    loaded = []

    def loader(path: str):
        loaded.append(load(path))
        return loaded[-1]

    service = ReloadService(hub, options.conf_path, lambda f, *a: f(*a), loader)
    service.running = True
    assert service.reload() is True
    assert loaded[0].spool == options.config.spool and loaded[0].listen == options.config.listen
