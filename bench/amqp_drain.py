"""The drain rows of ``bench/amqp.py``: the AMQP dispatcher emptying a spooled backlog, beside the raw ceiling.

Claim (issue 8, point 9): once the broker is reachable again, the hub's
dispatcher drains a spooled backlog at >= 0.8x the raw publisher's rate for
the same messages, durability and confirm window.

A round, per shape (66-byte OPRA-shaped bodies, and larger ones):

- **backlog**: a hub whose ``[amqp] url`` points at a closed loopback port
  (``spool_after = 0``, so nothing waits in memory) accepts N numbered
  messages from the compact generator on the persistent route; each ``A:n``
  means committed to the spool.  The hub is stopped (SIGTERM).
- **drain**: the same spool, a hub with the broker's URL, started on the
  hub's core.  Timed from the moment its TCP connection to the broker is
  established (seen in ``/proc/net/tcp``, polled by a thread of this script)
  until the consumer holds N more messages *and* the spool file holds none
  of the route's messages (read-only SQLite, polled once the consumer is
  done).  The handshake, declarations and the first read are inside the
  timed span.
- **raw**: the raw publisher of ``bench/amqp.py`` (a child on the hub's
  core, its connection open before timing) publishing the same N numbered
  messages, byte for byte the hub's frames, with the same window: from
  its first write until the consumer holds N more.

Both end at the consumer, so the rates compare like with like.  The
consumer counts deliveries by body number: a lost body fails the round,
duplicates are reported (at-least-once allows them, none are expected).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import sys
import threading
import time
from pathlib import Path
from time import perf_counter

from ingress import HEAD, TASKSET, cpu_seconds, fmt_rate, pin_pid, run_compact  # noqa: E402
from msghub.forward import amqp_wire as wire
from msghub.message import format_id
from msghub.spool import schema
from msghub.testing import HubProcess, free_port

DURABILITY = "persistent"
ROUTE_SPOOL = f"amqp:{DURABILITY}"
TARGET = b"/persistent/opra"
_FILL = b"OPRA|SPY   260619C00550000|B 12.34x50|A 12.41x75|"


def numbered_bodies(n: int, size: int) -> list[bytes]:
    """``n`` bodies of ``size`` bytes, ``b"Q%012d|"`` then OPRA-like filler: the consumer counts by the number."""
    tail = (_FILL * (size // len(_FILL) + 1))[: size - 14]
    if size == 66:
        tail = _FILL.ljust(52, b"~")  # exactly the OPRA shape of bench/ingress.py's bodies
    return [b"Q%012d|" % i + tail for i in range(n)]


def raw_units(durability: str, size: int, n: int, batch: int, frame_max: int) -> list[bytes]:
    """The raw publisher's frames for ``n`` numbered messages, ``batch`` per unit, exactly as the hub encodes
    them for the bench routes (same properties, same headers table)."""
    static = wire.StaticProperties(
        ((b"Content-Type", b"application/x-opra-quote"), (b"Accept-Encoding", b"identity")),
        b"POST", durability, None, durability == "persistent",
    )
    method = wire.publish_frame(1, b"bench." + durability.encode(), b"opra", True)
    target = b"/%s/opra" % durability.encode()
    now = int(time.time())
    out, part = [], []
    for i, body in enumerate(numbered_bodies(n, size)):
        part.append(method)
        part.append(wire.content_frames(1, frame_max, static, target, format_id((1 << 40) + i).encode(), now, body))
        if len(part) == 2 * batch:
            out.append(b"".join(part))
            part = []
    if part:
        raise ValueError(f"{n} messages are not whole units of {batch}")
    return out


def established_to(port: int) -> set[int]:
    """Local ports of established loopback TCP connections to ``port`` (IPv4, from /proc/net/tcp)."""
    found = set()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split(None, 4)
            if fields[3] == "01" and int(fields[2].rsplit(":", 1)[1], 16) == port:
                found.add(int(fields[1].rsplit(":", 1)[1], 16))
    return found


class ConnectWatch:
    """A thread noting when a new connection to the broker appears, and the CPU counters at that moment."""

    def __init__(self, port: int, pids: dict, timeout: float) -> None:
        self.port, self.pids, self.timeout = port, pids, timeout
        self.known = established_to(port)
        self.at: float | None = None
        self.cpu: dict[str, float] = {}
        self.thread = threading.Thread(target=self._run, name="connect-watch", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        deadline = perf_counter() + self.timeout
        while perf_counter() < deadline:
            if established_to(self.port) - self.known:
                self.at = perf_counter()
                self.cpu = {k: cpu_seconds(pid()) for k, pid in self.pids.items()}
                self.cpu["busy"] = busy_seconds()
                return
            time.sleep(0.001)

    def wait(self) -> float:
        self.thread.join(self.timeout + 1)
        if self.at is None:
            raise RuntimeError(f"no new connection to the broker within {self.timeout:.0f}s")
        return self.at


def busy_seconds() -> float:
    """CPU time spent by everything on the machine (all cores, not idle or iowait), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def pending_in_spool(path: str) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return schema.count_by_name(conn).get(ROUTE_SPOOL, 0)
    finally:
        conn.close()


