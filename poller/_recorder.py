"""The engine's counters: requests by outcome and organisation, latency and lag histograms.

Plain synchronous bookkeeping, cheap on every poll, fed by the engine and read by
``Poller.stats()``; ``poller.metrics`` exposes the snapshot to Prometheus. Organisation
IDs come from the API (never a key), so every label is safe to export.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from typing import Final

from .errors import RateLimitedError, RequestError
from .events import Event, HealthStats, Histogram, OrgStats, Transition

__all__ = ["Recorder"]

LATENCY_BOUNDS_S: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LAG_BOUNDS_S: Final = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
UNKNOWN_ORG: Final = "unknown"


class _Histogram:
    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def snapshot(self) -> Histogram:
        return Histogram(
            bounds=self.bounds, counts=tuple(self.counts), sum=self.sum, count=self.count
        )


class _Org:
    __slots__ = ("errors", "polls", "throttled")

    def __init__(self) -> None:
        self.polls = self.errors = self.throttled = 0


class Recorder:
    """Counts what the engine does (see :class:`~poller.events.Stats`)."""

    def __init__(self) -> None:
        self.polls = 0
        self.errors = 0
        self.rate_limited = 0
        self.overflows = 0
        self.errors_by_kind: dict[str, int] = {}
        self._orgs: dict[str, _Org] = {}
        self.latency = _Histogram(LATENCY_BOUNDS_S)
        self.lag = _Histogram(LAG_BOUNDS_S)

    def _org(self, org_id: str | None) -> _Org:
        key = org_id or UNKNOWN_ORG
        org = self._orgs.get(key)
        if org is None:
            org = self._orgs[key] = _Org()
        return org

    def request(self, org_id: str | None, latency_s: float, error: RequestError | None) -> None:
        """One status request finished, in ``latency_s``, with ``error`` or not."""
        self.polls += 1
        # Counted in place, not by latency.observe(): this is the one call every poll
        # makes here, and it makes no other.
        latency = self.latency
        latency.counts[bisect.bisect_left(latency.bounds, latency_s)] += 1
        latency.sum += latency_s
        latency.count += 1
        org = self._orgs.get(org_id or UNKNOWN_ORG)
        if org is None:
            org = self._org(org_id)
        org.polls += 1
        if error is None:
            return
        if isinstance(error, RateLimitedError):
            self.rate_limited += 1
            org.throttled += 1
            return
        self.errors += 1
        org.errors += 1
        kind = type(error).__name__
        self.errors_by_kind[kind] = self.errors_by_kind.get(kind, 0) + 1

    def events(self, events: Iterable[Event]) -> None:
        """Transitions delivered: estimate their detection lag from the payload's own
        timestamps (whole seconds, the server's clock)."""
        for event in events:
            if not isinstance(event, Transition) or event.previous is None:
                continue
            job = event.job
            changed_at = job.completed_at if event.current.is_terminal else None
            if changed_at is None and event.current.value == "in_progress":
                changed_at = job.started_at
            if changed_at is not None:
                self.lag.observe(max(0.0, event.observed_at - changed_at))

    def by_org(
        self,
        rate_of: Callable[[str], float | None],
        health_of: Callable[[str], HealthStats | None],
    ) -> dict[str, OrgStats]:
        """Per-organisation counters; ``rate_of`` gives each one's current budget rate,
        ``health_of`` how its requests fare (None: not known)."""
        return {
            org_id: OrgStats(
                polls=org.polls,
                errors=org.errors,
                throttled=org.throttled,
                rate_per_s=rate_of(org_id),
                health=health_of(org_id) or HealthStats(),
            )
            for org_id, org in self._orgs.items()
        }
