"""``GET /metrics``: the engine's and the daemon's counters in Prometheus text format.

Pure: :func:`render` turns snapshots into text (exposition format 0.0.4). Label
values are only organisation IDs (from the API), statuses, outcomes, error class
names and sink names (``jsonl``, ``webhook:<digest>``): never a key or a URL.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Final

import msgspec

from ..events import Histogram, Stats
from ..sched.health import HealthState

__all__ = ["CONTENT_TYPE", "SinkCounters", "render"]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


class SinkCounters(msgspec.Struct, frozen=True, kw_only=True):
    """A push sink's counters since start."""

    name: str
    delivered: int
    dead_lettered: int
    errors: int


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{key}="{_escape(value)}"' for key, value in labels.items())
    return "{" + inner + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class _Text:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(
        self,
        name: str,
        kind: str,
        help: str,
        samples: Iterable[tuple[Mapping[str, str], float]],
    ) -> None:
        self.lines.append(f"# HELP {name} {help}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            self.lines.append(f"{name}{_labels(labels)} {_number(value)}")

    def histogram(self, name: str, help: str, histogram: Histogram) -> None:
        self.lines.append(f"# HELP {name} {help}")
        self.lines.append(f"# TYPE {name} histogram")
        total = 0
        for bound, count in zip(histogram.bounds, histogram.counts, strict=False):
            total += count
            self.lines.append(f'{name}_bucket{{le="{_number(bound)}"}} {total}')
        self.lines.append(f'{name}_bucket{{le="+Inf"}} {histogram.count}')
        self.lines.append(f"{name}_sum {_number(histogram.sum)}")
        self.lines.append(f"{name}_count {histogram.count}")


def render(
    stats: Stats,
    *,
    jobs_by_status: Mapping[str, int],
    backlog: Mapping[str, int],
    sinks: Iterable[SinkCounters],
    outbox_backlog: int,
    sse_clients: int = 0,
) -> str:
    """The exposition text.

    Args:
        stats: the engine's snapshot.
        jobs_by_status: the store's jobs (not removed) by status.
        backlog: undelivered events by sink.
        sinks: each push sink's counters.
        outbox_backlog: events observed but not committed yet.
        sse_clients: open ``/events`` streams.
    """
    out = _Text()
    polls: list[tuple[Mapping[str, str], float]] = []
    for org_id, org in sorted(stats.by_org.items()):
        ok = org.polls - org.errors - org.throttled
        for outcome, count in (("ok", ok), ("error", org.errors), ("rate_limited", org.throttled)):
            polls.append(({"org": org_id, "outcome": outcome}, count))
    out.family(
        "poller_polls_total",
        "counter",
        "Status requests completed, by organisation and outcome.",
        polls,
    )
    out.family(
        "poller_rate_limited_total",
        "counter",
        "429 answers, by organisation.",
        (({"org": org_id}, org.throttled) for org_id, org in sorted(stats.by_org.items())),
    )
    out.family(
        "poller_org_rate_per_second",
        "gauge",
        "Current request budget of each organisation (absent: uncapped).",
        (
            ({"org": org_id}, org.rate_per_s)
            for org_id, org in sorted(stats.by_org.items())
            if org.rate_per_s is not None
        ),
    )
    states = [state.value for state in HealthState]
    out.family(
        "poller_api_health",
        "gauge",
        "The API's state (1 on the current one): ok, throttled, degraded, down, recovering.",
        (({"state": state}, float(stats.api.state == state)) for state in states),
    )
    out.family(
        "poller_org_health",
        "gauge",
        "Each organisation's state (1 on the current one): ok, throttled, degraded, down, "
        "recovering.",
        (
            ({"org": org_id, "state": state}, float(org.health.state == state))
            for org_id, org in sorted(stats.by_org.items())
            for state in states
        ),
    )
    out.family(
        "poller_org_error_share",
        "gauge",
        "Share of each organisation's requests that failed over the last 10 s.",
        (({"org": org_id}, org.health.error_share) for org_id, org in sorted(stats.by_org.items())),
    )
    out.family(
        "poller_request_errors_total",
        "counter",
        "Failed status requests (429s excluded), by error class.",
        (({"kind": kind}, n) for kind, n in sorted(stats.errors_by_kind.items())),
    )
    out.histogram(
        "poller_request_latency_seconds",
        "Seconds per status request, sent to answered.",
        stats.request_latency,
    )
    out.histogram(
        "poller_detection_lag_seconds",
        "Seconds from a change (the payload's own timestamps) to its transition.",
        stats.detection_lag,
    )
    out.family(
        "poller_jobs",
        "gauge",
        "Jobs in the store (removed ones excluded), by last delivered status.",
        (({"status": status}, n) for status, n in sorted(jobs_by_status.items())),
    )
    out.family(
        "poller_tracked_jobs",
        "gauge",
        "Jobs in the engine's table, by last seen status.",
        (({"status": status}, n) for status, n in sorted(stats.by_status.items())),
    )
    scalars = (
        ("poller_requests_in_flight", "gauge", "Status requests under way.", stats.in_flight),
        ("poller_transitions_total", "counter", "Transitions observed.", stats.transitions),
        (
            "poller_tracking_failures_total",
            "counter",
            "Jobs whose tracking failed.",
            stats.failures,
        ),
        (
            "poller_callback_errors_total",
            "counter",
            "Callbacks that raised.",
            stats.callback_errors,
        ),
        ("poller_outbox_backlog", "gauge", "Events observed, not committed yet.", outbox_backlog),
        ("poller_sse_clients", "gauge", "Open /events streams.", sse_clients),
    )
    for name, kind, help, value in scalars:
        out.family(name, kind, help, [({}, value)])
    out.family(
        "poller_sink_backlog",
        "gauge",
        "Committed events a push sink has not delivered yet.",
        (({"sink": sink}, n) for sink, n in sorted(backlog.items())),
    )
    counters = sorted(sinks, key=lambda s: s.name)
    for name, help, field in (
        ("poller_sink_delivered_total", "Events delivered, by sink.", "delivered"),
        ("poller_sink_dead_lettered_total", "Events dead-lettered, by sink.", "dead_lettered"),
        ("poller_sink_errors_total", "Failed delivery attempts, by sink.", "errors"),
    ):
        out.family(name, "counter", help, (({"sink": s.name}, getattr(s, field)) for s in counters))
    return "\n".join(out.lines) + "\n"
