"""An engine's metrics for Prometheus, through ``prometheus_client``.

:func:`collector` gives a collector to register in your own registry::

    registry = prometheus_client.CollectorRegistry()
    registry.register(poller.metrics.collector(p))

Each scrape reads one :meth:`Poller.stats() <poller.Poller.stats>` snapshot. Collect
in the engine's own thread (a ``Poller``'s event loop: an aiohttp or ASGI handler
calling ``generate_latest``); a ``BlockingPoller``'s ``stats()`` may be called from any
thread. The counting itself stays in the engine (plain integers, cheap on every poll);
only the exposition is ``prometheus_client``'s.

Label values are organisation IDs (from the API, never a key), statuses, outcomes and
error class names: nothing secret.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .events import Histogram, Stats
from .sched.health import HealthState

__all__ = ["EngineCollector", "HasStats", "by_label", "collector", "histogram"]


class HasStats(Protocol):
    """An engine: :class:`~poller.Poller` or :class:`~poller.BlockingPoller`."""

    def stats(self) -> Stats:
        """A snapshot of its counters."""
        ...


def collector(engine: HasStats) -> EngineCollector:
    """A ``prometheus_client`` collector of ``engine``'s metrics, for
    ``registry.register(...)``: requests by organisation and outcome, 429s, budgets,
    health of the API and of each organisation, errors by kind, latency and detection
    lag histograms, tracked jobs by status, transitions and failures."""
    return EngineCollector(engine.stats)


class EngineCollector(Collector):
    """Collects an engine's metrics from its stats snapshot (see :func:`collector`)."""

    def __init__(self, stats: Callable[[], Stats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        """The engine's metric families, from one snapshot."""
        stats = self._stats()
        orgs = sorted(stats.by_org.items())
        polls = CounterMetricFamily(
            "poller_polls_total",
            "Status requests completed, by organisation and outcome.",
            labels=["org", "outcome"],
        )
        for org_id, org in orgs:
            ok = org.polls - org.errors - org.throttled
            for outcome, count in (
                ("ok", ok),
                ("error", org.errors),
                ("rate_limited", org.throttled),
            ):
                polls.add_metric([org_id, outcome], count)
        yield polls
        yield by_label(
            CounterMetricFamily,
            "poller_rate_limited_total",
            "429 answers, by organisation.",
            "org",
            [(org_id, org.throttled) for org_id, org in orgs],
        )
        yield by_label(
            GaugeMetricFamily,
            "poller_org_rate_per_second",
            "Current request budget of each organisation (absent: uncapped).",
            "org",
            [(org_id, org.rate_per_s) for org_id, org in orgs if org.rate_per_s is not None],
        )
        states = [state.value for state in HealthState]
        yield by_label(
            GaugeMetricFamily,
            "poller_api_health",
            "The API's state (1 on the current one): ok, throttled, degraded, down, recovering.",
            "state",
            [(state, float(stats.api.state == state)) for state in states],
        )
        health = GaugeMetricFamily(
            "poller_org_health",
            "Each organisation's state (1 on the current one): ok, throttled, degraded, down, "
            "recovering.",
            labels=["org", "state"],
        )
        for org_id, org in orgs:
            for state in states:
                health.add_metric([org_id, state], float(org.health.state == state))
        yield health
        yield by_label(
            GaugeMetricFamily,
            "poller_org_error_share",
            "Share of each organisation's requests that failed over the last 10 s.",
            "org",
            [(org_id, org.health.error_share) for org_id, org in orgs],
        )
        yield by_label(
            CounterMetricFamily,
            "poller_request_errors_total",
            "Failed status requests (429s excluded), by error class.",
            "kind",
            sorted(stats.errors_by_kind.items()),
        )
        yield histogram(
            "poller_request_latency_seconds",
            "Seconds per status request, sent to answered.",
            stats.request_latency,
        )
        yield histogram(
            "poller_detection_lag_seconds",
            "Seconds from a change (the payload's own timestamps) to its transition.",
            stats.detection_lag,
        )
        yield by_label(
            GaugeMetricFamily,
            "poller_tracked_jobs",
            "Jobs in the engine's table, by last seen status.",
            "status",
            sorted(stats.by_status.items()),
        )
        yield GaugeMetricFamily(
            "poller_requests_in_flight", "Status requests under way.", value=stats.in_flight
        )
        for name, help, value in (
            ("poller_transitions_total", "Transitions observed.", stats.transitions),
            ("poller_tracking_failures_total", "Jobs whose tracking failed.", stats.failures),
            ("poller_callback_errors_total", "Callbacks that raised.", stats.callback_errors),
        ):
            yield CounterMetricFamily(name, help, value=value)


def by_label(
    family: type[CounterMetricFamily | GaugeMetricFamily],
    name: str,
    help: str,
    label: str,
    values: Iterable[tuple[str, float]],
) -> Metric:
    """A counter or gauge family with one label: a sample per ``(label value, value)``."""
    metric = family(name, help, labels=[label])
    for label_value, value in values:
        metric.add_metric([label_value], value)
    return metric


def histogram(name: str, help: str, data: Histogram) -> HistogramMetricFamily:
    """A histogram family from a :class:`~poller.events.Histogram` snapshot (its counts
    are per bucket; Prometheus' are cumulative)."""
    buckets: list[tuple[str, float]] = []
    total = 0
    for bound, count in zip(data.bounds, data.counts, strict=False):
        total += count
        buckets.append((_bound(bound), total))
    buckets.append(("+Inf", data.count))
    return HistogramMetricFamily(name, help, buckets=buckets, sum_value=data.sum)


def _bound(value: float) -> str:
    """A bucket's ``le``, as it always read: ``1`` rather than ``1.0``."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))
