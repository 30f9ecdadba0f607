"""A private RabbitMQ cluster on one machine, for integration tests.

``RabbitCluster`` runs ``size`` ``RabbitBroker`` nodes (``msghub-PORT@localhost``,
each with its own AMQP and distribution ports, data and log directories) that
share one epmd and one Erlang cookie, all on loopback.  The nodes boot in
parallel as single-node clusters; then every other node leaves its own and
joins the first (``stop_app``, ``join_cluster``, ``start_app``).  Every wait is
bounded; a failure raises ``BrokerError`` with the nodes' log tails.
"""

from __future__ import annotations

import json
import secrets
import string
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, TypeVar

from msghub.testing_broker import BrokerError, RabbitBroker, free_ports, log_tail, start_epmd, terminate

T = TypeVar("T")


def _on_each(call: Callable[[RabbitBroker], T], nodes: list[RabbitBroker]) -> list[T]:
    """``call(node)`` for every node at once, in threads; the results in order, or the first error."""
    with ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
        return list(pool.map(call, nodes))


class RabbitCluster:
    """``size`` private RabbitMQ nodes under ``workdir``, clustered; ``nodes[0]`` is the seed."""

    def __init__(self, workdir: Path, size: int = 3) -> None:
        if size < 1:
            raise ValueError(f"a cluster needs at least one node, not {size}")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        ports = free_ports(1 + 2 * size)  # one draw, so no two nodes pick the same port
        self.epmd_port = ports[0]
        cookie = "".join(secrets.choice(string.ascii_uppercase) for _ in range(20))
        self.nodes = [
            RabbitBroker(
                self.workdir / f"node{i + 1}",
                ports=(ports[1 + 2 * i], ports[2 + 2 * i], self.epmd_port),
                shared_epmd=True,
                cookie=cookie,
            )
            for i in range(size)
        ]
        self._epmd: subprocess.Popen[bytes] | None = None
        self._running = [False] * size

    @property
    def nodenames(self) -> list[str]:
        return [node.nodename for node in self.nodes]

    def start(self, timeout: float = 120.0) -> "RabbitCluster":
        """Boot every node (in parallel), join them to ``nodes[0]``, wait until all run in one cluster."""
        deadline = time.monotonic() + timeout
        try:
            if self._epmd is None:
                self._epmd = start_epmd(self.epmd_port, self.workdir / "epmd.log", self.workdir, deadline)
            _on_each(lambda node: node.start(deadline - time.monotonic()), self.nodes)
            self._running = [True] * len(self.nodes)
            _on_each(lambda node: self._join(node, deadline), self.nodes[1:])
            self.wait_running(deadline - time.monotonic())
        except BaseException:
            self.stop()
            raise
        return self

    def _join(self, node: RabbitBroker, deadline: float) -> None:
        seed = self.nodes[0].nodename
        if seed in self._running_nodes(node, deadline):
            return  # data from an earlier start: already a member
        # A fresh node is a cluster of one; joining resets it, so its app stops first.
        node.ctl("stop_app", timeout=self._left(deadline))
        node.ctl("join_cluster", seed, timeout=self._left(deadline))
        node.ctl("start_app", timeout=self._left(deadline))

    @staticmethod
    def _left(deadline: float) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise BrokerError("cluster not ready in time")
        return left

    def _running_nodes(self, node: RabbitBroker, deadline: float) -> set[str]:
        """The running nodes of the cluster as ``node`` sees it."""
        timeout = min(30.0, self._left(deadline))
        status = json.loads(node.ctl("cluster_status", "--formatter", "json", timeout=timeout))
        return set(status.get("running_nodes", []))

    def wait_running(self, timeout: float = 60.0) -> None:
        """Return once every started node sees exactly the started nodes running."""
        deadline = time.monotonic() + timeout
        up = [node for node, running in zip(self.nodes, self._running) if running]
        want = {node.nodename for node in up}
        while True:
            try:
                # One rabbitmqctl takes ~0.5 s to boot its own VM: ask all nodes at once.
                seen = _on_each(lambda node: self._running_nodes(node, deadline), up)
            except BrokerError:
                seen = []
            if seen and all(s == want for s in seen):
                return
            if time.monotonic() > deadline:
                raise BrokerError(f"cluster never showed {sorted(want)} running; saw {seen}\n{self.logs()}")
            time.sleep(0.2)

    def is_running(self, i: int) -> bool:
        """Whether ``nodes[i]`` was started and not stopped since."""
        return self._running[i]

    def stop_node(self, i: int, timeout: float = 30.0) -> None:
        """Stop ``nodes[i]`` cleanly (SIGTERM); the others go on as a smaller cluster."""
        self.nodes[i].stop(timeout)
        self._running[i] = False

    def start_node(self, i: int, timeout: float = 90.0) -> None:
        """Start ``nodes[i]`` again (same ports and data); return once the whole cluster sees it."""
        deadline = time.monotonic() + timeout
        self.nodes[i].start(timeout)
        self._running[i] = True
        self.wait_running(deadline - time.monotonic())

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every node (in parallel) and the epmd; safe to call twice."""
        _on_each(lambda node: node.stop(timeout), self.nodes)
        self._running = [False] * len(self.nodes)
        if self._epmd is not None:
            epmd, self._epmd = self._epmd, None
            terminate(epmd, 5)

    def logs(self) -> str:
        """Every node's log tails, then the shared epmd's output."""
        return "\n".join([*(node.logs() for node in self.nodes), log_tail(self.workdir / "epmd.log")])

    def __enter__(self) -> "RabbitCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
