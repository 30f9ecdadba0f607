"""Compact codec throughput and size, each figure beside a bare baseline.

Claim (STYLE.md rule 8): decoding a cached ``+`` line costs no more than
~1/0.75 of the least Python can do to frame the same stream, i.e. the
decoder runs at >= 75% of a bare loop that finds CRLF, ints the length and
slices the body.  The machine is shared and noisy, so the codec and its
baseline run alternately in the same process, round by round, and the report
gives per-round ratios and ranges rather than single absolute numbers.

Cases:

* ``opra``: ``H:Content-Type``, ``H:Accept-Encoding``, ``B:/quotes/opra``
  once, then ``+: 66`` and a 66-byte body per message.  The ``B:`` line (16
  bytes, once) makes every request ``POST /quotes/opra``, the same request the
  plain HTTP/1.1 rendering carries; the per-message bytes are those of the
  stream without it.
* ``symbols``: the same headers, no ``B:``, then ``+:/quotes/SYM 66`` with
  500 distinct symbols in a fixed pseudo-random order: the per-state line
  cache holding many distinct lines.
* encode: the decoded requests of each stream (one shared ``State``), fed to
  ``Encoder.encode`` in the batches the decoder returned per 64 KiB read,
  beside a bare loop that formats the same per-message bytes.
* encode ``target /``: requests ``POST /`` (the opra stream without the
  ``B:`` line), on a tenth of the messages: that target misses the encoder's
  fast path.

Timed sections run with the garbage collector disabled (after a collect);
building streams, splitting chunks and checking results are not timed.

    .venv/bin/python bench/codec.py [--messages N] [--rounds R] [--chunk BYTES]
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import random
import statistics
import sys
from time import perf_counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from msghub.compact import Decoder, Encoder  # noqa: E402

BODY = 66
HEADERS = (
    (b"Content-Type", b"application/x-opra-quote"),
    (b"Accept-Encoding", b"identity"),
)
PREAMBLE = b"".join(b"H:%s: %s\r\n" % h for h in HEADERS)
OPRA_BASE = b"/quotes/opra"
SYMBOLS = 500
TARGET = 0.75  # decoder / bare baseline


# -- streams -------------------------------------------------------------


def bodies(n: int) -> list[bytes]:
    """``n`` distinct 66-byte bodies: a sequence number in a fixed quote."""
    tail = b"OPRA|SPY   260619C00550000|B 12.34x50|A 12.41x75|".ljust(BODY - 14, b"~")
    return [b"Q%012d|" % i + tail for i in range(n)]


def symbols(n: int) -> list[bytes]:
    rng = random.Random(2009)
    letters = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    out: dict[bytes, None] = {}
    while len(out) < n:
        out[bytes(rng.choice(letters) for _ in range(rng.randint(1, 5)))] = None
    return list(out)


def opra_stream(body_list: list[bytes], base: bool = True) -> bytes:
    head = PREAMBLE + (b"B:%s\r\n" % OPRA_BASE if base else b"")
    return head + b"".join([b"+: %d\r\n%s" % (len(b), b) for b in body_list])


def symbol_stream(body_list: list[bytes], syms: list[bytes]) -> tuple[bytes, list[bytes]]:
    rng = random.Random(1)
    order = rng.choices(syms, k=len(body_list))
    data = PREAMBLE + b"".join([b"+:/quotes/%s %d\r\n%s" % (s, len(b), b) for s, b in zip(order, body_list)])
    return data, order


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def plain_size(target: bytes, body_len: int) -> int:
    """Bytes of the request as HTTP/1.1: request line, the two headers, Content-Length."""
    head = b"POST %s HTTP/1.1\r\n" % target
    head += b"".join(b"%s: %s\r\n" % h for h in HEADERS)
    head += b"Content-Length: %d\r\n\r\n" % body_len
    return len(head) + body_len


# -- the code under test and its baselines --------------------------------


def decode(chunks: list[bytes]) -> int:
    feed = Decoder().feed
    n = 0
    for chunk in chunks:
        n += len(feed(chunk))
    return n


def bare_decode(chunks: list[bytes]) -> int:
    """The least framing Python can do: find CRLF, int the length, slice the body.

    State lines are skipped on their first byte; a partial message is carried
    into the next chunk as the decoder does.  Bodies are collected per chunk,
    as the decoder returns its requests per chunk.
    """
    n = 0
    tail = b""
    for chunk in chunks:
        buf = tail + chunk if tail else chunk
        out: list[bytes] = []
        append = out.append
        find = buf.find
        rfind = buf.rfind
        blen = len(buf)
        pos = 0
        while True:
            eol = find(b"\r\n", pos)
            if eol < 0:
                break
            if buf[pos] != 43:  # not b"+"
                pos = eol + 2
                continue
            start = eol + 2
            end = start + int(buf[rfind(b" ", pos, eol) + 1 : eol])
            if end > blen:
                break
            append(buf[start:end])
            pos = end
        tail = buf[pos:]
        n += len(out)
    return n


def encode(batches: list[list]) -> int:
    enc = Encoder().encode
    size = 0
    for batch in batches:
        size += len(enc(batch))
    return size


def bare_encode(batches: list[list]) -> int:
    """Format each request's ``+`` line and body, as the encoder's fast path emits them."""
    size = 0
    for batch in batches:
        size += len(b"".join([b"+:%s %d\r\n%s" % (r[1], len(r[2]), r[2]) for r in batch]))
    return size


def decode_batches(chunks: list[bytes]) -> list[list]:
    feed = Decoder().feed
    return [batch for batch in map(feed, chunks) if batch]


# -- measurement ------------------------------------------------------------


def timed(fn, arg) -> tuple[int, float]:
    gc.collect()
    gc.disable()
    try:
        t0 = perf_counter()
        result = fn(arg)
        elapsed = perf_counter() - t0
    finally:
        gc.enable()
    return result, elapsed


def side_by_side(name: str, pair, arg, messages: int, rounds: int, expect=None) -> dict:
    """Run codec and baseline alternately (order swapped every round)."""
    rates: dict[str, list[float]] = {"codec": [], "bare": []}
    for r in range(rounds):
        order = ("bare", "codec") if r % 2 == 0 else ("codec", "bare")
        for which in order:
            fn = pair[0] if which == "codec" else pair[1]
            result, elapsed = timed(fn, arg)
            if expect is not None and result != expect[which]:
                raise SystemExit(f"{name}/{which}: got {result}, expected {expect[which]}")
            rates[which].append(messages / elapsed)
        print(
            f"  {name} round {r + 1}: codec {rates['codec'][-1] / 1e6:.3f}, bare {rates['bare'][-1] / 1e6:.3f} M msg/s",
            file=sys.stderr,
        )
    ratios = [c / b for c, b in zip(rates["codec"], rates["bare"])]
    return {"name": name, "rates": rates, "ratios": ratios, "messages": messages}


def m(x: float) -> str:
    return f"{x / 1e6:.2f}"


def rate_rows(res: dict, codec_label: str, bare_label: str) -> list[str]:
    rows = []
    for key, label in (("codec", codec_label), ("bare", bare_label)):
        rs = res["rates"][key]
        med = statistics.median(rs)
        rows.append(
            f"| {res['name']} | {label} | {res['messages']:,} | {' '.join(m(x) for x in rs)} "
            f"| {m(med)} | {m(min(rs))}-{m(max(rs))} | {1e6 / med:.2f} |"
        )
    return rows


def ratio_row(res: dict, target: str) -> str:
    q = res["ratios"]
    return (
        f"| {res['name']} | {' '.join(f'{x:.2f}' for x in q)} | {statistics.median(q):.2f} "
        f"| {min(q):.2f}-{max(q):.2f} | {target} |"
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--chunk", type=int, default=65536)
    args = p.parse_args(argv)
    n, rounds, chunk = args.messages, args.rounds, args.chunk
    if n < 10 or rounds < 1 or chunk < 1:
        p.error("need --messages >= 10, --rounds >= 1, --chunk >= 1")

    t_start = perf_counter()
    print("building streams ...", file=sys.stderr)
    body_list = bodies(n)
    opra = opra_stream(body_list)
    syms = symbols(SYMBOLS)
    sym_data, sym_order = symbol_stream(body_list, syms)
    opra_chunks, sym_chunks = split(opra, chunk), split(sym_data, chunk)
    small = n // 10
    slash_chunks = split(opra_stream(body_list[:small], base=False), chunk)

    # Untimed check: both decoders agree with what was built.
    opra_batches = decode_batches(opra_chunks)
    sym_batches = decode_batches(sym_chunks)
    slash_batches = decode_batches(slash_chunks)
    got = [r for b in opra_batches for r in b]
    assert len(got) == n and got[0].target == OPRA_BASE and got[-1].body == body_list[-1]
    assert all(r.state is got[0].state for r in got)
    got = [r for b in sym_batches for r in b]
    assert len(got) == n and all(r[1] == b"/quotes/" + s for r, s in zip(got, sym_order))
    assert [r[2] for r in got] == body_list
    del got
    assert bare_decode(opra_chunks) == n and bare_decode(sym_chunks) == n

    decodes = [
        side_by_side("decode opra", (decode, bare_decode), opra_chunks, n, rounds, {"codec": n, "bare": n}),
        side_by_side("decode symbols", (decode, bare_decode), sym_chunks, n, rounds, {"codec": n, "bare": n}),
    ]
    opra_encoded = encode(opra_batches)
    sym_encoded = encode(sym_batches)
    slash_encoded = encode(slash_batches)
    assert decode(split(b"".join(Encoder().encode(b) for b in opra_batches), chunk)) == n
    encodes = [
        side_by_side("encode opra", (encode, bare_encode), opra_batches, n, rounds),
        side_by_side("encode symbols", (encode, bare_encode), sym_batches, n, rounds),
        side_by_side("encode target /", (encode, bare_encode), slash_batches, small, rounds),
    ]
    elapsed = perf_counter() - t_start

    plain_opra = n * plain_size(OPRA_BASE, BODY)
    plain_sym = sum(plain_size(b"/quotes/" + s, BODY) for s in sym_order)
    sizes = [
        ("opra, stream as built (`+: 66`)", len(opra), n, plain_opra),
        ("opra, Encoder output (`+:/quotes/opra 66`)", opra_encoded, n, plain_opra),
        ("opra without B:, Encoder output (target `/`)", slash_encoded, small, small * plain_size(b"/", BODY)),
        ("symbols, stream as built", len(sym_data), n, plain_sym),
        ("symbols, Encoder output", sym_encoded, n, plain_sym),
    ]

    cmd = ".venv/bin/python bench/codec.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    print(f"Command: `{cmd}`  ")
    print(f"Date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}  ")
    print(f"Python: {platform.python_implementation()} {platform.python_version()}, {platform.machine()}, "
          f"{os.cpu_count()} cores (shared)  ")
    print(f"Messages: {n:,} ({small:,} for `target /`), chunk {chunk} bytes, {rounds} rounds, "
          f"gc disabled while timed; wall time {elapsed:.0f} s")
    print()
    print("| Case | Code | Messages | M msg/s per round (run order) | Median | Range | us/msg (median) |")
    print("|---|---|--:|---|--:|--:|--:|")
    for res in decodes:
        print("\n".join(rate_rows(res, "`Decoder.feed`", "bare loop")))
    for res in encodes:
        print("\n".join(rate_rows(res, "`Encoder.encode`", "bare `%` format")))
    print()
    print("| Case | Codec / bare, per round | Median | Range | Target |")
    print("|---|---|--:|--:|---|")
    for res in decodes:
        print(ratio_row(res, f">= {TARGET:.2f}"))
    for res in encodes:
        print(ratio_row(res, "-"))
    print()
    print("| Stream | Bytes/msg | Overhead/msg (minus 66-byte body) | Plain HTTP/1.1 bytes/msg | Plain overhead/msg | Compact / plain |")
    print("|---|--:|--:|--:|--:|--:|")
    for label, size, count, plain in sizes:
        print(
            f"| {label} | {size / count:.2f} | {size / count - BODY:.2f} | {plain / count:.2f} "
            f"| {plain / count - BODY:.2f} | {size / plain:.3f} |"
        )


if __name__ == "__main__":
    main()
