"""GET /metrics through prometheus_client: the same names and labels as ever, counters by
org and outcome, histograms, escaping."""

from __future__ import annotations

import re

from poller import Histogram, OrgStats, Stats
from poller.daemon.metrics import (
    DaemonCollector,
    DaemonSnapshot,
    SinkCounters,
    daemon_registry,
    render,
)


def stats(**overrides: object) -> Stats:
    values: dict[str, object] = {
        "tracked": 3,
        "by_status": {"queued": 2, "completed": 1},
        "in_flight": 1,
        "polls": 10,
        "errors": 2,
        "rate_limited": 3,
        "transitions": 4,
        "failures": 1,
        "callback_errors": 0,
        "callbacks_dropped": 0,
        "subscribers": 1,
        "subscriber_overflows": 0,
        "errors_by_kind": {"ServerError": 2},
        "by_org": {
            "org_a": OrgStats(polls=10, errors=2, throttled=3, rate_per_s=12.5),
            'org_"odd"\n': OrgStats(polls=1, errors=0, throttled=0, rate_per_s=None),
        },
        "request_latency": Histogram(bounds=(0.1, 1.0), counts=(3, 1, 1), sum=2.5, count=5),
        "detection_lag": Histogram(bounds=(1.0,), counts=(0, 0), sum=0.0, count=0),
    }
    values.update(overrides)
    return Stats(**values)  # type: ignore[arg-type]


class Engine:
    """An engine as the registry sees one: something with stats()."""

    def stats(self) -> Stats:
        return stats()


def rendered() -> str:
    daemon = DaemonCollector()
    daemon.snapshot = DaemonSnapshot(
        jobs_by_status={"completed": 7, "error": 1},
        backlog={"jsonl": 0, "webhook:abc123": 4},
        sinks=(SinkCounters(name="jsonl", delivered=9, dead_lettered=0, errors=1),),
        outbox_backlog=2,
        sse_clients=1,
    )
    return render(daemon_registry(Engine(), daemon))


def test_polls_by_org_and_outcome() -> None:
    text = rendered()
    assert 'poller_polls_total{org="org_a",outcome="ok"} 5.0' in text
    assert 'poller_polls_total{org="org_a",outcome="error"} 2.0' in text
    assert 'poller_polls_total{org="org_a",outcome="rate_limited"} 3.0' in text
    assert 'poller_rate_limited_total{org="org_a"} 3.0' in text
    assert 'poller_org_rate_per_second{org="org_a"} 12.5' in text
    assert 'poller_request_errors_total{kind="ServerError"} 2.0' in text


def test_histograms_are_cumulative() -> None:
    lines = rendered().splitlines()
    assert 'poller_request_latency_seconds_bucket{le="0.1"} 3.0' in lines
    assert 'poller_request_latency_seconds_bucket{le="1"} 4.0' in lines
    assert 'poller_request_latency_seconds_bucket{le="+Inf"} 5.0' in lines
    assert "poller_request_latency_seconds_sum 2.5" in lines
    assert "poller_request_latency_seconds_count 5.0" in lines
    assert "poller_detection_lag_seconds_count 0.0" in lines
    assert "# TYPE poller_request_latency_seconds histogram" in lines


def test_jobs_sinks_and_gauges() -> None:
    lines = rendered().splitlines()
    assert 'poller_jobs{status="completed"} 7.0' in lines
    assert 'poller_tracked_jobs{status="queued"} 2.0' in lines
    assert 'poller_sink_backlog{sink="webhook:abc123"} 4.0' in lines
    assert 'poller_sink_delivered_total{sink="jsonl"} 9.0' in lines
    assert "poller_outbox_backlog 2.0" in lines
    assert "poller_sse_clients 1.0" in lines
    assert "poller_requests_in_flight 1.0" in lines


def test_label_values_are_escaped() -> None:
    text = rendered()
    assert 'org="org_\\"odd\\"\\n"' in text
    # Every sample line is well-formed: no raw newline inside a label value.
    for line in text.splitlines():
        assert line.startswith(("#", "poller_")), line


