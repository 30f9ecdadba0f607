"""``msghub-codec``: translate between plain HTTP/1.1 and compact HTTP, and measure the gain.

    msghub-codec encode < requests.http > requests.compact
    msghub-codec decode < requests.compact > requests.http
    msghub-codec stats [--from http|compact] < requests

Input is read from stdin in 64 KiB chunks, so streams of any length work in
constant memory.  Bad input ends the run with one line on stderr and exit
status 1; usage errors exit with 2.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import BinaryIO, Iterable, Iterator, Sequence

from msghub.compact.decoder import Decoder
from msghub.compact.encoder import Encoder
from msghub.compact.errors import CompactError, StreamError, UsageError
from msghub.compact.http11 import Http11Reader, to_http11
from msghub.compact.state import Rejected, Request

PROG = "msghub-codec"
CHUNK = 64 * 1024

# A plain HTTP/1.1 stream starts with a request line; no compact line can
# match, because ':' is not a token character.
_REQUEST_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ [^ ]+ HTTP/[0-9]\.[0-9]\r?")


class _BadInput(Exception):
    """Input the codec cannot translate; the message is the whole stderr line."""


def _describe(error: StreamError) -> str:
    where = "" if error.number is None else f" (request {error.number})"
    return f"{error.status} {error.reason}{where}"


def _chunks(stdin: BinaryIO) -> Iterator[bytes]:
    # read1 returns what a pipe has now, so a live stream is not held back
    # until 64 KiB have arrived.
    read = getattr(stdin, "read1", stdin.read)
    while chunk := read(CHUNK):
        yield chunk


def _requests(events: Iterable[Request | Rejected]) -> list[Request]:
    """Requests from decoder events; a refused one ends the run (it has no body to translate)."""
    out = []
    for event in events:
        if isinstance(event, Rejected):
            raise StreamError(event.status, event.reason, event.number)
        out.append(event)
    return out


def _http11(request: Request) -> bytes:
    try:
        return to_http11(request)
    except UsageError as e:
        raise _BadInput(f"request {request.number}: {e}") from e


class _Input:
    """stdin as requests, read by the HTTP/1.1 reader or the compact decoder."""

    def __init__(self, chunks: Iterable[bytes], source: str) -> None:
        self.chunks = chunks
        self.source = source
        self.bytes = 0

    def batches(self) -> Iterator[list[Request]]:
        """Lists of requests, one per chunk read; checks the stream ended cleanly."""
        if self.source == "http":
            reader = Http11Reader()
            for chunk in self.chunks:
                self.bytes += len(chunk)
                try:
                    yield reader.feed(chunk)
                except StreamError as e:
                    yield e.events  # what came before the error still counts
                    raise
            reader.close()
            return
        decoder = Decoder()
        for chunk in self.chunks:
            self.bytes += len(chunk)
            try:
                events = decoder.feed(chunk)
            except StreamError as e:
                yield _requests(e.events)
                if e.number is None:  # a bad state line: say where it is
                    raise _BadInput(f"{_describe(e)} (after request {decoder.requests_framed})") from e
                raise
            yield _requests(events)
        if decoder.buffered:
            raise StreamError(400, "stream ended inside a request", decoder.requests_framed + 1)


def _encode(args: argparse.Namespace, stdin: BinaryIO, stdout: BinaryIO) -> None:
    encoder = Encoder()
    for batch in _Input(_chunks(stdin), "http").batches():
        if batch:
            stdout.write(encoder.encode(batch))


def _decode(args: argparse.Namespace, stdin: BinaryIO, stdout: BinaryIO) -> None:
    for batch in _Input(_chunks(stdin), "compact").batches():
        if batch:
            stdout.write(b"".join(map(_http11, batch)))


def _detect(chunks: Iterator[bytes]) -> tuple[str, Iterator[bytes]]:
    """Guess the format from the first line; return it and the chunks, none lost."""
    head = b""
    for chunk in chunks:
        head += chunk
        if b"\n" in head.lstrip(b"\r\n") or len(head) > CHUNK:
            break
    first = head.lstrip(b"\r\n").split(b"\n", 1)[0]
    source = "http" if _REQUEST_LINE.fullmatch(first) else "compact"
    return source, _prepend(head, chunks)


def _prepend(head: bytes, chunks: Iterator[bytes]) -> Iterator[bytes]:
    if head:
        yield head
    yield from chunks


def _stats(args: argparse.Namespace, stdin: BinaryIO, stdout: BinaryIO) -> None:
    chunks = _chunks(stdin)
    if args.source is None:
        source, chunks = _detect(chunks)
        how = "detected"
    else:
        source, how = args.source, "--from"
    stream = _Input(chunks, source)
    encoder = Encoder()
    count = body = plain = compact = 0
    first: tuple[int, int, int] | None = None  # body, plain, compact of request 1
    for batch in stream.batches():
        if not batch:
            continue
        if first is None:
            # Request 1 alone, to report the steady state without it.
            one = batch[0]
            first = (len(one.body), len(_http11(one)), len(encoder.encode(batch[:1])))
            count, body, plain, compact = 1, first[0], first[1], first[2]
            batch = batch[1:]
        count += len(batch)
        for request in batch:
            body += len(request[2])
            plain += len(_http11(request))
        compact += len(encoder.encode(batch))
    name = {"http": "plain HTTP/1.1", "compact": "compact HTTP"}[source]
    lines = [
        f"input: {stream.bytes} bytes of {name} ({how})",
        f"requests: {count}",
        f"body bytes: {body} ({_per(body, count)} per request)",
        "",
        f"{'as written by msghub':<26}{'HTTP/1.1':>10}{'compact':>10}",
        f"{'bytes':<26}{plain:>10}{compact:>10}",
        f"{'bytes per request':<26}{_per(plain, count):>10}{_per(compact, count):>10}",
        f"{'overhead per request':<26}{_per(plain - body, count):>10}{_per(compact - body, count):>10}",
    ]
    if first is not None:
        rest_body = body - first[0]
        lines.append(
            f"{'overhead after the first':<26}"
            f"{_per(plain - first[1] - rest_body, count - 1):>10}"
            f"{_per(compact - first[2] - rest_body, count - 1):>10}"
        )
    lines += [
        "",
        f"ratio HTTP/1.1 / compact: {_ratio(plain, compact)} in bytes, "
        f"{_ratio(plain - body, compact - body)} in overhead",
    ]
    stdout.write(("\n".join(lines) + "\n").encode())


def _per(total: int, count: int) -> str:
    return f"{total / count:.1f}" if count else "-"


def _ratio(a: int, b: int) -> str:
    return f"{a / b:.2f}" if b else "-"


def _arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Translate between plain HTTP/1.1 and compact HTTP (docs/compact-http.md), stdin to stdout.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    encode = commands.add_parser("encode", help="HTTP/1.1 requests on stdin -> compact stream on stdout")
    encode.set_defaults(run=_encode)
    decode = commands.add_parser("decode", help="compact stream on stdin -> HTTP/1.1 requests on stdout")
    decode.set_defaults(run=_decode)
    stats = commands.add_parser("stats", help="count requests and compare HTTP/1.1 with compact sizes")
    stats.add_argument(
        "--from",
        dest="source",
        choices=("http", "compact"),
        help="the format of stdin (default: detected from its first line)",
    )
    stats.set_defaults(run=_stats)
    return parser


def _binary(stream):
    """The byte stream under a text stream (tests may hand in a byte stream directly)."""
    return getattr(stream, "buffer", stream)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _arguments().parse_args(argv)
    except SystemExit as e:  # argparse has printed usage or help already
        return e.code if isinstance(e.code, int) else 2
    stdout = _binary(sys.stdout)
    try:
        args.run(args, _binary(sys.stdin), stdout)
        stdout.flush()
    except StreamError as e:
        return _fail(f"stdin: {_describe(e)}", stdout)
    except (_BadInput, CompactError) as e:
        return _fail(f"stdin: {e}", stdout)
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): not worth a message, and the
        # interpreter must not trip on the dead pipe again when it exits.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 1
    except OSError as e:
        return _fail(f"{e.filename or 'stdin/stdout'}: {e.strerror or e}", stdout)
    except KeyboardInterrupt:
        return 130
    return 0


def _fail(message: str, stdout: BinaryIO) -> int:
    try:
        stdout.flush()  # what was translated before the error goes out first
    except OSError:
        pass
    print(f"{PROG}: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
