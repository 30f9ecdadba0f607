"""Malformed and misframed streams that carry a secret where a peer's mistake would put it.

Shared by the unit tests (a protocol over a StringTransport) and the
integration test (the real twistd and its log file).
"""

import base64

SECRET = b"Zq8TopSecretValue5xW"
BASIC = base64.b64encode(b"feed:" + SECRET)
PIECES = [SECRET[i : i + 8] for i in range(len(SECRET) - 7)]
PIECES += [BASIC[i : i + 8] for i in range(len(BASIC) - 7)]

COMPACT_SHAPES = {
    "http sent to the compact port": b"POST /q HTTP/1.1\r\nAuthorization: Basic " + BASIC + b"\r\n\r\n",
    "a header line without its opcode": b"Authorization: Bearer " + SECRET + b"\r\n",
    "a secret as a line": SECRET + b"\r\n",
    "a secret after a space": b" " + SECRET + b"\r\n",
    "an unknown register named by it": b"<:" + SECRET + b"\r\n",
    "a register name it makes invalid": b">:" + SECRET + b"/\r\n",
    "a header value with a control byte": b"H:Authorization: Bearer " + SECRET + b"\x01\r\n",
    "a header name with a space": b"H:Author ization " + SECRET + b": x\r\n",
    "a line too long": b"H:Authorization: Bearer " + SECRET * 600 + b"\r\n",
    "a bare LF": b"H:Authorization: Bearer " + SECRET + b"\n",
    "a body line cut by a bad length": b"+:/q " + SECRET + b"\r\n",
}

HTTP_SHAPES = {
    "a header value with a control byte": b"POST /q HTTP/1.1\r\nAuthorization: Bearer " + SECRET + b"\x01\r\n\r\n",
    "a header line without a colon": b"POST /q HTTP/1.1\r\nAuthorization Basic " + BASIC + b"\r\n\r\n",
    "a secret as the request line": SECRET + b"\r\n\r\n",
    "a secret as the method": SECRET + b"( /q HTTP/1.1\r\n\r\n",
    "a secret in the version": b"POST /q HTTP/" + SECRET + b"\r\n\r\n",
    "a header too large": b"POST /q HTTP/1.1\r\nAuthorization: Bearer " + SECRET * 2000 + b"\r\n\r\n",
    "a bad content length": b"POST /q HTTP/1.1\r\nContent-Length: " + SECRET + b"\r\n\r\n",
    "a bad chunk size": b"POST /q HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + SECRET + b"\r\n",
    "a bare LF in the head": b"POST /q HTTP/1.1\nAuthorization: Bearer " + SECRET + b"\n\n",
}


def leaks(data: bytes) -> list[bytes]:
    """The pieces of the secret (8 bytes or more, raw or in Basic's base64) found in ``data``."""
    return [piece for piece in PIECES if piece in data]
