"""Endurance: a long run at a steady arrival rate shows no growth once the population is steady.

Two drivers:

- the pure core in virtual time (no event loop): jobs arrive as a Poisson stream at the
  rate of 100,000 a day, with lifecycles drawn from the simulator's standard mix
  (seconds to hours), 2% 5xx answers, some 429s and some untracked jobs. Once the
  population is steady (after the terminal retention and the longest jobs), the table,
  the heaps, the retired queue, the fair queue and the allocated memory must stop
  growing. The default run covers 5 virtual hours (20,000 jobs, ~15 s); set
  ``POLLER_ENDURANCE_JOBS=100000`` for the full day (~1 minute).
- the real engine on the wall clock with an in-memory transport, jobs arriving and
  finishing continuously for a few seconds: tasks, timers, waiters and heaps stay flat.
"""

from __future__ import annotations

import asyncio
import bisect
import gc
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import pytest
from _helpers import MemoryTransport, poller_tasks

from poller import Backoff, Poller
from poller.auth import Credential
from poller.errors import RateLimitedError, ServerError
from poller.events import Transition
from poller.models import Endpoint, JobStatus, Status
from poller.sched.core import Scheduler
from poller.sched.ratelimit import AdaptiveBudget
from poller.testing import Change, draw_endpoint, draw_lifecycle

T0 = 1_800_000_000.0
DAY_S = 86_400.0
PER_DAY = 100_000
JOBS = int(os.environ.get("POLLER_ENDURANCE_JOBS", "20000"))
STATUS = {s.value: s for s in Status}
KEYS = [Credential(f"rt_test_endurance_{i}", environ={}) for i in range(3)]


@dataclass(slots=True)
class SimJob:
    """One job's true timeline (the benchmark's population model, kept small)."""

    job_id: str
    endpoint: Endpoint
    key: int
    created_at: float
    changes: list[Change]
    times: list[float]

    def payload(self, now: float) -> JobStatus:
        index = max(0, bisect.bisect_right(self.times, now) - 1)
        status = self.changes[index].status
        started = next((c.at for c in self.changes[: index + 1] if c.status == "in_progress"), None)
        done = self.changes[index].at if status in ("completed", "failed", "cancelled") else None
        return JobStatus(
            id=self.job_id,
            status=STATUS[status],
            endpoint=self.endpoint,
            created_at=int(self.created_at),
            expires_at=int(self.created_at + 604_800),
            organization_id=f"org_{self.key}",
            started_at=int(started) if started is not None else None,
            completed_at=int(done) if done is not None else None,
        )


@dataclass
class Sample:
    at_h: float
    table: int
    live: int
    heap_entries: int
    retired: int
    waiting_heap: int
    buckets: int
    blocks: int


def _heap_entries(core: Scheduler) -> int:
    return sum(len(level) for bucket in core._buckets.values() for level in bucket.levels)


