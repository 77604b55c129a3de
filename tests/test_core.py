"""The scheduling core under a fake clock: no event loop, no sleeping."""

from __future__ import annotations

import itertools
import random

import msgspec
import pytest

from poller.auth import Credential
from poller.errors import (
    AuthenticationError,
    ConfigError,
    ConnectionLostError,
    DecodeError,
    JobNotFoundError,
    RateLimitedError,
    RequestError,
    ServerError,
    TrackingExpiredError,
)
from poller.events import TrackingFailure, Transition
from poller.models import Endpoint, JobStatus, Status
from poller.sched.backoff import Backoff
from poller.sched.core import ORG_IDLE_S, PENDING, Scheduler
from poller.sched.learn import DurationModel, LearnedDurations
from poller.sched.queue import TrackedJob
from poller.sched.ratelimit import AdaptiveBudget, Budget, RateLimit

T0 = 1_700_000_000.0
KEY = Credential("rt_test_core", environ={})
OTHER_KEY = Credential("rt_test_other", environ={})
NO_JITTER = Backoff(jitter=0.0, learn=False)


def payload(job_id: str, status: Status, *, org: str = "org_a", expires_at: float = T0 + 86400):
    return JobStatus(
        id=job_id,
        status=status,
        endpoint=Endpoint.DOCUMENTS_EXTRACT,
        created_at=int(T0),
        expires_at=int(expires_at),
        organization_id=org,
    )


def make(
    *,
    backoff: Backoff = NO_JITTER,
    budget_for=lambda org: AdaptiveBudget(),
    first_poll_rate_per_s: float | None = None,
    retention_s: float = 3600.0,
    resolve: bool = True,
) -> Scheduler:
    """A core; with ``resolve``, both test keys' organisations are known already (a key's
    first answer names it), so their jobs are not limited to one probe at a time."""
    core = Scheduler(
        backoff=backoff,
        budget_for=budget_for,
        rng=random.Random(7),
        first_poll_rate_per_s=first_poll_rate_per_s,
        terminal_retention_s=retention_s,
    )
    if resolve:  # as if each key's first answer had come: white-box, to start clean
        core._key_orgs.update({KEY: "org_a", OTHER_KEY: "org_b"})
    return core


def drain(core: Scheduler, now: float) -> list[TrackedJob]:
    jobs = []
    while (job := core.next_due(now)) is not None:
        jobs.append(job)
    return jobs


def test_new_job_is_due_at_once_and_only_once() -> None:
    core = make()
    core.track("job_1", KEY, T0)
    assert core.next_wakeup(T0) == T0
    job = core.next_due(T0)
    assert job is not None and job.job_id == "job_1"
    assert core.next_due(T0) is None, "an in-flight job is never handed out twice"
    assert core.in_flight == 1
    assert core.next_wakeup(T0) is None


def test_track_is_idempotent() -> None:
    core = make()
    first = core.track("job_1", KEY, T0)
    assert core.track("job_1", OTHER_KEY, T0) is first
    assert len(drain(core, T0)) == 1
    assert len(core) == 1


def test_first_sighting_and_changes_are_transitions_repeats_are_not() -> None:
    core = make()
    core.track("job_1", KEY, T0)
    now = T0
    statuses = [Status.QUEUED, Status.QUEUED, Status.IN_PROGRESS, Status.IN_PROGRESS]
    for status in statuses:
        wake = core.next_wakeup(now)
        assert wake is not None
        now = wake
        job = core.next_due(now)
        assert job is not None
        core.on_success(job, payload("job_1", status), now)
    events = core.take_events()
    assert [(e.previous, e.current, e.seq) for e in events if isinstance(e, Transition)] == [
        (None, Status.QUEUED, 1),
        (Status.QUEUED, Status.IN_PROGRESS, 2),
    ]
    assert core.take_events() == []


