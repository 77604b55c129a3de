"""What the sinks receive: one JSON record per transition or tracking failure.

Every record has a stable ``id``, ``f"{job_id}:{seq}"``. ``seq`` counts the job's
committed events; the engine resumes each job from its last committed status and
``seq`` (``Poller.track(..., last_status=..., last_seq=...)``), so its own transition
``seq`` is the same number: a transition observed again after a crash, before it was
committed, gets the ID it would have had, and a committed one is never observed again.
Consumers can therefore drop repeats by ID (delivery is at least once). A tracking
failure (404, refused key, expiry, too many errors) takes the next ``seq`` of its job,
so it has an ID of the same form.

Pure: no I/O. The store encodes records once, when it commits them, and every sink
sends those same bytes.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import msgspec

from ..errors import PollerError, RequestError
from ..events import TrackingFailure, Transition
from ..models import JobStatus

__all__ = [
    "FAILURE",
    "TRANSITION",
    "ErrorInfo",
    "EventRecord",
    "decode_record",
    "encode_record",
    "error_info",
    "event_id",
    "failure_record",
    "transition_record",
]

TRANSITION: Final = "transition"
FAILURE: Final = "failure"

RecordType = Literal["transition", "failure"]


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True):
    """Why tracking of a job ended.

    Attributes:
        kind: the exception class (``JobNotFoundError``, ``AuthenticationError``, ...).
        message: its message (the engine keeps secrets out of every message).
        status: the HTTP status, when a response said so.
        retryable: whether the same request could succeed later.
    """

    kind: str
    message: str
    status: int | None = None
    retryable: bool = False


class EventRecord(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One event as the sinks send it (a JSON object).

    Attributes:
        id: ``f"{job_id}:{seq}"``, stable across restarts: drop repeats by it.
        type: ``"transition"`` or ``"failure"``.
        job_id: the job.
        seq: per job: 1 for the first sighting, one more for each event after it.
        observed_at: when the daemon saw it (Unix seconds).
        final: True for the job's last event: a terminal status, or a failure.
        organization_id: the owning organisation, when known.
        previous, current: the statuses of a transition (``previous`` None at first).
        credential: the name of the configured credential the job was added with.
        metadata: the metadata given when the job was added.
        job: a transition's status payload, as the API returned it.
        error: a failure's cause.
    """

    id: str
    type: RecordType
    job_id: str
    seq: int
    observed_at: float
    final: bool = False
    organization_id: str | None = None
    previous: str | None = None
    current: str | None = None
    credential: str | None = None
    metadata: dict[str, Any] | None = None
    job: JobStatus | None = None
    error: ErrorInfo | None = None


_ENCODER: Final = msgspec.json.Encoder()
_DECODER: Final = msgspec.json.Decoder(EventRecord)


def event_id(job_id: str, seq: int) -> str:
    """The stable ID of a job's ``seq``-th event."""
    return f"{job_id}:{seq}"


def error_info(error: PollerError) -> ErrorInfo:
    """The JSON-friendly description of an engine error."""
    status = error.status if isinstance(error, RequestError) else None
    return ErrorInfo(
        kind=type(error).__name__, message=str(error), status=status, retryable=error.retryable
    )


def transition_record(
    transition: Transition,
    *,
    seq: int,
    previous: str | None,
    credential: str | None,
    metadata: dict[str, Any] | None,
) -> EventRecord:
    """The record of an engine transition, as the job's ``seq``-th event after the
    committed status ``previous``, for a job added with ``credential``/``metadata``."""
    return EventRecord(
        id=event_id(transition.job_id, seq),
        type="transition",
        job_id=transition.job_id,
        seq=seq,
        observed_at=transition.observed_at,
        final=transition.current.is_terminal,
        organization_id=transition.organization_id,
        previous=previous,
        current=transition.current.value,
        credential=credential,
        metadata=metadata,
        job=transition.job,
    )


def failure_record(
    failure: TrackingFailure,
    *,
    seq: int,
    credential: str | None,
    metadata: dict[str, Any] | None,
) -> EventRecord:
    """The record of a tracking failure; ``seq`` is one more than the job's last event."""
    return EventRecord(
        id=event_id(failure.job_id, seq),
        type="failure",
        job_id=failure.job_id,
        seq=seq,
        observed_at=failure.observed_at,
        final=True,
        organization_id=failure.organization_id,
        credential=credential,
        metadata=metadata,
        error=error_info(failure.error),
    )


def encode_record(record: EventRecord) -> bytes:
    """Compact JSON, one line (no raw newline can occur inside)."""
    return _ENCODER.encode(record)


def decode_record(body: bytes | str) -> EventRecord:
    """Parse a record (consumers, tests). Raises ``msgspec.DecodeError`` if malformed."""
    return _DECODER.decode(body)
