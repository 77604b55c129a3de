"""What a replica reports about its part in the cluster: ``/healthz`` reasons, the
sinks' backlog, and the ``/metrics`` families of cluster mode (each labelled with the
replica's ID). Pure, but for :func:`sink_backlog`, which reads Redis."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Final

import msgspec
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.exceptions import ResponseError

from ...metrics import by_label
from ..health import Reason
from .client import RedisLink
from .membership import OK, REGISTERING

__all__ = [
    "ClusterCollector",
    "ClusterCounters",
    "lease_reasons",
    "redis_reasons",
    "sink_backlog",
]

_FAMILIES: Final = (
    ("poller_cluster_replicas", "gauge", "Live replicas this replica sees, itself included."),
    ("poller_cluster_partitions", "gauge", "Partitions of the job set this replica polls."),
    ("poller_cluster_jobs", "gauge", "Jobs this replica polls."),
    ("poller_cluster_lease_ok", "gauge", "1 while this replica holds a trusted lease."),
    ("poller_cluster_fences_total", "counter", "Times this replica fenced itself."),
    ("poller_cluster_partitions_taken_total", "counter", "Partitions this replica took."),
    (
        "poller_cluster_partitions_released_total",
        "counter",
        "Partitions this replica released to another.",
    ),
    ("poller_cluster_commits_total", "counter", "Events this replica committed."),
    (
        "poller_cluster_events_dropped_total",
        "counter",
        "Events observed but not committed here (the job was no longer this replica's).",
    ),
    ("poller_cluster_redis_errors_total", "counter", "Calls to Redis that failed."),
)


class ClusterCounters(msgspec.Struct, frozen=True, kw_only=True):
    """A replica's cluster figures, for :class:`ClusterCollector`."""

    replica: str
    namespace: str
    replicas: int
    partitions: int
    jobs: int
    lease_ok: bool
    fences: int
    partitions_taken: int
    partitions_released: int
    commits: int
    events_dropped: int
    redis_errors: int


class ClusterCollector(Collector):
    """The cluster's metric families (each labelled with the replica's ID), from the
    latest :attr:`counters`; none before the first."""

    def __init__(self) -> None:
        self.counters: ClusterCounters | None = None

    def collect(self) -> Iterator[Metric]:
        """The families of :attr:`counters`."""
        counters = self.counters
        if counters is None:
            return
        info = GaugeMetricFamily(
            "poller_replica_info",
            "This replica of the cluster (always 1).",
            labels=["replica", "namespace"],
        )
        info.add_metric([counters.replica, counters.namespace], 1)
        yield info
        values = {
            "poller_cluster_replicas": counters.replicas,
            "poller_cluster_partitions": counters.partitions,
            "poller_cluster_jobs": counters.jobs,
            "poller_cluster_lease_ok": int(counters.lease_ok),
            "poller_cluster_fences_total": counters.fences,
            "poller_cluster_partitions_taken_total": counters.partitions_taken,
            "poller_cluster_partitions_released_total": counters.partitions_released,
            "poller_cluster_commits_total": counters.commits,
            "poller_cluster_events_dropped_total": counters.events_dropped,
            "poller_cluster_redis_errors_total": counters.redis_errors,
        }
        for name, kind, help in _FAMILIES:
            family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            yield by_label(family, name, help, "replica", [(counters.replica, values[name])])


def redis_reasons(error: str | None, *, uncommitted: int) -> list[Reason]:
    """Redis's reason: the replica's last call failed, holding up ``uncommitted`` events."""
    if error is None:
        return []
    return [
        Reason(
            component="redis",
            reason="unreachable",
            message=f"Redis cannot be reached: {error}",
            backlog=uncommitted,
        )
    ]


def lease_reasons(state: str) -> list[Reason]:
    """The lease's reason: the replica is fenced or not registered yet (it polls nothing)."""
    if state == OK:
        return []
    if state == REGISTERING:
        message = "registering with the cluster: no job is polled here yet"
    else:
        message = "this replica could not renew its lease in time: it polls nothing until it "
        message += "registers again"
    return [Reason(component="lease", reason=state, message=message)]


async def sink_backlog(link: RedisLink, sinks: Mapping[str, object]) -> dict[str, int]:
    """Committed events each sink has not acknowledged yet (its group's lag and pending
    entries), cluster-wide; configured sinks are included at zero.

    Raises:
        RedisError: Redis cannot be reached.
    """
    backlog = dict.fromkeys(sinks, 0)
    try:
        groups = await link.redis.xinfo_groups(link.keys.events)
    except ResponseError:  # no stream yet
        return backlog
    for group in groups:
        name = str(group["name"])
        if name in backlog:
            lag = group.get("lag")
            backlog[name] = int(group.get("pending") or 0) + int(lag or 0)
    return backlog
