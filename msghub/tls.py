"""TLS for the hub's outgoing connections (amqps:// brokers, https:// webhook targets).

``ClientTLS`` is the conf's ``ca_file``, ``client_cert`` and ``client_key``,
checked once when the conf is loaded (each file read and parsed, so a bad one
is a ``FILE: key: problem`` line, not a failed connection later);
``client_options`` turns it into Twisted's client connection creator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

TLS_KEYS = ("ca_file", "client_cert", "client_key")

Add = Callable[[str, str], None]  # (key, problem)


@dataclass(frozen=True)
class ClientTLS:
    ca_file: str | None = None  # PEM: the CAs to trust instead of the system's
    client_cert: str | None = None  # PEM: our certificate (and its chain), for servers that ask
    client_key: str | None = None  # PEM: its private key, unencrypted


def _read(path: object, key: str, add: Add) -> bytes | None:
    if not isinstance(path, str) or not path:
        add(key, "must be the path of a PEM file")
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        add(key, f"cannot read {path}: {e.strerror or e}")
        return None


def load_client_tls(table: dict, prefix: str, add: Add) -> ClientTLS:
    """``ca_file``, ``client_cert``, ``client_key`` of ``table`` (a section at ``prefix``)."""
    values: dict[str, str] = {}
    pem: dict[str, bytes] = {}
    for name in TLS_KEYS:
        if name in table:
            data = _read(table[name], f"{prefix}.{name}", add)
            if data is not None:
                values[name], pem[name] = table[name], data
    if not pem:
        return ClientTLS()
    # Only now: without TLS support installed, https:// is refused elsewhere with its own line.
    from OpenSSL import crypto
    for name in ("ca_file", "client_cert"):
        if name in pem:
            try:
                if not _certificate_blocks(pem[name]):
                    raise ValueError("none")
                for block in _certificate_blocks(pem[name]):
                    crypto.load_certificate(crypto.FILETYPE_PEM, block)
            except (crypto.Error, ValueError):
                add(f"{prefix}.{name}", f"{values[name]} holds no PEM certificate, or a broken one")
                del values[name]
    if "client_key" in pem:
        try:
            crypto.load_privatekey(crypto.FILETYPE_PEM, pem["client_key"])
        except crypto.Error:
            add(f"{prefix}.client_key", f"{values['client_key']} holds no unencrypted PEM private key")
            del values["client_key"]
    if ("client_cert" in table) != ("client_key" in table):
        add(f"{prefix}.client_cert", "client_cert and client_key go together: set both or neither")
    elif "client_cert" in values and "client_key" in values:
        try:
            _private_certificate(ClientTLS(**values))
        except Exception:  # pyOpenSSL's errors for a mismatch vary by version
            add(f"{prefix}.client_key", f"{values['client_key']} is not the key of {values['client_cert']}")
            del values["client_key"]
    return ClientTLS(**values)


_END = b"-----END CERTIFICATE-----"


def _certificate_blocks(pem: bytes) -> list[bytes]:
    """Each ``BEGIN CERTIFICATE`` block of a PEM file (a CA file may hold several)."""
    blocks = []
    for part in pem.split(_END)[:-1]:
        start = part.find(b"-----BEGIN CERTIFICATE-----")
        if start >= 0:
            blocks.append(part[start:] + _END + b"\n")
    return blocks


def _private_certificate(tls: ClientTLS) -> Any:
    from twisted.internet.ssl import PrivateCertificate

    assert tls.client_cert is not None and tls.client_key is not None
    with open(tls.client_cert, "rb") as cert, open(tls.client_key, "rb") as key:
        return PrivateCertificate.loadPEM(cert.read() + b"\n" + key.read())


def client_options(host: str, tls: ClientTLS) -> Any:
    """Twisted's creator for a verified TLS client connection to ``host`` under ``tls``.

    The files are read again here (at connect set-up, not per connection):
    a renewed certificate is picked up by the next start.
    """
    from twisted.internet.ssl import Certificate, optionsForClientTLS, trustRootFromCertificates

    kwargs: dict[str, Any] = {}
    if tls.ca_file is not None:
        with open(tls.ca_file, "rb") as f:
            blocks = _certificate_blocks(f.read())
        kwargs["trustRoot"] = trustRootFromCertificates([Certificate.loadPEM(b) for b in blocks])
    if tls.client_cert is not None and tls.client_key is not None:
        kwargs["clientCertificate"] = _private_certificate(tls)
    return optionsForClientTLS(host, **kwargs)


def tls_problem(reason: Any) -> str | None:
    """The TLS errors inside a connection ``Failure`` (however wrapped), as one phrase; else None.

    A failed handshake reaches protocol code as a ConnectionLost-like
    failure whose arguments hold the pyOpenSSL error: its reasons
    ("certificate verify failed") are what an operator needs, not its repr.
    """
    from OpenSSL.SSL import Error

    seen = 0
    pending = [reason]
    while pending and seen < 20:  # bounded: failures can nest and repeat
        seen += 1
        item = pending.pop()
        value = getattr(item, "value", item)
        if isinstance(value, Error):
            reasons = [r[2] for r in (value.args[0] if value.args else []) if isinstance(r, tuple) and len(r) == 3]
            return "TLS: " + ("; ".join(reasons) or str(value))
        if isinstance(value, BaseException):
            pending.extend(value.args)
    return None
