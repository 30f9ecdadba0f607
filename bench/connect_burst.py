"""A burst of producers connecting at once, with Twisted's listen backlog (50) and ours (1024).

Claim (docs/hub.md, "Listeners"; docs/benchmarks.md): with a backlog of 50, a
burst of connects overflows the accept queue and the kernel drops handshakes,
which the clients only retry after a second (the SYN retransmission timeout);
with 1024 none waits that long.

Per round and backlog: the real hub (``twistd -n msghub``, the ``[listen]
backlog`` under test on its compact port) is started; ``--connections``
non-blocking connects are issued as fast as one Python thread can, and each
one's time from ``connect()`` to writable (handshake done) is recorded.
Reported: how many took over 0.9 s, and p50/p99/max.

    python3 bench/connect_burst.py [--connections N] [--rounds R]
"""

from __future__ import annotations

import argparse
import os
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from msghub.testing import free_port, twistd_command  # noqa: E402


def start_hub(workdir: Path, backlog: int) -> tuple[subprocess.Popen, int]:
    port, admin, http = free_port(), free_port(), free_port()
    conf = workdir / "msghub.toml"
    conf.write_text(
        "[listen]\n"
        f'http = ["tcp:{http}:interface=127.0.0.1"]\n'
        f'compact = ["tcp:{port}:interface=127.0.0.1"]\n'
        f'admin = ["tcp:{admin}:interface=127.0.0.1"]\n'
        f"backlog = {backlog}\n"
        f'[spool]\npath = "{workdir / "spool.db"}"\n'
        '[[routes]]\nmatch = "/drop/{x}"\ndiscard = true\n'
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    log = open(workdir / "hub.log", "ab")
    hub = subprocess.Popen(twistd_command() + ["-n", "--pidfile=", "msghub", "-c", str(conf)],
                           cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while b"listening: admin" not in (workdir / "hub.log").read_bytes():
        if hub.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError((workdir / "hub.log").read_text())
        time.sleep(0.05)
    return hub, port


def burst(port: int, count: int, timeout: float = 10.0) -> list[float]:
    """Connect times (s) of ``count`` connects issued back to back; those not done by ``timeout`` count as it."""
    selector = selectors.DefaultSelector()
    started: dict[socket.socket, float] = {}
    for _ in range(count):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        started[s] = time.perf_counter()
        selector.register(s, selectors.EVENT_WRITE)
    times = []
    deadline = time.perf_counter() + timeout
    while len(times) < count and time.perf_counter() < deadline:
        for key, _ in selector.select(0.1):
            s = key.fileobj
            selector.unregister(s)
            times.append(time.perf_counter() - started[s])
    times += [timeout] * (count - len(times))
    for s in started:
        s.close()
    selector.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for round_ in range(1, args.rounds + 1):
        for backlog in (50, 1024):
            with tempfile.TemporaryDirectory() as tmp:
                hub, port = start_hub(Path(tmp), backlog)
                try:
                    times = sorted(burst(port, args.connections))
                finally:
                    hub.terminate()
                    hub.wait(20)
            slow = sum(1 for t in times if t > 0.9)
            p99 = times[int(len(times) * 0.99) - 1]
            print(f"round {round_} backlog {backlog:4}: {args.connections} connects, {slow:4} over 0.9 s; "
                  f"p50 {statistics.median(times) * 1000:7.1f} ms, p99 {p99 * 1000:7.1f} ms, "
                  f"max {times[-1] * 1000:7.1f} ms", flush=True)


if __name__ == "__main__":
    main()