class Drain:
    """Drain rounds on a ``Rig`` of ``bench/amqp.py``: its broker, consumer and raw publisher."""

    def __init__(self, rig, raw, conf: str, tmp: Path, args) -> None:
        self.rig, self.raw, self.conf, self.tmp, self.args = rig, raw, conf, tmp, args
        self.spool_conf = f"read_bytes = {args.read_bytes}\n" if args.read_bytes else ""
        self.rounds = 0

    def _hub(self, name: str, url: str, extra: str, spool: Path) -> HubProcess:
        conf = self.spool_conf + self.conf.format(url=url, extra=extra)
        return HubProcess(self.tmp / name, conf, spool_path=str(spool))

    def backlog(self, size: int, n: int) -> tuple[Path, dict]:
        """A spool holding ``n`` numbered messages for the persistent route, made as users make one."""
        self.rounds += 1
        spool = self.tmp / f"drain-{self.rounds}.db"
        hub = self._hub(f"fill-{self.rounds}", f"amqp://guest:guest@127.0.0.1:{free_port()}/%2f",
                        "spool_after = 0", spool)
        hub.start()
        try:
            pin_pid(hub.process.pid, 0)
            unit = b"".join(b"+: %d\r\n" % size + b for b in numbered_bodies(n, size))
            r = run_compact(hub.compact_port, HEAD + b"B:%s\r\n" % TARGET, unit, n, 1, self.args.timeout * 4)
        finally:
            hub.stop()
        shutil.rmtree(self.tmp / f"fill-{self.rounds}", ignore_errors=True)
        if r["count"] != n or pending_in_spool(str(spool)) != n:
            raise RuntimeError(f"backlog: {r['count']:,} acked, {pending_in_spool(str(spool)):,} spooled of {n:,}")
        conn = sqlite3.connect(f"file:{spool}?mode=ro", uri=True)
        segments = conn.execute("SELECT count(*) FROM segments").fetchone()[0]
        conn.close()
        return spool, {"fill_rate": r["count"] / r["elapsed"], "segments": segments}

    def hub_round(self, size: int, n: int, on_started=None) -> dict:
        spool, info = self.backlog(size, n)
        rig, consumer = self.rig, self.rig.consumer
        hub = self._hub(f"drain-{self.rounds}", rig.broker.url, "", spool)
        pids = {"pub": lambda: hub.process.pid, "broker": lambda: rig.beam, "script": os.getpid}
        timeout = self.args.timeout * 4
        consumer.expect(n)
        watch = ConnectWatch(rig.broker.port, pids, timeout)
        # Born on the hub's core (every thread it starts inherits it): the drain begins before start() returns.
        if rig.pinned:
            os.sched_setaffinity(0, {0})
        try:
            hub.start()
        finally:
            if rig.pinned:
                os.sched_setaffinity(0, {self.args.script_core})
        try:
            if on_started is not None:
                on_started(hub.process.pid)
            t0 = watch.wait()
            deadline = t0 + timeout
            while consumer.reached is None:
                if consumer.error:
                    raise RuntimeError(consumer.error)
                if perf_counter() > deadline:
                    raise RuntimeError(f"drain: consumer has {consumer.count - consumer.goal + n:,} of {n:,}")
                time.sleep(0.005)
            t1 = t_consumer = consumer.reached
            while pending_in_spool(str(spool)):  # the last confirms' done marks may still be committing
                if perf_counter() > deadline:
                    raise RuntimeError(f"drain: {pending_in_spool(str(spool)):,} still in the spool")
                time.sleep(0.005)
                t1 = perf_counter()
            cpu = {k: cpu_seconds(pid()) for k, pid in pids.items()}
            busy = busy_seconds()
            lost, dup = consumer.tally()
        finally:
            hub.stop()
        shutil.rmtree(self.tmp / f"drain-{self.rounds}", ignore_errors=True)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{spool}{suffix}").unlink(missing_ok=True)
        r = self._result(n, t1 - t0, cpu, watch.cpu, busy, lost, dup)
        r.update(info, consumer_s=t_consumer - t0)
        return r

    def raw_round(self, size: int, n: int) -> dict:
        consumer, pids = self.rig.consumer, {"pub": self.raw.pid, "broker": self.rig.beam, "script": os.getpid()}
        snap: dict = {}

        def start() -> None:
            snap.update({k: cpu_seconds(p) for k, p in pids.items()}, t=perf_counter(), busy=busy_seconds())

        consumer.expect(n)
        r = self.raw.run(DURABILITY, n, self.args.window, self.args.timeout * 4, start, size=size)
        if r["count"] != n:
            raise RuntimeError(f"raw: {r['count']:,} of {n:,} confirmed")
        consumer.wait_for(consumer.goal, self.args.timeout)
        while consumer.reached is None:  # the consumer thread notes the time just after the count
            time.sleep(0.001)
        t1 = consumer.reached
        cpu = {k: cpu_seconds(p) for k, p in pids.items()}
        lost, dup = consumer.tally()
        snap_cpu = {k: snap[k] for k in pids}
        snap_cpu["busy"] = snap["busy"]
        return self._result(n, t1 - snap["t"], cpu, snap_cpu, busy_seconds(), lost, dup)

    @staticmethod
    def _result(n: int, elapsed: float, cpu: dict, cpu0: dict, busy: float, lost: int, dup: int) -> dict:
        if lost:
            raise RuntimeError(f"{lost:,} of {n:,} bodies never reached the consumer")
        used = {k: cpu[k] - cpu0[k] for k in cpu}
        r = {"count": n, "elapsed": elapsed, "rate": n / elapsed, "lost": lost, "dup": dup,
             "others": max(0.0, busy - cpu0["busy"] - sum(used.values())) / elapsed}
        for k, v in used.items():
            r[f"cpu_{k}"] = v / elapsed
            r[f"us_{k}"] = v / n * 1e6
        return r


