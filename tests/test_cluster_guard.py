"""The cluster's transport guard: no poll for a job this replica may not poll, and the
polls in flight awaited or cancelled when the replica lets go of their jobs."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup

from poller.auth import Credential
from poller.daemon.cluster.client import NotOwnedError
from poller.daemon.cluster.guard import OwnedOnly
from poller.models import JobStatus

pytestmark = pytest.mark.anyio

KEY = Credential("rt_test_key", environ={})


class Hanging:
    """A transport whose status requests are answered only when the test says so."""

    def __init__(self) -> None:
        self.answer = anyio.Event()
        self.sent: list[str] = []

    async def get_status(self, job_id: str, credential: Credential) -> JobStatus:
        self.sent.append(job_id)
        await self.answer.wait()
        raise NotImplementedError  # never reached in these tests

    async def get_job(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    async def aclose(self) -> None:
        pass


async def poll(guard: OwnedOnly, job_id: str, outcomes: list[str]) -> None:
    try:
        await guard.get_status(job_id, KEY)  # type: ignore[arg-type]
    except NotOwnedError as exc:
        outcomes.append(f"{job_id}: {exc}".removesuffix(f" (job {job_id!r})"))


async def test_a_poll_is_not_sent_for_a_job_that_is_not_owned() -> None:
    inner = Hanging()
    guard = OwnedOnly(inner, lambda job_id: job_id == "mine")  # type: ignore[arg-type]
    outcomes: list[str] = []
    await poll(guard, "other", outcomes)
    assert inner.sent == [] and outcomes == ["other: not this replica's job to poll (not sent)"]


async def in_flight(group: TaskGroup, guard: OwnedOnly, outcomes: list[str], *jobs: str) -> None:
    """Polls of these jobs, in flight (the transport never answers)."""
    for job_id in jobs:
        group.start_soon(poll, guard, job_id, outcomes)
    while guard.in_flight < len(jobs):  # noqa: ASYNC110
        await anyio.sleep(0.01)


async def test_a_fence_cancels_every_poll_in_flight() -> None:
    guard = OwnedOnly(Hanging(), lambda job_id: True)  # type: ignore[arg-type]
    outcomes: list[str] = []
    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            await in_flight(group, guard, outcomes, "j1", "j2")
            assert guard.cancel() == 2
    assert sorted(outcomes) == [
        f"{job}: no longer this replica's job: the poll was cancelled" for job in ("j1", "j2")
    ]
    assert guard.in_flight == 0


async def test_a_release_waits_for_the_polls_of_its_jobs_then_cancels_them() -> None:
    guard = OwnedOnly(Hanging(), lambda job_id: True)  # type: ignore[arg-type]
    outcomes: list[str] = []
    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            await in_flight(group, guard, outcomes, "released", "kept")
            assert await guard.settle({"gone"}, timeout_s=1.0) == 0  # nothing of its in flight
            started = anyio.current_time()
            assert await guard.settle({"released"}, timeout_s=0.2) == 1
            assert 0.2 <= anyio.current_time() - started < 1.0
            await anyio.sleep(0.05)
            assert guard.in_flight == 1  # the kept job's poll goes on
            guard.cancel()
    assert outcomes[0] == "released: no longer this replica's job: the poll was cancelled"
