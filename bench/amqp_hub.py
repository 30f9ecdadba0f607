"""The hub's own AMQP work per message, in one process: encoding batches and settling confirms.

Claim (issue 9, point 7; STYLE.md rule 8): the forwarder's per-message work
is small beside the broker's (``bench/amqp.py`` measures the whole path).
Two rows, each beside a baseline, alternately in the same process, round by
round, the garbage collector collected then disabled while timing:

* **encode**: ``AmqpSink.encode`` of 500-message batches (66-byte bodies,
  the headers of ``bench/amqp.py``'s routes), which builds each message from
  a cached header-frame template; baseline: the same frames built message
  by message with ``amqp_wire.content_frames`` (the encoder before the
  templates; the bytes are checked equal).
* **confirms**: the broker's ``basic.ack`` frames (multiple, one per 8
  messages, as RabbitMQ sent them in ``bench/amqp.py``: 121-125 per 1,000
  messages), 10 per read, fed to the forwarder's connection
  (``BrokerLink.dataReceived``: frame splitting, settling, each batch's
  Deferred fired); baseline: ``FrameReader.feed`` alone on the same reads,
  the frame splitting every reader needs.

The connection is the unit tests' fake broker (``tests/unit/amqp_fakes.py``,
a ``StringTransport``): no sockets.

    .venv/bin/python bench/amqp_hub.py [--messages N] [--rounds R]
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import statistics
import sys
from time import perf_counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "unit"))

import pika.spec  # noqa: E402
from amqp_fakes import Harness, server  # noqa: E402

from msghub.forward import amqp_wire as wire  # noqa: E402
from msghub.message import format_id  # noqa: E402
from msghub.forward.amqp_frames import FrameReader  # noqa: E402

BATCH = 500
HEADERS = ((b"Content-Type", b"application/x-opra-quote"), (b"Accept-Encoding", b"identity"))


def timed(f) -> float:
    gc.collect()
    gc.disable()
    try:
        t = perf_counter()
        f()
        return perf_counter() - t
    finally:
        gc.enable()


def encode_row(n: int) -> tuple[float, float]:
    h = Harness()
    sink = h.sink
    messages = [m._replace(headers=HEADERS, body=b"Q" * 66) for m in h.messages(n)]
    batches = [messages[i : i + BATCH] for i in range(0, n, BATCH)]

    # The properties once per batch, as the encoder before the templates cached them.
    static = wire.StaticProperties(HEADERS, b"POST", sink.route_name, None, sink.persistent)

    def baseline_batch(batch):
        out = []
        for m in batch:
            out.append(sink.method_frame(m.target, m.captures))
            out.append(wire.content_frames(1, 131072, static, m.target, format_id(m.id).encode(),
                                           int(m.received), m.body))
        return b"".join(out)

    assert sink.encode(batches[0], 131072) == baseline_batch(batches[0])
    code = timed(lambda: [sink.encode(b, 131072) for b in batches])
    base = timed(lambda: [baseline_batch(b) for b in batches])
    return code, base


def confirms_row(n: int) -> tuple[float, float]:
    h = Harness(confirm_window=n + 1).start()
    messages = h.messages(n)
    deferreds = [h.sink.deliver(messages[i : i + BATCH]) for i in range(0, n, BATCH)]
    h.broker.transport.clear()
    acks = [server(pika.spec.Basic.Ack(delivery_tag=t, multiple=True)) for t in range(8, n + 1, 8)]
    reads = [b"".join(acks[i : i + 10]) for i in range(0, len(acks), 10)]
    feed = h.broker.feed
    code = timed(lambda: [feed(r) for r in reads])
    assert all(d.called for d in deferreds) and h.forwarder.window.unconfirmed == 0
    reader = FrameReader()
    base = timed(lambda: [reader.feed(r) for r in reads])
    h.forwarder.stopService()
    return code, base


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    n = args.messages - args.messages % 8
    results: dict[str, list[tuple[float, float]]] = {"encode": [], "confirms": []}
    for _ in range(args.rounds):
        results["encode"].append(encode_row(n))
        results["confirms"].append(confirms_row(n))
    print(f"Command: `.venv/bin/python bench/amqp_hub.py --messages {args.messages} --rounds {args.rounds}`  ")
    print(f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  ")
    print(f"Python: {platform.python_implementation()} {platform.python_version()}, {platform.machine()}  \n")
    print("| Row | us/msg per round (code) | Median | Baseline us/msg (median) | Code / baseline per round | Median |")
    print("|---|---|--:|--:|---|--:|")
    for row, runs in results.items():
        code = [c / n * 1e6 for c, _ in runs]
        base = [b / n * 1e6 for _, b in runs]
        ratio = [c / b for c, b in runs]
        print(f"| {row} | {' '.join(f'{x:.2f}' for x in code)} | {statistics.median(code):.2f} "
              f"| {statistics.median(base):.2f} | {' '.join(f'{x:.2f}' for x in ratio)} "
              f"| {statistics.median(ratio):.2f} |")


if __name__ == "__main__":
    main()
