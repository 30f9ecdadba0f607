"""Hub counters, kept as plain ints on the hot path and exported at scrape time.

prometheus-client's own Counter takes a lock per ``inc()``; at a million
messages a second that is the whole budget.  So the data path adds to ints
once per batch and a custom collector turns them into metric families only
when ``/metrics`` is read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

if TYPE_CHECKING:
    from msghub.forward.webhook_deliverer import Deliverer
    from msghub.hub import Hub
    from msghub.push.service import Subscription

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import CollectorRegistry


class HubStats:
    """Counters the ingress protocols update per batch (and per route in it)."""

    def __init__(self) -> None:
        self.connections: dict[str, int] = {}
        self.rejections: dict[tuple[str, int], int] = {}
        self.accepted: dict[str, dict[str, int]] = {}  # route -> ingress -> messages acknowledged
        self.refused: dict[str, int] = {}  # route -> requests it refused (credentials) or its sink refused
        self.decision_hits = 0  # requests routed from a connection's DecisionCache
        self.internal_errors: dict[str, int] = {}  # ingress -> connections ended by a bug of ours (500)

    def route_accepted(self, route: str, ingress: str, n: int) -> None:
        by_ingress = self.accepted.get(route)
        if by_ingress is None:
            by_ingress = self.accepted[route] = {}
        by_ingress[ingress] = by_ingress.get(ingress, 0) + n

    def route_rejected(self, route: str, n: int) -> None:
        self.refused[route] = self.refused.get(route, 0) + n

    def connection_opened(self, ingress: str) -> None:
        self.connections[ingress] = self.connections.get(ingress, 0) + 1

    def connection_closed(self, ingress: str) -> None:
        self.connections[ingress] -= 1

    def internal_error(self, ingress: str) -> None:
        """A connection ended by our own exception: a bug, never counted as the peer's refusal."""
        self.internal_errors[ingress] = self.internal_errors.get(ingress, 0) + 1

    def rejected(self, ingress: str, errors: dict) -> None:
        """``errors`` maps request numbers to tuples whose first item is the status."""
        rejections = self.rejections
        for error in errors.values():
            key = (ingress, error[0])
            rejections[key] = rejections.get(key, 0) + 1


class HubCollector:
    """Reads the hub's counters when Prometheus scrapes."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        hub = self.hub
        accepted = CounterMetricFamily(
            "msghub_messages_accepted", "Messages acknowledged to producers", labels=["ingress", "route"]
        )
        for route in hub.router.routes:
            for ingress, count in sorted(hub.stats.accepted.get(route.name, {}).items()):
                accepted.add_metric([ingress, route.name], count)
        yield accepted
        rejected = CounterMetricFamily(
            "msghub_messages_rejected", "Requests refused, by HTTP status", labels=["ingress", "status"]
        )
        for (ingress, status), count in sorted(hub.stats.rejections.items()):
            rejected.add_metric([ingress, str(status)], count)
        yield rejected
        internal = CounterMetricFamily(
            "msghub_internal_errors", "Connections ended by a bug in the hub (answered 500), not by the peer",
            labels=["ingress"],
        )
        for ingress, count in sorted(hub.stats.internal_errors.items()):
            internal.add_metric([ingress], count)
        yield internal
        connections = GaugeMetricFamily("msghub_connections", "Open producer connections", labels=["ingress"])
        for ingress, count in sorted(hub.stats.connections.items()):
            connections.add_metric([ingress], count)
        yield connections
        depth = GaugeMetricFamily("msghub_spool_depth", "Messages held in the spool", labels=["name"])
        for name, count in sorted(hub.spool.depths().items()):
            depth.add_metric([name], count)
        yield depth
        yield from spool_metrics(hub.spool)
        hits = CounterMetricFamily(
            "msghub_auth_cache_hits",
            "Authentication and routing answers served from a cache instead of recomputed",
        )
        hits.add_metric([], hub.authenticator.cache_hits + hub.stats.decision_hits)
        yield hits
        verifier = getattr(hub, "verifier", None)
        if verifier is not None:
            checks = CounterMetricFamily(
                "msghub_password_checks", "Uncached password checks: run, refused over a budget, or failed (a bug)",
                labels=["result"],
            )
            for result, count in (("run", verifier.checks), ("refused", verifier.refused), ("failed", verifier.errors)):
                checks.add_metric([result], count)
            yield checks
        amqp = getattr(hub, "amqp", None)
        if amqp is not None:
            yield from amqp_metrics(amqp)
        webhooks = getattr(hub, "webhooks", None)
        if webhooks is not None:
            yield from webhook_metrics(webhooks.deliverers)
        push = getattr(hub, "push", None)
        if push is not None:
            yield from push_metrics(push.subscriptions)


def spool_metrics(spool: Any) -> list[Metric]:
    """Commits (and failed ones), how long a commit takes, and the file's size on disk."""
    commits = CounterMetricFamily("msghub_spool_commits", "Spool transactions, by result", labels=["result"])
    commits.add_metric(["ok"], spool.commits)
    commits.add_metric(["failed"], spool.failures)
    seconds = HistogramMetricFamily(
        "msghub_spool_commit_seconds", "From handing a group commit to the writer thread to its result"
    )
    seconds.add_metric([], list(spool.commit_seconds.cumulative()), spool.commit_seconds.sum)
    size = GaugeMetricFamily("msghub_spool_file_bytes", "The spool's database file and its WAL, in bytes")
    size.add_metric([], spool.file_bytes())
    return [commits, seconds, size]


