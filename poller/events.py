"""What the engine reports: transitions, tracking failures and statistics."""

from __future__ import annotations

from typing import Any

import msgspec

from .errors import PollerError
from .models import JobStatus, Status

__all__ = [
    "Event",
    "HealthStats",
    "Histogram",
    "OrgStats",
    "Stats",
    "TrackingFailure",
    "Transition",
]


class Transition(msgspec.Struct, frozen=True, kw_only=True):
    """A job's status changed (or was seen for the first time).

    Attributes:
        job_id: the job.
        organization_id: the organisation that owns it.
        previous: the status seen before, None at the first sighting.
        current: the status now.
        job: the payload that showed the change.
        observed_at: when the engine received it (Unix seconds).
        seq: per job, 1 for the first sighting and one more for every transition after it.
    """

    job_id: str
    organization_id: str
    previous: Status | None
    current: Status
    job: JobStatus
    observed_at: float
    seq: int

    @property
    def is_terminal(self) -> bool:
        """True when ``current`` is a terminal status."""
        return self.current.is_terminal


class TrackingFailure(msgspec.Struct, frozen=True, kw_only=True):
    """Tracking of a job ended without a terminal status.

    ``error`` says why: :class:`~poller.errors.JobNotFoundError` (404),
    :class:`~poller.errors.AuthenticationError` or
    :class:`~poller.errors.PermissionDeniedError` (the credential was refused),
    :class:`~poller.errors.TrackingExpiredError`, or the last error after too many
    consecutive failed requests.
    """

    job_id: str
    organization_id: str | None
    error: PollerError
    observed_at: float


Event = Transition | TrackingFailure
"""What a subscription yields."""


class Histogram(msgspec.Struct, frozen=True, kw_only=True):
    """A fixed-bucket histogram (Prometheus style): ``counts[i]`` observations fell at or
    below ``bounds[i]`` and above the bound before it; the last count is above every bound."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float
    count: int


class HealthStats(msgspec.Struct, frozen=True, kw_only=True):
    """How an organisation's requests (or all of them: the API) are faring.

    Attributes:
        state: ``"ok"``; ``"throttled"`` (the server asked to slow down in the last 10 s);
            ``"degraded"`` (10% or more of the requests of the last 10 s failed, 10 at
            least); ``"down"`` (most requests fail: one probe at a time until one is
            answered); ``"recovering"`` (answered again: the rate is ramping back up).
        since: when the current trouble began (its first failed request, Unix seconds);
            None when there is none.
        error_share: the share of requests that failed over the last 10 s.
        recent_errors: failed requests by error class name since ``since``.
        streak: requests failed in a row, up to now.
        last_error: the message of the last failed request since ``since``.
    """

    state: str = "ok"
    since: float | None = None
    error_share: float = 0.0
    recent_errors: dict[str, int] = msgspec.field(default_factory=dict)
    streak: int = 0
    last_error: str | None = None


class OrgStats(msgspec.Struct, frozen=True, kw_only=True):
    """One organisation's counters. ``rate_per_s`` is its budget's current rate (None:
    uncapped); ``throttled`` counts 429s; ``health`` says how its requests fare."""

    polls: int
    errors: int
    throttled: int
    rate_per_s: float | None
    health: HealthStats = msgspec.field(default_factory=HealthStats)


class Stats(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of the engine's counters (see :meth:`poller.Poller.stats`).

    Attributes:
        tracked: jobs in the table (polled ones and terminal ones kept for ``wait``).
        by_status: tracked jobs by last seen status value; ``"pending"`` for never seen.
        in_flight: requests under way.
        polls: status requests completed (any outcome).
        errors: failed requests, 429s excluded.
        rate_limited: 429 answers.
        transitions: transitions emitted.
        failures: jobs whose tracking ended in an error.
        callback_errors: callbacks that raised.
        callbacks_dropped: async callback invocations dropped because their queue was full.
        subscribers: open subscriptions.
        subscriber_overflows: subscriptions ended by an overflow.
        errors_by_kind: failed requests by error class name.
        by_org: counters per organisation ID (``"unknown"`` before the first answer).
        api: how every request together fares (the base URL): ``"down"`` when every
            request failed for a while, with no answer from any organisation.
        request_latency: seconds per status request, sent to answered.
        detection_lag: seconds from a change to its transition, as far as the payload's
            own timestamps tell (``started_at`` for ``in_progress``, ``completed_at`` for
            terminal statuses; whole seconds, from the server's clock).
    """

    tracked: int
    by_status: dict[str, int]
    in_flight: int
    polls: int
    errors: int
    rate_limited: int
    transitions: int
    failures: int
    callback_errors: int
    callbacks_dropped: int
    subscribers: int
    subscriber_overflows: int
    errors_by_kind: dict[str, int]
    by_org: dict[str, OrgStats]
    request_latency: Histogram
    detection_lag: Histogram
    api: HealthStats = msgspec.field(default_factory=HealthStats)

    def to_dict(self) -> dict[str, Any]:
        """The counters as plain builtins (for JSON or metrics)."""
        result: dict[str, Any] = msgspec.to_builtins(self)
        return result
