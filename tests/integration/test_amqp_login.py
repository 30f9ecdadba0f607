"""A refused broker login, end to end: real ``twistd``, real broker, a user the test adds."""

from __future__ import annotations

import json
import time
import uuid

from msghub.testing import HubProcess

from test_amqp import wait_for


def readyz(hub: HubProcess) -> tuple[int, dict]:
    status, body = hub.get("/readyz")
    return status, json.loads(body)


def metric(hub: HubProcess, name: str) -> float:
    _, text = hub.get("/metrics")
    for line in text.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def publisher(body: dict) -> dict:
    (found,) = [d for d in body["destinations"] if d["kind"] == "amqp" and d["name"] == "publish"]
    return found


def test_a_wrong_password_shows_as_auth_failed_is_logged_once_and_recovers_when_it_is_right(rabbit, tmp_path):
    user = f"feeder-{uuid.uuid4().hex[:8]}"
    rabbit.ctl("add_user", user, "right")
    rabbit.ctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
    conf = f"""
[amqp]
url = "amqp://{user}:wrong@127.0.0.1:{rabbit.port}/%2f"

[[routes]]
name = "orders"
match = "/orders/{{n}}"
amqp = {{exchange = "amq.topic", routing_key = "orders"}}
"""
    try:
        with HubProcess(tmp_path / "hub", conf) as hub:
            wait_for(lambda: publisher(readyz(hub)[1])["state"] == "auth_failed", 20, "/readyz to say auth_failed")
            status, body = readyz(hub)
            assert status == 503 and not body["ready"]
            assert "ACCESS_REFUSED" in publisher(body)["error"]
            assert any("amqp publish: auth_failed" in p and "ACCESS_REFUSED" in p for p in body["problems"])
            # Several attempts, each refused: logged once, not once per retry.
            deadline = time.monotonic() + 30
            while metric(hub, "msghub_amqp_connect_failures_total") < 3 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert metric(hub, "msghub_amqp_connect_failures_total") >= 3
            log = hub.log()
            assert "Scheduling retry" not in log  # nothing per retry
            assert log.count("ACCESS_REFUSED") == 1, log
            assert "amqp: the broker refused the login of user" in log
            metrics = hub.get("/metrics")[1].decode()
            assert 'msghub_amqp_state{state="auth_failed"} 1.0' in metrics
            # The operator fixes the password (here: the broker's side): the next attempt logs in.
            rabbit.ctl("change_password", user, "wrong")
            wait_for(lambda: readyz(hub)[0] == 200, 40, "/readyz to say ready after the fix", interval=0.2)
            assert publisher(readyz(hub)[1]) == {"kind": "amqp", "name": "publish", "state": "connected",
                                                 "depth": 0, "error": ""}
            assert "Traceback" not in hub.log()
    finally:
        rabbit.ctl("delete_user", user)
