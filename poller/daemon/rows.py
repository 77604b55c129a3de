"""What the store returns: plain rows, decoupled from SQLite (see :mod:`.store`)."""

from __future__ import annotations

from typing import Any

import msgspec

from .records import ErrorInfo

__all__ = ["JobRow", "Pending", "Resume", "StoredEvent"]


class JobRow(msgspec.Struct, frozen=True, kw_only=True):
    """A job as the control API shows it."""

    job_id: str
    status: str
    seq: int
    credential: str | None
    metadata: dict[str, Any] | None
    organization_id: str | None
    error: ErrorInfo | None
    removed: bool
    added_at: float
    updated_at: float


class Resume(msgspec.Struct, frozen=True):
    """What the engine needs to carry on tracking a job."""

    job_id: str
    credential: str | None
    last_status: str | None
    seq: int


class Pending(msgspec.Struct, frozen=True):
    """An event a push sink still has to deliver."""

    rowid: int
    id: str
    job_id: str
    body: bytes
    attempts: int


class StoredEvent(msgspec.Struct, frozen=True):
    """An event of the history (``GET /events``)."""

    rowid: int
    id: str
    type: str
    body: bytes
