"""A full disk under the spool, against the real process.

The spool lives on a private 4 MiB tmpfs (mounting one needs root, as in CI;
elsewhere these tests are skipped and say why).  The disk is filled with
filler files the test owns, and freed by deleting them.  What must hold:
producers are refused with 503 (plain: with Retry-After; compact: ``E:n 503``)
while the hub stays up; nothing acknowledged is lost; the hub accepts again
once there is space; a hub restarted on a full disk starts and drains; a
little freed space buys many acks; and a failed commit costs at most one log
line.
"""

from __future__ import annotations

import ast
import errno
import http.client
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from msghub.compact import Request
from msghub.testing import CompactClient, HubProcess, free_port

WAIT = 10.0  # the longest any single wait may take
DISK = "4m"
BODY = 1024  # bytes per message
MAX_MESSAGES = 8000  # per stream_until_refused call: more than the disk can hold
CHUNK = 64 * 1024

ROUTES = '[[routes]]\nname = "held"\nmatch = "/held/{x}"\nspool = "held"\n'


def spool_command() -> list[str]:
    script = Path(sys.executable).with_name("msghub-spool")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from msghub.spoolcli import main; sys.exit(main())"]


def dump_bodies(spool_path: str, name: str) -> list[bytes]:
    result = subprocess.run(
        spool_command() + ["--db", spool_path, "dump", name, "--body"],
        capture_output=True, text=True, timeout=WAIT,
    )
    assert result.returncode == 0, result.stderr
    prefix = "  body: "
    return [ast.literal_eval(line[len(prefix):]) for line in result.stdout.splitlines() if line.startswith(prefix)]