def amqp_metrics(forwarder: Any) -> list[Metric]:
    """The publisher's confirms, nacks and returns, its state (one gauge per state), unconfirmed
    messages and confirm latency."""
    from msghub.forward.amqp import AmqpState

    out: list[Metric] = []
    for name, text, value in (
        ("msghub_amqp_confirms", "Publisher confirms received, acks and nacks (messages settled)", forwarder.confirms),
        ("msghub_amqp_nacks", "Messages the broker refused (basic.nack)", forwarder.nacks),
        ("msghub_amqp_returns", "Messages returned unroutable (mandatory)", forwarder.returns),
        ("msghub_amqp_connect_failures", "Connection attempts to the broker that failed or were refused",
         forwarder.failed_attempts),
    ):
        counter = CounterMetricFamily(name, text)
        counter.add_metric([], value)
        out.append(counter)
    state = GaugeMetricFamily("msghub_amqp_state", "1 for the publisher connection's current state", labels=["state"])
    for s in AmqpState:
        state.add_metric([s.value], 1.0 if s is forwarder.state else 0.0)
    out.append(state)
    unconfirmed = GaugeMetricFamily("msghub_amqp_unconfirmed", "Messages written to the broker, not yet confirmed")
    unconfirmed.add_metric([], forwarder.window.unconfirmed)
    out.append(unconfirmed)
    seconds = HistogramMetricFamily(
        "msghub_amqp_confirm_seconds", "From writing a batch to the broker to its last confirm"
    )
    seconds.add_metric([], list(forwarder.confirm_seconds.cumulative()), forwarder.confirm_seconds.sum)
    out.append(seconds)
    return out


def push_metrics(subscriptions: Iterable[Subscription]) -> list[Metric]:
    """Families from each subscription's plain counters (see msghub.push.service)."""
    open_ = GaugeMetricFamily("msghub_subscribers", "Open subscribers", labels=["subscription"])
    opened = CounterMetricFamily("msghub_subscribers_opened", "Subscribers ever opened", labels=["subscription"])
    gaps = CounterMetricFamily(
        "msghub_subscriber_gaps", "Gap events sent to subscribers that read too slowly", labels=["subscription"]
    )
    for sub in subscriptions:
        open_.add_metric([sub.name], len(sub.open))
        opened.add_metric([sub.name], sub.opened)
        gaps.add_metric([sub.name], sub.gaps + sum(getattr(s, "gaps", 0) for s in sub.open))
    return [open_, opened, gaps]


def webhook_metrics(deliverers: Mapping[str, Deliverer]) -> list[Metric]:
    """Families from each target's ``TargetStats`` (plain ints kept by its deliverer)."""
    from msghub.forward.webhook_state import LATENCY_BUCKETS, STATES

    attempts = CounterMetricFamily(
        "msghub_webhook_attempts", "Webhook delivery attempts, by how they ended", labels=["target", "outcome"]
    )
    latency = HistogramMetricFamily(
        "msghub_webhook_latency_seconds", "Time from sending a webhook to its response", labels=["target"]
    )
    dead = CounterMetricFamily("msghub_webhook_dead", "Messages dead-lettered", labels=["target"])
    disabled = GaugeMetricFamily(
        "msghub_webhook_disabled", "1 while a target is disabled (410, disable_after, msghub-spool disable)",
        labels=["target"],
    )
    state = GaugeMetricFamily(
        "msghub_webhook_target_state", "1 for each target's current state (healthy, retrying, disabled)",
        labels=["target", "state"],
    )
    for name, deliverer in sorted(deliverers.items()):
        for each in STATES:
            state.add_metric([name, each], 1.0 if each == deliverer.state else 0.0)
        stats = deliverer.stats
        for outcome, count in stats.attempts.items():
            attempts.add_metric([name, outcome], count)
        buckets, total = [], 0
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), stats.latency):
            total += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
        latency.add_metric([name], buckets, stats.latency_sum)
        dead.add_metric([name], stats.dead)
        disabled.add_metric([name], 1 if stats.disabled else 0)
    return [attempts, latency, dead, disabled, state]


def make_registry(hub: Hub) -> CollectorRegistry:
    """The hub's families, plus prometheus-client's process (CPU, memory, descriptors) and GC collectors."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HubCollector(hub))
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    return registry