def test_every_family_has_help_and_type() -> None:
    lines = rendered().splitlines()
    names = {line.split()[2] for line in lines if line.startswith("# TYPE")}
    helps = {line.split()[2] for line in lines if line.startswith("# HELP")}
    assert names == helps
    assert {"poller_polls_total", "poller_sink_backlog", "poller_jobs"} <= names


# What GET /metrics exposed when it was written by hand (main at 12326e3, every family
# present): each family's type, and the label names of each of its samples. Dashboards
# may use any of them: none may change.
EXPOSED: dict[str, tuple[str, dict[str, frozenset[str]]]] = {
    "poller_api_health": ("gauge", {"poller_api_health": frozenset({"state"})}),
    "poller_callback_errors_total": (
        "counter",
        {"poller_callback_errors_total": frozenset()},
    ),
    "poller_detection_lag_seconds": (
        "histogram",
        {
            "poller_detection_lag_seconds_bucket": frozenset({"le"}),
            "poller_detection_lag_seconds_count": frozenset(),
            "poller_detection_lag_seconds_sum": frozenset(),
        },
    ),
    "poller_jobs": ("gauge", {"poller_jobs": frozenset({"status"})}),
    "poller_org_error_share": ("gauge", {"poller_org_error_share": frozenset({"org"})}),
    "poller_org_health": ("gauge", {"poller_org_health": frozenset({"org", "state"})}),
    "poller_org_rate_per_second": (
        "gauge",
        {"poller_org_rate_per_second": frozenset({"org"})},
    ),
    "poller_outbox_backlog": ("gauge", {"poller_outbox_backlog": frozenset()}),
    "poller_polls_total": ("counter", {"poller_polls_total": frozenset({"org", "outcome"})}),
    "poller_rate_limited_total": ("counter", {"poller_rate_limited_total": frozenset({"org"})}),
    "poller_request_errors_total": (
        "counter",
        {"poller_request_errors_total": frozenset({"kind"})},
    ),
    "poller_request_latency_seconds": (
        "histogram",
        {
            "poller_request_latency_seconds_bucket": frozenset({"le"}),
            "poller_request_latency_seconds_count": frozenset(),
            "poller_request_latency_seconds_sum": frozenset(),
        },
    ),
    "poller_requests_in_flight": ("gauge", {"poller_requests_in_flight": frozenset()}),
    "poller_sink_backlog": ("gauge", {"poller_sink_backlog": frozenset({"sink"})}),
    "poller_sink_dead_lettered_total": (
        "counter",
        {"poller_sink_dead_lettered_total": frozenset({"sink"})},
    ),
    "poller_sink_delivered_total": (
        "counter",
        {"poller_sink_delivered_total": frozenset({"sink"})},
    ),
    "poller_sink_errors_total": ("counter", {"poller_sink_errors_total": frozenset({"sink"})}),
    "poller_sse_clients": ("gauge", {"poller_sse_clients": frozenset()}),
    "poller_tracked_jobs": ("gauge", {"poller_tracked_jobs": frozenset({"status"})}),
    "poller_tracking_failures_total": (
        "counter",
        {"poller_tracking_failures_total": frozenset()},
    ),
    "poller_transitions_total": ("counter", {"poller_transitions_total": frozenset()}),
}


def exposed(text: str) -> dict[str, tuple[str, dict[str, frozenset[str]]]]:
    """Each family of an exposition text: its type, and its samples' label names."""
    families: dict[str, tuple[str, dict[str, frozenset[str]]]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            families[name] = (kind, {})
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? ", line)
        assert match is not None, line
        sample, labels = match.group(1), frozenset(re.findall(r'(\w+)="', match.group(2) or ""))
        family = next(name for name in families if sample.startswith(name))
        families[family][1].setdefault(sample, frozenset())
        families[family][1][sample] |= labels
    return families


def test_every_metric_name_and_label_is_as_it_was() -> None:
    assert exposed(rendered()) == EXPOSED