def wait_until(check: Callable[[], object], timeout: float = WAIT, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def metric(hub: HubProcess, name: str) -> float | None:
    _, text = hub.get("/metrics")
    for line in text.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def free_bytes(directory: Path) -> int:
    stat = os.statvfs(directory)
    return stat.f_bavail * stat.f_frsize


def fill(path: Path, leave: int = 0) -> int:
    """Write ``path`` until only ``leave`` bytes are free on its disk (or the disk is full)."""
    target = max(0, free_bytes(path.parent) - leave)
    written = 0
    zeros = b"\0" * CHUNK
    with open(path, "ab") as f:
        try:
            while written < target:
                written += f.write(zeros[: min(CHUNK, target - written)])
                f.flush()
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
    return written


def body(n: int) -> bytes:
    head = b"%08d:" % n
    return head + b"x" * (BODY - len(head))


class Plain:
    """Numbered 1 KiB POSTs on one keep-alive connection."""

    def __init__(self, hub: HubProcess, first: int = 0) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", hub.http_port, timeout=WAIT)
        self.next = first
        self.acked: list[bytes] = []

    def post(self) -> tuple[int, dict[str, str]]:
        data, self.next = body(self.next), self.next + 1
        self.conn.request("POST", "/held/m", body=data, headers={"Content-Type": "text/plain"})
        response = self.conn.getresponse()
        response.read()
        if response.status == 202:
            self.acked.append(data)
        return response.status, dict(response.getheaders())

    def until_refused(self, limit: int = MAX_MESSAGES) -> tuple[int, dict[str, str]]:
        """Post until one is refused; returns how many were acked meanwhile and the refusal's headers."""
        before = len(self.acked)
        deadline = time.monotonic() + WAIT
        for _ in range(limit):
            status, headers = self.post()
            if status != 202:
                assert status == 503, status
                return len(self.acked) - before, headers
            assert time.monotonic() < deadline, "the disk never filled"
        raise AssertionError(f"{limit} messages accepted on a {DISK} disk")

    def until_accepted(self, attempts: int = 50) -> None:
        for _ in range(attempts):
            if self.post()[0] == 202:
                return
            time.sleep(0.1)
        raise AssertionError(f"still refused after {attempts} attempts")

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A private small tmpfs, unmounted after the test (and after its hubs: request it first)."""
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for the spool needs root (CI runs these tests as root)")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK}", "tmpfs", str(mountpoint)],
        capture_output=True, text=True, timeout=WAIT,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip() or result.returncode}")
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], capture_output=True, timeout=WAIT).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, timeout=WAIT)


@pytest.fixture
def hubs(disk: Path) -> Iterator[list[HubProcess]]:
    started: list[HubProcess] = []
    yield started
    for hub in started:
        hub.stop()


def start_hub(hubs: list[HubProcess], workdir: Path, disk: Path, conf: str = ROUTES, healthy: bool = True) -> HubProcess:
    hub = HubProcess(workdir, conf, spool_path=str(disk / "spool.db"))
    hubs.append(hub)
    return hub.start(healthy=healthy)


def test_a_full_disk_is_503_with_retry_after_and_e_503_the_hub_stays_up_and_accepts_again(tmp_path, disk, hubs):
    hub = start_hub(hubs, tmp_path / "hub", disk)
    fill(disk / "filler", leave=512 * 1024)
    plain = Plain(hub)
    acked, refusal = plain.until_refused()
    assert acked > 0
    assert refusal.get("Retry-After") == "1", refusal

    compact = CompactClient(hub.compact_port, timeout=WAIT)
    compact.send([Request(b"POST", b"/held/c", [(b"Content-Type", b"text/plain")], body(10**6 + i)) for i in range(5)])
    compact.read_until(5)
    assert compact.errors and {e.status for e in compact.errors.values()} == {503}, compact.errors
    assert hub.get("/healthz") == (503, b"spool not writable\n")  # up, and saying why it refuses
    assert hub.process is not None and hub.process.poll() is None

    os.unlink(disk / "filler")
    plain.until_accepted()
    compact.send([Request(b"POST", b"/held/c", [(b"Content-Type", b"text/plain")], body(2 * 10**6))])
    compact.read_until(6)
    assert compact.acked == 6 and 6 not in compact.errors
    hub_healthy_after_freeing = hub.get("/healthz") == (200, b"ok\n")
    compact.close()
    plain.close()
    assert hub.stop() in (0, -15)
    stored = set(dump_bodies(hub.spool_path, "held"))
    missing = [b[:8] for b in plain.acked if b not in stored]
    assert not missing, f"{len(missing)} acknowledged messages lost: {missing[:5]}"
    assert body(2 * 10**6) in stored
    assert hub_healthy_after_freeing


def test_freeing_a_little_space_buys_many_acks(tmp_path, disk, hubs):
    """The WAL must not keep the space it grew to while the disk was full."""
    hub = start_hub(hubs, tmp_path / "hub", disk)
    fill(disk / "filler", leave=1536 * 1024)
    fill(disk / "small", leave=512 * 1024)  # 1 MiB, freed below
    plain = Plain(hub)
    plain.until_refused()
    for _ in range(20):  # failing for a while, as producers retry
        plain.post()
    freed = os.path.getsize(disk / "small")
    os.unlink(disk / "small")
    plain.until_accepted()
    bought, _ = plain.until_refused()
    bought += 1
    print(f"freed {freed} bytes: {bought} more acks of {BODY} bytes")
    plain.close()
    # Half of the freed space in bodies: room for SQLite's pages and index, not for a stale WAL.
    assert bought * BODY >= freed // 2, f"freeing {freed} bytes bought only {bought} acks"


def test_each_failed_commit_logs_at_most_one_line(tmp_path, disk, hubs):
    hub = start_hub(hubs, tmp_path / "hub", disk)
    fill(disk / "filler", leave=256 * 1024)
    plain = Plain(hub)
    plain.until_refused()
    before = len(hub.log().splitlines())
    refused = 1
    for _ in range(30):
        refused += plain.post()[0] == 503
    plain.close()
    assert hub.process is not None and hub.process.poll() is None
    time.sleep(0.2)  # the last failure's log line, if any, is written
    added = hub.log().splitlines()[before:]
    print(f"{refused} refusals, {len(added)} log lines")
    assert "Traceback" not in hub.log()
    assert len(added) <= 30, added[:20]


def test_a_hub_restarted_on_a_full_disk_starts_and_drains(tmp_path, disk, hubs, recording_receiver):
    port = free_port()  # no receiver yet: every message stays queued
    conf = (
        f'[webhooks.sink]\nurl = "http://127.0.0.1:{port}/in"\n'
        'secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"\ntimeout = 1\nretry = [0.2, 0.5, 1, 1, 1, 1, 1, 1, 1, 1]\n'
        '[[routes]]\nname = "hooks"\nmatch = "/hooks/{x}"\nwebhooks = ["sink"]\n'
    )
    first = start_hub(hubs, tmp_path / "first", disk, conf)
    fill(disk / "filler", leave=512 * 1024)
    conn = http.client.HTTPConnection("127.0.0.1", first.http_port, timeout=WAIT)
    acked: list[bytes] = []
    for n in range(MAX_MESSAGES):
        conn.request("POST", "/hooks/m", body=body(n), headers={"Content-Type": "text/plain"})
        response = conn.getresponse()
        response.read()
        if response.status != 202:
            assert response.status == 503
            break
        acked.append(body(n))
    conn.close()
    assert acked
    first.stop()
    fill(disk / "filler2")  # whatever the stop freed: still full

    receiver = recording_receiver(port)
    second = start_hub(hubs, tmp_path / "second", disk, conf, healthy=False)
    assert second.get("/healthz") == (503, b"spool not writable\n")  # up, and saying why it cannot accept

    def all_delivered() -> bool:
        with receiver.lock:
            return {b for _, b in receiver.delivered} >= set(acked)

    wait_until(all_delivered, what="every acknowledged message to be delivered from a full disk")
    os.unlink(disk / "filler")
    os.unlink(disk / "filler2")
    wait_until(lambda: metric(second, 'msghub_spool_depth{name="webhook:sink"}') in (0, None), what="the queue to drain")
    with receiver.lock:
        ids: dict[bytes, set[str]] = {}
        for message_id, data in receiver.delivered:
            ids.setdefault(data, set()).add(message_id)
    assert all(len(v) == 1 for v in ids.values())
