"""A latency histogram kept as plain ints, for counters read only when ``/metrics`` is scraped.

prometheus-client's own Histogram takes a lock per ``observe``; this one is
a list indexed by ``bisect`` on the one thread that updates it.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Iterator

SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    """Counts per bucket (not cumulative; the last is +Inf) and their sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = SECONDS_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> Iterator[tuple[str, int]]:
        """(upper bound as Prometheus writes it, observations at or below it), ``+Inf`` last."""
        total = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts):
            total += count
            yield ("+Inf" if bound == float("inf") else repr(bound), total)
