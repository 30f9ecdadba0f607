"""msghub-gateway's two protocols without sockets: half-close, options it cannot honour, versions."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.testing import StringTransport

from msghub.compact import Limits
from msghub.compact.state import HTTP11, Request, State
from msghub.gateway import Compress, Decompress, EndToEnd


class FakeUpstream:
    """``HttpPool.request`` and ``TxCompactSender.send_request``: each request waits for the test to answer it."""

    def __init__(self) -> None:
        self.sent: list[tuple] = []  # (request, its Deferred)

    def request(self, data) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.sent.append((data, d))
        return d

    send_request = request


def decompress() -> tuple[Decompress, FakeUpstream, StringTransport]:
    pool = FakeUpstream()
    protocol = Decompress(pool, EndToEnd(b"up:80"), Limits())  # type: ignore[arg-type]
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, pool, transport


def test_decompress_answers_what_was_sent_before_a_half_close_then_closes():
    protocol, pool, transport = decompress()
    protocol.dataReceived(b"+:/a 1\r\nx+:/b 1\r\ny")
    protocol.readConnectionLost()  # shutdown(SHUT_WR): the answers are still owed
    assert not transport.disconnecting
    for _, d in pool.sent:
        d.callback((200, "OK"))
    assert transport.value() == b"A:1\r\nA:2\r\n"
    assert transport.disconnecting


def test_decompress_half_close_with_nothing_owed_closes_at_once():
    protocol, _, transport = decompress()
    protocol.readConnectionLost()
    assert transport.disconnecting and transport.value() == b""


def test_decompress_refuses_message_ids_it_cannot_name():
    protocol, pool, transport = decompress()
    protocol.dataReceived(b"+:/a 1\r\nxO:message-ids\r\n+:/b 1\r\ny")
    pool.sent[0][1].callback((200, "OK"))
    assert transport.value() == b"A:1\r\nX:400 unknown option (11 bytes)\r\n"
    assert len(pool.sent) == 1 and transport.disconnecting


def test_decompress_answers_505_for_a_version_http11_cannot_carry():
    # It used to raise UsageError out of dataReceived (an unhandled traceback, no answer).
    protocol, pool, transport = decompress()
    protocol.dataReceived(b"V:HTTP/2.0\r\n+:/a 1\r\nxV:HTTP/1.1\r\n+:/b 1\r\ny")
    assert [data.split(b"\r\n")[0] for data, _ in pool.sent] == [b"POST /b HTTP/1.1"]
    pool.sent[0][1].callback((200, "OK"))
    assert transport.value() == b"E:1 505 HTTP version not supported\r\nA:1\r\nA:2\r\n"
    assert not transport.disconnecting


def test_compress_answers_what_was_sent_before_a_half_close_then_closes():
    client = FakeUpstream()
    protocol = Compress(client, EndToEnd(), Limits())  # type: ignore[arg-type]
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(b"POST /a HTTP/1.1\r\nContent-Length: 1\r\n\r\nx")
    protocol.readConnectionLost()
    assert not transport.disconnecting
    assert client.sent[0][0][:3] == (b"POST", b"/a", b"x")
    assert client.sent[0][0][3] == State(HTTP11, b"", b"POST", ())
    client.sent[0][1].callback(1)
    assert transport.value() == b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"
    assert transport.disconnecting
