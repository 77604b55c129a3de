"""Health of the API, in virtual time: faults against rate signals, outages, notices.

First the pure :class:`poller.sched.health.Health` with a fake clock, then the scheduling
core driven through faults and outages by a small virtual-time loop (requests take
``LATENCY_S`` each, many in flight at once), no event loop and no sleeping.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable, Sequence
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
    TRIP_SPAN_S,
    TRIP_STREAK,
    WINDOW_S,
    Health,
    HealthState,
)
from poller.sched.queue import TrackedJob
from poller.sched.ratelimit import AdaptiveBudget, RateLimit

T0 = 1_700_000_000.0
LATENCY_S = 0.05

# -- the pure health of one scope ---------------------------------------------------------

JOBS = ("job_a", "job_b", "job_c")


def faults(
    health: Health,
    start: float,
    count: int,
    gap_s: float,
    status: int | None = 500,
    jobs: Sequence[object] = JOBS,
) -> float:
    """``count`` faults ``gap_s`` apart from ``start``, of ``jobs`` in turn; returns the
    time of the last."""
    now = start
    for index in range(count):
        health.fault(now, "ServerError", status, "boom", jobs[index % len(jobs)])
        now += gap_s
    return now - gap_s


def steady(health: Health, start: float, seconds: int, per_s: int) -> float:
    """``per_s`` answers a second for ``seconds``; returns the time after the last."""
    for second in range(seconds):
        for i in range(per_s):
            health.answered(start + second + i / per_s)
    return start + seconds


def test_faults_in_a_row_over_a_second_trip_the_breaker() -> None:
    health = Health("org_a")
    faults(health, T0, TRIP_STREAK - 1, 0.2)
    assert health.state is HealthState.OK, "one short of the streak"
    assert health.fault(T0 + 2.0, "ServerError", 500, "boom", "job_b") is True
    assert health.state is HealthState.DOWN


def test_a_burst_of_faults_within_a_second_is_not_an_outage() -> None:
    health = Health("org_a")
    faults(health, T0, 3 * TRIP_STREAK, (TRIP_SPAN_S - 0.01) / (3 * TRIP_STREAK))
    assert health.state is HealthState.OK
    health.answered(T0 + 0.995)
    faults(health, T0 + 1.0, TRIP_STREAK, 0.2)
    assert health.state is HealthState.DOWN, "the same streak spread over more than a second"


def test_one_failing_job_alone_is_no_outage() -> None:
    """A job the API always fails (a poison job) is not its organisation down."""
    health = Health("org_a")
    faults(health, T0, 5 * TRIP_STREAK, 1.0, jobs=["job_poison"])
    assert health.state is HealthState.OK
    faults(health, T0 + 100, TRIP_STREAK, 0.2, jobs=["job_poison", "job_other"])
    assert health.state is HealthState.DOWN


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
        health.fault(now, "ConnectError", None, "refused", probe)
        assert health.landed(probe, now, answered=False) is True
    assert gaps[0] == pytest.approx(PROBE_FIRST_S, abs=0.2)
    expected = [min(PROBE_MAX_S, PROBE_FIRST_S * 2**i) for i in range(1, 8)]
    assert gaps[1:] == pytest.approx(expected)


def test_a_probe_that_will_never_land_frees_the_way() -> None:
    health = Health("org_a")
    now = faults(health, T0, TRIP_STREAK, 0.2) + PROBE_FIRST_S
    probe = object()
    health.sent(probe)
    assert health.wait_s(now) == PROBE_MAX_S
    assert health.release(object()) is False, "another request is not the probe"
    assert health.release(probe) is True
    assert health.wait_s(now) == 0.0


def test_an_answer_while_down_recovers_at_the_steady_rate_then_catches_up() -> None:
    health = Health("org_a")
    now = steady(health, T0, WINDOW_S, 50)
    now = faults(health, now, TRIP_STREAK, 0.2)
    assert health.state is HealthState.DOWN
    assert health.steady_per_s == pytest.approx(50.0)  # before the streak began
    now += 1.0
    health.answered(now)
    assert health.landed(object(), now, answered=True) is True
    assert health.state is HealthState.RECOVERING
    back, sent_in = now, dict.fromkeys(range(6), 0)
    t = now
    while t < back + 6.0:  # a backlog: a request asked for every millisecond
        if health.wait_s(t) == 0.0:
            if health.closed:
                break
            health.sent(object())
            sent_in[int(t - back)] += 1
        t += 0.001
    assert not health.closed, "the backlog is not caught up: still recovering"
    assert sent_in[0] <= 50 + 1, "the first second at the steady rate: no herd"
    for second in range(1, 6):
        assert sent_in[second] == pytest.approx(100, abs=2), "then at twice that, no more"
    # Caught up: requests no longer come as fast as the ramp lets them go.
    t += 0.5
    assert health.wait_s(t) == 0.0 and health.closed


def test_503s_track_load_only_well_above_their_background() -> None:
    health = Health("org_a")
    rng = random.Random(3)
    now = T0
    signals = 0
    for _ in range(60_000):  # 10 minutes at 100 requests a second, 3% 503s
        now += 0.01
        if rng.random() < 0.03:
            health.fault(now, "ServerError", 503, "", "job")
            signals += health.load_signal(now)
        else:
            health.answered(now)
    assert signals == 0, "a steady 3% of 503s is background, not load"
    for _ in range(1000):  # then a third of the answers are 503s: load
        now += 0.01
        if rng.random() < 0.33:
            health.fault(now, "ServerError", 503, "", "job")
        else:
            health.answered(now)
    assert health.load_signal(now)


def test_a_high_background_of_503s_raises_the_bar() -> None:
    health = Health("org_a")
    now = T0
    for i in range(120_000):  # 20 minutes at 100 requests a second, every 8th a 503
        now += 0.01
        if i % 8 == 0:
            health.fault(now, "ServerError", 503, "", "job")
        else:
            health.answered(now)
    for i in range(1000):  # 25%: above the 20% floor, under three times the background
        now += 0.01
        if i % 4 == 0:
            health.fault(now, "ServerError", 503, "", "job")
        else:
            health.answered(now)
    assert not health.load_signal(now)


def test_a_load_episode_cuts_once_a_window_and_teaches_the_background_nothing() -> None:
    health = Health("org_a")
    now = T0
    cuts = []
    for i in range(6000):  # a minute at 100 a second, a third of them 503s
        now += 0.01
        if i % 3 == 0:
            health.fault(now, "ServerError", 503, "", "job")
            if health.load_signal(now):
                health.load_cut(now)
                cuts.append(now)
        else:
            health.answered(now)
    gaps = [b - a for a, b in itertools.pairwise(cuts)]
    assert cuts and all(gap >= WINDOW_S for gap in gaps), gaps
    assert len(cuts) <= 60 / WINDOW_S
    assert health.load_signal(now + WINDOW_S) or health._bg_503 == 0.0, "not learned"


def test_no_load_signal_while_down() -> None:
    health = Health("org_a")
    now = faults(health, T0, 4 * TRIP_STREAK, 0.1, status=503)
    assert health.state is HealthState.DOWN
    assert not health.load_signal(now), "an outage of 503s is no load to slow down for"


def test_reported_states_since_and_errors_are_those_of_the_trouble_at_hand() -> None:
    health = Health("org_a")
    now = steady(health, T0, 2, 50)
    assert health.reported(now) is HealthState.OK and health.trouble_since(now) is None
    faults(health, now, DEGRADED_MIN, 0.01)
    assert health.reported(now + 0.2) is HealthState.OK, "10 faults in 110: background"
    faults(health, now + 0.2, 2 * DEGRADED_MIN, 0.01)
    assert health.reported(now + 0.5) is HealthState.DEGRADED
    assert health.recent_errors(now + 0.5) == {"ServerError": 3 * DEGRADED_MIN}
    assert health.trouble_since(now + 0.5) == int(now)
    health.throttled(now + 0.6)
    assert health.reported(now + 0.7) is HealthState.THROTTLED
    later = now + 0.6 + WINDOW_S + 1
    health.answered(later)
    assert health.reported(later) is HealthState.OK
    assert health.recent_errors(later) == {} and health.trouble_since(later) is None


def test_an_outage_after_a_long_trickle_of_faults_counts_from_its_own_start() -> None:
    health = Health("org_a")
    rng = random.Random(1)
    now = T0
    for _ in range(180_000):  # 30 minutes at 100 a second, 3% 500s
        now += 0.01
        if rng.random() < 0.03:
            health.fault(now, "ServerError", 500, "", "job")
        else:
            health.answered(now)
    outage = now + 0.01
    faults(health, outage, 20, 0.1)
    assert health.state is HealthState.DOWN
    assert health.trouble_since(outage + 2) == pytest.approx(outage, abs=0.02)
    assert sum(health.recent_errors(outage + 2).values()) < 40, "the outage's, not 30 min's"


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
    assert "answers again after 30" in notice_text(back, now)[1]
    now += 3
    for i in range(40):
        health.answered(now + i * 0.01)
    health.wait_s(now + 2)  # caught up
    assert health.notice(now + 2) is None, "the end of a recovery says nothing"
    faults(health, now + 2.5, 2 * DEGRADED_MIN, 0.01)
    assert health.notice(now + 2.6) is None, "degraded within a minute of the last notice"
    health.answered(now + 60.4)
    faults(health, now + 60.5, 2 * DEGRADED_MIN, 0.01)
    degraded = health.notice(now + 61)
    assert degraded is not None and degraded.state is HealthState.DEGRADED


# -- the scheduling core through faults and outages, in virtual time ----------------------

Answer = Callable[[TrackedJob, float], JobStatus | RequestError]


@dataclass
class World:
    """The core, a fake API answering through ``answer``, and a log of what was sent."""

    core: Scheduler
    answer: Answer
    now: float = T0
    in_flight: list[tuple[float, int, TrackedJob]] = field(default_factory=list)
    sent: list[tuple[float, str]] = field(default_factory=list)
    events: list[Transition | TrackingFailure] = field(default_factory=list)
    serial: itertools.count[int] = field(default_factory=itertools.count)

    def run_until(self, end: float) -> None:
        while self.now < end:
            while self.in_flight and self.in_flight[0][0] <= self.now:
                _, _, job = heapq.heappop(self.in_flight)
                outcome = self.answer(job, self.now)
                if isinstance(outcome, RequestError):
                    self.core.on_failure(job, outcome, self.now)
                else:
                    self.core.on_success(job, outcome, self.now)
            while (job := self.core.next_due(self.now)) is not None:
                self.sent.append((self.now, job.job_id))
                heapq.heappush(self.in_flight, (self.now + LATENCY_S, next(self.serial), job))
            self.events += self.core.take_events()
            self.core.take_finished()
            candidates = [self.in_flight[0][0]] if self.in_flight else []
            wake = self.core.next_wakeup(self.now)
            if wake is not None:
                candidates.append(wake)
            step = min(candidates, default=end)
            self.now = min(end, max(step, self.now + 1e-6))

    def sent_between(self, start: float, end: float, prefix: str = "") -> int:
        return sum(1 for at, job in self.sent if start <= at < end and job.startswith(prefix))

    def first_sent(self, after: float, prefix: str = "") -> float:
        return next(at for at, job in self.sent if at >= after and job.startswith(prefix))


ORG_OF: dict[str, str] = {}
_KEYS: dict[str, Credential] = {}


def key(org: str) -> Credential:
    """The test key of ``org``."""
    if org not in _KEYS:
        _KEYS[org] = Credential(f"rt_test_{org}", environ={})
        ORG_OF[_KEYS[org].fingerprint] = org
    return _KEYS[org]


def status(job: TrackedJob, now: float, state: Status = Status.IN_PROGRESS) -> JobStatus:
    return JobStatus(
        id=job.job_id,
        status=state,
        endpoint=Endpoint.DOCUMENTS_EXTRACT,
        created_at=int(T0),
        started_at=int(T0),
        expires_at=int(T0 + 7 * 86400),
        organization_id=ORG_OF[job.credential.fingerprint],
    )


def world(
    answer: Answer,
    *,
    jobs: int = 200,
    backoff: Backoff | None = None,
    orgs: Sequence[str] = ("org_a",),
    limit: RateLimit | None = None,
    resolve: bool = True,
) -> World:
    """A world of ``jobs`` jobs named ``<org>/<n>``, dealt over ``orgs``."""
    core = Scheduler(
        backoff=backoff or Backoff(learn=False, max_interval_s=2.0),
        budget_for=lambda org: AdaptiveBudget(limit),
        rng=random.Random(5),
        first_poll_rate_per_s=None,
    )
    if resolve:  # white-box: as if each key's first answer had come
        core._key_orgs.update({key(org): org for org in orgs})
    for i in range(jobs):
        org = orgs[i % len(orgs)]
        core.track(f"{org}/{i:05d}", key(org), T0)
    return World(core, answer)


def org_state(w: World, org: str) -> str:
    health = w.core.org_health(org, w.now)
    assert health is not None
    return health.state


def test_a_sporadic_503_holds_back_its_own_job_and_not_the_organisation() -> None:
    unlucky = "org_a/00007"
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


def test_503s_that_track_load_slow_the_organisation_once_a_window() -> None:
    draws = random.Random(11)
    overload = (T0 + 5.0, T0 + 35.0)

    def answer(job: TrackedJob, now: float) -> JobStatus | RequestError:
        if overload[0] <= now < overload[1] and draws.random() < 0.33:
            return ServerError("overloaded", status=503, retry_after_s=1.0)
        return status(job, now)

    w = world(answer)
    w.run_until(overload[0])
    before = w.sent_between(overload[0] - 3, overload[0]) / 3
    rates = []
    while w.now < overload[1]:
        w.run_until(w.now + 1.0)
        rates.append(w.core.org_rate("org_a"))
    cut = [rate for rate in rates if rate is not None]
    assert cut, "a third of 503s: the rate was cut"
    health = w.core.org_health("org_a", w.now)
    assert health is not None and health.state == "throttled"
    assert min(cut) >= 0.9**4 * before * 0.9, f"a cut a window, no ratchet: {min(cut)} of {before}"
    w.run_until(overload[1] + 120.0)
    after = w.sent_between(w.now - 5, w.now) / 5
    assert after >= 0.8 * before, f"the rate regrows: {after}/s against {before}/s before"


@pytest.mark.parametrize("limit", [None, RateLimit(per_s=500)], ids=["no limit", "a limit"])
@pytest.mark.parametrize("retry_after_s", [None, 1.0], ids=["no Retry-After", "Retry-After"])
def test_an_outage_of_503s_leaves_no_lasting_cut(
    limit: RateLimit | None, retry_after_s: float | None
) -> None:
    down = (T0 + 10.0, T0 + 40.0)

    def answer(job: TrackedJob, now: float) -> JobStatus | RequestError:
        if down[0] <= now < down[1]:
            return ServerError("unavailable", status=503, retry_after_s=retry_after_s)
        return status(job, now)

    w = world(answer, limit=limit)
    w.run_until(down[0])
    before = w.sent_between(down[0] - 5, down[0]) / 5
    w.run_until(down[1] + 90.0)
    after = w.sent_between(w.now - 5, w.now) / 5
    assert after >= 0.8 * before, f"{after}/s after the outage against {before}/s before"


def test_an_outage_probes_one_at_a_time_ends_no_job_and_recovers_without_a_herd() -> None:
    down_from, down_until = T0 + 10.0, T0 + 10.0 + 2 * 3600.0

    def answer(job: TrackedJob, now: float) -> JobStatus | RequestError:
        if down_from <= now < down_until:
            return ConnectError("connection refused")
        return status(job, now)

    w = world(answer, backoff=Backoff(learn=False, max_interval_s=2.0, max_consecutive_errors=5))
    w.run_until(down_from)
    steady_rate = w.sent_between(down_from - 5.0, down_from) / 5.0
    w.run_until(down_from + 60.0)
    assert org_state(w, "org_a") == "down"
    assert w.core.api_health(w.now).state == "down"
    probes = w.sent_between(down_from + 5.0, down_from + 60.0)
    assert 4 <= probes <= 10, f"{probes} requests in 55 s of outage: one probe at a time"
    w.run_until(down_until)
    assert not any(isinstance(e, TrackingFailure) for e in w.events), "no job ended"
    assert w.sent_between(down_from + 60.0, down_until) <= 2 * 3600 / PROBE_MAX_S + 5
    w.run_until(down_until + 20.0)
    first_ok = w.first_sent(down_until)
    assert first_ok <= down_until + PROBE_MAX_S
    herd = w.sent_between(first_ok, first_ok + 1.0)
    assert herd <= 1.1 * steady_rate + 1, f"no thundering herd: {herd} against {steady_rate}/s"
    catch_up = w.sent_between(first_ok + 1.0, first_ok + 2.0)
    assert 0.9 * steady_rate <= catch_up <= 2.2 * steady_rate + 2, "back, at most twice"
    resumed = {job for at, job in w.sent if at >= first_ok}
    assert len(resumed) == 200, "every job is polled again"
    assert org_state(w, "org_a") == "ok"


def test_a_long_partial_outage_ends_no_job() -> None:
    draws = random.Random(2)

    def answer(job: TrackedJob, now: float) -> JobStatus | RequestError:
        if now >= T0 + 10 and draws.random() < 0.9:
            return ServerError("boom", status=500)
        return status(job, now)

    backoff = Backoff(learn=False, max_interval_s=2.0, max_consecutive_errors=30)
    w = world(answer, jobs=100, backoff=backoff)
    w.run_until(T0 + 1800.0)
    assert not any(isinstance(e, TrackingFailure) for e in w.events)


def test_an_untracked_probe_does_not_leave_the_organisation_down() -> None:
    down_until = T0 + 30.0

    def answer(job: TrackedJob, now: float) -> JobStatus | RequestError:
        if T0 + 5.0 <= now < down_until:
            return ConnectionLostError("reset")
        return status(job, now)

    w = world(answer, jobs=20)
    w.run_until(T0 + 20.0)
    assert org_state(w, "org_a") == "down"
    probe = w.core._buckets["org:org_a"].health.probe
    while probe is None:  # until a probe is out
        w.run_until(w.now + 0.01)
        probe = w.core._buckets["org:org_a"].health.probe
    assert isinstance(probe, TrackedJob)
    w.core.untrack(probe.job_id)
    w.run_until(down_until + 15.0)
    assert org_state(w, "org_a") in ("ok", "recovering")
    assert w.sent_between(down_until + 12.0, down_until + 15.0) > 20, "polled again"


def test_when_one_organisation_answers_again_the_others_probe_at_once() -> None:
    """org_b went down first, so its next probe is due later than org_a's; when org_a's
    probe is answered, org_b does not wait for its own."""
    back = T0 + 60.0

    def answer(job: TrackedJob, now: float) -> JobStatus | RequestError:
        start = T0 + 5.0 if job.job_id.startswith("org_b") else T0 + 12.0
        if start <= now < back:
            return ConnectionLostError("reset")
        return status(job, now)

    w = world(answer, orgs=("org_a", "org_b"))
    w.run_until(back - 0.01)
    assert w.core.api_health(w.now).state == "down"
    w.run_until(back + 12.0)
    first = {org: w.first_sent(back, org) for org in ("org_a", "org_b")}
    assert abs(first["org_a"] - first["org_b"]) <= 1.0, first
    assert w.core.api_health(w.now).state != "down"


def test_one_organisation_down_is_not_the_api_down_and_says_so() -> None:
    def answer(job: TrackedJob, now: float) -> JobStatus | RequestError:
        if job.job_id.startswith("org_a") and now >= T0 + 5.0:
            return ServerError("boom", status=500)
        return status(job, now)

    w = world(answer, orgs=("org_a", "org_b"))
    w.run_until(T0 + 30.0)
    assert org_state(w, "org_a") == "down"
    assert org_state(w, "org_b") == "ok"
    assert w.core.api_health(w.now).state != "down"
    assert w.sent_between(T0 + 10.0, T0 + 30.0, "org_b") > 1000, "org_b keeps its pace"
    notices = [(n.scope, n.state) for n in w.core.take_notices()]
    assert ("org_a", HealthState.DOWN) in notices
    assert ("api", HealthState.DOWN) not in notices


def test_one_quiet_organisation_does_not_make_another_ones_outage_the_apis() -> None:
    def answer(job: TrackedJob, now: float) -> JobStatus | RequestError:
        if job.job_id.startswith("org_a") and now >= T0 + 5.0:
            return ConnectError("refused")
        return status(job, now)

    backoff = Backoff(learn=False, max_interval_s=30.0, initial_interval_s={"in_progress": 30})
    w = world(answer, jobs=400, orgs=("org_a",) * 199 + ("org_quiet",), backoff=backoff)
    w.run_until(T0 + 120.0)
    assert org_state(w, "org_quiet") == "ok"
    scopes = [n.scope for n in w.core.take_notices() if n.state is HealthState.DOWN]
    assert scopes == ["org_a"]


def test_an_api_wide_outage_over_many_organisations_is_probed_as_one() -> None:
    orgs = [f"org_{i:03d}" for i in range(100)]
    down = (T0 + 10.0, T0 + 70.0)

    def answer(job: TrackedJob, now: float) -> JobStatus | RequestError:
        if down[0] <= now < down[1]:
            return ConnectError("refused")
        return status(job, now)

    w = world(answer, jobs=300, orgs=orgs)
    w.run_until(down[0])
    steady_rate = w.sent_between(down[0] - 5, down[0]) / 5
    w.run_until(down[1])
    assert w.core.api_health(w.now).state == "down"
    during = w.sent_between(down[0] + 10, down[1]) / (down[1] - down[0] - 10)
    assert during <= 2.0, f"{during} requests a second while the API is down: one probe"
    w.run_until(down[1] + 20.0)
    first_ok = w.first_sent(down[1])
    herd = w.sent_between(first_ok, first_ok + 1.0)
    assert herd <= 1.1 * steady_rate + len(orgs) / 10, f"{herd} against {steady_rate}/s"
    assert len({job for at, job in w.sent if at >= first_ok}) == 300


def test_a_key_that_comes_back_from_an_outage_brings_its_jobs_back_slowly() -> None:
    back = T0 + 30.0

    def answer(job: TrackedJob, now: float) -> JobStatus | RequestError:
        if now < back:
            return ConnectError("refused")
        return status(job, now)

    w = world(answer, jobs=2000, resolve=False)  # the key's organisation is not known yet
    w.run_until(back + 10.0)
    first_ok = w.first_sent(back)
    assert w.sent_between(first_ok, first_ok + 1.0) <= 50, "not the 2,000 at once"
    assert len({job for at, job in w.sent if at >= first_ok}) == 2000


def test_a_job_that_always_fails_while_its_organisation_answers_ends() -> None:
    def answer(job: TrackedJob, now: float) -> JobStatus | RequestError:
        if job.job_id == "org_a/00003":
            return ServerError("boom", status=500)
        return status(job, now)

    w = world(answer, backoff=Backoff(learn=False, max_interval_s=2.0, max_consecutive_errors=5))
    w.run_until(T0 + 120.0)
    failures = [e for e in w.events if isinstance(e, TrackingFailure)]
    assert [f.job_id for f in failures] == ["org_a/00003"]
    assert org_state(w, "org_a") in ("ok", "degraded")


def test_a_429_is_an_answer_not_a_fault() -> None:
    def answer(job: TrackedJob, now: float) -> JobStatus | RequestError:
        if now >= T0 + 5.0:
            return RateLimitedError("slow down", status=429, retry_after_s=1.0)
        return status(job, now)

    w = world(answer)
    w.run_until(T0 + 30.0)
    health = w.core.org_health("org_a", w.now)
    assert health is not None and health.state == "throttled" and health.streak == 0


def test_an_api_down_with_no_job_left_is_forgotten() -> None:
    def answer(job: TrackedJob, now: float) -> JobStatus | RequestError:
        if now >= T0 + 5.0:
            return ConnectError("refused")
        return status(job, now)

    w = world(answer, jobs=20)
    w.run_until(T0 + 30.0)
    assert w.core.api_health(w.now).state == "down"
    for job in list(w.core.jobs()):
        w.core.untrack(job.job_id)
    w.run_until(T0 + 35.0)
    w.core.next_due(w.now)  # the once-a-second look
    assert w.core.api_health(w.now).state == "ok"
