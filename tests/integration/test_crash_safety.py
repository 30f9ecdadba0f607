"""Crash safety against the real process: ``kill -9`` the twistd mid-stream, restart, count.

Two producers (plain HTTP keep-alive and compact) stream numbered messages to
a spool route and to a webhook route whose receiver records every delivery.
The hub is killed with SIGKILL after a given number of acknowledgements, then
restarted on the same spool file; this happens at several points in one run.
At the end every message a producer saw acknowledged must be in the spool
(counted by body with ``msghub-spool dump NAME --body``) or delivered to the
receiver, and a body seen more than once must always carry the same message id.

Only the public surface is used (HubProcess, the two ports, the admin port's
metrics, the ``msghub-spool`` command, a real receiver), so the test holds
whatever the spool's storage looks like inside.
"""

from __future__ import annotations

import ast
import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from msghub.compact import Request
from msghub.testing import CompactClient, HubProcess

WAIT = 10.0  # the longest any single wait may take
STREAM_LIMIT = 20_000  # messages per producer per incarnation, at most
KILL_AFTER = (40, 300, 1200, 2500)  # acknowledgements (both producers) before each kill -9
BATCH = 25  # compact requests sent before reading their acks


def spool_command() -> list[str]:
    script = Path(sys.executable).with_name("msghub-spool")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from msghub.spoolcli import main; sys.exit(main())"]


def dump_bodies(spool_path: str, name: str) -> list[tuple[str, bytes]]:
    """(message id, body) of every message of ``name``, as ``msghub-spool dump --body`` prints them."""
    result = subprocess.run(
        spool_command() + ["--db", spool_path, "dump", name, "--body"],
        capture_output=True, text=True, timeout=WAIT,
    )
    assert result.returncode == 0, result.stderr
    found: list[tuple[str, bytes]] = []
    current = None
    for line in result.stdout.splitlines():
        if not line.startswith(" "):
            current = line.split()[0]
        elif line.startswith("  body: "):
            assert current is not None
            found.append((current, ast.literal_eval(line[len("  body: "):])))
    return found


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


class Streamer(threading.Thread):
    """Streams numbered messages to both routes until the hub goes away; records what was acked."""

    def __init__(self, kind: str, port: int, start_at: int, stop: threading.Event) -> None:
        super().__init__(name=f"streamer-{kind}")
        self.kind, self.port, self.next, self.stop = kind, port, start_at, stop
        self.sent: list[bytes] = []
        self.acked: list[bytes] = []
        self.error: BaseException | None = None

    def body(self) -> tuple[bytes, bytes]:
        """The next message: (path, body); even numbers to the spool route, odd to the webhook route."""
        n, self.next = self.next, self.next + 1
        route = b"held" if n % 2 == 0 else b"hooks"
        body = b"%s-%d" % (self.kind.encode(), n)
        self.sent.append(body)
        return b"/%s/m" % route, body

    def run(self) -> None:
        try:
            (self._plain if self.kind == "plain" else self._compact)()
        except (OSError, http.client.HTTPException):
            pass  # the hub was killed: expected, and what was acked is recorded
        except BaseException as e:  # pragma: no cover - reported by the test
            self.error = e

    def _plain(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT)
        try:
            while not self.stop.is_set() and len(self.sent) < STREAM_LIMIT:
                path, body = self.body()
                conn.request("POST", path.decode(), body=body, headers={"Content-Type": "text/plain"})
                response = conn.getresponse()
                response.read()
                if response.status != 202:
                    raise AssertionError(f"{body!r} answered {response.status}")
                self.acked.append(body)
        finally:
            conn.close()

    def _compact(self) -> None:
        client = CompactClient(self.port, timeout=WAIT)
        try:
            while not self.stop.is_set() and len(self.sent) < STREAM_LIMIT:
                batch = [self.body() for _ in range(BATCH)]
                first = len(self.sent) - BATCH + 1  # this connection's number of the batch's first request
                client.send([Request(b"POST", path, [(b"Content-Type", b"text/plain")], body) for path, body in batch])
                try:
                    client.read_until(len(self.sent), timeout=WAIT)
                finally:
                    # Acks are cumulative: everything up to client.acked is safe.
                    covered = client.acked - first + 1
                    self.acked.extend(body for _, body in batch[: max(0, covered)])
                if client.errors:
                    raise AssertionError(f"refused: {client.errors}")
                if client.closed:
                    return
        finally:
            client.close()