def run_rounds(drain: Drain, shapes: list[tuple[str, int, int]], n_rounds: int, results: dict) -> None:
    """Alternating hub drain and raw publisher per shape, order swapped every round."""
    for r in range(n_rounds):
        for label, size, n in shapes:
            order = (("drain", drain.hub_round), ("raw", drain.raw_round))
            for kind, fn in order if r % 2 == 0 else order[::-1]:
                results.setdefault(f"{kind} {label}", []).append(fn(size, n))
            d, w = results[f"drain {label}"][-1], results[f"raw {label}"][-1]
            print(f"  drain round {r + 1}, {label}: hub drain {d['rate']:,.0f}/s ({d['segments']} segments, backlog "
                  f"built at {d['fill_rate']:,.0f}/s; consumer had all {d['consumer_s']:.2f} s after the connect, "
                  f"spool empty {d['elapsed']:.2f} s), raw {w['rate']:,.0f}/s, ratio {d['rate'] / w['rate']:.2f}",
                  file=sys.stderr, flush=True)


def tables(results: dict, shapes: list[tuple[str, int, int]], med) -> list[str]:
    out = ["| Shape | Row | Messages/run | Rate per round (run order) | Median | Range | Publisher CPU per round "
           "| Broker CPU per round | Others per round | Publisher us/msg (median) | Broker us/msg (median) "
           "| Duplicates (all rounds) |",
           "|---|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for label, _, n in shapes:
        for kind, title in (("raw", "raw frames (ceiling)"), ("drain", "hub dispatcher draining the spool")):
            runs = results[f"{kind} {label}"]
            rates = [x["rate"] for x in runs]
            if kind == "drain":
                title += f" ({med(x['segments'] for x in runs):,.0f} segments)"
            out.append(
                f"| {label} | {title} | {n:,} | {' '.join(fmt_rate(x) for x in rates)} | {fmt_rate(med(rates))} "
                f"| {fmt_rate(min(rates))}-{fmt_rate(max(rates))} "
                f"| {' '.join(format(x['cpu_pub'], '.0%') for x in runs)} "
                f"| {' '.join(format(x['cpu_broker'], '.0%') for x in runs)} "
                f"| {' '.join(format(x['others'], '.0%') for x in runs)} "
                f"| {med(x['us_pub'] for x in runs):.1f} | {med(x['us_broker'] for x in runs):.1f} "
                f"| {sum(x['dup'] for x in runs):,} |")
    out += ["", "| Ratio (same round) | Per round | Median | Range | Target |", "|---|---|--:|--:|---|"]
    for label, _, _ in shapes:
        q = [a["rate"] / b["rate"] for a, b in zip(results[f"drain {label}"], results[f"raw {label}"])]
        verdict = "met" if med(q) >= 0.8 else "MISSED"
        out.append(f"| {label}: drain / raw | {' '.join(f'{x:.2f}' for x in q)} | {med(q):.2f} "
                   f"| {min(q):.2f}-{max(q):.2f} | >= 0.8: {verdict} |")
    fills = [f"{label} {fmt_rate(med(x['fill_rate'] for x in results[f'drain {label}']))}/s"
             for label, _, _ in shapes]
    tails = [f"{label} {' '.join(format(x['elapsed'] - x['consumer_s'], '.2f') for x in results[f'drain {label}'])}"
             for label, _, _ in shapes]
    out += ["", f"- backlogs built (compact -> hub, broker unreachable, acked on spool commit), median: "
            f"{', '.join(fills)}",
            f"- drain: seconds from the consumer holding all to the spool holding none, per round: {'; '.join(tails)}",
            "- every body reached the consumer in every round (counted by body number)"]
    return out


def profile_drain(drain: Drain, size: int, n: int, spy: str, out: Path, summarize) -> None:
    """py-spy on the draining hub, attached as soon as it answers /healthz."""
    import subprocess

    procs = []

    def started(pid: int) -> None:
        pin = [TASKSET, "-c", "0"] if TASKSET else []
        procs.append(subprocess.Popen(pin + [spy, "record", "--pid", str(pid), "--nonblocking", "--rate", "500",
                                             "--format", "raw", "--output", str(out), "--duration", "600"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    try:
        r = drain.hub_round(size, n, on_started=started)
    finally:
        for p in procs:
            p.send_signal(2)
            p.wait(30)
    print(f"drain {size} B: {n:,} messages, {r['rate']:,.0f}/s under py-spy; hub {r['us_pub']:.1f} us/msg, "
          f"broker {r['us_broker']:.1f} us/msg, {r['segments']} segments")
    summarize(out)
