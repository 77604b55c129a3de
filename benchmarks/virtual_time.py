"""Scheduling efficiency in virtual time: requests per job against detection lag.

The real scheduling core (``poller.sched.core.Scheduler``) runs against a simulated
population of jobs with a virtual clock: no HTTP, no sleeping, so hours of
traffic take seconds. Each response is instant and exact. The baselines are the
waiting strategies users have today:

- ``fixed``: one loop per job, a fixed interval (the official SDK's wait helper
  polls every 2 s);
- ``exponential``: 1 s growing x1.5 per poll up to a cap (cloud SDK waiters);
- ``round-robin``: within a request budget, every active job in turn.

Each baseline's one parameter (the interval, the cap) is tuned by bisection so
that its requests per job equal the engine's; then mean detection lag is
compared at equal cost. Lag is measured per true status change, from the
change to the first poll that shows it (or a later status of the same attempt).
"""

from __future__ import annotations

import bisect
import math
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from poller.auth import Credential
from poller.events import Transition
from poller.models import Endpoint, JobStatus, Status
from poller.sched.backoff import Backoff
from poller.sched.core import Scheduler
from poller.sched.learn import LearnedDurations
from poller.sched.ratelimit import AdaptiveBudget, RateLimit
from poller.testing import STANDARD_MIX, Change, EndpointClass, Outcomes, draw_lifecycle
from poller.testing.lag import LagSummary, detection_lags, summarize_lags

T0 = 1_800_000_000.0
ORG = "org_bench"
_KEY = Credential("rt_test_virtual", environ={})
_STATUS = {s.value: s for s in Status}


@dataclass
class SimJob:
    """One simulated job: its true timeline and what its status payload says at a time."""

    job_id: str
    endpoint: str
    created_at: float
    changes: list[Change]
    times: list[float] = field(init=False)

    def __post_init__(self) -> None:
        self.times = [c.at for c in self.changes]

    @property
    def done_at(self) -> float:
        return self.changes[-1].at

    def status_at(self, t: float) -> str:
        return self.changes[max(0, bisect.bisect_right(self.times, t) - 1)].status

    def payload(self, t: float) -> JobStatus:
        index = max(0, bisect.bisect_right(self.times, t) - 1)
        status = self.changes[index].status
        started = next((c.at for c in self.changes[: index + 1] if c.status == "in_progress"), None)
        done = self.changes[index].at if status in ("completed", "failed", "cancelled") else None
        return JobStatus(
            id=self.job_id,
            status=_STATUS[status],
            endpoint=Endpoint(self.endpoint),
            created_at=int(self.created_at),
            expires_at=int(self.created_at + 604_800),
            organization_id=ORG,
            started_at=int(started) if started is not None else None,
            completed_at=int(done) if done is not None else None,
        )


def equal_mix(classes: Sequence[EndpointClass] = STANDARD_MIX) -> list[str]:
    """One representative endpoint per class: drawing uniformly gives equal shares."""
    return [cls.endpoints[0] for cls in classes]


def population(
    n: int, *, endpoints: Sequence[str], arrival_per_s: float | None, seed: int = 1
) -> list[SimJob]:
    """``n`` jobs, endpoints drawn uniformly from ``endpoints``, arriving as a Poisson
    process at ``arrival_per_s`` (None: all at once)."""
    rng = random.Random(seed)
    jobs = []
    at = T0
    for index in range(n):
        if arrival_per_s is not None:
            at += rng.expovariate(arrival_per_s)
        endpoint = rng.choice(endpoints)
        changes = draw_lifecycle(rng, endpoint, at, outcomes=Outcomes())
        jobs.append(SimJob(f"job_{index:07d}", endpoint, at, changes))
    return jobs


@dataclass
class Result:
    """One policy's run."""

    policy: str
    requests: int
    jobs: int
    lag: LagSummary
    parameter: str = ""

    @property
    def requests_per_job(self) -> float:
        return self.requests / self.jobs


def _lags(jobs: Sequence[SimJob], seen: dict[str, list[tuple[str, float]]]) -> LagSummary:
    lags: list[float] = []
    missed = 0
    for job in jobs:
        job_lags, job_missed = detection_lags(job.changes, seen.get(job.job_id, []), since=0.0)
        lags.extend(job_lags)
        missed += job_missed
    return summarize_lags(lags, missed)


def run_engine(
    jobs: Sequence[SimJob],
    *,
    backoff: Backoff,
    rate_limit: RateLimit | None = None,
    name: str = "poller",
    learned: LearnedDurations | None = None,
) -> Result:
    """The real scheduling core over ``jobs`` (arrival order), instant responses;
    ``learned``: start from what an earlier engine learned (see :func:`learned_from`)."""
    return _drive(jobs, _core(backoff, rate_limit, learned), name)


def learned_from(jobs: Sequence[SimJob], *, backoff: Backoff) -> LearnedDurations:
    """What the core learns about durations from a run over ``jobs``."""
    core = _core(backoff, None, None)
    _drive(jobs, core, "poller")
    learned = core.learned()
    assert learned is not None, "backoff.learn is off"
    return learned


