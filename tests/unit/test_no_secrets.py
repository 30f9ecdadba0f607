"""Peer bytes that could hold credentials never reach the log or an error reason.

Each shape below carries a secret where a malformed or misframed stream
would put it; the connection is refused, and neither what is written back nor
any log line contains the secret or any 8-byte piece of it.
"""

import pytest

from msghub.ingress.compact import CompactIngress
from msghub.ingress.http import HttpIngress

from fakes import connect, make_hub
from secret_shapes import COMPACT_SHAPES, HTTP_SHAPES, leaks

CASES = [(CompactIngress, shape) for shape in sorted(COMPACT_SHAPES)]
CASES += [(HttpIngress, shape) for shape in sorted(HTTP_SHAPES)]
REFUSED = {CompactIngress: (b"X:4",), HttpIngress: (b"HTTP/1.1 4", b"HTTP/1.1 5")}


@pytest.mark.parametrize(("protocol_class", "shape"), CASES)
def test_refusals_never_show_the_secret(protocol_class, shape, logged):
    shapes = COMPACT_SHAPES if protocol_class is CompactIngress else HTTP_SHAPES
    protocol, transport = connect(protocol_class, make_hub())
    protocol.dataReceived(shapes[shape])
    protocol.connectionLost(None)
    wire = transport.value()
    assert wire.startswith(REFUSED[protocol_class])  # refused, with a status
    assert leaks(wire) == []
    assert leaks("\n".join(logged).encode()) == []