def test_interval_grows_while_unchanged_and_resets_on_transition() -> None:
    backoff = Backoff(
        jitter=0.0, multiplier=2.0, min_interval_s=0.1, max_interval_s=100.0, learn=False
    )
    core = make(backoff=backoff)
    core.track("job_1", KEY, T0)
    now, gaps = T0, []
    for status in [Status.QUEUED] * 4 + [Status.IN_PROGRESS] * 3:
        job = core.next_due(now)
        assert job is not None
        core.on_success(job, payload("job_1", status), now)
        wake = core.next_wakeup(now)
        assert wake is not None
        gaps.append(round(wake - now, 6))
        now = wake
    queued = backoff.initial_interval_s["queued"]
    running = backoff.initial_interval_s["in_progress"]
    assert gaps == [queued, queued * 2, queued * 4, queued * 8, running, running * 2, running * 4]


def test_interval_never_below_floor_nor_above_cap() -> None:
    backoff = Backoff(
        min_interval_s=0.5, max_interval_s=3.0, multiplier=3.0, jitter=0.5, learn=False
    )
    core = make(backoff=backoff)
    core.track("job_1", KEY, T0)
    now = T0
    for _ in range(50):
        job = core.next_due(now)
        assert job is not None
        core.on_success(job, payload("job_1", Status.IN_PROGRESS), now)
        wake = core.next_wakeup(now)
        assert wake is not None
        assert 0.5 <= wake - now <= 3.0
        now = wake


def test_terminal_status_stops_polling_and_keeps_the_payload() -> None:
    core = make()
    core.track("job_1", KEY, T0)
    job = core.next_due(T0)
    assert job is not None
    final = payload("job_1", Status.COMPLETED)
    core.on_success(job, final, T0)
    assert job.done and job.final is final
    assert core.next_due(T0 + 100) is None
    assert core.counts() == {"completed": 1}
    (event,) = core.take_events()
    assert isinstance(event, Transition) and event.is_terminal


def test_finished_jobs_are_forgotten_after_retention() -> None:
    core = make(retention_s=60.0)
    core.track("job_1", KEY, T0)
    job = core.next_due(T0)
    assert job is not None
    core.on_success(job, payload("job_1", Status.FAILED), T0)
    assert core.next_wakeup(T0) == T0 + 60.0
    core.next_due(T0 + 59.0)
    assert "job_1" in core
    core.next_due(T0 + 60.0)
    assert "job_1" not in core
    assert core.counts() == {}


def test_an_organisation_without_jobs_for_an_hour_is_forgotten() -> None:
    core = make(retention_s=60.0, budget_for=lambda org: AdaptiveBudget(RateLimit(per_s=5.0)))
    core.track("job_1", KEY, T0)
    job = core.next_due(T0)
    assert job is not None
    core.on_success(job, payload("job_1", Status.IN_PROGRESS), T0)
    assert core.org_rate("org_a") == pytest.approx(5.0 * 0.98)
    # While it has a job, however long, it is kept.
    for now in range(int(T0), int(T0 + 2 * ORG_IDLE_S), 600):
        core.next_due(float(now))
    assert core.org_rate("org_a") is not None
    core.untrack("job_1")
    later = T0 + 2 * ORG_IDLE_S
    core.next_due(later)  # seen empty
    core.next_due(later + ORG_IDLE_S - 1)
    assert core.org_rate("org_a") is not None, "not idle long enough"
    core.next_due(later + ORG_IDLE_S + 301)  # the next sweep after an hour
    assert core.org_rate("org_a") is None
    # It comes back as new (the key too was forgotten with its last job): probed, then
    # one bucket again, with its configured budget.
    back = later + 2 * ORG_IDLE_S
    core.track("job_2", KEY, back)
    job = core.next_due(back)
    assert job is not None and job.bucket.org_id is None
    core.on_success(job, payload("job_2", Status.IN_PROGRESS), back)
    assert job.bucket.org_id == "org_a" and job.bucket.members == 1
    assert core.org_rate("org_a") == pytest.approx(5.0 * 0.98)


def test_forgetting_an_organisation_is_told_to_whoever_made_its_budget() -> None:
    """A fleet's coordinator keeps the budgets it made: it drops one when told."""
    forgotten: list[str] = []
    core = Scheduler(
        backoff=NO_JITTER,
        budget_for=lambda org: AdaptiveBudget(),
        rng=random.Random(7),
        terminal_retention_s=0.0,
        on_forget_org=forgotten.append,
    )
    core._key_orgs[KEY] = "org_a"
    core.track("job_1", KEY, T0)
    job = core.next_due(T0)
    assert job is not None
    core.on_success(job, payload("job_1", Status.COMPLETED), T0)
    for now in range(int(T0), int(T0 + 2 * ORG_IDLE_S), 300):
        core.next_due(float(now))
    assert forgotten == ["org_a"]


