"""Waiting for jobs: one future per call, however many jobs it waits for.

A call registers a small settle function per pending job in the engine's waiters;
the driver calls them as jobs finish, and the last one wakes the caller. A call
that times out or is cancelled removes its settle functions, so nothing is left
behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import anyio

from ._core import Job
from ._driver import Settle
from .errors import PollerClosedError, PollerError
from .models import JobStatus

__all__ = ["wait_for_jobs"]


async def wait_for_jobs(
    jobs: Iterable[Job], waiters: dict[str, list[Settle]], timeout_s: float | None
) -> dict[str, JobStatus | PollerError]:
    """Each job's outcome, by job ID: its terminal payload, or the error that ended its
    tracking.

    Raises:
        TimeoutError: ``timeout_s`` passed first.
        PollerClosedError: the engine closed meanwhile.
    """
    results: dict[str, JobStatus | PollerError] = {}
    pending: set[str] = set()
    for job in jobs:
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
