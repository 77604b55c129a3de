"""Backpressure: consumers that do not keep up never stall the engine or grow its memory.

A subscriber that never reads while 51,000 transitions happen: its buffer stays at its
bound, the overflow is counted and reported once, and every other subscriber, waiter and
callback gets everything, in order, as if it were not there. An in-memory transport
moves each job one status further per poll (queued, in_progress, completed), so the
count of transitions is exact and the run takes a couple of seconds.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from collections import Counter
from contextlib import AsyncExitStack

import anyio
import pytest
from _helpers import poller_tasks

from poller import Backoff, Poller, Status, SubscriberOverflowError, Transition
from poller.auth import Credential
from poller.models import Endpoint, Job, JobStatus

pytestmark = pytest.mark.anyio

JOBS = 17_000
TRANSITIONS = 3 * JOBS  # 51,000
STUCK_BUFFER = 1_000
STEPS = (Status.QUEUED, Status.IN_PROGRESS, Status.COMPLETED)
# Every job due a millisecond after each answer: the engine runs flat out.
FLAT_OUT = Backoff(
    initial_interval_s={},
    default_interval_s=0.001,
    min_interval_s=0.001,
    max_interval_s=0.01,
    multiplier=1.0,
    learn=False,
)


class StepTransport:
    """Each poll of a job shows its next status: queued, in_progress, then completed."""

    def __init__(self) -> None:
        self.polls: Counter[str] = Counter()
        self.created_at = int(time.time())

    async def get_status(self, job_id: str, credential: Credential) -> JobStatus:
        step = self.polls[job_id]
        self.polls[job_id] += 1
        await anyio.lowlevel.checkpoint()
        return JobStatus(
            id=job_id,
            status=STEPS[min(step, 2)],
            endpoint=Endpoint.DOCUMENTS_CLASSIFY,
            created_at=self.created_at,
            expires_at=self.created_at + 604_800,
            organization_id="org_mem",
        )

    async def get_job(self, job_id: str, credential: Credential, **_: object) -> Job:
        raise NotImplementedError

    async def aclose(self) -> None:
        pass


def _engine(**options: object) -> Poller:
    settings: dict[str, object] = {
        "api_key": "rt_test_backpressure",
        "transport": StepTransport(),
        "backoff": FLAT_OUT,
        "first_poll_rate_per_s": None,
        "terminal_retention_s": 0.0,
        "max_connections": 16,
    }
    settings.update(options)
    return Poller(**settings)  # type: ignore[arg-type]


@pytest.mark.timeout(60)
async def test_a_subscriber_that_never_reads_costs_its_buffer_and_nothing_else(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="poller")
    job_ids = [f"job_{i:05d}" for i in range(JOBS)]
    last_seq: dict[str, int] = {}
    completed_seen = 0
    sync_calls = async_calls = 0
    stuck_peak = 0

    healthy_events = 0
    all_read, finals_read, callbacks_run = anyio.Event(), anyio.Event(), anyio.Event()

    def on_sync(t: Transition) -> None:
        nonlocal sync_calls
        sync_calls += 1

    async def on_async(t: Transition) -> None:
        nonlocal async_calls
        async_calls += 1
        if async_calls == TRANSITIONS:
            callbacks_run.set()

    gc.collect()
    blocks_before = sys.getallocatedblocks()
    started = time.monotonic()
    async with (
        _engine() as poller,
        poller.subscribe(max_buffer=STUCK_BUFFER) as stuck,
        poller.subscribe(max_buffer=TRANSITIONS) as healthy,
        poller.subscribe(statuses=["completed"], max_buffer=JOBS) as finals,
    ):
        poller.on_transition(on_sync)
        poller.on_transition(on_async)

        async def read_all() -> None:
            nonlocal healthy_events
            async for event in healthy:
                healthy_events += 1
                assert isinstance(event, Transition)
                assert event.seq == last_seq.get(event.job_id, 0) + 1, "in order per job"
                last_seq[event.job_id] = event.seq
                if healthy_events == TRANSITIONS:
                    all_read.set()

        async def read_finals() -> None:
            nonlocal completed_seen
            async for event in finals:
                assert isinstance(event, Transition)
                assert event.current is Status.COMPLETED
                completed_seen += 1
                if completed_seen == JOBS:
                    finals_read.set()

        async def watch_stuck() -> None:
            nonlocal stuck_peak
            while True:
                stuck_peak = max(stuck_peak, stuck.statistics().buffered)
                await anyio.sleep(0.005)

        single: dict[str, Status] = {}

        async def wait_one(job_id: str) -> None:
            single[job_id] = (await poller.wait(job_id, timeout_s=30)).status

        async with anyio.create_task_group() as tg:
            tg.start_soon(read_all)
            tg.start_soon(read_finals)
            tg.start_soon(watch_stuck)
            for job_id in job_ids[::170]:  # 100 individual waiters alongside wait_all
                tg.start_soon(wait_one, job_id)
            results = await poller.wait_all(job_ids, timeout_s=30)
            elapsed = time.monotonic() - started
            finals_by_status = Counter(r.status for r in results.values())
            del results  # 17,000 payloads of our own: not the engine's to hold
            with anyio.fail_after(10):
                await all_read.wait()
                await finals_read.wait()
                await callbacks_run.wait()
            tg.cancel_scope.cancel()
        stats = poller.stats()
        statistics = stuck.statistics()
        # With every job retired, what the engine still holds is the stuck buffer.
        await anyio.sleep(0.05)
        assert poller.stats().tracked == 0
        gc.collect()
        held_blocks = sys.getallocatedblocks() - blocks_before
        # The buffered events are still delivered, then the overflow is raised.
        received = 0
        with pytest.raises(SubscriberOverflowError) as caught:
            async for _ in stuck:
                received += 1

    assert finals_by_status == {Status.COMPLETED: JOBS}
    assert len(single) == 100 and set(single.values()) == {Status.COMPLETED}
    assert set(last_seq.values()) == {3}, "the healthy subscriber got every transition"
    assert completed_seen == JOBS
    assert sync_calls == async_calls == stats.transitions == TRANSITIONS
    assert stats.callbacks_dropped == 0 and stats.callback_errors == 0
    # The stuck subscriber: bounded, counted, reported once.
    assert stuck_peak == statistics.buffered == STUCK_BUFFER
    assert statistics.dropped == TRANSITIONS - STUCK_BUFFER
    assert received == STUCK_BUFFER and caught.value.dropped == TRANSITIONS - STUCK_BUFFER
    assert stats.subscriber_overflows == 1
    overflow_logs = [r for r in caplog.records if "overflowed" in r.getMessage()]
    assert len(overflow_logs) == 1
    # Each event held costs about 4 memory blocks: 51,000 would be ~200,000 blocks, the
    # 1,000 buffered ~5,000 (the rest of the run returns what it took).
    assert held_blocks < 20_000, f"{held_blocks} memory blocks still held"
    assert elapsed < 30
    assert poller_tasks() == []


async def test_many_overflowing_subscribers_do_not_slow_the_engine_down() -> None:
    """Fifty stuck subscribers cost fifty bounded buffers, not fifty times the time."""
    job_ids = [f"job_{i:05d}" for i in range(3_000)]

    async def run(stuck: int) -> float:
        async with _engine() as poller, AsyncExitStack() as stack:
            subscriptions = [
                await stack.enter_async_context(poller.subscribe(max_buffer=10))
                for _ in range(stuck)
            ]
            started = time.monotonic()
            await poller.wait_all(job_ids, timeout_s=30)
            elapsed = time.monotonic() - started
            assert poller.stats().subscriber_overflows == stuck
            for subscription in subscriptions:
                assert subscription.statistics().buffered == 10
        return elapsed

    alone = await run(0)
    crowded = await run(50)
    assert crowded < 5 * alone + 0.5, (alone, crowded)


async def test_a_stuck_async_callback_is_contained_and_reported_without_flooding(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="poller")
    job_ids = [f"job_{i:05d}" for i in range(3_000)]
    release = anyio.Event()
    healthy_calls = 0

    async def stuck(t: Transition) -> None:
        await release.wait()

    def healthy(t: Transition) -> None:
        nonlocal healthy_calls
        healthy_calls += 1

    async with (
        _engine(callback_concurrency=1, callback_queue_size=100) as poller,
        poller.subscribe(max_buffer=10_000) as stream,
    ):
        poller.on_transition(stuck)
        poller.on_transition(healthy)
        results = await poller.wait_all(job_ids, timeout_s=30)
        stats = poller.stats()
        assert len(results) == 3_000 and healthy_calls == 9_000
        assert stream.statistics().buffered == 9_000
        # 1 running + 100 queued; the rest were dropped and counted.
        assert stats.callbacks_dropped == 9_000 - 101
        release.set()
    drops = [r for r in caplog.records if r.name == "poller.callbacks"]
    assert len(drops) <= 10, f"{len(drops)} ERROR records for one stuck callback"


async def test_a_consumer_that_stops_reading_and_leaves_is_forgotten() -> None:
    """A subscription closed mid-stream stops buffering and leaves nothing registered."""
    job_ids = [f"job_{i:05d}" for i in range(2_000)]
    async with _engine() as poller:
        async with poller.subscribe(max_buffer=100_000) as stream:
            for job_id in job_ids:
                poller.track(job_id)
            first = await stream.receive()
            assert isinstance(first, Transition)
        assert poller.stats().subscribers == 0
        assert stream.statistics().buffered == 0
        await poller.wait_all(job_ids, timeout_s=30)
        assert stream.statistics().buffered == 0 and not stream.overflowed
        with pytest.raises(anyio.ClosedResourceError):
            await stream.receive()
    await asyncio.sleep(0)
    assert poller_tasks() == []


async def test_concurrent_receives_and_aclose_never_raise_index_error() -> None:
    from poller.subscription import Subscription

    def event(seq: int) -> Transition:
        job = JobStatus(
            id="job_1",
            status=Status.QUEUED,
            endpoint=Endpoint.DOCUMENTS_EXTRACT,
            created_at=1,
            expires_at=2,
            organization_id="org_a",
        )
        return Transition(
            job_id="job_1",
            organization_id="org_a",
            previous=None,
            current=Status.QUEUED,
            job=job,
            observed_at=0.0,
            seq=seq,
        )

    def subscription() -> Subscription:
        return Subscription(
            max_buffer=10, statuses=None, job_ids=None, include_failures=True, on_close=id
        )

    one = subscription()
    one.offer(event(1))
    with anyio.move_on_after(0.2):  # one receiver gets the event, the other keeps waiting
        got = await asyncio.gather(one.receive(), one.receive(), return_exceptions=True)
        pytest.fail(f"the second receive returned {got!r}")
    one.offer(event(2))
    one.end()
    results = await asyncio.gather(one.receive(), one.receive(), return_exceptions=True)
    kinds = sorted(type(r).__name__ for r in results)
    assert kinds == ["EndOfStream", "Transition"]

    two = subscription()
    two.offer(event(1))
    racing = await asyncio.gather(two.receive(), two.aclose(), return_exceptions=True)
    assert type(racing[0]).__name__ in ("Transition", "ClosedResourceError"), racing
    assert racing[1] is None, racing  # aclose() itself never fails
