"""JobStore: the organisations and jobs of a simulated Retab jobs API, with no HTTP.

Jobs are created with drawn (or scripted) lifecycles, cancelled and retried in
place; their status at any time is derived from their timelines, so the store
holds no timers and needs no event loop. :class:`JobsSimulator` adds the HTTP
face on top of it.

Determinism: under one ``seed``, job IDs and generated API keys come from their
own seeded streams (so adding orgs does not shift job IDs), and each attempt of
a job draws its lifecycle from a generator seeded by ``(seed, job_id, attempt)``,
so a job's lifecycle does not depend on the jobs created before it.
"""

from __future__ import annotations

__all__ = ["JobStateError", "JobStore", "Org"]

import base64
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

import msgspec

from ._faults import UNKNOWN_ENDPOINTS, Faults
from ._job import SimJob
from ._lifecycle import (
    DEFAULT_OUTCOMES,
    TERMINAL_STATUSES,
    Change,
    Outcomes,
    draw_endpoint,
    draw_error,
    draw_lifecycle,
)

# nanoid's alphabet is URL-safe base64's 64 characters, so 126 random bits encoded as
# base64 make a 21-character nanoid ("job_V1StGXR8_Z5jdHi6B-myT"), much faster than
# 21 choices.
_NANOID_CHARS: Final = 21
_NANOID_BITS: Final = 6 * _NANOID_CHARS
_KEY_ALPHABET: Final = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_SEVEN_DAYS_S: Final = 604_800.0
_RETRYABLE: Final = frozenset({"failed", "cancelled", "expired"})
_SCRIPTED_ERROR: Final = {"code": "scripted_failure", "message": "The job failed.", "details": None}


class Org(msgspec.Struct, frozen=True, kw_only=True):
    """An organisation: its credentials and its rate limit (None: unlimited)."""

    org_id: str
    api_keys: tuple[str, ...]
    access_tokens: tuple[str, ...] = ()
    rate_limit_per_s: int | None = None


class JobStateError(ValueError):
    """``cancel`` or ``retry`` was refused: the job's current status does not allow it."""