def _drive(n_jobs: int, *, sample_every_s: float, on_sample: Callable[[Sample], None]) -> int:
    """Run ``n_jobs`` arriving at 100,000 a day through the core; returns the polls made."""
    rng = random.Random(2024)
    core = Scheduler(
        backoff=Backoff(),
        budget_for=lambda org: AdaptiveBudget(),
        rng=random.Random(7),
        terminal_retention_s=3600.0,
    )
    rate = PER_DAY / DAY_S
    now, next_arrival, next_sample = T0, T0 + rng.expovariate(rate), T0
    created = polls = 0
    live: dict[str, SimJob] = {}
    while created < n_jobs or live:
        while created < n_jobs and next_arrival <= now:
            endpoint = draw_endpoint(rng)
            changes = draw_lifecycle(rng, endpoint, next_arrival)
            job_id = f"job_{created:07d}"
            sim = SimJob(
                job_id,
                Endpoint(endpoint),
                created % 3,
                next_arrival,
                changes,
                [c.at for c in changes],
            )
            live[job_id] = sim
            core.track(job_id, KEYS[sim.key], now)
            created += 1
            next_arrival += rng.expovariate(rate)
        if now >= next_sample:
            on_sample(
                Sample(
                    at_h=(now - T0) / 3600,
                    table=len(core),
                    live=len(live),
                    heap_entries=_heap_entries(core),
                    retired=len(core._retired),
                    waiting_heap=len(core._queue._waiting),
                    buckets=len(core._buckets),
                    blocks=sys.getallocatedblocks(),
                )
            )
            next_sample += sample_every_s
        job = core.next_due(now)
        if job is not None:
            polls += 1
            draw = rng.random()
            if draw < 0.02:
                core.on_failure(job, ServerError("server error", status=500), now)
            elif draw < 0.021:
                error = RateLimitedError("slow down", status=429, retry_after_s=1.0)
                core.on_failure(job, error, now)
            elif draw < 0.0212:  # now and then a user gives up on a job
                core.on_success(job, live[job.job_id].payload(now), now)
                core.untrack(job.job_id)
                live.pop(job.job_id)
            else:
                core.on_success(job, live[job.job_id].payload(now), now)
            for event in core.take_events():
                if not isinstance(event, Transition) or event.current.is_terminal:
                    live.pop(event.job_id, None)
            core.take_finished()  # the driver's duty, as the engine's _deliver does
            continue
        upcoming = [core.next_wakeup(now), next_sample]
        if created < n_jobs:
            upcoming.append(next_arrival)
        now = max(now, min(t for t in upcoming if t is not None))
    assert core.in_flight == 0
    return polls


def _flat(early: list[float], late: list[float], *, factor: float, slack: float) -> bool:
    return max(late) <= factor * max(early) + slack


@pytest.mark.timeout(180)
def test_a_day_of_jobs_in_virtual_time_shows_no_growth_once_steady() -> None:
    samples: list[Sample] = []
    gc.collect()
    started = time.monotonic()
    polls = _drive(JOBS, sample_every_s=600.0, on_sample=samples.append)
    elapsed = time.monotonic() - started
    hours = JOBS / PER_DAY * 24
    # Steady from 1.5 h on: a terminal job is kept an hour, and nearly every job is done
    # within half an hour of arriving. The arrivals stop at ``hours``.
    steady = [s for s in samples if 1.5 <= s.at_h <= hours]
    assert len(steady) >= 12, len(steady)
    half = len(steady) // 2
    early, late = steady[:half], steady[half:]
    for name, factor, slack in [
        ("table", 1.25, 50),
        ("live", 1.5, 50),
        ("heap_entries", 1.5, 100),
        ("retired", 1.25, 50),
        ("waiting_heap", 1.5, 50),
        ("buckets", 1.0, 0),
    ]:
        before = [float(getattr(s, name)) for s in early]
        after = [float(getattr(s, name)) for s in late]
        assert _flat(before, after, factor=factor, slack=slack), (name, before, after)
    # The table is what the arrival rate and the retention make it: ~1.16 jobs/s kept for
    # an hour and a bit, not the jobs seen so far.
    assert statistics.mean(s.table for s in late) < 6_000
    assert max(s.heap_entries for s in late) < 2 * max(s.live for s in late) + 100
    # Memory: what is held late in the run is what was held early (the duration model
    # fills a bounded table per organisation, endpoint and status, then stops).
    blocks_early = [float(s.blocks) for s in early]
    blocks_late = [float(s.blocks) for s in late]
    assert _flat(blocks_early, blocks_late, factor=1.1, slack=20_000), (
        blocks_early,
        blocks_late,
    )
    assert polls / JOBS < 60
    assert elapsed < 150


# -- the real engine on the wall clock ---------------------------------------------------


