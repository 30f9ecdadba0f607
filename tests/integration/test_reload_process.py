"""SIGHUP against the real twistd: tokens and routes change under open connections; bad confs are refused."""

import hashlib
import time

from msghub.compact import Request
from msghub.testing import CompactClient, HubProcess


def conf(token: bytes, extra_route: str = "") -> str:
    digest = hashlib.sha256(token).hexdigest()
    return (
        f'[users.feed]\ntoken_sha256 = "{digest}"\n'
        '[[routes]]\nname = "orders"\nmatch = "/orders/{kind}"\nusers = ["feed"]\ndiscard = true\n' + extra_route
    )


def rewrite(hub: HubProcess, body: str) -> None:
    text = hub.conf_path.read_text()
    head = text[: text.index("[users.feed]")]
    hub.conf_path.write_text(head + body)


def send(client: CompactClient, requests: list[Request], number: int) -> None:
    client.send(requests)
    client.read_until(number)


def test_reload_changes_tokens_and_routes_without_dropping_connections(tmp_path):
    with HubProcess(tmp_path / "hub", conf(b"old-token")) as hub:
        client = CompactClient(hub.compact_port)
        old = [(b"Authorization", b"Bearer old-token")]
        send(client, [Request(b"POST", b"/orders/a", old, b"1")], 1)
        assert client.acked == 1 and not client.errors
        rewrite(hub, conf(b"new-token", '[[routes]]\nname = "audit"\nmatch = "/audit"\ndiscard = true\n'))
        log = hub.reload()
        assert "applied (1 users, 2 routes)" in log
        # The same connection: the old token is refused, the new one and the new route work.
        send(client, [Request(b"POST", b"/orders/a", old, b"2")], 2)
        assert client.errors[2].status == 401
        new = [(b"Authorization", b"Bearer new-token")]
        send(client, [Request(b"POST", b"/orders/a", new, b"3"), Request(b"POST", b"/audit", [], b"4")], 4)
        assert set(client.errors) == {2} and client.acked == 4 and client.fatal is None
        client.close()


def test_a_bad_conf_is_refused_with_its_problems_and_the_running_one_kept(tmp_path):
    with HubProcess(tmp_path / "hub", conf(b"token")) as hub:
        good = hub.conf_path.read_text()
        hub.conf_path.write_text(good.replace('match = "/orders/{kind}"', 'match = "orders"'))
        log = hub.reload()
        assert "reload refused; the running configuration is kept" in log
        assert f"{hub.conf_path}: routes[0].match: " in log
        client = CompactClient(hub.compact_port)
        send(client, [Request(b"POST", b"/orders/a", [(b"Authorization", b"Bearer token")], b"1")], 1)
        assert client.acked == 1 and not client.errors
        client.close()


def test_changes_that_need_a_restart_are_logged_as_such(tmp_path):
    with HubProcess(tmp_path / "hub", conf(b"token")) as hub:
        hub.conf_path.write_text(hub.conf_path.read_text() + "[limits]\nmax_body = 1024\n")
        log = hub.reload()
        assert "reload: limits: changed; the running value is kept until a restart" in log
        assert hub.get("/healthz")[0] == 200