def _core(
    backoff: Backoff, rate_limit: RateLimit | None, learned: LearnedDurations | None
) -> Scheduler:
    return Scheduler(
        backoff=backoff,
        budget_for=lambda org: AdaptiveBudget(rate_limit),
        rng=random.Random(7),
        first_poll_rate_per_s=None,
        terminal_retention_s=60.0,
        learned=learned,
    )


def _drive(jobs: Sequence[SimJob], core: Scheduler, name: str) -> Result:
    by_id = {job.job_id: job for job in jobs}
    seen: dict[str, list[tuple[str, float]]] = {job.job_id: [] for job in jobs}
    arrivals = deque(sorted(jobs, key=lambda j: j.created_at))
    now = arrivals[0].created_at
    requests = finished = 0
    while finished < len(jobs):
        while arrivals and arrivals[0].created_at <= now:
            core.track(arrivals.popleft().job_id, _KEY, now)
        job = core.next_due(now)
        if job is not None:
            requests += 1
            core.on_success(job, by_id[job.job_id].payload(now), now)
            core.take_finished()  # a driver must drain both, or finished jobs pile up
            for event in core.take_events():
                if isinstance(event, Transition):
                    seen[event.job_id].append((event.current.value, now))
                    finished += event.current.is_terminal
                else:
                    finished += 1
            continue
        wake = core.next_wakeup(now)
        upcoming = [
            t for t in (wake, arrivals[0].created_at if arrivals else None) if t is not None
        ]
        now = max(now, min(upcoming))
    return Result(name, requests, len(jobs), _lags(jobs, seen))


def record_polls(
    jobs: Sequence[SimJob],
    next_poll: Callable[[SimJob, str, float, int], float | None],
    name: str,
    parameter: str,
) -> Result:
    """One loop per job from its ``created_at``: poll, then ask ``next_poll(job, status
    seen, now, polls so far - 1)`` when to poll next (None: stop; terminal statuses stop
    anyway)."""
    requests = 0
    seen: dict[str, list[tuple[str, float]]] = {}
    for job in jobs:
        t: float | None = job.created_at
        k, last = 0, None
        observed: list[tuple[str, float]] = []
        while t is not None:
            status = job.status_at(t)
            requests += 1
            if status != last:
                observed.append((status, t))
                last = status
            if status in ("completed", "failed", "cancelled", "expired"):
                break
            t = next_poll(job, status, t, k)
            k += 1
        seen[job.job_id] = observed
    return Result(name, requests, len(jobs), _lags(jobs, seen), parameter)


def _poll_schedule(
    jobs: Sequence[SimJob], next_gap: Callable[[int], float], name: str, parameter: str
) -> Result:
    """One loop per job, polling at ``created_at`` + cumulative gaps until terminal."""
    return record_polls(jobs, lambda job, status, t, k: t + next_gap(k), name, parameter)


def run_fixed(jobs: Sequence[SimJob], interval_s: float) -> Result:
    """The SDK-style waiter: a fixed interval."""
    return _poll_schedule(jobs, lambda k: interval_s, "fixed", f"{interval_s:.2f} s")


def run_exponential(jobs: Sequence[SimJob], cap_s: float) -> Result:
    """The cloud-SDK-style waiter: 1 s, x1.5 per poll, capped."""
    return _poll_schedule(
        jobs, lambda k: min(cap_s, 1.5 ** min(k, 60)), "exponential", f"1 s x1.5, cap {cap_s:.1f} s"
    )


def run_round_robin(jobs: Sequence[SimJob], rate_per_s: float) -> Result:
    """Every active job in turn at ``rate_per_s`` (new jobs join the back of the line)."""
    arrivals = deque(sorted(jobs, key=lambda j: j.created_at))
    line: deque[SimJob] = deque()
    last: dict[str, str] = {}
    seen: dict[str, list[tuple[str, float]]] = {job.job_id: [] for job in jobs}
    gap = 1.0 / rate_per_s
    now = arrivals[0].created_at
    requests = 0
    while arrivals or line:
        while arrivals and arrivals[0].created_at <= now:
            line.append(arrivals.popleft())
        if not line:
            now = arrivals[0].created_at
            continue
        job = line.popleft()
        status = job.status_at(now)
        requests += 1
        if status != last.get(job.job_id):
            seen[job.job_id].append((status, now))
            last[job.job_id] = status
        if status not in ("completed", "failed", "cancelled", "expired"):
            line.append(job)
        now += gap
    return Result("round-robin", requests, len(jobs), _lags(jobs, seen), f"{rate_per_s:g} req/s")


def tune(
    run: Callable[[float], Result], target_requests_per_job: float, lo: float, hi: float
) -> Result:
    """Bisect ``run``'s parameter (larger = fewer requests) to match a request budget."""
    best: Result | None = None
    for _ in range(40):
        mid = math.sqrt(lo * hi)
        result = run(mid)
        if best is None or abs(result.requests_per_job - target_requests_per_job) < abs(
            best.requests_per_job - target_requests_per_job
        ):
            best = result
        if result.requests_per_job > target_requests_per_job:
            lo = mid
        else:
            hi = mid
        if abs(result.requests_per_job / target_requests_per_job - 1.0) < 0.002:
            break
    assert best is not None
    return best
