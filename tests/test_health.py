"""Health of the API, in virtual time: faults against rate signals, outages, notices.

First the pure :class:`poller.sched.health.Health` with a fake clock, then the scheduling
core driven through faults and outages by a small virtual-time loop (requests take
``LATENCY_S`` each, many in flight at once), no event loop and no sleeping.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from poller._health_log import notice_text
from poller.auth import Credential
from poller.errors import (
    ConnectError,
    ConnectionLostError,
    RateLimitedError,
    RequestError,
    ServerError,
)
from poller.events import TrackingFailure, Transition
from poller.models import Endpoint, JobStatus, Status
from poller.sched.backoff import Backoff
from poller.sched.core import Scheduler
from poller.sched.health import (
    DEGRADED_MIN,
    PROBE_FIRST_S,
    PROBE_MAX_S,
    RAMP_S,
    TRIP_SPAN_S,
    TRIP_STREAK,
    WINDOW_S,
    Health,
    HealthState,
)
from poller.sched.queue import TrackedJob
from poller.sched.ratelimit import AdaptiveBudget

T0 = 1_700_000_000.0
LATENCY_S = 0.05

# -- the pure health of one scope ---------------------------------------------------------


def faults(health: Health, start: float, count: int, gap_s: float, status: int | None = 500):
    """``count`` faults ``gap_s`` apart from ``start``; returns the time after the last."""
    now = start
    for _ in range(count):
        health.fault(now, "ServerError", status)
        now += gap_s
    return now - gap_s


def test_faults_in_a_row_over_a_second_trip_the_breaker() -> None:
    health = Health("org_a")
    faults(health, T0, TRIP_STREAK - 1, 0.2)
    assert health.state is HealthState.OK, "one short of the streak"
    assert health.fault(T0 + 2.0, "ServerError", 500) is True
    assert health.state is HealthState.DOWN


def test_a_burst_of_faults_within_a_second_is_not_an_outage() -> None:
    health = Health("org_a")
    faults(health, T0, 3 * TRIP_STREAK, (TRIP_SPAN_S - 0.01) / (3 * TRIP_STREAK))
    assert health.state is HealthState.OK
    health.answered(T0 + 0.995)
    faults(health, T0 + 1.0, TRIP_STREAK, 0.2)
    assert health.state is HealthState.DOWN, "the same streak spread over more than a second"


def test_an_answer_breaks_the_streak() -> None:
    health = Health("org_a")
    now = T0
    for _ in range(10):
        now = faults(health, now, TRIP_STREAK - 1, 0.3) + 0.3
        health.answered(now)
    assert health.state is HealthState.OK
    assert health.reported(now) is HealthState.DEGRADED, "but most requests fail"


def test_while_down_one_probe_at_a_time_with_doubling_gaps() -> None:
    health = Health("org_a")
    now = faults(health, T0, TRIP_STREAK, 0.2)
    assert health.state is HealthState.DOWN
    gaps = []
    for _ in range(8):
        wait = health.wait_s(now)
        now += wait
        assert health.wait_s(now) == 0.0
        gaps.append(wait)
        probe = object()
        health.sent(probe)
        assert health.wait_s(now) > 0.0, "no second request while the probe is out"
        now += 0.1
        health.fault(now, "ConnectError", None)
        assert health.landed(probe, now, answered=False) is True
    assert gaps[0] == pytest.approx(PROBE_FIRST_S, abs=0.2)
    expected = [min(PROBE_MAX_S, PROBE_FIRST_S * 2**i) for i in range(1, 8)]
    assert gaps[1:] == pytest.approx(expected)


def test_an_answer_while_down_recovers_at_the_steady_rate_doubling() -> None:
    health = Health("org_a")
    for second in range(WINDOW_S):  # 50 answers a second before the outage
        for i in range(50):
            health.answered(T0 + second + i / 50)
    now = faults(health, T0 + WINDOW_S, TRIP_STREAK, 0.2)
    assert health.state is HealthState.DOWN
    assert health.steady_per_s == pytest.approx(50.0)  # before the streak began
    now += 1.0
    health.answered(now)
    assert health.landed(object(), now, answered=True) is True
    assert health.state is HealthState.RECOVERING
    back = now
    sent_in: dict[int, int] = {}
    t = now
    while t < back + RAMP_S + 1.0:
        if health.closed:
            break
        if health.wait_s(t) == 0.0:
            if health.closed:
                break
            health.sent(object())
            sent_in[int(t - back)] = sent_in.get(int(t - back), 0) + 1
        t += 0.001
    assert health.closed, "itself again after the ramp"
    assert sent_in[0] <= health.steady_per_s + 1, "no thundering herd in the first second"
    for second in range(1, int(RAMP_S)):
        expected = health.steady_per_s * 2**second
        assert sent_in[second] == pytest.approx(expected, rel=0.05, abs=2)


def test_503s_track_load_only_well_above_their_background() -> None:
    health = Health("org_a")
    rng = random.Random(3)
    now = T0
    signals = 0
    for _ in range(60_000):  # 10 minutes at 100 requests a second, 3% 503s
        now += 0.01
        if rng.random() < 0.03:
            health.fault(now, "ServerError", 503)
            signals += health.load_signal(now)
        else:
            health.answered(now)
    assert signals == 0, "a steady 3% of 503s is background, not load"
    for _ in range(1000):  # then a third of the answers are 503s: load
        now += 0.01
        if rng.random() < 0.33:
            health.fault(now, "ServerError", 503)
        else:
            health.answered(now)
    assert health.load_signal(now)


def test_a_high_background_of_503s_raises_the_bar() -> None:
    health = Health("org_a")
    now = T0
    for i in range(120_000):  # 20 minutes at 100 requests a second, every 8th a 503
        now += 0.01
        if i % 8 == 0:
            health.fault(now, "ServerError", 503)
        else:
            health.answered(now)
    for i in range(1000):  # 25%: above the 20% floor, under three times the background
        now += 0.01
        if i % 4 == 0:
            health.fault(now, "ServerError", 503)
        else:
            health.answered(now)
    assert not health.load_signal(now)


def test_reported_states_and_their_end() -> None:
    health = Health("org_a")
    now = T0
    for i in range(100):
        health.answered(now + i * 0.01)
    assert health.reported(now + 1) is HealthState.OK
    faults(health, now + 1.0, DEGRADED_MIN, 0.01)
    assert health.reported(now + 1.1) is HealthState.OK, "5 faults in 105: background"
    faults(health, now + 1.1, 2 * DEGRADED_MIN, 0.01)
    assert health.reported(now + 1.2) is HealthState.DEGRADED
    assert health.recent_errors() == {"ServerError": 3 * DEGRADED_MIN}
    assert health.trouble_since == now + 1.0
    health.throttled(now + 1.2)
    assert health.reported(now + 1.3) is HealthState.THROTTLED
    later = now + 1.2 + WINDOW_S + 1
    health.answered(later)
    assert health.reported(later) is HealthState.OK
    assert health.recent_errors() == {} and health.trouble_since is None, "the trouble is over"


def test_notices_say_down_and_back_at_once_and_the_rest_at_most_once_a_minute() -> None:
    health = Health("org_a")
    now = faults(health, T0, TRIP_STREAK, 0.2)
    notice = health.notice(now)
    assert notice is not None and notice.state is HealthState.DOWN
    _level, text = notice_text(notice, now)
    assert "organisation org_a is down" in text and "ServerError x8" in text
    assert health.notice(now + 1) is None
    assert health.notice(now + 301) is not None, "a reminder while it lasts"
    now += 302
    health.answered(now)
    health.landed(object(), now, answered=True)
    back = health.notice(now)
    assert back is not None and back.previous is HealthState.DOWN
    assert "answers again" in notice_text(back, now)[1]
    now += RAMP_S + 1
    for i in range(20):
        health.answered(now + i * 0.01)
    faults(health, now + 0.5, 2 * DEGRADED_MIN, 0.01)
    assert health.notice(now + 0.6) is None, "degraded within a minute of the last notice"
    assert health.notice(now + 61) is not None


# -- the scheduling core through faults and outages, in virtual time ----------------------


@dataclass
class World:
    """The core, a fake API answering through ``answer``, and a log of what was sent."""

    core: Scheduler
    answer: Callable[[TrackedJob, float], JobStatus | RequestError]
    now: float = T0
    in_flight: list[tuple[float, TrackedJob]] = field(default_factory=list)
    sent: list[tuple[float, str]] = field(default_factory=list)
    events: list[Transition | TrackingFailure] = field(default_factory=list)
    max_in_flight: int = 0

    def run_until(self, end: float) -> None:
        while self.now < end:
            self.in_flight.sort(key=lambda item: item[0])
            while self.in_flight and self.in_flight[0][0] <= self.now:
                _, job = self.in_flight.pop(0)
                outcome = self.answer(job, self.now)
                if isinstance(outcome, RequestError):
                    self.core.on_failure(job, outcome, self.now)
                else:
                    self.core.on_success(job, outcome, self.now)
            while (job := self.core.next_due(self.now)) is not None:
                self.sent.append((self.now, job.job_id))
                self.in_flight.append((self.now + LATENCY_S, job))
            self.max_in_flight = max(self.max_in_flight, len(self.in_flight))
            self.events += self.core.take_events()
            self.core.take_finished()
            candidates = [at for at, _ in self.in_flight]
            wake = self.core.next_wakeup(self.now)
            if wake is not None:
                candidates.append(wake)
            step = min(candidates, default=end)
            self.now = min(end, max(step, self.now + 1e-6))

    def sent_between(self, start: float, end: float) -> int:
        return sum(1 for at, _ in self.sent if start <= at < end)


KEY = Credential("rt_test_health", environ={})
OTHER = Credential("rt_test_health_b", environ={})
ORG_OF = {KEY: "org_a", OTHER: "org_b"}


def status(job: TrackedJob, now: float, state: Status = Status.IN_PROGRESS) -> JobStatus:
    return JobStatus(
        id=job.job_id,
        status=state,
        endpoint=Endpoint.DOCUMENTS_EXTRACT,
        created_at=int(T0),
        started_at=int(T0),
        expires_at=int(T0 + 7 * 86400),
        organization_id=ORG_OF[job.credential],
    )


def world(answer, *, jobs: int = 200, backoff: Backoff | None = None, keys=(KEY,)) -> World:
    core = Scheduler(
        backoff=backoff or Backoff(learn=False, max_interval_s=2.0),
        budget_for=lambda org: AdaptiveBudget(),
        rng=random.Random(5),
        first_poll_rate_per_s=None,
    )
    core._key_orgs.update(ORG_OF)  # white-box: as if each key's first answer had come
    for i in range(jobs):
        core.track(f"job_{i:04d}", keys[i % len(keys)], T0)
    return World(core, answer)


def test_a_sporadic_503_holds_back_its_own_job_and_not_the_organisation() -> None:
    unlucky = "job_0007"
    refused: list[float] = []

    def answer(job: TrackedJob, now: float) -> JobStatus | RequestError:
        if job.job_id == unlucky and not refused and now >= T0 + 5:
            refused.append(now)
            return ServerError("unavailable", status=503, retry_after_s=3.0)
        return status(job, now)

    w = world(answer)
    w.run_until(T0 + 5.0)
    before = w.sent_between(T0 + 3.0, T0 + 5.0)
    w.run_until(T0 + 12.0)
    retried = [at for at, job in w.sent if job == unlucky and at > refused[0]]
    assert retried and retried[0] >= refused[0] + 3.0, "the job waits out its Retry-After"
    assert w.sent_between(T0 + 5.0, T0 + 7.0) >= 0.9 * before, "the others keep their pace"
    assert w.core.org_rate("org_a") is None, "no cut of the organisation's rate"
    assert not any(isinstance(e, TrackingFailure) for e in w.events)


def test_503s_that_track_load_pause_and_slow_the_organisation() -> None:
    draws = random.Random(11)

    def answer(job: TrackedJob, now: float) -> JobStatus | RequestError:
        if now >= T0 + 5 and draws.random() < 0.33:
            return ServerError("overloaded", status=503, retry_after_s=1.0)
        return status(job, now)

    w = world(answer)
    w.run_until(T0 + 5.0 + WINDOW_S)
    assert w.core.org_rate("org_a") is not None, "a third of 503s: the rate was cut"
    health = w.core.org_health("org_a", w.now)
    assert health is not None and health.state == "throttled"


def test_an_outage_probes_one_at_a_time_ends_no_job_and_recovers_without_a_herd() -> None:
    down_from, down_until = T0 + 10.0, T0 + 10.0 + 2 * 3600.0

    def answer(job: TrackedJob, now: float) -> JobStatus | RequestError:
        if down_from <= now < down_until:
            return ConnectError("connection refused")
        return status(job, now)

    w = world(answer, backoff=Backoff(learn=False, max_interval_s=2.0, max_consecutive_errors=5))
    w.run_until(down_from)
    steady = w.sent_between(down_from - 5.0, down_from) / 5.0
    w.run_until(down_from + 60.0)
    health = w.core.org_health("org_a", w.now)
    assert health is not None and health.state == "down"
    assert w.core.api_health(w.now).state == "down"
    probes = w.sent_between(down_from + 5.0, down_from + 60.0)
    assert 4 <= probes <= 10, f"{probes} requests in 55 s of outage: one probe at a time"
    w.run_until(down_until)
    assert not any(isinstance(e, TrackingFailure) for e in w.events), "no job ended"
    assert w.sent_between(down_from + 60.0, down_until) <= 2 * 3600 / PROBE_MAX_S + 5
    w.run_until(down_until + 20.0)
    first_ok = next(at for at, _ in w.sent if at >= down_until)
    assert first_ok <= down_until + PROBE_MAX_S
    herd = w.sent_between(first_ok, first_ok + 1.0)
    assert herd <= 1.1 * steady + 1, f"no thundering herd: {herd} against {steady}/s"
    assert w.sent_between(first_ok + 1.0, first_ok + 2.0) >= 0.9 * steady, "the pace is back"
    resumed = {job for at, job in w.sent if at >= first_ok}
    assert len(resumed) == 200, "every job is polled again"
    assert w.core.org_health("org_a", w.now).state == "ok"  # type: ignore[union-attr]


def test_when_one_organisation_answers_again_the_others_probe_at_once() -> None:
    down_until = T0 + 40.0

    def answer(job: TrackedJob, now: float) -> JobStatus | RequestError:
        if T0 + 5.0 <= now < down_until:
            return ConnectionLostError("reset")
        return status(job, now)

    w = world(answer, keys=(KEY, OTHER))
    w.run_until(down_until - 0.01)
    assert w.core.api_health(w.now).state == "down"
    w.run_until(down_until + 12.0)
    first = {
        org: min(at for at, job in w.sent if at >= down_until and ORG_OF[cred] == org)
        for org, cred in (("org_a", KEY), ("org_b", OTHER))
        if any(at >= down_until for at, _ in w.sent)
    }
    assert abs(first["org_a"] - first["org_b"]) <= 1.0, first
    assert w.core.api_health(w.now).state != "down"


def test_one_organisation_down_is_not_the_api_down() -> None:
    def answer(job: TrackedJob, now: float) -> JobStatus | RequestError:
        if job.credential is KEY and now >= T0 + 5.0:
            return ServerError("boom", status=500)
        return status(job, now)

    w = world(answer, keys=(KEY, OTHER))
    w.run_until(T0 + 30.0)
    assert w.core.org_health("org_a", w.now).state == "down"  # type: ignore[union-attr]
    assert w.core.org_health("org_b", w.now).state == "ok"  # type: ignore[union-attr]
    assert w.core.api_health(w.now).state != "down"
    assert w.sent_between(T0 + 10.0, T0 + 30.0) > 1000, "org_b keeps its pace"
    notices = [n.scope for n in w.core.take_notices() if n.state is HealthState.DOWN]
    assert notices == ["org_a"]


def test_a_job_that_always_fails_while_its_organisation_answers_ends() -> None:
    def answer(job: TrackedJob, now: float) -> JobStatus | RequestError:
        if job.job_id == "job_0003":
            return ServerError("boom", status=500)
        return status(job, now)

    w = world(answer, backoff=Backoff(learn=False, max_interval_s=2.0, max_consecutive_errors=5))
    w.run_until(T0 + 120.0)
    failures = [e for e in w.events if isinstance(e, TrackingFailure)]
    assert [f.job_id for f in failures] == ["job_0003"]
    assert w.core.org_health("org_a", w.now).state in ("ok", "degraded")  # type: ignore[union-attr]


def test_a_429_is_an_answer_not_a_fault() -> None:
    def answer(job: TrackedJob, now: float) -> JobStatus | RequestError:
        if now >= T0 + 5.0:
            return RateLimitedError("slow down", status=429, retry_after_s=1.0)
        return status(job, now)

    w = world(answer)
    w.run_until(T0 + 30.0)
    health = w.core.org_health("org_a", w.now)
    assert health is not None and health.state == "throttled" and health.streak == 0
