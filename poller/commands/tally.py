"""What ``poller watch`` knows of the jobs it watches: pure bookkeeping, fed with events.

:class:`Tally` keeps each job's current status and, once it ended, its
:class:`Outcome`: what ``--json`` prints, and what the views show.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final

import msgspec

from ..daemon.records import error_info
from ..daemon.store import ERROR
from ..errors import PollerError
from ..events import TrackingFailure, Transition

__all__ = ["COMPLETED", "PENDING", "TIMED_OUT", "Outcome", "Tally", "failure_detail"]

COMPLETED: Final = "completed"
TIMED_OUT: Final = "timed_out"
PENDING: Final = "pending"

# The ``code`` of a tracking failure's error: short, stable words for scripts. Other
# errors get their class name in snake case.
_FAILURE_CODES: Final = {
    "JobNotFoundError": "not_found",
    "AuthenticationError": "authentication_failed",
    "PermissionDeniedError": "permission_denied",
    "TrackingExpiredError": "tracking_expired",
    "RateLimitedError": "rate_limited",
    "ServerError": "server_error",
    "ConnectError": "connect_error",
    "ConnectionLostError": "connection_lost",
    "RequestTimeoutError": "request_timeout",
    "DecodeError": "decode_error",
    "UnexpectedStatusError": "unexpected_status",
}


class Outcome(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """How one job ended, as ``--json`` prints it.

    Attributes:
        job_id: the job.
        status: its terminal status; ``error`` when it could not be tracked (the word
            ``poller run``'s ``GET /jobs/ID`` uses); ``timed_out`` at ``--timeout``.
        watched_s: seconds from the start of the watch until the end was seen.
        duration_s: the job's own duration, ``completed_at - created_at`` from its
            timestamps (whole seconds), when both are known.
        organization_id: the owning organisation, when known.
        error: a failed job's ``{code, message}`` from the API; for ``error``, why
            tracking ended: ``code`` (``not_found`` for a 404, ...) and, as ``poller
            run`` records it, ``kind`` (the exception class), ``message``, ``status``
            (HTTP, or null) and ``retryable``.
    """

    job_id: str
    status: str
    watched_s: float
    duration_s: int | None = None
    organization_id: str | None = None
    error: dict[str, Any] | None = None


class Tally:
    """What is known of the watched jobs: pure bookkeeping, fed with engine events.

    Args:
        job_ids: the jobs (duplicates are counted once).
        started_at: the start (Unix seconds), to report each job's elapsed time.
    """

    def __init__(self, job_ids: Sequence[str], started_at: float) -> None:
        self.status: dict[str, str] = dict.fromkeys(job_ids, PENDING)
        self.outcomes: dict[str, Outcome] = {}
        self._started_at = started_at

    @property
    def total(self) -> int:
        """How many jobs are watched."""
        return len(self.status)

    @property
    def finished(self) -> int:
        """How many jobs ended."""
        return len(self.outcomes)

    @property
    def done(self) -> bool:
        """True when every job ended."""
        return len(self.outcomes) == len(self.status)

    def counts(self) -> dict[str, int]:
        """Jobs by current status, most advanced first."""
        counts: dict[str, int] = {}
        for status in self.status.values():
            counts[status] = counts.get(status, 0) + 1
        return dict(sorted(counts.items(), key=lambda item: (_rank(item[0]), item[0])))

    def observe(self, event: Transition | TrackingFailure) -> Outcome | None:
        """Record an event; returns the job's outcome if the event ended it."""
        job_id = event.job_id
        if job_id not in self.status or job_id in self.outcomes:
            return None
        if isinstance(event, Transition):
            self.status[job_id] = event.current.value
            if not event.current.is_terminal:
                return None
            job, error = event.job, event.job.error
            detail = {"code": error.code, "message": error.message} if error else None
            duration_s = None
            if job.completed_at is not None:
                duration_s = max(0, job.completed_at - job.created_at)
            return self._end(event, event.current.value, detail, duration_s)
        self.status[job_id] = ERROR
        return self._end(event, ERROR, failure_detail(event.error), None)

    def _end(
        self,
        event: Transition | TrackingFailure,
        status: str,
        error: dict[str, Any] | None,
        duration_s: int | None,
    ) -> Outcome:
        outcome = Outcome(
            job_id=event.job_id,
            status=status,
            watched_s=self._watched_s(event.observed_at),
            duration_s=duration_s,
            organization_id=event.organization_id,
            error=error,
        )
        self.outcomes[event.job_id] = outcome
        return outcome

    def _watched_s(self, at: float) -> float:
        return round(max(0.0, at - self._started_at), 3)

    def time_out(self, now: float) -> list[Outcome]:
        """End every unfinished job as ``timed_out``."""
        watched_s = self._watched_s(now)
        ended = []
        for job_id in self.status:
            if job_id not in self.outcomes:
                outcome = Outcome(job_id=job_id, status=TIMED_OUT, watched_s=watched_s)
                self.outcomes[job_id] = outcome
                self.status[job_id] = TIMED_OUT
                ended.append(outcome)
        return ended

    @property
    def exit_status(self) -> int:
        """0 if every job completed, else 1."""
        ok = self.done and all(o.status == COMPLETED for o in self.outcomes.values())
        return 0 if ok else 1


def failure_detail(error: PollerError) -> dict[str, Any]:
    """The ``error`` of an outcome whose tracking ended with ``error``: a ``code`` for
    scripts, then the fields ``poller run`` records for it (``kind``, ``message``,
    ``status``, ``retryable``)."""
    kind = type(error).__name__
    code = _FAILURE_CODES.get(kind) or re.sub(r"(?<!^)(?=[A-Z])", "_", kind).lower()
    return {"code": code, **msgspec.structs.asdict(error_info(error))}


_ORDER: Final = (COMPLETED, "failed", "cancelled", "expired", ERROR, TIMED_OUT)


def _rank(status: str) -> int:
    return _ORDER.index(status) if status in _ORDER else len(_ORDER)
