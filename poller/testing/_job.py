"""One simulated job: its timeline of status changes, and the payloads derived from it.

A job holds no timer. Its status at time ``t`` is read from its timeline by
bisection, and every other field (``started_at``, ``attempt_count``, ``error``...)
by one walk over the changes that happened by ``t``. Timelines hold a handful of
changes per attempt, so the walk is cheap, and nothing has to run when a job
changes status: a million idle jobs cost memory only.
"""

from __future__ import annotations

__all__ = ["TIMESTAMP_FORMATS", "JobView", "SimJob", "TimestampFormat"]

import bisect
import datetime as dt
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from ._lifecycle import TERMINAL_STATUSES, Change

TimestampFormat = Literal["unix", "iso"]


def _unix(at: float) -> int:
    return math.floor(at)


def _iso(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).isoformat().replace("+00:00", "Z")


TIMESTAMP_FORMATS: Final[dict[TimestampFormat, Callable[[float], int | str]]] = {
    "unix": _unix,
    "iso": _iso,
}


@dataclass(slots=True, frozen=True)
class JobView:
    """The lifecycle fields of a job at one instant."""

    status: str
    attempt: int  # 0 for the first attempt, +1 per retry
    dispatched: bool  # past validation: the job has a cloud task
    started_at: float | None
    completed_at: float | None
    attempt_count: int
    last_attempt_at: float | None
    error: dict[str, Any] | None
    last_failure_code: str | None
    cancelled: bool


@dataclass(slots=True, eq=False)
class SimJob:
    """A job's identity and timeline.

    ``errors[k]`` is the error attempt ``k`` reports if it fails; a script holding
    several attempts uses its last entry for the later ones.
    """

    id: str
    org_id: str
    endpoint: str
    created_at: float
    ttl_s: float
    expires_at: float
    timeline: list[Change]
    errors: list[dict[str, Any]]
    metadata: dict[str, str] | None = None
    request: dict[str, Any] | None = None
    extra_phase: str | None = None
    requests_served: int = 0  # the n of the fault decision for the next GET
    _times: list[float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._times = [c.at for c in self.timeline]

    def changes_until(self, t: float) -> list[Change]:
        """The changes that happened by ``t``, the expiry included once ``t`` reaches it."""
        n = min(
            bisect.bisect_right(self._times, t), bisect.bisect_left(self._times, self.expires_at)
        )
        past = self.timeline[:n]
        if t >= self.expires_at and (not past or past[-1].status != "expired"):
            past.append(Change("expired", self.expires_at))
        return past

    def rewrite(self, now: float, future: Sequence[Change], *, expires_at: float) -> None:
        """Keep the past as of ``now``, replace the rest of the timeline with ``future``."""
        self.timeline = [*self.changes_until(now), *future]
        self._times = [c.at for c in self.timeline]
        self.expires_at = expires_at

    def view(self, now: float) -> JobView:
        """The lifecycle fields at ``now``; before the first change, the first status."""
        changes = self.changes_until(now) or self.timeline[:1]
        status = ""
        attempt = attempt_count = 0
        started_at = completed_at = last_attempt_at = None
        failure_code = None
        failed = cancelled = dispatched = False
        for change in changes:
            if status in TERMINAL_STATUSES and change.status not in TERMINAL_STATUSES:
                # Leaving a terminal status only happens through a retry: a new attempt.
                attempt += 1
                started_at = completed_at = None
                failed = cancelled = False
            status = change.status
            dispatched = dispatched or status != "validating"
            if status == "in_progress":
                attempt_count += 1
                last_attempt_at = change.at
                started_at = change.at if started_at is None else started_at
            elif status in TERMINAL_STATUSES and completed_at is None:
                completed_at = change.at
            if status == "failed":
                failed = True
                failure_code = self._error(attempt)["code"]
            cancelled = cancelled or status == "cancelled"
        return JobView(
            status=status,
            attempt=attempt,
            dispatched=dispatched,
            started_at=started_at,
            completed_at=completed_at,
            attempt_count=attempt_count,
            last_attempt_at=last_attempt_at,
            error=self._error(attempt) if failed else None,
            last_failure_code=failure_code,
            cancelled=cancelled,
        )

    def _error(self, attempt: int) -> dict[str, Any]:
        return self.errors[min(attempt, len(self.errors) - 1)]

    def status_payload(self, view: JobView, ts: Callable[[float], int | str]) -> dict[str, Any]:
        """The body of ``GET /v1/jobs/{id}/status``, fields in the order of the reference."""
        return {
            "id": self.id,
            "object": "job",
            "status": view.status,
            "endpoint": self.endpoint,
            "error": view.error,
            "warnings": None,
            "created_at": ts(self.created_at),
            "started_at": _opt(ts, view.started_at),
            "completed_at": _opt(ts, view.completed_at),
            "expires_at": ts(self.expires_at),
            "organization_id": self.org_id,
            "metadata": self.metadata,
            "cloud_task_name": f"jobs-{self.id}-{view.attempt + 1}" if view.dispatched else None,
            "cancelled": view.cancelled,
            "attempt_count": view.attempt_count,
            "last_attempt_at": _opt(ts, view.last_attempt_at),
            "last_failure_code": view.last_failure_code,
        }

    def full_payload(
        self,
        view: JobView,
        ts: Callable[[float], int | str],
        *,
        include_request: bool,
        include_response: bool,
    ) -> dict[str, Any]:
        """The body of ``GET /v1/jobs/{id}``: the status fields, ``request`` and ``response``."""
        payload = self.status_payload(view, ts)
        payload["request"] = self._request() if include_request else None
        payload["response"] = (
            self._response() if include_response and view.status == "completed" else None
        )
        return payload

    def _request(self) -> dict[str, Any]:
        if self.request is not None:
            return self.request
        # Jobs made by add_job carry no request: synthesise a plausible one on demand,
        # rather than store a dict for each of a million jobs.
        return {
            "document": {"filename": f"{self.id}.pdf", "url": f"https://files.invalid/{self.id}"},
            "model": "retab-small",
        }

    def _response(self) -> dict[str, Any]:
        return {
            "status_code": 200,
            "body": {"object": "result", "job_id": self.id, "output": {"pages": 3}},
        }


def _opt(ts: Callable[[float], int | str], at: float | None) -> int | str | None:
    return None if at is None else ts(at)