@pytest.mark.anyio
@pytest.mark.timeout(60)
async def test_the_engine_under_steady_churn_keeps_tasks_timers_and_heaps_flat() -> None:
    """Jobs arrive at ~1,000 a second and finish within 0.3 s; for 4 s the engine's tasks,
    loop timers, waiters, table and heaps must stay flat."""
    transport = MemoryTransport()
    loop = asyncio.get_running_loop()
    samples: list[tuple[int, int, int, int, int, int]] = []
    backoff = Backoff(
        initial_interval_s={},
        default_interval_s=0.02,
        min_interval_s=0.01,
        max_interval_s=0.05,
        multiplier=1.0,
        learn=False,
    )
    rng = random.Random(9)
    waited = ended = 0

    def count_end(t: Transition) -> None:
        nonlocal ended
        ended += t.current.is_terminal

    async with (
        Poller(
            api_key="rt_test_churn",
            transport=transport,
            backoff=backoff,
            first_poll_rate_per_s=None,
            terminal_retention_s=0.3,
            max_connections=16,
        ) as poller,
        poller.subscribe(max_buffer=100) as stream,  # a subscriber that never reads
        anyio.create_task_group() as tg,
    ):

        async def wait_for(job_id: str) -> None:
            nonlocal waited
            await poller.wait(job_id, timeout_s=10)
            waited += 1

        poller.on_transition(count_end)
        started = time.monotonic()
        n = 0
        while time.monotonic() - started < 4.0:
            for _ in range(10):
                job_id = f"job_{n:06d}"
                queued_s = rng.uniform(0.0, 0.1)
                transport.add(
                    job_id, ["queued", "in_progress", "completed"], [0.0, queued_s, queued_s + 0.2]
                )
                if n % 10 == 0:
                    tg.start_soon(wait_for, job_id)
                else:
                    poller.track(job_id)
                n += 1
            core = poller._core
            samples.append(
                (
                    len(asyncio.all_tasks()),
                    len(loop._scheduled),  # type: ignore[attr-defined]
                    len(core),
                    _heap_entries(core),
                    len(poller._waiters),
                    len(poller._driver.idle if poller._driver else ()),
                )
            )
            await anyio.sleep(0.01)
        for _ in range(200):  # the last jobs finish and are forgotten
            if not poller.stats().tracked:
                break
            await anyio.sleep(0.05)
        assert poller.stats().tracked == 0
        stats = poller.stats()
        assert stream.statistics().buffered == 100
    assert waited == n // 10 and ended == n
    assert stats.failures == 0 and 2 * n <= stats.transitions <= 3 * n
    steady = samples[len(samples) // 4 :]  # after the first second
    third = len(steady) // 3
    middle, last = steady[third : 2 * third], steady[2 * third :]
    names = ["tasks", "timers", "table", "heap entries", "waiters", "idle workers"]
    for index, name in enumerate(names):
        before = [float(s[index]) for s in middle]
        after = [float(s[index]) for s in last]
        assert _flat(before, after, factor=1.3, slack=30), (name, max(before), max(after))
    # Tasks: the engine's fixed set plus one per pending wait, never one per job.
    assert max(s[0] for s in steady) < 16 + 1 + 16 + 200
    assert poller_tasks() == []


# -- churn of credentials ----------------------------------------------------------------


@pytest.mark.anyio
async def test_rotating_per_job_keys_leave_nothing_behind_once_their_jobs_are_gone() -> None:
    transport = MemoryTransport()
    backoff = Backoff(min_interval_s=0.01, learn=False)
    async with Poller(
        api_key="rt_test_default",
        transport=transport,
        backoff=backoff,
        first_poll_rate_per_s=None,
        terminal_retention_s=0.0,
    ) as poller:
        for i in range(2_000):
            transport.add(f"job_{i}", ["completed"], [0.0])
            await poller.wait(f"job_{i}", api_key=f"rt_test_rotating_{i}", timeout_s=5)
        await anyio.sleep(0.05)
        assert poller.stats().tracked == 0
        core = poller._core
        held = len(poller._credentials) + len(core._key_orgs) + len(core._buckets)
    assert held < 100, (len(poller._credentials), len(core._key_orgs), len(core._buckets))