def test_reload_adds_removes_and_changes_webhook_targets_under_an_open_connection(tmp_path):
    from test_webhooks import PATIENT_RETRY, Receiver, answer, depth, route_conf, target_conf, wait_until

    kept, moving, moved, gone, fresh = (Receiver() for _ in range(5))
    gone.rule = answer(503, b"down")  # keeps its message queued until it is removed
    receivers = [kept, moving, moved, gone, fresh]
    token = b"hook-token"
    users = f'[users.feed]\ntoken_sha256 = "{hashlib.sha256(token).hexdigest()}"\n'
    route = route_conf("orders", ["kept", "moving", "gone"]).replace("webhooks =", 'users = ["feed"]\nwebhooks =')
    before = (users + target_conf("kept", kept.url) + target_conf("moving", moving.url)
              + target_conf("gone", gone.url, PATIENT_RETRY) + route)
    try:
        with HubProcess(tmp_path / "hub", before) as hub:
            client = CompactClient(hub.compact_port)
            auth = [(b"Authorization", b"Bearer " + token)]
            send(client, [Request(b"POST", b"/orders/a", auth, b"1")], 1)
            wait_until(lambda: kept.delivered() and moving.delivered() and gone.arrived, what="message 1")

            text = hub.conf_path.read_text()
            head = text[: text.index("[users.feed]")]
            after = (users + target_conf("kept", kept.url) + target_conf("moving", moved.url)
                     + target_conf("fresh", fresh.url) + route.replace('"gone"', '"fresh"'))
            hub.conf_path.write_text(head + after)
            log = hub.reload()
            assert "webhook gone: removed by the reload; its 1 queued messages stay in the spool as webhook:gone" in log
            assert "webhook fresh: added by the reload" in log
            assert "webhook moving: url changed by the reload; applies from the next attempt" in log
            assert "webhook kept:" not in log and "needs a restart" not in log and "until a restart" not in log

            # The same producer connection: message 2 goes to the targets of the new conf.
            send(client, [Request(b"POST", b"/orders/a", auth, b"2")], 2)
            assert client.acked == 2 and not client.errors and client.fatal is None
            wait_until(lambda: len(kept.delivered()) == 2 and moved.delivered() and fresh.delivered(), what="message 2")
            assert [r.body for r in moved.delivered()] == [b"2"] and [r.body for r in fresh.delivered()] == [b"2"]
            assert len(moving.arrived) == 1
            arrived = len(gone.arrived)
            time.sleep(1.0)  # its retry schedule would have sent it again by now
            assert len(gone.arrived) == arrived and depth(hub, "gone") == 1
            client.close()
    finally:
        for receiver in receivers:
            receiver.stop()


def test_reload_adds_and_removes_subscriptions_and_an_unchanged_one_keeps_its_reader(tmp_path):
    from test_sse_tap import RawSubscriber, post_all

    base = '[[routes]]\nname = "orders"\nmatch = "/orders/{kind}"\ndiscard = true\n'
    sub = '[[subscriptions]]\nmatch = "{path}"\nroute = "orders"\n'
    with HubProcess(tmp_path / "hub", base + sub.format(path="/tap/kept") + sub.format(path="/tap/gone")) as hub:
        producer = CompactClient(hub.compact_port)  # open across the reload
        kept = RawSubscriber(hub.http_port, "/tap/kept")
        gone = RawSubscriber(hub.http_port, "/tap/gone")
        post_all(hub.http_port, [b"before"])
        assert [e.data for e in kept.read_until(lambda ev: len(ev) >= 1)] == ["before"]

        text = hub.conf_path.read_text()
        head = text[: text.index("[[routes]]")]
        hub.conf_path.write_text(head + base + sub.format(path="/tap/kept") + sub.format(path="/tap/new"))
        log = hub.reload()
        assert "subscription /tap/new: started by the reload" in log
        assert "subscription /tap/gone: ended by the reload; 1 subscribers closed" in log
        assert "until a restart" not in log
        gone.sock.settimeout(5)
        while gone.sock.recv(65536):  # what it was sent before, then the end of the stream
            pass
        fresh = RawSubscriber(hub.http_port, "/tap/new")
        assert fresh.head.startswith(b"HTTP/1.1 200 OK")
        send(producer, [Request(b"POST", b"/orders/a", [], b"after")], 1)
        assert [e.data for e in kept.read_until(lambda ev: len(ev) >= 2)] == ["before", "after"]  # same socket
        assert [e.data for e in fresh.read_until(lambda ev: len(ev) >= 1)] == ["after"]
        assert producer.acked == 1 and producer.fatal is None
        for s in (kept, gone, fresh):
            s.sock.close()
        producer.close()
