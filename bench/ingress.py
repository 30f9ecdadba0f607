"""Ingress throughput of the real hub (``twistd -n msghub``), each figure beside a bare baseline.

Claims (the issue's acceptance, STYLE.md rule 8), on a 2-core machine with
the server on one core and this load generator on the other:

1. compact -> discard route: >= 1,000,000 msg/s in one hub process;
2. compact -> spool route: >= 300,000 msg/s with synchronous=full (and
   normal), and >= 0.5x compact -> discard on the same hub in the same rounds
   (SQLite WAL, group commit in a worker thread on the same core, one
   segment row per destination and commit);
3. plain HTTP/1.1 keep-alive, 32 pipelined connections -> discard:
   >= 50,000 req/s; the same load to a spool route beside it;
4. Basic auth with scrypt passwords costs nothing per message once cached
   per state, a process-wide dict hit per state otherwise, and one scrypt
   run per never-seen credential.

Baselines, each its own process on the same core with the same (default)
reactor: for compact, a bare ``Protocol`` whose ``dataReceived`` only frames
the stream (find CRLF, int the length, slice the body, carry the tail) and
writes one ``A:n`` per read; for plain HTTP, a twisted.web ``Site`` whose
leaf ``Resource.render_POST`` answers 202 with an empty body (access log
off: the hub keeps none).  For auth, the reference is the same hub on the
anonymous discard route with the same stream shape.

Every run sends a fixed count and stops at a wall-clock timeout (flagged
"capped").  Compact: a header block, then a pre-encoded unit of 66-byte
messages sent ``repeats`` times over one non-blocking socket while the
``A:n`` lines are read; timed from the first byte sent to the ack of the
last message.  Plain: 32 non-blocking sockets in one ``selectors`` loop,
``--pipeline`` requests per write, at most ``--window`` outstanding per
connection; every response must be ``202`` with ``Content-Length: 0``.
Rounds alternate hub and baseline, swapping the order each round.  The
spools' message counts are checked at the end; the "SQLite floor" table
times the writer's work alone in this process: one row per message (the v1
layout, defined here) against one segment row per commit group, encoding
included.

    .venv/bin/python bench/ingress.py [--rounds R] [--quick] [--no-normal]
    .venv/bin/python bench/ingress.py --floor-only [--floor-messages N] [--floor-reps R]
    .venv/bin/python bench/ingress.py --profile compact|spool|http [--profile-out FILE]
"""

from __future__ import annotations

import argparse
import base64
import datetime
import os
import platform
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from time import perf_counter

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from msghub.auth import hash_password, verify_password  # noqa: E402
from msghub.message import Message  # noqa: E402
from msghub.spool import schema  # noqa: E402
from msghub.testing import HubProcess, free_port  # noqa: E402

BODY = 66
UNIT = 100_000  # messages per pre-encoded compact unit (7.3 MB for the opra stream)
HEAD = b"H:Content-Type: application/x-opra-quote\r\nH:Accept-Encoding: identity\r\n"
SERVER_CORE, CLIENT_CORE = 0, 1
TASKSET = shutil.which("taskset")
READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
PASSWORD = "correct horse battery staple"

ROUTES = """
[[routes]]
name = "discard"
match = "/discard/{name}"
discard = true

[[routes]]
name = "spool"
match = "/spool/{name}"
spool = "bench"

[[routes]]
name = "spoolhttp"
match = "/spoolhttp/{name}"
spool = "bench-http"

[[routes]]
name = "auth"
match = "/auth/{name}"
users = [%s]
discard = true
"""


# -- baselines (run as child processes: ``--serve compact|web PORT``) ---------


def serve(kind: str, port: int) -> None:
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory, Protocol

    class BareCompact(Protocol):
        """The least a Twisted protocol can do for the compact stream: frame, count, ack per read."""

        tail = b""
        acked = 0

        def dataReceived(self, data: bytes) -> None:
            buf = self.tail + data if self.tail else data
            find, rfind, blen = buf.find, buf.rfind, len(buf)
            bodies: list[bytes] = []
            append = bodies.append
            pos = 0
            while True:
                eol = find(b"\r\n", pos)
                if eol < 0:
                    break
                if buf[pos] != 43:  # a state line (not b"+"): skip it
                    pos = eol + 2
                    continue
                start = eol + 2
                end = start + int(buf[rfind(b" ", pos, eol) + 1 : eol])
                if end > blen:
                    break
                append(buf[start:end])
                pos = end
            self.tail = buf[pos:]
            if bodies:
                self.acked += len(bodies)
                self.transport.write(b"A:%d\r\n" % self.acked)

    if kind == "compact":
        factory = Factory.forProtocol(BareCompact)
    else:
        from twisted.web.resource import Resource
        from twisted.web.server import Site

        class Accept(Resource):
            isLeaf = True

            def render_POST(self, request) -> bytes:
                request.setResponseCode(202)
                return b""

        factory = Site(Accept())
        factory.log = lambda request: None
    reactor.listenTCP(port, factory, interface="127.0.0.1")
    print(f"{kind} baseline on {port}: {type(reactor).__name__}", file=sys.stderr, flush=True)
    reactor.run()