def test_an_organisation_with_short_jobs_between_sweeps_is_not_forgotten() -> None:
    """Jobs that come and go between two sweeps (every 5 minutes) keep it known."""
    core = make(retention_s=0.0, budget_for=lambda org: AdaptiveBudget(RateLimit(per_s=5.0)))
    for i in range(12):  # one 30 s job every 10 minutes, for two hours
        start = T0 + 100.0 + 600.0 * i
        core.track(f"job_{i}", KEY, start)
        job = core.next_due(start)
        assert job is not None
        core.on_success(job, payload(job.job_id, Status.IN_PROGRESS), start)
        done = core.next_due(start + 30.0)
        assert done is not None
        core.on_success(done, payload(job.job_id, Status.COMPLETED), start + 30.0)
        core.next_due(start + 31.0)  # retired at once
        assert job.job_id not in core
        core.next_due(start + 500.0)  # a sweep sees the organisation empty
        assert core.org_rate("org_a") is not None, f"forgotten after job {i}"


def test_an_organisation_is_kept_while_a_finished_job_is_retained() -> None:
    core = make(retention_s=2 * ORG_IDLE_S)
    core.track("job_1", KEY, T0)
    job = core.next_due(T0)
    assert job is not None
    core.on_success(job, payload("job_1", Status.COMPLETED), T0)
    for step in range(1, 8):
        core.next_due(T0 + step * 600.0)
    assert "job_1" in core and "org:org_a" in core._buckets


def test_untracked_job_is_never_polled_again_even_if_in_flight() -> None:
    core = make()
    core.track("job_1", KEY, T0)
    core.track("job_2", KEY, T0)
    core.untrack("job_2")
    job = core.next_due(T0)
    assert job is not None and job.job_id == "job_1"
    assert core.next_due(T0) is None
    core.untrack("job_1")
    core.on_success(job, payload("job_1", Status.QUEUED), T0)
    assert core.take_events() == [], "a result for an untracked job is dropped"
    assert core.in_flight == 0
    assert core.next_due(T0 + 1000) is None
    assert core.untrack("job_1") is None


def test_stale_entries_are_compacted() -> None:
    core = make()
    for i in range(3000):
        core.track(f"job_{i}", KEY, T0)
    for i in range(2900):
        core.untrack(f"job_{i}")
    bucket = next(iter(core._buckets.values()))
    assert sum(len(level) for level in bucket.levels) < 3000, "compaction ran"
    assert {job.job_id for job in drain(core, T0)} == {f"job_{i}" for i in range(2900, 3000)}


def test_burst_of_new_jobs_is_paced() -> None:
    core = make(first_poll_rate_per_s=100.0)
    for i in range(300):
        core.track(f"job_{i}", KEY, T0)
    assert len(drain(core, T0)) == 1
    assert len(drain(core, T0 + 1.0)) == 100
    assert len(drain(core, T0 + 3.0)) == 199
    # A job tracked after a quiet spell goes at once.
    core.track("job_late", KEY, T0 + 100.0)
    assert [j.job_id for j in drain(core, T0 + 100.0)] == ["job_late"]


def test_not_found_ends_tracking_with_an_error() -> None:
    core = make()
    core.track("job_1", KEY, T0)
    job = core.next_due(T0)
    assert job is not None
    error = JobNotFoundError("job not found", job_id="job_1", status=404)
    core.on_failure(job, error, T0)
    (event,) = core.take_events()
    assert isinstance(event, TrackingFailure) and event.error is error
    assert job.done and job.final is error
    assert core.next_due(T0 + 1000) is None
    assert core.counts() == {"error": 1}


