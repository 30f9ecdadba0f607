"""The real ``twistd -n msghub`` process, driven by real clients on loopback."""

import http.client
import json
import subprocess
from pathlib import Path

import pytest

from msghub.compact import Request
from msghub.spoolcli import main as spool_main
from msghub.testing import REPO, CompactClient, HubProcess, free_port, twistd_command

ROUTES = """
[[routes]]
name = "held"
match = "/held/{name}"
spool = "held"

[[routes]]
name = "drop"
match = "/drop/{name}"
discard = true

[users.feed]
token_sha256 = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"

[[routes]]
name = "private"
match = "/private/{name}"
users = ["feed"]
discard = true
"""
SECRET = "secret"  # sha256 above


def check(conf: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        twistd_command() + ["-n", "--pidfile=", "msghub", "-c", str(conf), "--check"],
        capture_output=True, text=True, timeout=60, env=env, cwd=conf.parent,
    )


def post(port: int, path: str, body: bytes, headers: dict | None = None, conn=None) -> tuple[int, dict]:
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", path, body=body, headers=headers or {})
    response = conn.getresponse()
    response.read()
    return response.status, dict(response.getheaders())


def metric(hub: HubProcess, line_start: str) -> float | None:
    _, text = hub.get("/metrics")
    for line in text.decode().splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.fixture
def hub(tmp_path):
    process = HubProcess(tmp_path / "hub", ROUTES).start()
    yield process
    process.stop()


def test_check_accepts_the_shipped_conf():
    result = check(REPO / "conf" / "msghub.toml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(": ok")


def test_check_lists_every_problem_as_file_key_problem(tmp_path):
    conf = tmp_path / "bad.toml"
    conf.write_text('[listen]\nhttp = ["tcp:notaport"]\ncolour = "blue"\n[[routes]]\nmatch = "/x"\n')
    result = check(conf)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert f"{conf}: listen.colour: unknown key" in lines
    assert any(line.startswith(f"{conf}: listen.http[0]: ") for line in lines)
    assert any(line.startswith(f"{conf}: routes[0]: ") for line in lines)
    assert "Traceback" not in result.stderr


def test_plain_http_is_accepted_after_commit_and_routed(hub):
    conn = http.client.HTTPConnection("127.0.0.1", hub.http_port, timeout=10)
    assert post(hub.http_port, "/held/a", b"one", conn=conn)[0] == 202
    assert post(hub.http_port, "/drop/b", b"two", conn=conn)[0] == 202
    assert post(hub.http_port, "/nowhere", b"x", conn=conn)[0] == 404
    status, headers = post(hub.http_port, "/private/x", b"x", conn=conn)
    assert status == 401 and "WWW-Authenticate" in headers
    assert post(hub.http_port, "/private/x", b"x", {"Authorization": f"Bearer {SECRET}"}, conn=conn)[0] == 202
    assert metric(hub, 'msghub_spool_depth{name="held"}') == 1
    assert metric(hub, 'msghub_messages_accepted_total{ingress="http",route="held"}') == 1
    assert metric(hub, 'msghub_messages_rejected_total{ingress="http",status="404"}') == 1


def test_metrics_show_the_process_the_gc_and_the_spool_s_commits(hub):
    assert post(hub.http_port, "/held/a", b"one")[0] == 202
    _, text = hub.get("/metrics")
    names = {line.split("{")[0].split(" ")[0] for line in text.decode().splitlines() if not line.startswith("#")}
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"} <= names
    assert "python_gc_collections_total" in names
    assert metric(hub, 'msghub_spool_commits_total{result="ok"}') >= 1
    assert metric(hub, 'msghub_spool_commit_seconds_bucket{le="+Inf"}') >= 1
    assert metric(hub, "msghub_spool_file_bytes") > 0


def test_readyz_names_each_destination_and_probes_leave_no_log_lines(hub):
    for _ in range(5):
        assert hub.get("/metrics")[0] == 200
        assert hub.get("/healthz")[0] == 200
    status, body = hub.get("/readyz")
    assert status == 200
    ready = json.loads(body)
    assert ready["ready"] is True and ready["problems"] == []
    assert {(d["kind"], d["name"], d["state"]) for d in ready["destinations"]} == {
        ("spool", "held", "ok"), ("discard", "discard", "ok")}
    assert ready["spool"]["writable"] is True and ready["spool"]["bytes"] > 0
    assert hub.get("/no-such-page")[0] == 404
    log = hub.log()
    assert "/no-such-page" in log  # other admin requests are still logged
    assert "/metrics" not in log and "/healthz" not in log and "/readyz" not in log
    assert "Starting factory" not in log


def test_readyz_is_503_while_the_broker_is_unreachable(tmp_path):
    conf = (
        f'[amqp]\nurl = "amqp://guest:guest@127.0.0.1:{free_port()}/"\n'
        '[[routes]]\nname = "orders"\nmatch = "/orders"\namqp = {exchange = "", routing_key = "q"}\n'
    )
    with HubProcess(tmp_path / "hub", conf) as hub:
        status, body = hub.get("/readyz")
        assert status == 503
        ready = json.loads(body)
        assert ready["ready"] is False
        assert any(p.startswith("amqp publish: ") for p in ready["problems"])
        assert hub.get("/healthz")[0] == 200  # alive: it spools meanwhile


def test_compact_stream_is_acked_cumulatively(hub):
    client = CompactClient(hub.compact_port)
    requests = [Request(b"POST", b"/held/q%d" % (i % 7), [(b"Content-Type", b"text/plain")], b"m%d" % i) for i in range(500)]
    client.send(requests)
    client.read_until(500)
    assert client.acked == 500 and not client.errors
    client.close()
    assert metric(hub, 'msghub_spool_depth{name="held"}') == 500


def test_garbage_on_one_connection_does_not_disturb_another(hub):
    good = CompactClient(hub.compact_port)
    bad = CompactClient(hub.compact_port)
    good.send([Request(b"POST", b"/drop/a", body=b"1")])
    bad.send_raw(b"\x00\xff garbage without a colon\r\n")
    bad.read_to_close()
    assert bad.fatal is not None and bad.fatal.status == 400
    good.send([Request(b"POST", b"/drop/a", body=b"2")])
    good.read_until(2)
    assert good.acked == 2
    raw = http.client.HTTPConnection("127.0.0.1", hub.http_port, timeout=10)
    raw.putrequest("POST", "/held/x")
    raw.putheader("Content-Length", "nonsense")
    raw.endheaders()
    assert raw.getresponse().status == 400
    assert hub.get("/healthz")[0] == 200


def test_spooled_messages_survive_a_restart(tmp_path, capsys):
    workdir = tmp_path / "hub"
    first = HubProcess(workdir, ROUTES).start()
    client = CompactClient(first.compact_port)
    client.send([Request(b"POST", b"/held/r", body=b"keep me %d" % i) for i in range(20)])
    client.read_until(20)
    client.close()
    assert first.stop() in (0, -15)
    second = HubProcess(workdir, ROUTES, spool_path=first.spool_path).start()
    try:
        assert metric(second, 'msghub_spool_depth{name="held"}') == 20
    finally:
        second.stop()
    assert spool_main(["--db", first.spool_path, "dump", "held", "--body"]) == 0
    out = capsys.readouterr().out
    assert "keep me 0" in out and "keep me 19" in out


def test_sigterm_stops_cleanly(tmp_path):
    process = HubProcess(tmp_path / "hub", ROUTES).start()
    assert process.stop() in (0, -15)
    assert "Traceback" not in process.log()