class JobStore:
    """Organisations and jobs, advanced by nothing but the clock they are given.

    Args:
        seed: seeds every random choice (IDs, keys, lifecycles).
        clock: the time source, in seconds; read whenever a method gets no ``now``.
        time_scale: multiplies every drawn duration (0.01 makes jobs 100x faster).
        outcomes: weights of completed / failed / cancelled for drawn lifecycles.
        faults: fault rates; the per-job ones (``unknown_status``,
            ``unknown_endpoint``) apply to jobs created after they are set.

    Raises ``ValueError`` for a non-positive ``time_scale``.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        clock: Callable[[], float] = time.time,
        time_scale: float = 1.0,
        outcomes: Outcomes = DEFAULT_OUTCOMES,
        faults: Faults | None = None,
    ) -> None:
        if not time_scale > 0:
            raise ValueError(f"time_scale must be > 0, got {time_scale}")
        self.seed = seed
        self.clock = clock
        self.time_scale = time_scale
        self.outcomes = outcomes
        self.faults = faults or Faults()
        self._orgs: dict[str, Org] = {}
        self._credentials: dict[tuple[str, str], str] = {}  # (kind, secret) -> org_id
        self._jobs: dict[str, SimJob] = {}
        self._id_rng = random.Random(f"{seed}:job-ids")
        self._key_rng = random.Random(f"{seed}:api-keys")

    # Organisations

    @property
    def orgs(self) -> tuple[Org, ...]:
        """Every organisation, in the order they were added."""
        return tuple(self._orgs.values())

    def add_org(
        self,
        org_id: str,
        *,
        api_keys: Iterable[str] = (),
        access_tokens: Iterable[str] = (),
        rate_limit_per_s: int | None = None,
    ) -> Org:
        """Add an organisation. With neither keys nor tokens it gets one generated
        ``rt_test_`` key. Raises ``ValueError`` for a duplicate org or credential."""
        if org_id in self._orgs:
            raise ValueError(f"organisation {org_id!r} exists already")
        keys, tokens = tuple(api_keys), tuple(access_tokens)
        if not keys and not tokens:
            keys = ("rt_test_" + "".join(self._key_rng.choices(_KEY_ALPHABET, k=24)),)
        credentials = [("key", k) for k in keys] + [("token", t) for t in tokens]
        if taken := [c for c in credentials if c in self._credentials]:
            raise ValueError(f"credentials already in use: {taken}")
        org = Org(
            org_id=org_id,
            api_keys=keys,
            access_tokens=tokens,
            rate_limit_per_s=_checked_limit(rate_limit_per_s),
        )
        self._orgs[org_id] = org
        self._credentials.update(dict.fromkeys(credentials, org_id))
        return org

    def set_rate_limit(self, org_id: str, rate_limit_per_s: int | None) -> None:
        """Set (or with None, lift) an organisation's limit on requests per second.
        Raises ``KeyError`` for an unknown org, ``ValueError`` for a limit below 1."""
        org = self._orgs[org_id]
        limit = _checked_limit(rate_limit_per_s)
        self._orgs[org_id] = msgspec.structs.replace(org, rate_limit_per_s=limit)

    # Jobs

    def add_job(
        self,
        *,
        org_id: str,
        endpoint: str | None = None,
        script: Sequence[Change] | None = None,
        error: Mapping[str, Any] | None = None,
        metadata: Mapping[str, str] | None = None,
        request: Mapping[str, Any] | None = None,
        job_id: str | None = None,
        ttl_s: float = _SEVEN_DAYS_S,
        now: float | None = None,
    ) -> str:
        """Create a job owned by ``org_id`` at ``now`` (default: the clock) and return its ID.

        Args:
            endpoint: the job's endpoint; drawn from the standard mix when None.
            script: the exact lifecycle instead of a drawn one. Each ``Change.at`` is an
                offset in seconds from creation; the first must be 0, the rest
                non-decreasing.
            error: the ``{code, message}`` a scripted job reports when it fails.
            metadata, request: returned as given in the job's payloads.
            job_id: a fixed ID instead of a generated ``job_`` + 21 nanoid characters.
            ttl_s: seconds from creation until the job is ``expired``.

        Raises ``KeyError`` for an unknown org and ``ValueError`` for a duplicate ID,
        a bad script or a non-positive ``ttl_s``.
        """
        if org_id not in self._orgs:
            raise KeyError(f"unknown organisation {org_id!r}")
        if job_id in self._jobs:
            raise ValueError(f"job {job_id!r} exists already")
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        job_id = self._new_job_id() if job_id is None else job_id
        created_at = self.clock() if now is None else now
        rng = self._attempt_rng(job_id, 0)
        # Per-job faults are drawn first and always, so they do not shift other draws.
        odd_endpoint = rng.random() < self.faults.unknown_endpoint
        odd_status = rng.random() < self.faults.unknown_status
        odd_endpoint_value = rng.choice(UNKNOWN_ENDPOINTS)
        endpoint = draw_endpoint(rng) if endpoint is None else endpoint
        endpoint = odd_endpoint_value if odd_endpoint else endpoint
        extra_phase = self.faults.unknown_status_value if odd_status and script is None else None
        timeline, job_error = self._attempt(rng, endpoint, created_at, extra_phase, script, error)
        self._jobs[job_id] = SimJob(
            id=job_id,
            org_id=org_id,
            endpoint=endpoint,
            created_at=created_at,
            ttl_s=ttl_s,
            expires_at=created_at + ttl_s,
            timeline=timeline,
            errors=[job_error],
            metadata=None if metadata is None else dict(metadata),
            request=None if request is None else dict(request),
            extra_phase=extra_phase,
        )
        return job_id

    def add_jobs(
        self,
        n: int,
        *,
        org_ids: Sequence[str] | None = None,
        endpoint: str | None = None,
        ttl_s: float = _SEVEN_DAYS_S,
        now: float | None = None,
    ) -> list[str]:
        """Create ``n`` drawn jobs at ``now``, dealt round-robin over ``org_ids`` (default:
        every org, in the order added). Raises like :meth:`add_job`, and ``ValueError``
        when there is no org."""
        orgs = list(self._orgs) if org_ids is None else list(org_ids)
        if not orgs:
            raise ValueError("add an organisation before adding jobs")
        created_at = self.clock() if now is None else now
        return [
            self.add_job(org_id=orgs[i % len(orgs)], endpoint=endpoint, ttl_s=ttl_s, now=created_at)
            for i in range(n)
        ]

    def cancel(self, job_id: str, *, now: float | None = None) -> None:
        """Cancel a validating, queued or in-progress job at ``now``.
        Raises ``KeyError`` for an unknown job, ``JobStateError`` for a terminal one."""
        job, now = self._jobs[job_id], self._now(now)
        status = job.view(now).status
        if status in TERMINAL_STATUSES:
            raise JobStateError(f"Job is already {status}")
        job.rewrite(now, [Change("cancelled", now)], expires_at=job.expires_at)

    def retry(
        self,
        job_id: str,
        *,
        script: Sequence[Change] | None = None,
        error: Mapping[str, Any] | None = None,
        now: float | None = None,
    ) -> None:
        """Re-queue a failed, cancelled or expired job in place, at ``now``.

        The new attempt starts ``queued`` with freshly drawn durations (or follows
        ``script``, offsets from ``now``); ``attempt_count`` grows when it starts
        processing, and ``expires_at`` moves to ``now + ttl_s``. Raises ``KeyError``
        for an unknown job, ``JobStateError`` for a job in any other status.
        """
        job, now = self._jobs[job_id], self._now(now)
        status = job.view(now).status
        if status not in _RETRYABLE:
            raise JobStateError(f"Only failed, cancelled or expired jobs can be retried: {status}")
        rng = self._attempt_rng(job_id, len(job.errors))
        future, job_error = self._attempt(
            rng, job.endpoint, now, job.extra_phase, script, error, validate=False
        )
        job.errors.append(job_error)
        job.rewrite(now, future, expires_at=now + job.ttl_s)

    def status(self, job_id: str, *, now: float | None = None) -> str:
        """The job's status at ``now``. Raises ``KeyError`` for an unknown job."""
        return self._jobs[job_id].view(self._now(now)).status

    def changes(self, job_id: str, *, now: float | None = None) -> list[Change]:
        """The true time of every status change that happened by ``now``, expiry included.
        Raises ``KeyError`` for an unknown job."""
        return self._jobs[job_id].changes_until(self._now(now))

    def planned_changes(self, job_id: str) -> list[Change]:
        """Every change the job will go through unless cancelled or retried, ending with
        its expiry. Raises ``KeyError`` for an unknown job."""
        return self._jobs[job_id].changes_until(math.inf)

    def job_ids(self, org_id: str | None = None) -> list[str]:
        """The IDs of every job, or of ``org_id``'s jobs, in creation order."""
        return [j.id for j in self._jobs.values() if org_id is None or j.org_id == org_id]

    def _now(self, now: float | None) -> float:
        return self.clock() if now is None else now

    def _new_job_id(self) -> str:
        while True:
            bits = self._id_rng.getrandbits(_NANOID_BITS) << (128 - _NANOID_BITS)
            nanoid = base64.urlsafe_b64encode(bits.to_bytes(16))[:_NANOID_CHARS].decode()
            if (job_id := f"job_{nanoid}") not in self._jobs:
                return job_id

    def _attempt_rng(self, job_id: str, attempt: int) -> random.Random:
        # Seeding from a string hashes it with SHA-512: stable across runs and platforms.
        return random.Random(f"{self.seed}:{job_id}:{attempt}")

    def _attempt(
        self,
        rng: random.Random,
        endpoint: str,
        start: float,
        extra_phase: str | None,
        script: Sequence[Change] | None,
        error: Mapping[str, Any] | None,
        *,
        validate: bool = True,
    ) -> tuple[list[Change], dict[str, Any]]:
        """One attempt's timeline from ``start``, and the error it reports if it fails."""
        if script is not None:
            return _place(script, start), {**_SCRIPTED_ERROR, **(error or {})}
        timeline = draw_lifecycle(
            rng,
            endpoint,
            start,
            time_scale=self.time_scale,
            outcomes=self.outcomes,
            extra_phase=extra_phase,
            validate=validate,
        )
        return timeline, draw_error(rng)


def _place(script: Sequence[Change], start: float) -> list[Change]:
    """A script's offsets made absolute. Raises ``ValueError`` for a malformed script."""
    offsets = [c.at for c in script]
    if not offsets or offsets[0] != 0 or offsets != sorted(offsets):
        raise ValueError(f"a script must start at offset 0 and never go back in time: {offsets}")
    return [Change(c.status, start + c.at) for c in script]


def _checked_limit(rate_limit_per_s: int | None) -> int | None:
    if rate_limit_per_s is not None and rate_limit_per_s < 1:
        raise ValueError(f"rate_limit_per_s must be >= 1, got {rate_limit_per_s}")
    return rate_limit_per_s
