"""The job set in Redis: what the control API reads and changes, from any replica.

:class:`ClusterJobs` is the cluster's :class:`~poller.daemon.api.JobIntake` and
:class:`~poller.daemon.api.JobsView`: ``POST /jobs`` commits jobs with the ``ADD``
script (which publishes them for their owners), ``DELETE`` with ``REMOVE``; the
listing pages a sorted set by job ID (``<p>jobs``, or ``<p>status:<s>`` when
filtered: one ``ZRANGEBYLEX`` and one ``HMGET`` per job, whatever the size of the
set) and answers the same from every replica. The status sets cost the commit
script about 3 µs an event (18 µs against 15 µs, in batches of 500); filtering
while paging the whole set instead reads every job: for a page of 1,000 completed
jobs among 20,000 (5% completed), 246 ms against 13 ms, growing with the set.
Jobs keep the *name* of their credential, never its key. When Redis cannot be
reached, a call raises :class:`~poller.daemon.intake.IntakeError` 503
``store_unavailable``.

It also reads jobs for their owner: :meth:`ClusterJobs.states` (where to resume each
one) and :meth:`ClusterJobs.slot_jobs` (the jobs of partitions).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

import msgspec
from redis.exceptions import RedisError

from ..intake import STORE_UNAVAILABLE, AddResult, IntakeError, check_add
from ..records import ErrorInfo
from ..rows import JobRow
from .client import RedisLink
from .keys import slot_of

__all__ = ["ClusterJobs", "JobState"]

_ADD_BATCH: Final = 1000
_ROW_FIELDS: Final = (
    "status",
    "seq",
    "credential",
    "metadata",
    "org",
    "error",
    "removed",
    "added_at",
    "updated_at",
)
_STATE_FIELDS: Final = ("status", "removed", "last_status", "seq", "gen", "credential", "metadata")
_DONE: Final = frozenset({"completed", "failed", "cancelled", "expired", "error"})
_ERROR_DECODER: Final = msgspec.json.Decoder(ErrorInfo)
_METADATA_DECODER: Final = msgspec.json.Decoder(dict[str, Any])


@dataclass(slots=True)
class JobState:
    """Where its owner resumes a job: its generation, ``seq`` and last API status, with
    the credential name and metadata its records carry. ``active``: still to poll (in
    the list, not finished, not failed)."""

    gen: int
    seq: int
    last_status: str | None
    credential: str | None
    metadata: dict[str, Any] | None
    active: bool


def _unavailable(exc: RedisError) -> IntakeError:
    return IntakeError(
        503, STORE_UNAVAILABLE, f"Redis cannot be reached ({type(exc).__name__}); try again later"
    )


class ClusterJobs:
    """The job set (see the module docstring).

    Args:
        link: the Redis connections.
        credentials: the names of the configured credentials.
        default_key: whether a default API key is configured.
    """

    def __init__(self, link: RedisLink, *, credentials: Collection[str], default_key: bool) -> None:
        self._link = link
        self._keys = link.keys
        self._credentials = frozenset(credentials)
        self._default_key = default_key
        self.accepting = True

    # -- intake ------------------------------------------------------------------------

    async def add(
        self,
        job_ids: Sequence[str],
        *,
        credential: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> AddResult:
        """Validate, then commit to Redis; the jobs' owners track them.

        Raises:
            IntakeError: as :meth:`poller.daemon.intake.Intake.add`; 503
                ``store_unavailable`` when Redis cannot be reached.
        """
        if not self.accepting:
            raise IntakeError(503, "shutting_down", "the daemon is shutting down")
        encoded = check_add(
            job_ids,
            credential,
            metadata,
            credentials=self._credentials,
            default_key=self._default_key,
        )
        unique = list(dict.fromkeys(job_ids))
        existing: list[str] = []
        try:
            for start in range(0, len(unique), _ADD_BATCH):
                batch = unique[start : start + _ADD_BATCH]
                args: list[Any] = [
                    self._keys.prefix,
                    credential or "",
                    encoded.decode() if encoded is not None else "",
                ]
                for job_id in batch:
                    args += [job_id, slot_of(job_id)]
                outcomes = await self._link.scripts.run(self._link.scripts.add, args)
                existing += [j for j, o in zip(batch, outcomes, strict=True) if o == "known"]
        except RedisError as exc:
            self._link.failed(exc, "adding jobs")
            raise _unavailable(exc) from None
        self._link.ok()
        known = set(existing)
        return AddResult(added=[j for j in unique if j not in known], existing=existing)

    async def remove(self, job_id: str) -> bool:
        """Take a job out of the list (its owner stops polling it). False if it was not
        there.

        Raises:
            IntakeError: 503 ``store_unavailable`` when Redis cannot be reached.
        """
        try:
            removed = await self._link.scripts.run(
                self._link.scripts.remove, [self._keys.prefix, job_id]
            )
        except RedisError as exc:
            self._link.failed(exc, "removing a job")
            raise _unavailable(exc) from None
        self._link.ok()
        return bool(removed)

    # -- the listing -------------------------------------------------------------------

    async def job(self, job_id: str) -> tuple[JobRow, bytes | None] | None:
        """A job and its last payload, or None if it was never added."""
        try:
            values = cast(
                "list[str | None]",
                await self._link.redis.hmget(self._keys.job(job_id), [*_ROW_FIELDS, "payload"]),
            )
        except RedisError as exc:
            self._link.failed(exc, "reading a job")
            raise _unavailable(exc) from None
        if values[0] is None:
            return None
        payload = values[-1]
        return _row(job_id, values[:-1]), payload.encode() if payload is not None else None

    async def list_jobs(self, *, status: str | None, after: str, limit: int) -> list[JobRow]:
        """Jobs not removed, by ID, after ``after``, of ``status`` if given."""
        key = self._keys.status(status) if status else self._keys.jobs
        try:
            ids = cast(
                "list[str]",
                await self._link.redis.zrangebylex(
                    key, f"({after}" if after else "-", "+", start=0, num=limit
                ),
            )
            pipe = self._link.redis.pipeline(transaction=False)
            for job_id in ids:
                pipe.hmget(self._keys.job(job_id), list(_ROW_FIELDS))
            rows = await pipe.execute()
        except RedisError as exc:
            self._link.failed(exc, "listing jobs")
            raise _unavailable(exc) from None
        found = [_row(job_id, values) for job_id, values in zip(ids, rows, strict=True)]
        # A job removed or changed between the two reads is left out of this page.
        return [
            row
            for row in found
            if not row.removed and row.added_at and (status is None or row.status == status)
        ]

    async def has_status(self, status: str) -> bool:
        """Whether a job in the list has ``status``."""
        try:
            return bool(await self._link.redis.exists(self._keys.status(status)))
        except RedisError as exc:
            raise _unavailable(exc) from None

    async def counts(self) -> dict[str, int]:
        """Jobs in the list, by status.

        Raises:
            RedisError: Redis cannot be reached.
        """
        statuses = sorted(cast("set[str]", await self._link.redis.smembers(self._keys.statuses)))
        pipe = self._link.redis.pipeline(transaction=False)
        for status in statuses:
            pipe.zcard(self._keys.status(status))
        counts = await pipe.execute()
        return {status: int(n) for status, n in zip(statuses, counts, strict=True) if n}

    # -- for owners --------------------------------------------------------------------

    async def slot_jobs(self, slots: Iterable[int]) -> dict[int, list[str]]:
        """The jobs still to poll of each partition.

        Raises:
            RedisError: Redis cannot be reached.
        """
        wanted = list(slots)
        pipe = self._link.redis.pipeline(transaction=False)
        for slot in wanted:
            pipe.zrange(self._keys.slot_jobs(slot), 0, -1)
        members = await pipe.execute()
        return dict(zip(wanted, members, strict=True))

    async def states(self, job_ids: Sequence[str]) -> dict[str, JobState]:
        """Where to resume each job (jobs never added are left out).

        Raises:
            RedisError: Redis cannot be reached.
        """
        pipe = self._link.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hmget(self._keys.job(job_id), list(_STATE_FIELDS))
        rows = await pipe.execute()
        return {
            job_id: _state(values)
            for job_id, values in zip(job_ids, rows, strict=True)
            if values[0] is not None
        }


def _number(value: str | None, default: float = 0.0) -> float:
    return float(value) if value is not None else default


def _state(values: Sequence[str | None]) -> JobState:
    status, removed, last_status, seq, gen, credential, metadata = values
    return JobState(
        gen=int(gen or 0),
        seq=int(seq or 0),
        last_status=last_status,
        credential=credential,
        metadata=_METADATA_DECODER.decode(metadata) if metadata is not None else None,
        active=removed != "1" and status not in _DONE,
    )


def _row(job_id: str, values: Sequence[str | None]) -> JobRow:
    fields: Mapping[str, str | None] = dict(zip(_ROW_FIELDS, values, strict=True))
    error, metadata = fields["error"], fields["metadata"]
    return JobRow(
        job_id=job_id,
        status=fields["status"] or "pending",
        seq=int(fields["seq"] or 0),
        credential=fields["credential"],
        metadata=_METADATA_DECODER.decode(metadata) if metadata is not None else None,
        organization_id=fields["org"],
        error=_ERROR_DECODER.decode(error) if error is not None else None,
        removed=fields["removed"] == "1",
        added_at=_number(fields["added_at"]),
        updated_at=_number(fields["updated_at"]),
    )