# -- processes, pinning, CPU accounting --------------------------------------


def pin_pid(pid: int, core: int) -> None:
    """Every thread of ``pid`` onto ``core`` (taskset -a: the spool's worker thread too)."""
    if TASKSET and (os.cpu_count() or 1) >= 2:
        subprocess.run([TASKSET, "-a", "-p", "-c", str(core), str(pid)], check=True,
                       stdout=subprocess.DEVNULL, timeout=10)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a whole process (all threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"baseline exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"baseline not listening on {port} after {timeout}s")


class Baseline:
    def __init__(self, kind: str) -> None:
        self.port = free_port()
        pin = [TASKSET, "-c", str(SERVER_CORE)] if TASKSET else []
        self.proc = subprocess.Popen(pin + [sys.executable, __file__, "--serve", kind, str(self.port)])
        wait_port(self.port, self.proc)
        self.pid = self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_hub(workdir: Path, users: dict[str, str], synchronous: str, max_inflight: int | None) -> HubProcess:
    """The real hub, every thread pinned to the server core."""
    conf = f'synchronous = "{synchronous}"\n'
    if max_inflight:
        conf += f"[limits]\nmax_inflight = {max_inflight}\n"
    for name, hashed in users.items():
        conf += f'[users.{name}]\npassword = "{hashed}"\n'
    conf += ROUTES % ", ".join(f'"{n}"' for n in users)
    hub = HubProcess(workdir, conf).start()
    hub.pid = hub.process.pid
    pin_pid(hub.pid, SERVER_CORE)
    return hub


# -- load generators ----------------------------------------------------------


def bodies(n: int) -> list[bytes]:
    tail = b"OPRA|SPY   260619C00550000|B 12.34x50|A 12.41x75|".ljust(BODY - 14, b"~")
    return [b"Q%012d|" % i + tail for i in range(n)]


def basic(user: str, password: str = PASSWORD) -> bytes:
    return b"H:Authorization: Basic %s\r\n" % base64.b64encode(f"{user}:{password}".encode())


def run_compact(port: int, head: bytes, unit: bytes, per_unit: int, repeats: int, timeout: float) -> dict:
    """Send ``head`` + ``unit`` * ``repeats`` on one connection, read acks until the last one."""
    total = per_unit * repeats
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sock, READ | WRITE)
    view, units, off = memoryview(head + unit), 1, 0
    acked, tail, errors, closed = 0, b"", [], False
    t0 = perf_counter()
    deadline = t0 + timeout
    try:
        while acked < total and not closed and not errors:
            now = perf_counter()
            if now >= deadline:
                break
            for _, mask in sel.select(min(1.0, deadline - now)):
                if mask & READ:
                    try:
                        data = sock.recv(1 << 16)
                    except BlockingIOError:
                        data = None
                    if data == b"":
                        closed = True
                    elif data:
                        buf = tail + data
                        end = buf.rfind(b"\r\n")
                        if end >= 0:
                            done, tail = buf[:end], buf[end + 2 :]
                            if b"E:" in done or b"X:" in done:
                                errors = [x for x in done.split(b"\r\n") if x[:2] != b"A:"]
                            i = done.rfind(b"A:")
                            if i >= 0:
                                j = done.find(b"\r\n", i)
                                acked = int(done[i + 2 : j if j >= 0 else len(done)])
                        else:
                            tail = buf
                if mask & WRITE:
                    try:
                        off += sock.send(view[off:])
                    except BlockingIOError:
                        pass
                    if off == len(view):
                        if units == repeats:
                            sel.modify(sock, READ)
                        else:
                            view, units, off = memoryview(unit), units + 1, 0
        elapsed = perf_counter() - t0
    finally:
        sel.close()
        sock.close()
    if errors or closed:
        raise RuntimeError(f"compact run: acked {acked}/{total}, closed={closed}, errors {errors[:3]}")
    return {"count": acked, "elapsed": elapsed, "capped": acked < total}


class _Conn:
    __slots__ = ("sock", "quota", "issued", "answered", "pending", "tail")

    def __init__(self, sock: socket.socket, quota: int) -> None:
        self.sock, self.quota = sock, quota
        self.issued = self.answered = 0
        self.pending: memoryview | None = None
        self.tail = b""


