"""The /healthz body, pure: reasons collected from components, and the status they make."""

from __future__ import annotations

import msgspec

from poller.daemon.health import (
    Backlog,
    Reason,
    collect,
    http_status,
    report,
    sink_reasons,
    store_reasons,
)

BACKLOG = Backlog(uncommitted=0, undelivered={"jsonl": 0})


def test_no_reason_is_ok_any_reason_is_degraded_and_stopping_wins() -> None:
    ok = report(stopping=False, uptime_s=1.23456, tracked=3, backlog=BACKLOG, reasons=[])
    assert (ok.status, http_status(ok), ok.uptime_s) == ("ok", 200, 1.235)
    reason = Reason(component="engine", reason="api_unreachable", message="ConnectError")
    degraded = report(stopping=False, uptime_s=1, tracked=3, backlog=BACKLOG, reasons=[reason])
    assert (degraded.status, http_status(degraded)) == ("degraded", 200)
    stopping = report(stopping=True, uptime_s=1, tracked=3, backlog=BACKLOG, reasons=[reason])
    assert (stopping.status, http_status(stopping)) == ("stopping", 503)


def test_collect_gathers_every_component_in_order() -> None:
    checks = [
        lambda: store_reasons("database or disk is full", uncommitted=7),
        lambda: sink_reasons("jsonl", None, undelivered={"jsonl": 5}),  # healthy
        lambda: sink_reasons("webhook:ab", "delivery failed: HTTP 503", undelivered=None),
    ]
    found = collect(checks)
    assert [(r.component, r.reason, r.backlog) for r in found] == [
        ("store", "write_failing", 7),
        ("sink:webhook:ab", "delivery_failing", None),
    ]
    body = msgspec.json.decode(
        msgspec.json.encode(
            report(stopping=False, uptime_s=0, tracked=0, backlog=BACKLOG, reasons=found)
        )
    )
    assert body["status"] == "degraded"
    assert body["reasons"][1] == {
        "component": "sink:webhook:ab",
        "reason": "delivery_failing",
        "message": "delivery failed: HTTP 503",
    }
    assert body["backlog"] == {"uncommitted": 0, "undelivered": {"jsonl": 0}}


def test_a_failed_sink_with_nothing_left_to_deliver_holds_nothing_up() -> None:
    assert sink_reasons("jsonl", "write failed: EIO", undelivered={"jsonl": 0}) == []
    assert store_reasons(None, uncommitted=10) == []
