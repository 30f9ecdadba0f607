"""One webhook target's policy and state: what an answer means, how fast to send, healthy or not.

Split from ``msghub.forward.webhook_deliverer`` by responsibility: the
deliverer moves messages; these small objects decide what an answer means
(``Outcomes``), when the next attempt may start (``RateLimit``), and what the
target's state is (``TargetHealth``), logging one line per change of state.
"""

from __future__ import annotations

from bisect import bisect_left

from twisted.logger import Logger

from msghub.config_webhooks import WebhookTarget
from msghub.forward.webhook_client import Result

log = Logger()

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
OUTCOMES = ("success", "retry", "timeout", "error", "dead", "disabled")
STATES = ("healthy", "retrying", "disabled")
# Seconds of ``rate`` that may start at once after a pause (at least 2): a
# timer per attempt would cost more, and a timer that fires late must not lose
# the time it was late by.
RATE_BURST = 0.1


class TargetStats:
    """Plain counters per target, updated once per attempt and read at scrape time."""

    def __init__(self) -> None:
        self.attempts = dict.fromkeys(OUTCOMES, 0)
        self.latency = [0] * (len(LATENCY_BUCKETS) + 1)  # per bucket, not cumulative; last is +Inf
        self.latency_sum = 0.0
        self.dead = 0
        self.disabled = False

    def observe(self, seconds: float) -> None:
        self.latency[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds


class Outcomes:
    """A target's ``retry_on``, as a table from status to outcome, built once per target."""

    def __init__(self, target: WebhookTarget) -> None:
        table = ["dead"] * 1000  # 3xx (not followed) and statuses not in retry_on
        for low, high in target.retry_on:
            table[low:high + 1] = ["retry"] * (high + 1 - low)
        table[200:300] = ["success"] * 100
        table[410] = "disabled"
        self.table = table

    def __call__(self, result: Result) -> str:
        status = result.status
        if not status:
            return "timeout" if result.timed_out else "error"
        return self.table[status] if status < 1000 else "dead"


class RateLimit:
    """A token bucket: on average ``rate`` attempts a second, at most ``capacity`` of them at once."""

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.capacity = max(2.0, rate * RATE_BURST)
        self.tokens = self.capacity
        self.at = now

    def wait(self, now: float) -> float:
        """0.0 and one attempt taken, or the seconds until the next may start."""
        tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if tokens >= 1.0:
            self.tokens = max(0.0, tokens - 1.0)
            return 0.0
        self.tokens = tokens
        # At least 1 ms: at a clock of 1.7e9 s, a shorter timer may fire with
        # no time passed (float rounding) and find the bucket as empty as before.
        return max(0.001, (1.0 - tokens) / self.rate)


class TargetHealth:
    """``state`` is one of:

    - ``healthy``: the last attempt that got an answer worth judging succeeded
      (or none was made yet);
    - ``retrying``: attempts are failing and being retried, since ``since``;
      ``error`` is the last failure.  A 2xx moves it back to healthy;
    - ``disabled``: no attempts (a 410, ``msghub-spool disable``, or
      ``disable_after`` seconds of retrying); ``error`` says why.  Only
      enabling leaves it, to healthy.

    Each change is one log line; attempts within a state log nothing.
    A dead letter on a status not in ``retry_on`` judges the message, not
    the target, so it changes no state.
    """

    def __init__(self, name: str, disable_after: float) -> None:
        self.name = name
        self.disable_after = disable_after
        self.state = "healthy"
        self.since = 0.0  # when the current state began
        self.error = ""
        self.failures = 0  # failed attempts while retrying

    def failed(self, now: float, error: str) -> None:
        self.error = error
        if self.state == "healthy":
            self.state, self.since, self.failures = "retrying", now, 0
            log.warn("webhook {target}: retrying: {reason}", target=self.name, reason=error)
        self.failures += 1

    def succeeded(self, now: float) -> None:
        if self.state == "retrying":
            log.info("webhook {target}: recovered after {seconds:.0f} s ({failures} failed attempts)",
                     target=self.name, seconds=now - self.since, failures=self.failures)
            self.state, self.since, self.error = "healthy", now, ""

    def overdue(self, now: float) -> str | None:
        """Why the target should be disabled now (``disable_after`` of retrying), else None."""
        if self.state == "retrying" and self.disable_after and now - self.since >= self.disable_after:
            return f"failing for {now - self.since:.0f} s (disable_after = {self.disable_after:g}); last: {self.error}"
        return None

    def disabled(self, now: float, reason: str) -> None:
        self.state, self.since, self.error = "disabled", now, reason
        log.warn("webhook {target}: disabled ({reason}); its messages stay queued; "
                 "msghub-spool enable {target} resumes it", target=self.name, reason=reason)

    def enabled(self, now: float) -> None:
        self.state, self.since, self.error = "healthy", now, ""
        log.info("webhook {target}: enabled; delivering its queue", target=self.name)
