"""Waiting for jobs: one future per call, however many jobs it waits for.

A call registers a small settle function per pending job in the engine's waiters;
the driver calls them as jobs finish, and the last one wakes the caller. A call
that times out or is cancelled removes its settle functions, so nothing is left
behind.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

import anyio

from ._driver import Settle
from ._health_log import describe_errors
from .errors import PollerClosedError, PollerError
from .models import JobStatus
from .sched.queue import TrackedJob

__all__ = ["timeout_message", "wait_for_jobs"]

_NAMED: Final = 3  # jobs and organisations named in a timeout's message, at most


async def wait_for_jobs(
    jobs: Iterable[TrackedJob[Any]],
    waiters: dict[str, list[Settle]],
    timeout_s: float | None,
    clock: Callable[[], float] = time.time,
) -> dict[str, JobStatus | PollerError]:
    """Each job's outcome, by job ID: its terminal payload, or the error that ended its
    tracking.

    Raises:
        TimeoutError: ``timeout_s`` passed first; the message says where the jobs stand
            and what failed meanwhile.
        PollerClosedError: the engine closed meanwhile.
    """
    results: dict[str, JobStatus | PollerError] = {}
    pending: set[str] = set()
    waiting_jobs = list(jobs)
    for job in waiting_jobs:
        if job.done:
            assert job.final is not None
            results[job.job_id] = job.final
        else:
            pending.add(job.job_id)
    if not pending:
        return results
    done = asyncio.get_running_loop().create_future()
    closed: list[PollerError] = []

    def settle_one(job_id: str) -> Settle:
        def settle(outcome: JobStatus | PollerError) -> None:
            if isinstance(outcome, PollerClosedError):
                closed.append(outcome)
            results[job_id] = outcome
            pending.discard(job_id)
            if not pending and not done.done():
                done.set_result(None)

        return settle

    settles = {job_id: settle_one(job_id) for job_id in pending}
    for job_id, settle in settles.items():
        waiters.setdefault(job_id, []).append(settle)
    try:
        with anyio.fail_after(timeout_s):
            await done
    except TimeoutError:
        jobs_left = [job for job in waiting_jobs if job.job_id in pending]
        message = timeout_message(jobs_left, len(waiting_jobs), timeout_s, clock())
        raise TimeoutError(message) from None
    finally:
        for job_id, settle in settles.items():
            waiting = waiters.get(job_id)
            if waiting is not None and settle in waiting:
                waiting.remove(settle)
                if not waiting:
                    del waiters[job_id]
    if closed:
        raise closed[0]
    return results


def timeout_message(
    jobs: Sequence[TrackedJob[Any]], waited_for: int, timeout_s: float | None, now: float
) -> str:
    """What a timed-out wait says: where its unfinished jobs stand, and whether their
    requests fail (``still in_progress after 6 s; organisation org_a: last 4 requests
    failed: ConnectError x4 since 12:03:11``)."""
    statuses = Counter(
        job.status.value if job.status is not None else "not seen yet" for job in jobs
    )
    where = ", ".join(f"{count} {status}" for status, count in statuses.most_common())
    names = ", ".join(job.job_id for job in jobs[:_NAMED]) + (", ..." if len(jobs) > _NAMED else "")
    after = f"after {timeout_s:g} s" if timeout_s is not None else ""
    if waited_for == 1 and len(jobs) == 1:
        head = f"job {jobs[0].job_id} still {next(iter(statuses))} {after}"
    else:
        head = f"{len(jobs)} of {waited_for} jobs not finished {after}: {where} ({names})"
    troubles = []
    for bucket in dict.fromkeys(job.bucket for job in jobs):
        health = bucket.health
        errors = health.recent_errors(now)
        if health.streak or errors:
            scope = f"organisation {bucket.org_id}" if bucket.org_id else "its key"
            state = f" ({health.state.value})" if not health.closed else ""
            what = describe_errors(errors, health.trouble_since(now))
            if health.streak:
                troubles.append(
                    f"{scope}{state}: the last {health.streak} requests failed ({what}; "
                    f"the last: {health.last_error})"
                )
            else:
                troubles.append(f"{scope}{state}: failed requests: {what}")
        if len(troubles) == _NAMED:
            break
    return "; ".join([head.strip(), *troubles])