def test_authentication_failure_stops_every_job_of_that_key_only() -> None:
    core = make()
    for i in range(3):
        core.track(f"job_{i}", KEY, T0)
    core.track("job_other", OTHER_KEY, T0)
    first = core.next_due(T0)
    assert first is not None and first.credential == KEY
    second = core.next_due(T0)
    assert second is not None
    error = AuthenticationError("authentication failed", status=401)
    core.on_failure(first, error, T0)
    failed = {e.job_id for e in core.take_events() if isinstance(e, TrackingFailure)}
    assert failed == {"job_0", "job_1", "job_2"}
    # A refused key's in-flight result is ignored; the other key's job goes on.
    core.on_success(second, payload(second.job_id, Status.QUEUED), T0)
    assert [j.job_id for j in drain(core, T0 + 100)] == ["job_other"]
    core.take_events()
    # A job tracked later with the refused key fails at once.
    late = core.track("job_late", KEY, T0 + 1)
    assert late.done
    (event,) = core.take_events()
    assert isinstance(event, TrackingFailure) and event.job_id == "job_late"


@pytest.mark.parametrize(
    "error",
    [
        ConnectionLostError("connection lost"),
        DecodeError("bad", excerpt="x"),
        ServerError("server error", status=500),
    ],
)
def test_errors_back_off_exponentially_then_give_up(error) -> None:
    """A job whose requests fail while its organisation answers others' (another job's
    answers come between its tries) ends after ``max_consecutive_errors``."""
    backoff = Backoff(
        error_base_s=1.0, error_max_s=8.0, max_consecutive_errors=6, jitter=0.0, learn=False
    )
    core = make(backoff=backoff)
    core.track("job_1", KEY, T0)
    core.track("job_ok", KEY, T0)
    now, tries = T0, []
    while len(tries) < 6:
        job = core.next_due(now)
        if job is None:
            wake = core.next_wakeup(now)
            assert wake is not None
            now = wake
        elif job.job_id == "job_ok":
            core.on_success(job, payload("job_ok", Status.QUEUED), now)
        else:
            tries.append(now)
            core.on_failure(job, error, now)
    delays = [b - a for a, b in itertools.pairwise(tries)]
    for attempt, delay in enumerate(delays, start=1):
        assert backoff.min_interval_s <= delay <= min(8.0, 2.0 ** (attempt - 1)) + 1e-9
    failures = [e for e in core.take_events() if isinstance(e, TrackingFailure)]
    assert [f.job_id for f in failures] == ["job_1"] and failures[0].error is error
    job_1 = core.get("job_1")
    assert job_1 is not None and job_1.done


@pytest.mark.parametrize(
    "error",
    [
        ConnectionLostError("connection lost"),
        DecodeError("bad", excerpt="x"),
        ServerError("server error", status=500),
    ],
)
def test_a_job_alone_with_its_failing_organisation_is_not_given_up(error) -> None:
    """With no answer from its organisation at all, a job's errors are no sign that the
    job is at fault: it is tracked on."""
    backoff = Backoff(error_base_s=1.0, error_max_s=8.0, max_consecutive_errors=3, learn=False)
    core = make(backoff=backoff)
    core.track("job_1", KEY, T0)
    now = T0
    for _ in range(1000):  # an hour and more of failures
        job = core.next_due(now)
        if job is None:
            wake = core.next_wakeup(now)
            assert wake is not None, "never dropped"
            now = wake
            continue
        core.on_failure(job, error, now)
    assert core.take_events() == []
    assert now - T0 > 1000
    health = core.org_health("org_a", now)
    # One job alone never trips the breaker (it might be that job's own fault): it goes on
    # at its own backoff, and its organisation shows the failures.
    assert health is not None and health.state != "down" and health.streak >= 100


def test_success_resets_the_error_count() -> None:
    core = make(backoff=Backoff(max_consecutive_errors=2, jitter=0.0, learn=False))
    core.track("job_1", KEY, T0)
    now = T0
    for outcome in ["error", "ok", "error", "ok", "error"]:
        wake = core.next_wakeup(now)
        assert wake is not None
        now = wake
        job = core.next_due(now)
        assert job is not None
        if outcome == "error":
            core.on_failure(job, ConnectionLostError("reset"), now)
        else:
            core.on_success(job, payload("job_1", Status.QUEUED), now)
    assert not any(isinstance(e, TrackingFailure) for e in core.take_events())


