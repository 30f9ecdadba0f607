"""The real hub with ``--logger=msghub.logs.json_stdout``: every log line is a JSON event."""

import json
import socket

from twisted.logger import eventFromJSON, formatEvent

from msghub.testing import HubProcess


def test_every_line_of_the_json_log_is_an_event_with_its_fields(tmp_path):
    hub = HubProcess(tmp_path / "hub", "", twistd_args=("--logger=msghub.logs.json_stdout",)).start()
    try:
        with socket.create_connection(("127.0.0.1", hub.compact_port), timeout=5) as s:
            s.sendall(b"Q:garbage\r\n")
            assert s.recv(100).startswith(b"X:400")
        hub.wait_for_log("unknown opcode")
    finally:
        assert hub.stop() in (0, -15)
    lines = hub.log().splitlines()
    events = [json.loads(line) for line in lines]  # every line parses
    assert all("log_level" in e and "log_time" in e for e in events)
    (refused,) = [e for e in events if e.get("ingress") == "compact"]
    assert refused["log_namespace"] == "msghub.ingress.base"
    assert "unknown opcode" in formatEvent(eventFromJSON(json.dumps(refused)))
