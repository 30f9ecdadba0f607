"""TLS on loopback for client tests: a private CA, and a terminator in front of a plain port.

``make_certificates(directory)`` writes a self-signed CA and, signed by it, a
server certificate for ``localhost`` and ``127.0.0.1`` (plus one for a name
no client asks for, to test hostname checks) and a client certificate (plus
one from another CA, to test servers that check them).  ``TLSTerminator`` accepts TLS
on 127.0.0.1 and relays the cleartext to a plain TCP port, as a load balancer
in front of the hub would: the clients' TLS is tested without the hub's own
TLS listeners.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_PEM = serialization.Encoding.PEM


@dataclass(frozen=True)
class ServerCertificate:
    cert: Path  # PEM: the server certificate
    key: Path  # PEM: its private key, unencrypted


@dataclass(frozen=True)
class Certificates:
    ca: Path  # PEM: the CA certificate clients should trust
    server: ServerCertificate  # for localhost and 127.0.0.1
    wrong_name: ServerCertificate  # signed by the same CA, for hub.invalid only
    client: ServerCertificate  # a client certificate (CN msghub-client) signed by the CA
    other_client: ServerCertificate  # a client certificate from a CA of its own: not trusted


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: x509.Name, issuer: x509.Name, key, now: datetime.datetime) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def _server(directory: Path, stem: str, names: list[x509.GeneralName], ca_cert, ca_key, now,
            usage=ExtendedKeyUsageOID.SERVER_AUTH) -> ServerCertificate:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(_name(stem), ca_cert.subject, key, now)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = ServerCertificate(directory / f"{stem}.pem", directory / f"{stem}.key")
    paths.cert.write_bytes(cert.public_bytes(_PEM))
    paths.key.write_bytes(
        key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


def _ca(common_name: str, now: datetime.datetime):
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        _builder(_name(common_name), _name(common_name), ca_key, now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return ca_cert, ca_key


def make_certificates(directory: Path) -> Certificates:
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_cert, ca_key = _ca("msghub test CA", now)
    ca = directory / "ca.pem"
    ca.write_bytes(ca_cert.public_bytes(_PEM))
    other_cert, other_key = _ca("another CA", now)
    loopback = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    client_names = [x509.DNSName("msghub-client")]
    return Certificates(
        ca,
        _server(directory, "localhost", loopback, ca_cert, ca_key, now),
        _server(directory, "hub.invalid", [x509.DNSName("hub.invalid")], ca_cert, ca_key, now),
        _server(directory, "msghub-client", client_names, ca_cert, ca_key, now, ExtendedKeyUsageOID.CLIENT_AUTH),
        _server(directory, "other-client", client_names, other_cert, other_key, now, ExtendedKeyUsageOID.CLIENT_AUTH),
    )


class TLSTerminator:
    """Accept TLS on 127.0.0.1:``port`` and relay each connection to 127.0.0.1:``upstream``.

    One asyncio loop in a thread of its own, so that blocking clients in the
    test's thread and the Twisted reactor both work against it.  Either side
    closing closes the other, as the hub's closes must reach the client.
    """

    def __init__(self, upstream: int, certificate: ServerCertificate) -> None:
        self.upstream = upstream
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(certificate.cert, certificate.key)
        self._relays: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._relay, "127.0.0.1", 0, ssl=self.context)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"tls-{self.port}")
        self._thread.start()

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._relays.add(task)
        writers = {client_writer}
        self._writers |= writers
        try:
            hub_reader, hub_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
            writers.add(hub_writer)
            self._writers.add(hub_writer)
            await asyncio.gather(_pipe(client_reader, hub_writer), _pipe(hub_reader, client_writer))
        except OSError:
            pass  # the hub is down: the client sees its connection close
        finally:
            for writer in writers:
                writer.close()
            self._writers -= writers
            self._relays.discard(task)

    def stop(self) -> None:
        """Stop listening, close every relayed connection, and end the thread."""

        async def close() -> None:
            self._server.close()
            # Closing both ends lets each relay finish on its own (cancelling
            # them makes asyncio's stream callbacks log CancelledError).
            for writer in self._writers:
                writer.close()
            await asyncio.gather(*self._relays, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        assert not self._thread.is_alive()
        self._loop.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()