def test_retry_after_on_one_job_pauses_the_whole_organisation() -> None:
    core = make()
    for i in range(3):
        core.track(f"job_{i}", KEY, T0)
    jobs = drain(core, T0)
    for job in jobs:
        core.on_success(job, payload(job.job_id, Status.QUEUED), T0)
    now = core.next_wakeup(T0)
    assert now is not None
    job = core.next_due(now)
    assert job is not None
    core.on_failure(job, RateLimitedError("rate limited", status=429, retry_after_s=30.0), now)
    assert drain(core, now + 29.9) == [], "the org is paused, not just the job"
    resumed: set[str] = set()
    at = now + 30.0
    while len(resumed) < 3 and at < now + 60.0:
        resumed.update(job.job_id for job in drain(core, at))
        at += 0.25
    assert resumed == {"job_0", "job_1", "job_2"}, "every job goes on after the pause"
    assert not any(isinstance(e, TrackingFailure) for e in core.take_events())


def test_a_429_does_not_count_towards_giving_up() -> None:
    core = make(backoff=Backoff(max_consecutive_errors=1, learn=False))
    core.track("job_1", KEY, T0)
    now, sent_at = T0, []
    while len(sent_at) < 5:
        job = core.next_due(now)
        if job is None:
            wake = core.next_wakeup(now)
            assert wake is not None, "a throttled job is never dropped"
            now = wake
            continue
        sent_at.append(now)
        core.on_failure(job, RateLimitedError("slow down", status=429, retry_after_s=1.0), now)
    assert all(b - a >= 1.0 for a, b in itertools.pairwise(sent_at)), "Retry-After honoured"
    assert core.take_events() == []


def test_org_budget_caps_requests_and_other_orgs_are_unaffected() -> None:
    def budget_for(org: str | None) -> Budget:
        if org == "org_a":
            return AdaptiveBudget(RateLimit(per_s=10.0, burst=1))
        return AdaptiveBudget()

    core = make(budget_for=budget_for)
    # Resolve both keys' organisations with a first poll each.
    for i in range(50):
        core.track(f"a_{i}", KEY, T0)
        core.track(f"b_{i}", OTHER_KEY, T0)
    for job in drain(core, T0):
        org = "org_a" if job.job_id.startswith("a_") else "org_b"
        core.on_success(job, payload(job.job_id, Status.IN_PROGRESS, org=org), T0)
    sent = {"a": 0, "b": 0}
    now = T0 + 1.0
    while now < T0 + 2.0:
        for job in drain(core, now):
            sent[job.job_id[0]] += 1
            org = "org_a" if job.job_id.startswith("a_") else "org_b"
            core.on_success(job, payload(job.job_id, Status.IN_PROGRESS, org=org), now)
        now += 0.01
    assert sent["a"] <= 11, sent
    assert sent["b"] >= 50, sent


def test_expiry_polls_once_after_expires_at_then_gives_up() -> None:
    core = make(backoff=Backoff(jitter=0.0, max_interval_s=1000.0, min_interval_s=0.5, learn=False))
    expires = T0 + 5.0
    core.track("job_1", KEY, T0)
    now = T0
    job = core.next_due(now)
    assert job is not None
    core.on_success(job, payload("job_1", Status.QUEUED, expires_at=expires), now)
    # Backoff would wait past expiry; the core looks right after it instead.
    now = T0 + 4.9
    job = core.next_due(now)
    assert job is not None
    core.on_success(job, payload("job_1", Status.QUEUED, expires_at=expires), now)
    assert core.next_wakeup(now) == expires + 0.5
    # Still not terminal well past expiry: tracking ends with TrackingExpiredError.
    now = expires + 61.0
    job = core.next_due(now)
    assert job is not None
    core.on_success(job, payload("job_1", Status.QUEUED, expires_at=expires), now)
    failure = core.take_events()[-1]
    assert isinstance(failure, TrackingFailure)
    assert isinstance(failure.error, TrackingExpiredError)


def test_counts_follow_statuses() -> None:
    core = make()
    for i in range(4):
        core.track(f"job_{i}", KEY, T0)
    assert core.counts() == {PENDING: 4}
    jobs = drain(core, T0)
    core.on_success(jobs[0], payload("job_0", Status.QUEUED), T0)
    core.on_success(jobs[1], payload("job_1", Status.COMPLETED), T0)
    core.on_failure(jobs[2], JobNotFoundError("gone", status=404), T0)
    assert core.counts() == {PENDING: 1, "queued": 1, "completed": 1, "error": 1}
    core.untrack("job_0")
    assert core.counts() == {PENDING: 1, "completed": 1, "error": 1}


