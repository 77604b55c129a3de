"""Prometheus exposition: counters by org and outcome, histograms, escaping, no secrets."""

from __future__ import annotations

from poller import Histogram, OrgStats, Stats
from poller.daemon.metrics import SinkCounters, render


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


def rendered() -> str:
    return render(
        stats(),
        jobs_by_status={"completed": 7, "error": 1},
        backlog={"jsonl": 0, "webhook:abc123": 4},
        sinks=[SinkCounters(name="jsonl", delivered=9, dead_lettered=0, errors=1)],
        outbox_backlog=2,
        sse_clients=1,
    )


def test_polls_by_org_and_outcome() -> None:
    text = rendered()
    assert 'poller_polls_total{org="org_a",outcome="ok"} 5' in text
    assert 'poller_polls_total{org="org_a",outcome="error"} 2' in text
    assert 'poller_polls_total{org="org_a",outcome="rate_limited"} 3' in text
    assert 'poller_rate_limited_total{org="org_a"} 3' in text
    assert 'poller_org_rate_per_second{org="org_a"} 12.5' in text
    assert 'poller_request_errors_total{kind="ServerError"} 2' in text


def test_histograms_are_cumulative() -> None:
    lines = rendered().splitlines()
    assert 'poller_request_latency_seconds_bucket{le="0.1"} 3' in lines
    assert 'poller_request_latency_seconds_bucket{le="1"} 4' in lines
    assert 'poller_request_latency_seconds_bucket{le="+Inf"} 5' in lines
    assert "poller_request_latency_seconds_sum 2.5" in lines
    assert "poller_request_latency_seconds_count 5" in lines
    assert "poller_detection_lag_seconds_count 0" in lines
    assert "# TYPE poller_request_latency_seconds histogram" in lines


def test_jobs_sinks_and_gauges() -> None:
    lines = rendered().splitlines()
    assert 'poller_jobs{status="completed"} 7' in lines
    assert 'poller_tracked_jobs{status="queued"} 2' in lines
    assert 'poller_sink_backlog{sink="webhook:abc123"} 4' in lines
    assert 'poller_sink_delivered_total{sink="jsonl"} 9' in lines
    assert "poller_outbox_backlog 2" in lines
    assert "poller_sse_clients 1" in lines
    assert "poller_requests_in_flight 1" in lines


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
