"""The private three-node cluster fixture, checked with an independent client (pika).

A quorum queue declared through node 1 has a replica on every node; node 1
(its leader) stops while a publisher on node 2 goes on: every message
confirmed before, during and after is consumed once through node 3, counted
by message id.  Every loop is bounded in count and time, and every pika call
runs under a SIGALRM bound (a publish waits for its confirm with no timeout).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

import pika
import pytest
from test_broker_fixture import connect

from msghub.testing_broker import RabbitBroker
from msghub.testing_cluster import RabbitCluster

QUORUM = {"x-queue-type": "quorum"}


@contextmanager
def bounded(seconds: float) -> Iterator[None]:
    """Raise TimeoutError in the main thread if the block runs longer than ``seconds``."""

    def expire(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def publish(channel: pika.adapters.blocking_connection.BlockingChannel, queue: str, message_id: str) -> None:
    """One persistent message; returns once the broker confirmed it (pika raises on a nack)."""
    channel.basic_publish(
        exchange="", routing_key=queue, body=message_id.encode(), mandatory=True,
        properties=pika.BasicProperties(message_id=message_id, delivery_mode=pika.DeliveryMode.Persistent),
    )


def consume_ids(node: RabbitBroker, queue: str, expected: int, timeout: float = 30.0) -> Counter[str]:
    """Message ids consumed (and acked) from ``queue`` through ``node``: at least ``expected``
    of them, then whatever else arrives within 0.5 s."""
    got: Counter[str] = Counter()
    deadline = time.monotonic() + timeout
    quiet_since: float | None = None
    with connect(node) as connection:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=500)
        for method, properties, _body in channel.consume(queue, inactivity_timeout=0.1):
            now = time.monotonic()
            if method is None:
                if sum(got.values()) >= expected:
                    quiet_since = quiet_since or now
                    if now - quiet_since > 0.5:
                        break
            else:
                quiet_since = None
                got[properties.message_id] += 1
                channel.basic_ack(method.delivery_tag)
            if now > deadline:
                break
        channel.cancel()
    return got


def queue_info(node: RabbitBroker, queue: str) -> dict:
    rows = json.loads(node.ctl("list_queues", "name", "type", "leader", "members", "online", "--formatter", "json"))
    [row] = [r for r in rows if r["name"] == queue]
    return row


def running_nodes(node: RabbitBroker) -> set[str]:
    return set(json.loads(node.ctl("cluster_status", "--formatter", "json"))["running_nodes"])


def test_three_nodes_form_one_cluster_on_loopback(rabbit_cluster: RabbitCluster) -> None:
    names = rabbit_cluster.nodenames
    assert len(set(names)) == 3
    assert len({n.port for n in rabbit_cluster.nodes} | {n.dist_port for n in rabbit_cluster.nodes}) == 6
    for node in rabbit_cluster.nodes:
        assert running_nodes(node) == set(names)
    listeners = json.loads(rabbit_cluster.nodes[0].ctl("status", "--formatter", "json"))["listeners"]
    assert {listener["interface"] for listener in listeners} == {"127.0.0.1"}


def test_quorum_queue_keeps_every_confirmed_message_when_its_leader_node_stops(
    rabbit_cluster: RabbitCluster, record_property: Callable[[str, object], None]
) -> None:
    node1, node2, node3 = rabbit_cluster.nodes
    queue = f"test-quorum-{uuid.uuid4().hex[:12]}"
    before, after = 300, 300
    with bounded(120):
        with connect(node1) as connection:
            connection.channel().queue_declare(queue=queue, durable=True, arguments=QUORUM)
        info = queue_info(node1, queue)
        assert info["type"] == "quorum"
        assert info["leader"] == node1.nodename
        assert sorted(info["members"]) == sorted(rabbit_cluster.nodenames)

        confirmed: list[str] = []
        confirm_times: list[float] = []
        stopped = threading.Event()
        stop_errors: list[BaseException] = []
        stop_took: list[float] = []

        node1_group = node1.pid
        assert node1_group is not None

        def stop_node1() -> None:
            try:
                started = time.monotonic()
                rabbit_cluster.stop_node(0)
                stop_took.append(time.monotonic() - started)
            except BaseException as e:  # reported by the main thread
                stop_errors.append(e)
            finally:
                stopped.set()

        stopper = threading.Thread(target=stop_node1)
        try:
            with connect(node2) as connection:
                channel = connection.channel()
                channel.confirm_delivery()
                for i in range(before):
                    publish(channel, queue, f"m{i}")
                    confirmed.append(f"m{i}")
                stop_started = time.monotonic()
                stopper.start()
                # Publish on through the stop until `after` more are confirmed once it is over.
                limit = time.monotonic() + 60
                after_stop = 0
                i = before
                while after_stop < after and i < 20_000 and time.monotonic() < limit:
                    publish(channel, queue, f"m{i}")
                    confirmed.append(f"m{i}")
                    confirm_times.append(time.monotonic())
                    after_stop += stopped.is_set()
                    i += 1
                stopper.join(30)
                assert not stopper.is_alive()
                assert not stop_errors, stop_errors
                with pytest.raises(ProcessLookupError):  # nothing of node 1 is left
                    os.killpg(node1_group, 0)
                assert after_stop == after, f"only {after_stop} confirms after node 1 stopped"
            # The failover as a publisher sees it: the longest wait for one confirm.
            gaps = [b - a for a, b in zip([stop_started, *confirm_times], confirm_times)]
            record_property("node1_stop_s", round(stop_took[0], 2))
            record_property("longest_confirm_wait_s", round(max(gaps), 3))
            print(f"node 1 stopped in {stop_took[0]:.2f} s; longest confirm wait {max(gaps):.3f} s")
            # Generous for a noisy machine: the election itself takes well under a second here.
            assert max(gaps) < 10, f"a publish through node 2 waited {max(gaps):.1f} s for its confirm"

            info = queue_info(node3, queue)
            assert info["leader"] in (node2.nodename, node3.nodename)
            got = consume_ids(node3, queue, expected=len(confirmed))
            assert set(got) == set(confirmed), (
                f"lost {len(set(confirmed) - set(got))}, unexpected {len(set(got) - set(confirmed))}"
            )
            assert max(got.values()) == 1, f"duplicates: {[m for m, n in got.items() if n > 1][:10]}"
        finally:
            stopper.join(30)
            if not rabbit_cluster.is_running(0):
                rabbit_cluster.start_node(0)

        # Back: node 1 runs in the cluster again and holds its replica.
        assert running_nodes(node1) == set(rabbit_cluster.nodenames)
        deadline = time.monotonic() + 30
        while sorted(queue_info(node1, queue)["online"]) != sorted(rabbit_cluster.nodenames):
            assert time.monotonic() < deadline, "node 1's replica never came back online"
            time.sleep(0.5)
        with connect(node1) as connection:
            channel = connection.channel()
            channel.confirm_delivery()
            publish(channel, queue, "back")
        assert consume_ids(node1, queue, expected=1) == Counter({"back": 1})
        with connect(node1) as connection:
            connection.channel().queue_delete(queue)