def test_unknown_status_is_a_non_terminal_transition() -> None:
    core = make()
    core.track("job_1", KEY, T0)
    job = core.next_due(T0)
    assert job is not None
    core.on_success(job, payload("job_1", Status("postprocessing")), T0)
    (event,) = core.take_events()
    assert isinstance(event, Transition) and not event.current.is_known
    assert not job.done
    assert core.next_wakeup(T0) is not None


def test_a_refused_key_is_tried_again_after_a_while() -> None:
    core = make()
    core.track("job_1", KEY, T0)
    job = core.next_due(T0)
    assert job is not None
    core.on_failure(job, AuthenticationError("authentication failed", status=401), T0)
    assert core.track("job_2", KEY, T0 + 10).done, "refused at once for a while"
    fresh = core.track("job_3", KEY, T0 + 301)
    assert not fresh.done
    assert [j.job_id for j in drain(core, T0 + 301)] == ["job_3"]


def test_a_key_whose_organisation_is_unknown_sends_one_probe_at_a_time() -> None:
    core = make(resolve=False)
    for i in range(10):
        core.track(f"job_{i}", KEY, T0)
    first = drain(core, T0)
    assert len(first) == 1, "one probe until the first answer names the organisation"
    # An answer that names no organisation (an error status) frees the next probe.
    core.on_failure(first[0], JobNotFoundError("gone", status=404), T0 + 0.01)
    second = drain(core, T0 + 0.01)
    assert len(second) == 1
    # No answer at all (a reset): the probe is over all the same, the next goes.
    core.on_failure(second[0], ConnectionLostError("reset"), T0 + 0.02)
    third = drain(core, T0 + 0.02)
    assert len(third) == 1
    # A probe whose outcome never comes back does not block the key for ever.
    assert drain(core, T0 + 0.5) == []
    fourth = drain(core, T0 + 1.1)
    assert len(fourth) == 1
    # The first success names the organisation: every job never polled goes at once.
    core.on_success(third[0], payload(third[0].job_id, Status.QUEUED), T0 + 1.2)
    probed = {job.job_id for job in first + second + third + fourth}
    never_polled = {f"job_{i}" for i in range(10)} - probed
    assert never_polled <= {job.job_id for job in drain(core, T0 + 1.2)}


def _validating(job_id: str, *, created_at: float) -> JobStatus:
    return JobStatus(
        id=job_id,
        status=Status.VALIDATING,
        endpoint=Endpoint.DOCUMENTS_EXTRACT,
        created_at=int(created_at),
        expires_at=int(T0 + 86400),
        organization_id="org_a",
    )


def _poll(core: Scheduler, now: float) -> tuple[TrackedJob, float]:
    """The next job the core sends, and when (spurious wake-ups skipped)."""
    while (job := core.next_due(now)) is None:
        wake = core.next_wakeup(now)
        assert wake is not None
        now = max(now, wake)
    return job, now


def _validate_jobs(
    core: Scheduler,
    count: int,
    *,
    late_s: float,
    fail_second: RequestError | None = None,
    resumed: bool = False,
) -> list[tuple[float, float, int]]:
    """Jobs created ``late_s`` before they are first seen, one after another, each
    validating until 0.5 s after that and then queued. For each: the gap from its first
    sighting to its next poll, how late the end of validating was seen, and the polls
    that took after the first sighting. With ``fail_second``, the second poll fails so;
    ``resumed`` tracks each as seen validating by an earlier process."""
    results = []
    now = T0 + 0.25
    for index in range(count):
        job_id = f"job_v{index}"
        created = now - late_s
        if resumed:
            core.track(job_id, KEY, now, last_status=Status.VALIDATING, last_seq=1)
        else:
            core.track(job_id, KEY, now)
        polls, seen, gap = 0, now, 0.0
        while True:
            job, now = _poll(core, now)
            assert job.job_id == job_id
            polls += 1
            if polls == 2:
                gap = now - seen
                if fail_second is not None:
                    core.on_failure(job, fail_second, now)
                    continue
            status = Status.QUEUED if now - seen >= 0.5 else Status.VALIDATING
            answer = _validating(job_id, created_at=created)
            core.on_success(job, msgspec.structs.replace(answer, status=status), now)
            if status is Status.QUEUED:
                results.append((gap, now - seen - 0.5, polls - 1))
                break
        core.untrack(job_id)
        now += 1.0
    return results


