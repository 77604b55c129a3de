"""Wire models of the Retab jobs API, as msgspec Structs.

The models are tolerant by design: unknown fields are ignored, and an unknown
``status`` or ``endpoint`` value decodes to a member named ``UNKNOWN`` whose
``value`` is the raw string (``status.is_known`` is False). Every field that is
not required by the API has a default, so fields added later never break decoding.

Timestamps are Unix seconds (``int``). Payloads that carry ISO-8601 strings (as
the generated SDK types do) are accepted and converted; see ``poller._decode``.
"""

from __future__ import annotations

__all__ = [
    "Endpoint",
    "Job",
    "JobError",
    "JobId",
    "JobResponse",
    "JobStatus",
    "JobWarning",
    "Status",
]

import enum
from typing import Any, Final, NewType

import msgspec

JobId = NewType("JobId", str)
JobId.__doc__ = """A job ID that :func:`poller.validate_job_id` checked, and the only way to
make one: letters, digits and ``_ - . ~ :``, at most 256 characters, not ``.`` or ``..``.
Whatever holds one may put it in a URL path as it is; every transport may trust it."""


class _OpenStrEnum(enum.StrEnum):
    """A str enum that maps values it does not know to a pseudo-member named UNKNOWN.

    The pseudo-member keeps the raw value (``member.value``) so nothing is lost,
    and it compares equal to that raw string, like every other member.
    """

    @classmethod
    def _missing_(cls, value: object) -> Any:
        if not isinstance(value, str):
            return None
        member = str.__new__(cls, value)
        member._name_ = "UNKNOWN"
        member._value_ = value
        return member

    @property
    def is_known(self) -> bool:
        """False for a value this version of `poller` does not know."""
        return self._name_ != "UNKNOWN"


class Status(_OpenStrEnum):
    """A job's lifecycle status. ``UNKNOWN`` stands for any value not listed here."""

    VALIDATING = "validating"
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    UNKNOWN = "unknown"

    @property
    def is_terminal(self) -> bool:
        """True for completed, failed, cancelled and expired: the job will not change again
        unless it is explicitly retried."""
        return self in TERMINAL


TERMINAL: Final = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.EXPIRED})
"""The terminal statuses (``status in TERMINAL`` is ``status.is_terminal``, without a call)."""


class Endpoint(_OpenStrEnum):
    """The API endpoint a job runs. ``UNKNOWN`` stands for any value not listed here."""

    DOCUMENTS_EXTRACT = "/v1/documents/extract"
    DOCUMENTS_PARSE = "/v1/documents/parse"
    DOCUMENTS_SPLIT = "/v1/documents/split"
    DOCUMENTS_CLASSIFY = "/v1/documents/classify"
    SCHEMAS_GENERATE = "/v1/schemas/generate"
    EDIT_AGENT_FILL = "/v1/edit/agent/fill"
    EDIT_TEMPLATES_FILL = "/v1/edit/templates/fill"
    EDIT_TEMPLATES_GENERATE = "/v1/edit/templates/generate"
    EVALS_EXTRACT_PROCESS = "/v1/evals/extract/process"
    EVALS_SPLIT_PROCESS = "/v1/evals/split/process"
    EVALS_CLASSIFY_PROCESS = "/v1/evals/classify/process"
    EVALS_EXTRACT_EXTRACT = "/v1/evals/extract/extract"
    EVALS_EXTRACT_SPLIT = "/v1/evals/extract/split"
    EXTRACTIONS = "/v1/extractions"
    PARSES = "/v1/parses"
    SPLITS = "/v1/splits"
    PARTITIONS = "/v1/partitions"
    CLASSIFICATIONS = "/v1/classifications"
    EDITS = "/v1/edits"
    FILES_ANALYZE = "/v1/files/analyze"
    UNKNOWN = "unknown"


class JobError(msgspec.Struct, frozen=True, kw_only=True):
    """Why a job failed."""

    code: str
    message: str
    details: Any = None


class JobWarning(msgspec.Struct, frozen=True, kw_only=True):
    """A non-fatal notice attached to a job (for example ``dispatch_delayed``)."""

    code: str
    message: str
    details: Any = None


class JobStatus(msgspec.Struct, frozen=True, kw_only=True):
    """The lifecycle payload of ``GET /v1/jobs/{job_id}/status``."""

    id: str
    status: Status
    endpoint: Endpoint
    created_at: int
    expires_at: int
    organization_id: str
    object: str = "job"
    error: JobError | None = None
    warnings: list[JobWarning] | None = None
    started_at: int | None = None
    completed_at: int | None = None
    metadata: dict[str, Any] | None = None
    cloud_task_name: str | None = None
    cancelled: bool = False
    attempt_count: int = 0
    last_attempt_at: int | None = None
    last_failure_code: str | None = None


class JobResponse(msgspec.Struct, frozen=True, kw_only=True):
    """The stored response of a completed job."""

    status_code: int
    body: Any = None


class Job(JobStatus, frozen=True, kw_only=True):
    """The full job of ``GET /v1/jobs/{job_id}``: the status fields plus request and response."""

    request: dict[str, Any] | None = None
    response: JobResponse | None = None
