"""The compact HTTP port: bytes -> ``Decoder`` -> router -> sinks -> ``A:``/``E:`` lines."""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.python.failure import Failure

from msghub.compact import Decoder, StreamError, ack_line, error_line, fatal_line, ids_line
from msghub.ingress.base import BODY, HEAD, Batch, IngressProtocol
from msghub.message import SEQ_BITS, SEQ_MASK

if TYPE_CHECKING:
    from msghub.ingress.context import IngressContext


class CompactIngress(IngressProtocol):
    """One compact HTTP connection (``docs/compact-http.md``).

    Acks are coalesced: one ``A:n`` line answers every batch that finished in
    the same turn, after the ``E:`` lines for the requests it refused.
    """

    ingress = "compact"

    def __init__(self, context: IngressContext) -> None:
        super().__init__(context)
        self.decoder = Decoder(context.codec_limits)
        self.next_number = 1
        self.fatal: StreamError | None = None

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        self.unbatched += len(data)
        self.resetTimeout()
        try:
            events = self.decoder.feed(data)
        except StreamError as e:
            events = e.events
            self.fatal = e
            self.closing = True
            self.transport.pauseProducing()
            self.stats.rejected(self.ingress, {0: (e.status,)})
            self.log_once(f"X:{e.status} {e.reason}")
        except Exception as e:  # a bug of ours, not the peer's bytes
            events = []
            self.internal_error(e)
        if events:
            first = self.next_number
            self.next_number += len(events)
            self.route_read(events, first)
        elif self.fatal is not None:
            self.flush()
        if not self.closing:
            decoder = self.decoder
            if decoder.in_body:
                self.progress(BODY)
            elif decoder.buffered:  # inside a line; its start tells one line from the next
                self.progress(HEAD, decoder.consumed)
            else:
                self.progress(0)

    def request_timeout(self, reason: str) -> None:
        self.fatal = StreamError(408, reason)
        self.closing = True
        self.transport.pauseProducing()
        self.stats.rejected(self.ingress, {0: (408,)})
        self.log_once(f"X:408 {reason}")

    def fail_internal(self) -> None:
        self.fatal = StreamError(500, "internal error")

    @staticmethod
    def connection_refusal(status: int, reason: str) -> bytes:
        return fatal_line(status, reason)

    def answer(self, batches: list[Batch]) -> None:
        out = []
        ids_from = self.decoder.message_ids_from  # O:message-ids asks for the requests after it
        for batch in batches:
            if ids_from and batch.last >= ids_from:
                number = max(batch.first, ids_from)
                first = batch.ids + number
                out.append(ids_line(number, first >> SEQ_BITS, first & SEQ_MASK))
            errors = batch.errors
            if errors:
                for number in sorted(errors):
                    status, reason, _ = errors[number]
                    out.append(error_line(number, status, reason))
        out.append(ack_line(batches[-1].last))
        self.write(b"".join(out))

    def finish(self) -> None:
        if self.fatal is not None:
            self.transport.write(fatal_line(self.fatal.status, self.fatal.reason))
        elif self.draining:
            self.transport.write(fatal_line(503, "hub shutting down"))
        elif self.idle:
            self.transport.write(fatal_line(408, "idle timeout"))
        self.close()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.decoder.buffered and self.fatal is None:
            self.log_once(f"closed mid-request ({self.decoder.buffered} bytes unanswered)")
        super().connectionLost(reason)