def test_the_validating_phase_is_timed_by_the_engines_own_polls() -> None:
    core = make(backoff=Backoff())  # jitter on, so polls bracket the change differently
    theta = Backoff().request_cost_s
    jobs = _validate_jobs(core, 300, late_s=0.0)

    def cost(sample: list[tuple[float, float, int]]) -> tuple[float, float]:
        """Mean lag of the validating end, and mean lag plus requests at their worth."""
        lag = sum(late for _, late, _ in sample) / len(sample)
        return lag, lag + theta * sum(polls for _, _, polls in sample) / len(sample)

    unlearned, learned = cost(jobs[:30]), cost(jobs[-100:])
    assert all(0.4 <= gap <= 0.6 for gap, _, _ in jobs[:30])  # 0.5 s +-20% at first
    # What the engine minimises (lag plus request_cost_s per request) goes down, and
    # the lag itself by more than a third.
    assert learned[1] < unlearned[1] - 0.05
    assert learned[0] < unlearned[0] * 0.65
    assert core._model is not None and len(core._model) == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"late_s": 5.0},  # first seen long after its creation: its age is unknown
        {"late_s": 0.0, "resumed": True},  # seen validating by an earlier process
        {"late_s": 0.0, "fail_second": ServerError("boom", status=500)},
        {"late_s": 0.0, "fail_second": RateLimitedError("slow down", status=429)},
    ],
)
def test_jobs_not_watched_through_validating_teach_nothing_of_it(kwargs) -> None:
    core = make(backoff=Backoff(jitter=0.0))
    _validate_jobs(core, 40, **kwargs)
    assert core._model is not None and len(core._model) == 0


def _learned_in_progress() -> LearnedDurations:
    """A snapshot that knows jobs of org_a's DOCUMENTS_EXTRACT run about 60 s."""
    model = DurationModel()
    for _ in range(100):
        done = JobStatus(
            id="job_x",
            status=Status.COMPLETED,
            endpoint=Endpoint.DOCUMENTS_EXTRACT,
            created_at=int(T0),
            expires_at=int(T0) + 86400,
            organization_id="org_a",
            started_at=int(T0),
            completed_at=int(T0) + 60,
        )
        model.observe(done, Status.IN_PROGRESS)
    return model.snapshot()


def test_a_warm_started_core_polls_by_what_it_was_given_from_the_first_job() -> None:
    running = msgspec.structs.replace(payload("job_1", Status.IN_PROGRESS), started_at=int(T0))
    cold, warm = (
        make(backoff=Backoff()),
        Scheduler(
            backoff=Backoff(),
            budget_for=lambda org: AdaptiveBudget(),
            rng=random.Random(7),
            first_poll_rate_per_s=None,
            learned=_learned_in_progress(),
        ),
    )
    steps = []
    for core in (cold, warm):
        core.track("job_1", KEY, T0 + 5)
        job = core.next_due(T0 + 5)
        assert job is not None
        core.on_success(job, running, T0 + 5)
        steps.append(core.next_wakeup(T0 + 5) - (T0 + 5))
    # Cold: the geometric backoff (1 s + 0.5 x its 5 s of age, jittered). Warm: a job
    # of a kind that runs ~60 s, seen 5 s in, is left alone far longer.
    assert steps[0] < 5.0 and steps[1] > 4 * steps[0]
    learned = warm.learned()
    assert learned is not None
    # What it was given, and the queued time it just learned from the job's timestamps.
    assert sorted(k.status for k in learned.kinds) == ["in_progress", "queued"]


def test_learned_durations_need_learning_on() -> None:
    with pytest.raises(ConfigError, match="learn"):
        Scheduler(
            backoff=Backoff(learn=False),
            budget_for=lambda org: AdaptiveBudget(),
            rng=random.Random(7),
            learned=_learned_in_progress(),
        )
    assert make(backoff=Backoff(learn=False)).learned() is None
