"""Callbacks: replay to a callback registered late, the record it replays, and the rule
that a callback registered before a job is tracked sees all of its transitions."""

from __future__ import annotations

import anyio
import pytest
from _helpers import FAST

from poller import Poller, Status, Transition
from poller._callbacks import _SWEEP_AT_LEAST, CallbackRunner, LatestTransitions
from poller.models import Endpoint, JobStatus
from poller.testing import Change, SimServer
from poller.testing.pytest_plugin import TEST_API_KEY, TEST_ORG_ID

ORDER = (Status.VALIDATING, Status.QUEUED, Status.IN_PROGRESS, Status.COMPLETED)


def transition(job_id: str, seq: int) -> Transition:
    """The ``seq``-th transition of a job going validating, queued, in_progress, completed."""
    current = ORDER[seq - 1]
    payload = JobStatus(
        id=job_id,
        status=current,
        endpoint=Endpoint.DOCUMENTS_EXTRACT,
        created_at=1_700_000_000,
        expires_at=1_700_600_000,
        organization_id="org_a",
    )
    return Transition(
        job_id=job_id,
        organization_id="org_a",
        previous=ORDER[seq - 2] if seq > 1 else None,
        current=current,
        job=payload,
        observed_at=1_700_000_000.0 + seq,
        seq=seq,
    )


def seqs(events: list[Transition]) -> list[tuple[str, int]]:
    return [(t.job_id, t.seq) for t in events]


# -- LatestTransitions -------------------------------------------------------------------


def test_the_record_keeps_each_jobs_latest_transition_in_delivery_order() -> None:
    latest = LatestTransitions(lambda job_id: True)
    for job_id, seq in [("a", 1), ("b", 1), ("a", 2), ("c", 1), ("b", 2)]:
        latest(transition(job_id, seq))
    assert seqs(latest.snapshot()) == [("a", 2), ("c", 1), ("b", 2)]


def test_the_record_drops_jobs_no_longer_tracked() -> None:
    tracked = {"a", "b", "c"}
    latest = LatestTransitions(tracked.__contains__)
    for job_id in sorted(tracked):
        latest(transition(job_id, 1))
    tracked.discard("b")  # finished and retired by the engine
    latest.forget("c")  # untracked through the facade
    assert seqs(latest.snapshot()) == [("a", 1)]
    assert len(latest) == 1


def test_the_record_stays_proportional_to_the_tracked_jobs() -> None:
    """Jobs come and go without any snapshot: sweeps on growth keep it bounded."""
    tracked: set[str] = set()
    latest = LatestTransitions(tracked.__contains__)
    largest = 0
    for i in range(10 * _SWEEP_AT_LEAST):
        job_id = f"job_{i}"
        tracked.add(job_id)
        tracked.discard(f"job_{i - 10}")  # ten tracked at a time
        latest(transition(job_id, 1))
        largest = max(largest, len(latest))
    assert largest < _SWEEP_AT_LEAST
    assert len(latest.snapshot()) == 10


# -- replay in CallbackRunner.add --------------------------------------------------------


def test_replay_goes_to_the_new_callback_alone_filtered_and_before_add_returns() -> None:
    runner = CallbackRunner()
    old: list[Transition] = []
    runner.add(old.append, None)
    new: list[Transition] = []
    earlier = [transition("a", 1), transition("b", 1), transition("a", 2)]
    runner.add(new.append, ["queued"], replay=earlier)
    assert seqs(new) == [("a", 2)]  # only what its filter takes
    assert old == []  # replayed to nobody else
    runner.dispatch(transition("b", 2))
    assert seqs(new) == [("a", 2), ("b", 2)]
    assert seqs(old) == [("b", 2)]


def test_a_replayed_callback_that_raises_is_counted_like_any_other(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runner = CallbackRunner()

    def broken(t: Transition) -> None:
        raise RuntimeError("callback bug")

    runner.add(broken, None, replay=[transition("a", 1)])
    assert runner.errors == 1
    assert "callback bug" in caplog.text


@pytest.mark.anyio
async def test_an_async_callback_gets_its_replay_before_later_transitions() -> None:
    runner = CallbackRunner(lanes=2)
    seen: list[Transition] = []

    async def record(t: Transition) -> None:
        await anyio.lowlevel.checkpoint()
        seen.append(t)

    async with anyio.create_task_group() as task_group:
        runner.start(task_group)
        runner.add(record, None, replay=[transition("a", 1), transition("b", 1)])
        runner.dispatch(transition("a", 2))
        runner.dispatch(transition("b", 2))
        with anyio.fail_after(5):
            await runner.drain()
        task_group.cancel_scope.cancel()
    for job_id in "ab":
        assert [t.seq for t in seen if t.job_id == job_id] == [1, 2]


# -- the rule, on the async engine -------------------------------------------------------


@pytest.mark.anyio
async def test_callbacks_registered_before_tracking_see_every_transition(
    retab_sim: SimServer,
) -> None:
    """Registered before the engine is entered, or in it before ``track``: every
    transition of the job, from its first sighting."""
    job_id = retab_sim.sim.add_job(
        org_id=TEST_ORG_ID,
        script=[Change("validating", 0.0), Change("queued", 0.03), Change("completed", 0.06)],
    )
    early: list[Transition] = []
    before_track: list[Transition] = []
    engine = Poller(
        api_key=TEST_API_KEY, base_url=retab_sim.base_url, backoff=FAST, first_poll_rate_per_s=None
    )
    engine.on_transition(early.append)
    async with engine:
        engine.on_transition(before_track.append)
        engine.track(job_id)
        await engine.wait(job_id, timeout_s=10)
    for seen in (early, before_track):
        assert seen[0].previous is None
        assert [t.seq for t in seen] == list(range(1, len(seen) + 1))
        assert seen[-1].current is Status.COMPLETED