@pytest.fixture
def receiver(recording_receiver):
    """One receiver that answers 204 and records (webhook-id, body) (conftest.RecordingReceiver)."""
    return recording_receiver()


@pytest.fixture
def hubs() -> Iterator[list[HubProcess]]:
    started: list[HubProcess] = []
    yield started
    for hub in started:
        hub.stop()  # a killed one only has its log closed


def conf(url: str) -> str:
    return (
        f'[webhooks.sink]\nurl = "{url}"\nsecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"\n'
        "timeout = 1\nretry = [0.2, 0.2, 0.5, 1, 1, 2]\n"
        '[[routes]]\nname = "held"\nmatch = "/held/{x}"\nspool = "held"\n'
        '[[routes]]\nname = "hooks"\nmatch = "/hooks/{x}"\nwebhooks = ["sink"]\n'
    )


def test_kill_9_mid_stream_loses_no_acknowledged_message(tmp_path, receiver, hubs):
    spool_path = str(tmp_path / "spool" / "spool.db")
    numbers = {"plain": 0, "compact": 1_000_000}
    acked: list[bytes] = []
    sent: list[bytes] = []
    outcomes = []
    for point, kill_after in enumerate(KILL_AFTER):
        hub = HubProcess(tmp_path / f"hub{point}", conf(receiver.url), spool_path=spool_path)
        hubs.append(hub)
        hub.start()
        stop = threading.Event()
        streamers = [
            Streamer("plain", hub.http_port, numbers["plain"], stop),
            Streamer("compact", hub.compact_port, numbers["compact"], stop),
        ]
        for streamer in streamers:
            streamer.start()
        try:
            wait_until(
                lambda: sum(len(s.acked) for s in streamers) >= kill_after or not any(s.is_alive() for s in streamers),
                what=f"{kill_after} acknowledgements",
            )
        finally:
            assert hub.process is not None
            os.kill(hub.process.pid, signal.SIGKILL)
            hub.process.wait(WAIT)
            stop.set()
            for streamer in streamers:
                streamer.join(WAIT)
        assert hub.process.returncode == -signal.SIGKILL
        for streamer in streamers:
            assert not streamer.is_alive() and streamer.error is None, streamer.error
            numbers[streamer.kind] = streamer.next
            acked += streamer.acked
            sent += streamer.sent
        outcomes.append((kill_after, [body for s in streamers for body in s.acked]))

    final = HubProcess(tmp_path / "final", conf(receiver.url), spool_path=spool_path)
    hubs.append(final)
    final.start()
    wait_until(lambda: metric(final, 'msghub_spool_depth{name="webhook:sink"}') in (0, None), what="webhooks to drain")
    assert final.stop() in (0, -15)

    spooled = dump_bodies(spool_path, "held")
    with receiver.lock:
        delivered = list(receiver.delivered)
    found: dict[bytes, set[str]] = {}
    copies: dict[bytes, int] = {}
    for message_id, body in spooled + delivered:
        found.setdefault(body, set()).add(message_id)
        copies[body] = copies.get(body, 0) + 1

    missing = [body for body in acked if body not in found]
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {missing[:5]}"
    two_ids = {body: ids for body, ids in found.items() if len(ids) > 1}
    assert not two_ids, f"stored twice under different ids: {list(two_ids.items())[:5]}"
    assert set(found) <= set(sent), "a message nobody sent"
    held = [body for body in acked if int(body.rsplit(b"-", 1)[1]) % 2 == 0]
    assert len(held) > 0 and len(acked) - len(held) > 0  # both routes were exercised
    for kill_after, point_acked in outcomes:
        assert len(point_acked) >= kill_after  # killed mid-stream, not after the streams ended
        print(
            f"kill -9 after >= {kill_after} acks: acked {len(point_acked)}, "
            f"found {sum(1 for body in point_acked if body in found)}, "
            f"duplicates {sum(1 for body in point_acked if copies[body] > 1)}"
        )
    print(f"unacknowledged but stored: {len(set(found) - set(acked))} of {len(sent) - len(acked)}")
