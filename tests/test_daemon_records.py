"""Event records: stable IDs, the JSON sinks receive, unknown statuses kept."""

from __future__ import annotations

import msgspec

from poller import JobStatus, RateLimitedError, Status, TrackingFailure, Transition
from poller.daemon.records import (
    decode_record,
    encode_record,
    event_id,
    failure_record,
    transition_record,
)


def payload(status: str) -> JobStatus:
    return msgspec.json.decode(
        msgspec.json.encode(
            {
                "id": "job_a",
                "status": status,
                "endpoint": "/v1/unheard/of",
                "created_at": 1,
                "expires_at": 2,
                "organization_id": "org_a",
            }
        ),
        type=JobStatus,
    )


def test_transition_record_round_trips() -> None:
    transition = Transition(
        job_id="job_a",
        organization_id="org_a",
        previous=Status("queued"),
        current=Status("completed"),
        job=payload("completed"),
        observed_at=12.25,
        seq=3,
    )
    record = transition_record(
        transition, seq=3, previous="queued", credential="acme", metadata={"batch": 1}
    )
    assert record.id == event_id("job_a", 3) == "job_a:3"
    body = encode_record(record)
    assert b"\n" not in body
    decoded = msgspec.json.decode(body)
    assert decoded["type"] == "transition"
    assert decoded["final"] is True
    assert (decoded["previous"], decoded["current"]) == ("queued", "completed")
    assert decoded["job"]["endpoint"] == "/v1/unheard/of"
    assert decode_record(body) == record


def test_unknown_status_keeps_its_value_and_is_not_final() -> None:
    transition = Transition(
        job_id="job_a",
        organization_id="org_a",
        previous=None,
        current=Status("rehydrating"),
        job=payload("rehydrating"),
        observed_at=1.0,
        seq=1,
    )
    record = transition_record(transition, seq=1, previous=None, credential=None, metadata=None)
    decoded = msgspec.json.decode(encode_record(record))
    assert decoded["current"] == "rehydrating"
    assert "final" not in decoded  # false is omitted
    assert "previous" not in decoded and "credential" not in decoded


def test_failure_record() -> None:
    error = RateLimitedError("too many", job_id="job_a", status=429, retry_after_s=1.0)
    failure = TrackingFailure(job_id="job_a", organization_id=None, error=error, observed_at=5.0)
    record = failure_record(failure, seq=4, credential=None, metadata=None)
    decoded = msgspec.json.decode(encode_record(record))
    assert decoded["id"] == "job_a:4"
    assert decoded["type"] == "failure" and decoded["final"] is True
    assert decoded["error"] == {
        "kind": "RateLimitedError",
        "message": str(error),
        "status": 429,
        "retryable": True,
    }
