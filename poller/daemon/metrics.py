"""``GET /metrics``: the daemon's registry, the engine's metrics and its own.

The daemon serves one ``prometheus_client`` registry holding the engine's collector
(:func:`poller.metrics.collector`) and :class:`DaemonCollector`: jobs in the store,
what the push sinks delivered and have yet to, the outbox, ``/events`` streams. The
store is read asynchronously, so each scrape first takes a :class:`DaemonSnapshot`,
then renders the registry (exposition format 0.0.4). Label values are only
organisation IDs (from the API), statuses, outcomes, error class names and sink names
(``jsonl``, ``webhook:<digest>``): never a key or a URL.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Final

import msgspec
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..metrics import HasStats, by_label, collector

__all__ = [
    "CONTENT_TYPE",
    "DaemonCollector",
    "DaemonSnapshot",
    "SinkCounters",
    "daemon_registry",
    "render",
]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
"""What ``generate_latest`` writes: the classic text format."""


class SinkCounters(msgspec.Struct, frozen=True, kw_only=True):
    """A push sink's counters since start."""

    name: str
    delivered: int
    dead_lettered: int
    errors: int


class DaemonSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """The daemon's own numbers at a scrape.

    Attributes:
        jobs_by_status: the store's jobs (not removed) by status.
        backlog: undelivered events by sink.
        sinks: each push sink's counters.
        outbox_backlog: events observed but not committed yet.
        sse_clients: open ``/events`` streams.
    """

    jobs_by_status: Mapping[str, int] = msgspec.field(default_factory=dict)
    backlog: Mapping[str, int] = msgspec.field(default_factory=dict)
    sinks: tuple[SinkCounters, ...] = ()
    outbox_backlog: int = 0
    sse_clients: int = 0


class DaemonCollector(Collector):
    """The daemon's metric families, from the latest :attr:`snapshot`."""

    def __init__(self) -> None:
        self.snapshot = DaemonSnapshot()

    def collect(self) -> Iterator[Metric]:
        """The families of :attr:`snapshot`."""
        snapshot = self.snapshot
        yield by_label(
            GaugeMetricFamily,
            "poller_jobs",
            "Jobs in the store (removed ones excluded), by last delivered status.",
            "status",
            sorted(snapshot.jobs_by_status.items()),
        )
        yield GaugeMetricFamily(
            "poller_outbox_backlog",
            "Events observed, not committed yet.",
            value=snapshot.outbox_backlog,
        )
        yield GaugeMetricFamily(
            "poller_sse_clients", "Open /events streams.", value=snapshot.sse_clients
        )
        yield by_label(
            GaugeMetricFamily,
            "poller_sink_backlog",
            "Committed events a push sink has not delivered yet.",
            "sink",
            sorted(snapshot.backlog.items()),
        )
        counters = sorted(snapshot.sinks, key=lambda counter: counter.name)
        for name, help, field in (
            ("poller_sink_delivered_total", "Events delivered, by sink.", "delivered"),
            ("poller_sink_dead_lettered_total", "Events dead-lettered, by sink.", "dead_lettered"),
            ("poller_sink_errors_total", "Failed delivery attempts, by sink.", "errors"),
        ):
            values = [(counter.name, getattr(counter, field)) for counter in counters]
            yield by_label(CounterMetricFamily, name, help, "sink", values)


def daemon_registry(engine: HasStats, daemon: DaemonCollector) -> CollectorRegistry:
    """The registry ``GET /metrics`` serves: the engine's collector and the daemon's."""
    registry = CollectorRegistry()
    registry.register(collector(engine))
    registry.register(daemon)
    return registry


def render(registry: CollectorRegistry) -> str:
    """The exposition text of ``registry`` (:data:`CONTENT_TYPE`)."""
    return generate_latest(registry).decode()
