"""Fair shares between organisations, and priority within one, under a fake clock."""

from __future__ import annotations

import random
from collections import Counter

from poller.auth import Credential
from poller.models import Endpoint, JobStatus, Status
from poller.sched.backoff import Backoff
from poller.sched.core import Scheduler
from poller.sched.ratelimit import AdaptiveBudget, Budget, RateLimit, TokenBucket

T0 = 1_800_000_000.0
KEYS = {org: Credential(f"rt_test_{org}", environ={}) for org in ("big", "small", "heavy")}
STEADY = Backoff(learn=False, jitter=0.0, min_interval_s=0.1, max_interval_s=0.1)


def payload(job_id: str, org: str, status: Status = Status.IN_PROGRESS) -> JobStatus:
    return JobStatus(
        id=job_id,
        status=status,
        endpoint=Endpoint.DOCUMENTS_EXTRACT,
        created_at=int(T0),
        expires_at=int(T0) + 604_800,
        organization_id=org,
    )


def make(
    *,
    global_per_s: float | None = None,
    limits: dict[str, RateLimit] | None = None,
    weights: dict[str, float] | None = None,
    backoff: Backoff = STEADY,
) -> Scheduler:
    limits = limits or {}

    def budget_for(org: str | None) -> Budget:
        return AdaptiveBudget(limits.get(org) if org else None)

    return Scheduler(
        backoff=backoff,
        budget_for=budget_for,
        weight_for=lambda org: (weights or {}).get(org or "", 1.0),
        global_budget=TokenBucket(global_per_s, 1.0) if global_per_s else None,
        rng=random.Random(5),
        first_poll_rate_per_s=None,
    )


def org_of(job_id: str) -> str:
    return job_id.split("-")[0]


def run(core: Scheduler, until: float, start: float = T0) -> Counter[str]:
    """Answer every poll at once (in progress, forever); count polls per org."""
    sent: Counter[str] = Counter()
    now = start
    while now < until:
        job = core.next_due(now)
        if job is None:
            wake = core.next_wakeup(now)
            if wake is None:
                break
            now = max(now, wake)
            continue
        sent[org_of(job.job_id)] += 1
        core.on_success(job, payload(job.job_id, org_of(job.job_id)), now)
    return sent


def track(core: Scheduler, org: str, count: int) -> None:
    for i in range(count):
        core.track(f"{org}-{i}", KEYS[org], T0)


def test_an_org_with_nine_tenths_of_the_jobs_does_not_starve_the_other() -> None:
    core = make(global_per_s=100.0)
    track(core, "big", 900)
    track(core, "small", 100)
    run(core, T0 + 20)  # past the first polls: every job is due all the time
    sent = run(core, T0 + 60, start=T0 + 20)
    total = sent["big"] + sent["small"]
    assert 0.95 * 4000 <= total <= 4000 + 2, "the global cap is used, and held"
    assert 0.45 <= sent["small"] / total <= 0.55, sent


def test_an_idle_orgs_share_goes_to_the_busy_one() -> None:
    core = make(global_per_s=100.0)
    track(core, "big", 900)
    track(core, "small", 5)  # 5 jobs polled every 0.1 s want 50 req/s of the 100
    run(core, T0 + 20)
    sent = run(core, T0 + 60, start=T0 + 20)
    assert sent["small"] / 40 >= 45, "the small org gets what it asks for"
    assert sent["big"] / 40 >= 45, "and the big one everything else"
    assert sent["big"] + sent["small"] <= 4000 + 2


def test_weights_set_the_shares() -> None:
    core = make(global_per_s=90.0, weights={"heavy": 2.0})
    track(core, "heavy", 500)
    track(core, "small", 500)
    run(core, T0 + 20)
    sent = run(core, T0 + 60, start=T0 + 20)
    assert 1.8 <= sent["heavy"] / sent["small"] <= 2.2, sent


def test_org_budgets_hold_whatever_the_global_cap() -> None:
    core = make(limits={"small": RateLimit(per_s=10.0)})
    track(core, "small", 100)
    track(core, "big", 100)
    run(core, T0 + 5)
    sent = run(core, T0 + 25, start=T0 + 5)
    assert sent["small"] <= 10 * 20 + 2
    assert sent["big"] >= 900 * 20, "the other org is not held back"


def test_a_scarce_budget_goes_to_the_job_with_the_most_lag_piled_up() -> None:
    # One job polled every 0.5 s, one every 8 s (geometric intervals by status): under a
    # budget of 1 request every 2 s, both are always overdue; the first piles lag up
    # much faster, so it must get most of the requests rather than an equal share.
    backoff = Backoff(
        learn=False,
        jitter=0.0,
        initial_interval_s={"queued": 0.5, "in_progress": 8.0},
        multiplier=1.0,
        min_interval_s=0.1,
        max_interval_s=100.0,
    )
    core = make(limits={"small": RateLimit(per_s=0.5, burst=1.0)}, backoff=backoff)
    core.track("small-quick", KEYS["small"], T0)
    core.track("small-slow", KEYS["small"], T0)
    sent: Counter[str] = Counter()
    now = T0
    while now < T0 + 400:
        job = core.next_due(now)
        if job is None:
            wake = core.next_wakeup(now)
            assert wake is not None
            now = max(now, wake)
            continue
        sent[job.job_id] += 1
        status = Status.QUEUED if job.job_id == "small-quick" else Status.IN_PROGRESS
        core.on_success(job, payload(job.job_id, "small", status), now)
    assert sent["small-quick"] + sent["small-slow"] <= 201
    assert sent["small-quick"] > 2 * sent["small-slow"], sent
    assert sent["small-slow"] >= 10, "the slow one is not starved either"