def run_http(port: int, request: bytes, total: int, conns: int, batch: int, window: int, timeout: float) -> dict:
    """``total`` pipelined requests over ``conns`` keep-alive sockets; counts 202 responses."""
    blocks = {k: request * k for k in range(1, batch + 1)}
    sel = selectors.DefaultSelector()
    cs = []
    for i in range(conns):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        c = _Conn(s, total // conns + (i < total % conns))
        cs.append(c)
        sel.register(s, READ, c)
    done, bad = 0, None

    def push(c: _Conn) -> None:
        # Keep up to ``window`` requests outstanding, ``batch`` per write.
        while c.pending is None and c.issued < c.quota and c.issued - c.answered + batch <= window:
            k = min(batch, c.quota - c.issued)
            c.issued += k
            view = memoryview(blocks[k])
            try:
                sent = c.sock.send(view)
            except BlockingIOError:
                sent = 0
            if sent < len(view):
                c.pending = view[sent:]
                sel.modify(c.sock, READ | WRITE, c)

    t0 = perf_counter()
    deadline = t0 + timeout
    try:
        for c in cs:
            push(c)
        while done < total and bad is None:
            now = perf_counter()
            if now >= deadline:
                break
            for key, mask in sel.select(min(1.0, deadline - now)):
                c = key.data
                if mask & WRITE and c.pending is not None:
                    try:
                        sent = c.sock.send(c.pending)
                    except BlockingIOError:
                        sent = 0
                    c.pending = c.pending[sent:] if sent < len(c.pending) else None
                    if c.pending is None:
                        sel.modify(c.sock, READ, c)
                if mask & READ:
                    try:
                        data = c.sock.recv(1 << 18)
                    except BlockingIOError:
                        continue
                    if not data:
                        bad = f"connection closed after {c.answered} responses"
                        break
                    buf = c.tail + data if c.tail else data
                    end = buf.rfind(b"\r\n\r\n")
                    if end < 0:
                        c.tail = buf
                        continue
                    block, c.tail = buf[: end + 4], buf[end + 4 :]
                    n = block.count(b"\r\n\r\n")
                    # Every response: status 202 and an empty body (Content-Length: 0).
                    if block.count(b"HTTP/1.1 202 ") != n or block.count(b"\r\nContent-Length: 0\r\n") != n:
                        bad = f"unexpected response: {block[:200]!r}"
                        break
                    c.answered += n
                    done += n
                    push(c)
        elapsed = perf_counter() - t0
    finally:
        sel.close()
        for c in cs:
            c.sock.close()
    if bad:
        raise RuntimeError(f"http run: {bad}")
    return {"count": done, "elapsed": elapsed, "capped": done < total}


# -- rounds -------------------------------------------------------------------


def core_times(core: int) -> tuple[int, int]:
    """(all, idle + iowait) jiffies of one core, from /proc/stat."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{core} "):
                v = [int(x) for x in line.split()[1:9]]
                return sum(v), v[3] + v[4]
    return 1, 0


def measure(pid: int, fn, *args) -> dict:
    """Run one load; add the rate, the server's and the generator's CPU share, and others' load on the server core."""
    cpu0, own0, (all0, idle0) = cpu_seconds(pid), cpu_seconds(os.getpid()), core_times(SERVER_CORE)
    r = fn(*args)
    all1, idle1 = core_times(SERVER_CORE)
    e = r["elapsed"]
    r["cpu"] = (cpu_seconds(pid) - cpu0) / e
    r["gen_cpu"] = (cpu_seconds(os.getpid()) - own0) / e
    r["others"] = max(0.0, 1 - (idle1 - idle0) / max(1, all1 - all0) - r["cpu"])
    r["rate"] = r["count"] / e
    r["per_cpu"] = r["count"] / max(r["cpu"] * e, 0.01)
    return r


def side_by_side(name: str, runs: dict, rounds: int, results: list, target: float | None = None,
                 pairs: list[tuple[str, str, float | None, float | None]] | None = None) -> dict:
    """``runs``: label -> (pid, fn, args, warm-up args), measured in turn each round.

    ``pairs``: ``(code, reference, rate target, ratio target)`` rows for the
    ratio table; by default every label but the last against the last, each
    judged on ``target`` (msg/s).  Each server gets one untimed warm-up run
    first (a tenth of the count): new connections, buffers and allocator
    arenas are not the steady state.
    """
    labels = list(runs)
    if pairs is None:
        pairs = [(label, labels[-1], target, None) for label in labels[:-1]]
    res = {"name": name, "labels": labels, "runs": {k: [] for k in labels}, "pairs": pairs}
    for label in labels:
        pid, fn, args, warm = runs[label]
        fn(*warm)
    for r in range(rounds):
        order = labels if r % 2 == 0 else labels[::-1]
        for label in order:
            pid, fn, args, _ = runs[label]
            res["runs"][label].append(measure(pid, fn, *args))
        print(f"  {name} round {r + 1}: " + ", ".join(
            f"{k} {res['runs'][k][-1]['rate']:,.0f}/s (CPU {res['runs'][k][-1]['cpu']:.0%})" for k in labels),
            file=sys.stderr, flush=True)
    results.append(res)
    return res


def fmt_rate(x: float) -> str:
    return f"{x / 1e6:.3f} M" if x >= 1e5 else f"{x / 1e3:.1f} k"


def rate_rows(res: dict) -> list[str]:
    rows = []
    for label in res["labels"]:
        runs = res["runs"][label]
        rates = [x["rate"] for x in runs]
        med = statistics.median(rates)
        capped = " (capped)" if any(x["capped"] for x in runs) else ""
        cpu = " ".join(f"{x['cpu']:.0%}" for x in runs)
        others = " ".join(f"{x['others']:.0%}" for x in runs)
        rows.append(
            f"| {res['name']} | {label}{capped} | {runs[0]['count']:,} | {' '.join(fmt_rate(x) for x in rates)} "
            f"| {fmt_rate(med)} | {fmt_rate(min(rates))}-{fmt_rate(max(rates))} | {1e6 / med:.2f} "
            f"| {cpu} | {others} "
            f"| {fmt_rate(statistics.median(x['per_cpu'] for x in runs))} |"
        )
    return rows


def ratio_rows(res: dict) -> list[str]:
    """One row per pair: the code's rate over its reference's, round by round, and the verdicts."""
    rows = []
    for code, ref, target, ratio_target in res["pairs"]:
        pairs = list(zip(res["runs"][code], res["runs"][ref]))
        q = [a["rate"] / b["rate"] for a, b in pairs]
        qc = [a["per_cpu"] / b["per_cpu"] for a, b in pairs]
        med = statistics.median(x["rate"] for x in res["runs"][code])
        verdicts = []
        if target is not None:
            verdicts.append(f">= {fmt_rate(target)}/s: {'met' if med >= target else 'MISSED'}")
        if ratio_target is not None:
            verdicts.append(f">= {ratio_target:.2f}x: {'met' if statistics.median(q) >= ratio_target else 'MISSED'}")
        verdict = "; ".join(verdicts) or "-"
        rows.append(f"| {res['name']} | {code} / {ref} | {' '.join(f'{x:.2f}' for x in q)} | {statistics.median(q):.2f} "
                    f"| {min(q):.2f}-{max(q):.2f} | {statistics.median(qc):.2f} | {verdict} |")
    return rows


# The v1 layout (one row per message), defined here only to measure what
# segment rows replaced: as release 978dc09 created and filled it.
V1_TABLES = (
    "CREATE TABLE messages (seq INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, id INTEGER NOT NULL,"
    " route TEXT NOT NULL, method BLOB NOT NULL, target BLOB NOT NULL, headers BLOB NOT NULL,"
    " body BLOB NOT NULL, received REAL NOT NULL)",
    "CREATE INDEX messages_name ON messages (name)",
)
V1_INSERT = "INSERT INTO messages (name, id, route, method, target, headers, body, received) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
FLOOR_HEADERS = ((b"Content-Type", b"application/x-opra-quote"), (b"Accept-Encoding", b"identity"))


def floor_messages(n: int) -> list[Message]:
    """``n`` messages shaped as the compact ingress builds them for the opra stream.

    One header tuple, method, target, route and captures shared by all (one
    compact state, one routing decision), consecutive ids, and one
    ``received`` per 900 messages (about one 64 KiB read).
    """
    new, captures = tuple.__new__, {"name": "opra"}
    return [new(Message, ((1 << 40) + i, b"POST", b"/spool/opra", FLOOR_HEADERS, body, "spool", None, captures,
                          1.0e9 + i // 900, 0))
            for i, body in enumerate(bodies(n))]


def sqlite_floor(n: int, group: int, reps: int, where: Path) -> dict:
    """The writer thread's work alone, in this process: us/msg of CPU and msg/s of wall time.

    ``group`` messages per commit.  *One row per message*: the v1 layout and
    row (built as v1's ``append`` built it, header block cached), SQLite's
    default 4 KiB pages as v1 had; *one segment per commit group*: the
    shipped schema and page size, ``encode_segments`` and one row per
    segment, as the writer thread does (and once with 4 KiB pages, to show
    what the page size buys).  *Encode alone*: the segment codec with no
    SQLite.  Cases interleave, ``reps`` times.
    """
    import sqlite3

    from msghub.spool.store import PAGE_SIZE

    messages = floor_messages(n)
    groups = [messages[i : i + group] for i in range(0, n, group)]

    def per_message(conn: sqlite3.Connection, part: list[Message], cache: dict) -> None:
        rows = []
        for m in part:
            block = cache.get(m.headers)
            if block is None:
                block = cache[m.headers] = schema.encode_headers(m.headers)
            rows.append(("bench", m.id, m.route, m.method, m.target, block, m.body, m.received))
        conn.executemany(V1_INSERT, rows)

    def per_segment(conn: sqlite3.Connection, part: list[Message], cache: dict) -> None:
        conn.executemany(schema.INSERT_SEGMENT, [("bench", count, size, data)
                                                 for count, size, data in schema.encode_segments(part, cache)])

    page = f"{PAGE_SIZE >> 10} KiB pages"
    cases = {
        "one row per message (v1 layout, 4 KiB pages), synchronous=full": ("FULL", V1_TABLES, per_message, 4096),
        "one row per message (v1 layout, 4 KiB pages), synchronous=normal": ("NORMAL", V1_TABLES, per_message, 4096),
        f"one segment per commit group (shipped, {page}), synchronous=full":
            ("FULL", schema.TABLES, per_segment, PAGE_SIZE),
        f"one segment per commit group (shipped, {page}), synchronous=normal":
            ("NORMAL", schema.TABLES, per_segment, PAGE_SIZE),
        "one segment per commit group, 4 KiB pages (not shipped), synchronous=full":
            ("FULL", schema.TABLES, per_segment, 4096),
        "segment encoding alone (no SQLite)": (None, (), None, None),
    }
    out: dict = {label: [] for label in cases}
    for _ in range(reps):
        for label, (sync, tables, write, page_size) in cases.items():
            cache: dict = {}
            if sync is None:
                t0, c0 = perf_counter(), time.process_time()
                for part in groups:
                    schema.encode_segments(part, cache)
                out[label].append((n / (perf_counter() - t0), (time.process_time() - c0) / n * 1e6))
                continue
            with tempfile.TemporaryDirectory(prefix="floor-", dir=where) as d:
                conn = schema.connect(os.path.join(d, "floor.db"), create=True)
                conn.execute(f"PRAGMA page_size = {page_size}")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute(f"PRAGMA synchronous = {sync}")
                for statement in tables:
                    conn.execute(statement)
                t0, c0 = perf_counter(), time.process_time()
                for part in groups:
                    conn.execute("BEGIN IMMEDIATE")
                    write(conn, part, cache)
                    conn.execute("COMMIT")
                out[label].append((n / (perf_counter() - t0), (time.process_time() - c0) / n * 1e6))
                conn.close()
    return out


def nocache_rounds(hub, users_per_round: list[list[str]], all_bodies: list[bytes], timeout: float) -> dict:
    """Each request a credential the hub has never seen: one scrypt per request, on the reactor thread.

    A probe (one anonymous message on a second connection, sent 0.2 s into
    the run) shows how long other producers wait meanwhile.
    """
    out: dict = {"hub_ms": [], "local_ms": [], "probe_ms": [], "count": len(users_per_round[0])}
    for names in users_per_round:
        unit = b"".join(basic(u) + b"+: %d\r\n" % BODY + all_bodies[i] for i, u in enumerate(names))
        probe: dict = {}

        def send_probe() -> None:
            time.sleep(0.2)
            probe.update(run_compact(hub.compact_port, HEAD + b"B:/discard/opra\r\n",
                                     b"+: %d\r\n" % BODY + all_bodies[0], 1, 1, timeout))

        thread = threading.Thread(target=send_probe)
        thread.start()
        try:
            r = run_compact(hub.compact_port, HEAD + b"B:/auth/opra\r\n", unit, len(names), 1, timeout)
        finally:
            thread.join(timeout + 1)
        if r["capped"] or probe.get("capped", True):
            raise RuntimeError("no-cache run did not finish")
        out["hub_ms"].append(r["elapsed"] / len(names) * 1e3)
        out["probe_ms"].append(probe["elapsed"] * 1e3)
        stored = hash_password(PASSWORD)
        t0 = perf_counter()
        for _ in range(5):
            verify_password(PASSWORD, stored)
        out["local_ms"].append((perf_counter() - t0) / 5 * 1e3)
        print(f"  auth no cache: hub {out['hub_ms'][-1]:.1f} ms/request, local scrypt "
              f"{out['local_ms'][-1]:.1f} ms, probe {out['probe_ms'][-1]:.0f} ms", file=sys.stderr, flush=True)
    return out


def make_users(names: list[str]) -> dict[str, str]:
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return dict(zip(names, pool.map(hash_password, [PASSWORD] * len(names))))


def spool_counts(path: str) -> dict[str, tuple[int, int]]:
    """name -> (messages, segment rows) in the spool at ``path``."""
    conn = schema.connect(path)
    try:
        messages, segments = schema.count_by_name(conn), schema.count_segments(conn)
    finally:
        conn.close()
    return {name: (messages.get(name, 0), segments.get(name, 0)) for name in messages.keys() | segments.keys()}


def profile(args, tmp: Path) -> None:
    """One run of a case with py-spy sampling every hub thread; prints the top frames."""
    spy = shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy not found (pip install py-spy)")
    hub = start_hub(tmp / "hub", {"feed": hash_password(PASSWORD)}, "full", args.max_inflight)
    out = Path(args.profile_out or tmp / "profile.txt")
    pin = [TASKSET, "-c", str(CLIENT_CORE)] if TASKSET else []
    try:
        body = bodies(UNIT)
        spy_proc = subprocess.Popen(pin + [spy, "record", "--pid", str(hub.pid), "--nonblocking", "--rate", "250",
                                           "--format", "raw", "--output", str(out), "--duration", "600"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        try:
            if args.profile == "http":
                r = measure(hub.pid, run_http, hub.http_port, http_request(body[0]), args.http_requests,
                            args.connections, args.pipeline, args.window, args.timeout)
            else:
                route, n = ((b"/discard/opra", args.compact_messages) if args.profile == "compact"
                            else (b"/spool/opra", args.spool_messages))
                r = measure(hub.pid, run_compact, hub.compact_port, HEAD + b"B:%s\r\n" % route,
                            b"".join(b"+: 66\r\n" + b for b in body), UNIT, n // UNIT, args.timeout)
        finally:
            spy_proc.send_signal(2)
            spy_proc.wait(30)
        print(f"{args.profile}: {r['rate']:,.0f}/s under py-spy, hub CPU {r['cpu']:.0%}")
    finally:
        hub.stop()
    by_line, by_function, inclusive, samples = Counter(), Counter(), Counter(), 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = []
        for frame in stack.split(";"):
            name, _, where = frame.rpartition(" (")
            where = where.rstrip(")").rsplit("/", 1)[-1]
            frames.append((name, where.split(":")[0], where))
        samples += int(count)
        name, file, where = frames[-1]
        by_line[f"{name} ({where})"] += int(count)
        by_function[f"{name} ({file})"] += int(count)
        for name, file, _ in set(frames):
            inclusive[f"{name} ({file})"] += int(count)
    print(f"{samples} samples (all threads); raw stacks in {out}")
    for title, table in (("self time, by function", by_function), ("self time, by line", by_line),
                         ("total time, by function", inclusive)):
        print(f"\nTop frames by {title}:")
        for frame, count in table.most_common(20):
            print(f"  {count / samples:6.1%}  {frame}")


def http_request(body: bytes, path: bytes = b"/discard/opra") -> bytes:
    return (b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-opra-quote\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (path, len(body), body))


def print_floor(args, floor: dict) -> None:
    print(f"SQLite floor: the writer's work alone in the generator process, {args.floor_messages:,} messages "
          f"in commits of {args.floor_group:,}, {args.floor_reps} interleaved repetitions:")
    print()
    print("| Writer work | us/msg of CPU per repetition | Median us/msg | Range | msg/s wall (median) |")
    print("|---|---|--:|--:|--:|")
    for label, reps in floor.items():
        us = [x[1] for x in reps]
        print(f"| {label} | {' '.join(f'{x:.2f}' for x in us)} | {statistics.median(us):.2f} "
              f"| {min(us):.2f}-{max(us):.2f} | {fmt_rate(statistics.median(x[0] for x in reps))} |")
    print()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--serve", nargs=2, metavar=("KIND", "PORT"), help=argparse.SUPPRESS)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--compact-messages", type=int, default=3_000_000, help="per compact discard run")
    p.add_argument("--spool-messages", type=int, default=1_000_000, help="per compact spool run")
    p.add_argument("--http-requests", type=int, default=500_000, help="per hub plain-HTTP run")
    p.add_argument("--web-requests", type=int, default=30_000, help="per twisted.web run")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--pipeline", type=int, default=64, help="requests per write")
    p.add_argument("--window", type=int, default=256, help="outstanding requests per connection")
    p.add_argument("--auth-messages", type=int, default=1_000_000, help="per auth run, state cached")
    p.add_argument("--auth-miss-messages", type=int, default=100_000, help="per auth run, new state each message")
    p.add_argument("--scrypt-requests", type=int, default=50, help="per no-cache auth round")
    p.add_argument("--no-normal", action="store_true", help="skip the synchronous=normal spool rounds")
    p.add_argument("--floor-messages", type=int, default=300_000, help="per SQLite floor case")
    p.add_argument("--floor-group", type=int, default=5_000, help="messages per commit in the SQLite floor")
    p.add_argument("--floor-reps", type=int, default=3, help="repetitions of each SQLite floor case")
    p.add_argument("--floor-only", action="store_true", help="run only the SQLite floor (no hub)")
    p.add_argument("--max-inflight", type=int, default=None, help="hub [limits] max_inflight (default: the hub's)")
    p.add_argument("--timeout", type=float, default=30.0, help="wall-clock cap per run, seconds")
    p.add_argument("--quick", action="store_true", help="a tenth of every count, 1 round (smoke test)")
    p.add_argument("--profile", choices=("compact", "spool", "http"), help="profile one run with py-spy")
    p.add_argument("--profile-out", help="raw py-spy stacks (default: a temp file)")
    args = p.parse_args(argv)
    if args.serve:
        return serve(args.serve[0], int(args.serve[1]))
    if args.quick:
        args.rounds = 1
        args.floor_reps = 1
        for k in ("compact_messages", "spool_messages", "http_requests", "web_requests", "auth_messages",
                  "auth_miss_messages", "floor_messages"):
            setattr(args, k, getattr(args, k) // 10)
    for k in ("compact_messages", "spool_messages", "auth_messages", "auth_miss_messages"):
        setattr(args, k, max(UNIT, getattr(args, k) // UNIT * UNIT))  # whole units
    tmp = Path(tempfile.mkdtemp(prefix="msghub-bench-"))
    if args.profile:
        if TASKSET:
            os.sched_setaffinity(0, {CLIENT_CORE})
        try:
            return profile(args, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.floor_only:
        if TASKSET and (os.cpu_count() or 1) >= 2:
            os.sched_setaffinity(0, {CLIENT_CORE})
        try:
            floor = sqlite_floor(args.floor_messages, args.floor_group, args.floor_reps, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        cmd = ".venv/bin/python bench/ingress.py" + "".join(
            f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
        print(f"Command: `{cmd}`  \nDate: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}\n")
        return print_floor(args, floor)

    t_start = perf_counter()
    print("hashing passwords ...", file=sys.stderr, flush=True)
    nocache = [[f"new{r}_{i}" for i in range(args.scrypt_requests)] for r in range(args.rounds)]
    users = make_users(["feed"] + [u for names in nocache for u in names])
    pinned = bool(TASKSET) and (os.cpu_count() or 1) >= 2
    if pinned:
        os.sched_setaffinity(0, {CLIENT_CORE})
    body = bodies(UNIT)
    opra = b"".join(b"+: 66\r\n" + b for b in body)
    seq = b"".join(b"H:X-Seq: %d\r\n+: 66\r\n%s" % (i, b) for i, b in enumerate(body))
    auth = basic("feed")
    procs: list = []
    results: list = []
    notes: list[str] = []
    try:
        bare = Baseline("compact")
        procs.append(bare)
        web = Baseline("web")
        procs.append(web)
        hub = start_hub(tmp / "full", users, "full", args.max_inflight)
        procs.append(hub)

        def compact(server, route: bytes, n: int, head: bytes = HEAD, unit: bytes = opra) -> tuple:
            port = server.compact_port if isinstance(server, HubProcess) else server.port
            units = n // UNIT
            run = (port, head + b"B:%s\r\n" % route, unit, UNIT)
            return server.pid, run_compact, (*run, units, args.timeout), (*run, max(1, units // 10), args.timeout)

        def http(server, port: int, n: int, path: bytes = b"/discard/opra") -> tuple:
            run = (port, http_request(body[0], path), n, args.connections, args.pipeline, args.window, args.timeout)
            return server.pid, run_http, run, (port, run[1], n // 10, *run[3:])

        def spool_check(label: str, hub: HubProcess, expected: dict[str, int]) -> None:
            held = spool_counts(hub.spool_path)
            for name, want in expected.items():
                messages, segments = held.get(name, (0, 0))
                notes.append(f"spool ({label}) holds {messages:,} messages under {name!r} in {segments:,} segment "
                             f"rows (mean {messages / max(1, segments):,.0f} per row) after the warm-up and "
                             f"{args.rounds} runs (expected {want:,})")
                if messages != want:
                    raise RuntimeError(notes[-1])

        def sent(n: int) -> int:
            """Messages one compact label sends in all: warm-up and rounds."""
            return args.rounds * n + max(1, n // UNIT // 10) * UNIT

        def spool_rounds(label: str, hub: HubProcess) -> None:
            """compact -> spool beside compact -> discard on the same hub, and the bare protocol."""
            n = args.spool_messages
            side_by_side(f"compact -> spool ({label})", {
                "hub -> spool": compact(hub, b"/spool/opra", n),
                "hub -> discard": compact(hub, b"/discard/opra", n),
                "bare": compact(bare, b"/x", n),
            }, args.rounds, results, pairs=[("hub -> spool", "hub -> discard", 300_000, 0.5),
                                            ("hub -> spool", "bare", None, None)])

        n = args.compact_messages
        side_by_side("compact -> discard", {"hub": compact(hub, b"/discard/opra", n), "bare": compact(bare, b"/x", n)},
                     args.rounds, results, 1_000_000)
        spool_rounds("full", hub)
        n = args.http_requests
        side_by_side(f"plain HTTP, {args.connections} conns", {
            "hub -> discard": http(hub, hub.http_port, n),
            "hub -> spool": http(hub, hub.http_port, n, b"/spoolhttp/opra"),
            "twisted.web": http(web, web.port, args.web_requests),
        }, args.rounds, results, pairs=[("hub -> discard", "twisted.web", 50_000, None),
                                        ("hub -> spool", "hub -> discard", None, None)])
        spool_check("full", hub, {"bench": sent(args.spool_messages), "bench-http": args.rounds * n + n // 10})
        floor = sqlite_floor(args.floor_messages, args.floor_group, args.floor_reps, tmp)
        n = args.auth_messages
        side_by_side("auth, per-state cache hit", {
            "hub, Basic scrypt": compact(hub, b"/auth/opra", n, HEAD + auth),
            "hub, anonymous": compact(hub, b"/discard/opra", n),
        }, args.rounds, results)
        n = args.auth_miss_messages
        side_by_side("auth, credential cache hit only (new state per message)", {
            "hub, Basic scrypt": compact(hub, b"/auth/opra", n, HEAD + auth, seq),
            "hub, anonymous": compact(hub, b"/discard/opra", n, HEAD, seq),
        }, args.rounds, results)
        nc = nocache_rounds(hub, nocache, body, args.timeout)
        hub.stop()
        procs.remove(hub)
        shutil.rmtree(tmp / "full", ignore_errors=True)  # ~0.4 GB of spool
        if not args.no_normal:
            hub = start_hub(tmp / "normal", users, "normal", args.max_inflight)
            procs.append(hub)
            spool_rounds("normal", hub)
            spool_check("normal", hub, {"bench": sent(args.spool_messages)})
    finally:
        for proc in reversed(procs):
            proc.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    elapsed = perf_counter() - t_start

    cmd = ".venv/bin/python bench/ingress.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    print(f"Command: `{cmd}`  ")
    print(f"Date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}  ")
    print(f"Python: {platform.python_implementation()} {platform.python_version()}, {platform.machine()}, "
          f"{os.cpu_count()} cores (shared); "
          + (f"servers pinned to core {SERVER_CORE}, generator to core {CLIENT_CORE} (taskset)  " if pinned
             else "not pinned (no taskset)  "))
    print(f"Rounds: {args.rounds}, 66-byte bodies, timeout {args.timeout:.0f} s per run; wall time {elapsed:.0f} s")
    print()
    print("| Case | Server | Count/run | Rate per round (run order) | Median | Range | us/msg, wall (median) "
          "| Server CPU per round | Others on server core | Rate per server CPU-second (median) |")
    print("|---|---|--:|---|--:|--:|--:|--:|--:|--:|")
    for res in results:
        print("\n".join(rate_rows(res)))
    print()
    print("| Case | Code / reference | Per round | Median | Range | Per CPU-second, median | Target (median rate) |")
    print("|---|---|---|--:|--:|--:|---|")
    for res in results:
        print("\n".join(ratio_rows(res)))
    print()
    q = [h / loc for h, loc in zip(nc["hub_ms"], nc["local_ms"])]
    print("| Case | Hub ms/request per round | Median | Local scrypt verify ms (median) | Hub / local "
          "| Probe on another connection, ms per round |")
    print("|---|---|--:|--:|--:|---|")
    print(f"| auth, no cache ({nc['count']} never-seen users per round, one connection) "
          f"| {' '.join(f'{x:.1f}' for x in nc['hub_ms'])} | {statistics.median(nc['hub_ms']):.1f} "
          f"| {statistics.median(nc['local_ms']):.1f} | {statistics.median(q):.2f} "
          f"| {' '.join(f'{x:.0f}' for x in nc['probe_ms'])} |")
    print()
    print_floor(args, floor)
    gen = max(x["gen_cpu"] for res in results for runs in res["runs"].values() for x in runs)
    notes.append(f"generator process CPU: at most {gen:.0%} of its core in any run")
    for note in notes:
        print(f"- {note}")


if __name__ == "__main__":
    main()
