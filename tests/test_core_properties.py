"""Properties of the scheduling core, for any sequence of results and clock advances.

Hypothesis drives ``poller.sched.core.Scheduler`` directly with a fake clock (no event loop)
through random interleavings of track, untrack, dispatch (``next_due``), outcomes (status
payloads, 429 / 503 with and without ``Retry-After``, 5xx, resets, malformed bodies, 404,
401) and clock advances, and checks after every step that:

- a tracked job is due exactly once: it never goes out while in flight, every waiting job
  has exactly one live heap entry, and ``next_wakeup`` is never later than the next job
  ``next_due`` would hand out;
- no job is polled sooner than ``Backoff.min_interval_s`` after its last answer;
- an organisation never sends more than ``per_s + burst`` requests in any 1-second window
  through its budget (a key whose organisation is not known yet sends one probe at a time
  on its own),
  and nothing of it goes out while a ``Retry-After`` it was given is running (a 429's, or
  a 503's when 503s track load); a job answered 503 with ``Retry-After`` is not retried
  before it ends;
- untracked and finished jobs are never polled again; the counters add up; transitions
  come in order, one terminal event per job;
- and, at the end, every job still tracked is polled again (none is lost).

Deterministic: ``derandomize=True`` and no database.
"""

from __future__ import annotations

import bisect
import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poller.auth import Credential
from poller.errors import (
    AuthenticationError,
    ConnectionLostError,
    DecodeError,
    JobNotFoundError,
    RateLimitedError,
    RequestError,
    ServerError,
)
from poller.events import TrackingFailure, Transition
from poller.models import Endpoint, JobStatus, Status
from poller.sched.backoff import Backoff
from poller.sched.core import Scheduler
from poller.sched.queue import IN_FLIGHT, Bucket, TrackedJob
from poller.sched.ratelimit import AdaptiveBudget, RateLimit

T0 = 1_700_000_000.0
PER_S, BURST = 20.0, 2.0
EPS = 1e-6  # float resolution of Unix timestamps (about 2.4e-7 s near 1.7e9)
# Three keys: two of org_0 and one of org_1.
KEYS = [Credential(f"rt_test_prop_{i}", environ={}) for i in range(3)]
ORG_OF_KEY = {0: "org_0", 1: "org_1", 2: "org_0"}
JOB_IDS = [f"job_{i:02d}" for i in range(24)]
STATUSES = [
    Status.VALIDATING,
    Status.QUEUED,
    Status.IN_PROGRESS,
    Status.IN_PROGRESS,
    Status("postprocessing"),
    Status.COMPLETED,
    Status.FAILED,
]
SETTINGS = settings(
    max_examples=250,
    derandomize=True,
    database=None,
    deadline=None,
    stateful_step_count=60,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- the operations ----------------------------------------------------------------------


def operation_lists(retry_after: list[float | None]) -> st.SearchStrategy[list[Any]]:
    """Sequences of operations; ``retry_after``: the Retry-After values a 429 may carry."""
    outcomes = st.one_of(
        st.tuples(st.just("ok"), st.sampled_from(STATUSES)),
        st.tuples(st.just("429"), st.sampled_from(retry_after)),
        st.tuples(st.just("503"), st.sampled_from([None, 1.0])),
        st.tuples(st.sampled_from(["500", "reset", "decode", "404", "401"]), st.none()),
    )
    return st.lists(
        st.one_of(
            st.tuples(st.just("track"), st.integers(0, 23), st.sampled_from([0, 0, 1, 2])),
            st.tuples(st.just("track_many"), st.integers(0, 23), st.sampled_from([0, 1, 2])),
            st.tuples(st.just("untrack"), st.integers(0, 23), st.none()),
            st.tuples(st.just("dispatch"), st.integers(1, 24), st.none()),
            st.tuples(st.just("complete"), st.integers(0, 23), outcomes),
            st.tuples(
                st.just("advance"),
                st.sampled_from([0.0, 0.001, 0.02, 0.07, 0.3, 1.0, 4.0]),
                st.none(),
            ),
            st.tuples(
                st.just("cycle"),
                st.tuples(st.integers(1, 40), st.sampled_from([0.001, 0.01, 0.03, 0.06, 0.2])),
                st.booleans(),
            ),
            st.tuples(st.just("wake"), st.none(), st.none()),
        ),
        min_size=25,
        max_size=100,
    )


operations = operation_lists([None, 0.0, 0.3, 1.0, 2.5])
configs = st.fixed_dictionaries(
    {
        "learn": st.booleans(),
        "first_poll_rate_per_s": st.sampled_from([None, 50.0]),
        "expires_in_s": st.sampled_from([5.0, 3600.0]),
    }
)


# -- the harness -------------------------------------------------------------------------


def _error(kind: str, arg: float | None, job_id: str) -> RequestError:
    if kind == "429":
        return RateLimitedError("rate limited", status=429, retry_after_s=arg, job_id=job_id)
    if kind == "503":
        return ServerError("unavailable", status=503, retry_after_s=arg, job_id=job_id)
    if kind == "500":
        return ServerError("server error", status=500, job_id=job_id)
    if kind == "reset":
        return ConnectionLostError("connection lost", job_id=job_id)
    if kind == "decode":
        return DecodeError("bad body", excerpt="<html>", status=200, job_id=job_id)
    if kind == "404":
        return JobNotFoundError("job not found", status=404, job_id=job_id)
    return AuthenticationError("authentication failed", status=401, job_id=job_id)


@dataclass
class Harness:
    """The core, a fake clock, and everything observed so far."""

    backoff: Backoff
    first_poll_rate_per_s: float | None
    expires_in_s: float
    budget_for_none: RateLimit | None = field(default_factory=lambda: RateLimit(PER_S, BURST))
    now: float = T0
    in_flight: list[tuple[TrackedJob, int]] = field(default_factory=list)  # (job, key index)
    key_of: dict[int, int] = field(default_factory=dict)  # id(TrackedJob) -> key index
    answered_at: dict[int, float] = field(default_factory=dict)  # id(TrackedJob) -> last answer
    gone: set[int] = field(default_factory=set)  # id(TrackedJob) of untracked or finished jobs
    sent: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    # (key, its organisation was known then, from, until)
    pauses: list[tuple[int, bool, float, float]] = field(default_factory=list)
    not_before: dict[int, float] = field(default_factory=dict)
    probed_at: dict[int, float] = field(default_factory=dict)  # id(TrackedJob) -> its probe
    events: dict[int, list[Transition | TrackingFailure]] = field(
        default_factory=lambda: defaultdict(list)
    )
    jobs_seen: dict[int, TrackedJob] = field(default_factory=dict)

    def __post_init__(self) -> None:
        def budget_for(org_id: str | None) -> AdaptiveBudget:
            return AdaptiveBudget(RateLimit(PER_S, BURST) if org_id else self.budget_for_none)

        self.core = Scheduler(
            backoff=self.backoff,
            budget_for=budget_for,
            rng=random.Random(3),
            first_poll_rate_per_s=self.first_poll_rate_per_s,
            terminal_retention_s=5.0,
        )

    def resolve_keys(self) -> None:
        """Let the core learn every key's organisation, well before the sequence starts."""
        start = self.now
        for key in range(len(KEYS)):
            self.now = start - 60.0 + key
            job = self.core.track(f"warm_{key}", KEYS[key], self.now)
            assert self.core.next_due(self.now) is job
            self.core.on_success(job, self.payload(job, key, Status.COMPLETED), self.now)
            self.core.take_events()
            self.core.take_finished()
        self.now = start
        assert self.core.next_due(self.now) is None  # retires the warm-up jobs
        assert len(self.core) == 0

    # operations

    def track(self, index: int, key: int) -> None:
        job_id = JOB_IDS[index]
        known = self.core.get(job_id)
        job = self.core.track(job_id, KEYS[key], self.now)
        if known is None:
            self.key_of[id(job)] = key
            self.jobs_seen[id(job)] = job
        else:
            assert job is known, "track is idempotent"
        self.collect()

    def track_many(self, first: int, key: int) -> None:
        for index in range(first, len(JOB_IDS)):
            self.track(index, key)

    def untrack(self, index: int) -> None:
        job = self.core.untrack(JOB_IDS[index])
        if job is not None:
            self.gone.add(id(job))
        assert JOB_IDS[index] not in self.core

    def dispatch(self, limit: int) -> None:
        for _ in range(limit):
            job = self.core.next_due(self.now)
            if job is None:
                break
            self.check_dispatch(job)
        self.collect()

    def complete(self, index: int, outcome: tuple[str, object]) -> None:
        if not self.in_flight:
            return
        job, key = self.in_flight.pop(index % len(self.in_flight))
        kind, arg = outcome
        tracked_before = self.core.get(job.job_id) is job and id(job) not in self.gone
        if kind == "ok":
            assert isinstance(arg, Status)
            self.core.on_success(job, self.payload(job, key, arg), self.now)
        else:
            assert arg is None or isinstance(arg, float)
            error = _error(kind, arg, job.job_id)
            org_known = KEYS[key] in self.core._key_orgs
            self.core.on_failure(job, error, self.now)
            # A 503 pauses the organisation only when 503s track load (poller.sched.health);
            # else it holds back its own job only, for its Retry-After.
            load = kind == "503" and job.bucket.health.load_signal(self.now)
            if tracked_before and (kind == "429" or (load and arg is not None)):
                pause = arg if arg is not None else 1.0  # AdaptiveBudget.default_pause_s
                self.pauses.append((key, org_known, self.now, self.now + pause))
            elif tracked_before and kind == "503" and arg is not None:
                self.not_before[id(job)] = self.now + arg
        self.answered_at[id(job)] = self.now
        self.collect()

    def advance(self, dt: float) -> None:
        wake = self.core.next_wakeup(self.now)
        target = self.now + dt
        self.check_not_late(wake, target)

    def cycle(self, rounds: int, dt: float, mixed: bool) -> None:
        """A busy stretch: dispatch everything due, answer everything, advance; repeat."""
        answers: list[tuple[str, object]] = [("ok", Status.IN_PROGRESS)]
        if mixed:
            answers += [("500", None), ("ok", Status.QUEUED), ("429", None)]
        for round_ in range(rounds):
            self.dispatch(len(JOB_IDS))
            for i in range(len(self.in_flight)):
                self.complete(0, answers[(round_ + i) % len(answers)])
            self.advance(dt)

    def wake(self) -> None:
        wake = self.core.next_wakeup(self.now)
        if wake is not None and wake > self.now:
            self.now = wake

    # the server's answer

    def payload(self, job: TrackedJob, key: int, status: Status) -> JobStatus:
        # Recent timestamps: ages under a second keep the intervals short and the budget busy.
        started = int(self.now) if status is not Status.QUEUED else None
        done = int(self.now) if status.is_terminal else None
        return JobStatus(
            id=job.job_id,
            status=status,
            endpoint=Endpoint.DOCUMENTS_EXTRACT,
            created_at=int(self.now),
            expires_at=int(T0 + self.expires_in_s),
            organization_id=ORG_OF_KEY[key],
            started_at=started,
            completed_at=done,
        )

    # checks

    def check_dispatch(self, job: TrackedJob) -> None:
        key = self.key_of[id(job)]
        assert id(job) not in self.gone, f"{job.job_id} polled after it was untracked or ended"
        assert self.core.get(job.job_id) is job, "only tracked jobs are polled"
        assert all(j is not job for j, _ in self.in_flight), "a job in flight went out again"
        last = self.answered_at.get(id(job))
        if last is not None:
            assert self.now - last >= self.backoff.min_interval_s - EPS, (
                f"{job.job_id} polled {self.now - last:.4f} s after its last answer, "
                f"under the floor of {self.backoff.min_interval_s} s"
            )
        held = self.not_before.pop(id(job), None)
        assert held is None or self.now >= held - EPS, (
            f"{job.job_id} retried {held - self.now:.3f} s before its Retry-After ended"
        )
        org = ORG_OF_KEY[key]
        if job.bucket.org_id is None:
            # A key whose organisation is not known yet probes one request at a time, on
            # a budget of its own: its organisation's cannot count what it cannot name.
            # (One whose outcome is not reported within retry_s, 1 s, lets the next go.)
            probing = [
                j
                for j, k in self.in_flight
                if k == key
                and j.bucket.org_id is None
                and j.phase == IN_FLIGHT
                and self.now - self.probed_at[id(j)] < 1.0 - EPS
            ]
            assert not probing, f"key {key} sent a second probe while one was out"
            self.probed_at[id(job)] = self.now
        else:
            times = self.sent[org]
            times.append(self.now)
            in_window = len(times) - bisect.bisect_right(times, self.now - 1.0)
            assert in_window <= PER_S + BURST, f"{org} sent {in_window} requests within 1 s"
        for paused_key, org_known, since, until in self.pauses:
            if ORG_OF_KEY[paused_key] == org and since < self.now < until - EPS:
                # A pause binds its own key always, and the organisation's other keys once
                # their organisation is known, if it was known when the 429 came.
                same_key = paused_key == key
                org_wide = org_known and KEYS[key] in self.core._key_orgs
                if same_key or org_wide:
                    raise AssertionError(
                        f"{org} sent at +{self.now - since:.3f} s into a Retry-After pause "
                        f"of {until - since} s"
                    )
        self.in_flight.append((job, key))

    def check_not_late(self, wake: float | None, target: float) -> None:
        """``next_wakeup`` promised nothing before ``wake``: nothing may be due earlier."""
        self.now = target
        if wake is None or wake > target:
            job = self.core.next_due(target)
            assert job is None, f"next_wakeup said {wake}, yet {job} was due at {target}"
        self.collect()

    def collect(self) -> None:
        ended: set[int] = set()
        for event in self.core.take_events():
            job = self.core.get(event.job_id)
            assert job is not None, "events only for tracked jobs"
            history = self.events[id(job)]
            assert not any(
                isinstance(e, TrackingFailure) or e.current.is_terminal for e in history
            ), "one terminal event per job"
            if isinstance(event, Transition):
                previous = history[-1] if history else None
                assert event.seq == len(history) + 1
                assert event.previous == (previous.current if previous is not None else None)
                assert event.current != event.previous
            history.append(event)
            if isinstance(event, TrackingFailure) or event.current.is_terminal:
                self.gone.add(id(job))
                ended.add(id(job))
                assert job.done
        finished = self.core.take_finished()
        assert all(job.done for job in finished)
        assert {id(job) for job in finished} == ended, "each end is reported once, with its event"
        assert len(finished) == len(ended)

    def check_invariants(self) -> None:
        core = self.core
        assert core.in_flight == len(self.in_flight)
        assert sum(core.counts().values()) == len(core)
        buckets: dict[int, Bucket] = {id(b): b for b in core._buckets.values()}
        buckets.update({id(j.bucket): j.bucket for j in core.jobs()})
        members: dict[int, int] = defaultdict(int)
        for job in core.jobs():
            members[id(job.bucket)] += 1
        for bucket in buckets.values():
            assert bucket.members == members[id(bucket)], f"{bucket} counts its jobs exactly"
        orgs = [b.org_id for b in buckets.values() if b.org_id is not None and b.members]
        assert len(orgs) == len(set(orgs)), "an organisation's jobs share one bucket"
        for job in core.jobs():
            if job.phase == 0:  # waiting: in a bucket the core still has, so never orphaned
                assert core._buckets.get(job.bucket.key) is job.bucket, f"{job} is orphaned"
        entries: dict[int, int] = defaultdict(int)
        for bucket in buckets.values():
            live = 0
            for level in bucket.levels:
                for _, job in level:
                    if job.phase == 0:
                        entries[id(job)] += 1
                        live += 1
                        assert job.bucket is bucket, "a waiting job sits in its own bucket"
            assert len(bucket) == live, "the stale count is exact"
        for job in core.jobs():
            expected = 1 if job.phase == 0 else 0
            assert entries.get(id(job), 0) == expected, f"{job} has {entries.get(id(job))} entries"
        waiting = [j for j in core.jobs() if j.phase == 0]
        if waiting:
            assert core.next_wakeup(self.now) is not None, "a waiting job was lost"

    def check_nobody_is_lost(self) -> None:
        """Answer everything, then run the clock: every job still tracked goes out again."""
        for job, key in list(self.in_flight):
            self.in_flight.remove((job, key))
            self.core.on_success(job, self.payload(job, key, Status.IN_PROGRESS), self.now)
            self.answered_at[id(job)] = self.now
        self.collect()
        waiting = {id(j) for j in self.core.jobs() if j.phase == 0}
        deadline = self.now + 120.0
        while waiting and self.now < deadline:
            job = self.core.next_due(self.now)
            if job is None:
                wake = self.core.next_wakeup(self.now)
                assert wake is not None, "jobs are waiting but no wake-up is planned"
                self.check_not_late(wake, max(self.now, min(wake, self.now + 0.5)))
                continue
            self.check_dispatch(job)
            self.in_flight.remove((job, self.key_of[id(job)]))
            waiting.discard(id(job))
            self.core.on_success(
                job, self.payload(job, self.key_of[id(job)], Status.IN_PROGRESS), self.now
            )
            self.answered_at[id(job)] = self.now
            self.collect()
        assert not waiting, "some tracked jobs were never polled again"


def run(harness: Harness, ops: list[tuple[str, object, object]]) -> None:
    for name, a, b in ops:
        if name == "track":
            assert isinstance(a, int) and isinstance(b, int)
            harness.track(a, b)
        elif name == "track_many":
            assert isinstance(a, int) and isinstance(b, int)
            harness.track_many(a, b)
        elif name == "untrack":
            assert isinstance(a, int)
            harness.untrack(a)
        elif name == "dispatch":
            assert isinstance(a, int)
            harness.dispatch(a)
        elif name == "complete":
            assert isinstance(a, int) and isinstance(b, tuple)
            harness.complete(a, b)
        elif name == "advance":
            assert isinstance(a, float)
            harness.advance(a)
        elif name == "cycle":
            assert isinstance(a, tuple) and isinstance(b, bool)
            harness.cycle(a[0], a[1], b)
        else:
            harness.wake()
        harness.check_invariants()
    harness.check_nobody_is_lost()
    harness.check_invariants()


def backoff(learn: bool) -> Backoff:
    return Backoff(
        initial_interval_s={"validating": 0.05, "queued": 0.1, "in_progress": 0.1},
        default_interval_s=0.1,
        min_interval_s=0.05,
        max_interval_s=2.0,
        error_base_s=0.1,
        error_max_s=1.0,
        max_consecutive_errors=3,
        learn=learn,
    )


# -- the properties ----------------------------------------------------------------------

# The alphabet with organisations known from the start (the harness lets the core learn
# every key's organisation first) and no Retry-After shorter than the floor; the test
# after it adds discovery and the short Retry-After back.
_settled_operations = operation_lists([None, 0.3, 1.0, 2.5])


def _harness(config: dict[str, object]) -> Harness:
    learn, rate, expires = config["learn"], config["first_poll_rate_per_s"], config["expires_in_s"]
    assert isinstance(learn, bool) and isinstance(expires, float)
    assert rate is None or isinstance(rate, float)
    return Harness(backoff(learn), rate, expires)


@SETTINGS
@given(config=configs, ops=_settled_operations)
def test_scheduling_invariants_hold_for_any_sequence(
    config: dict[str, object], ops: list[tuple[str, object, object]]
) -> None:
    harness = _harness(config)
    harness.resolve_keys()
    run(harness, ops)


@SETTINGS
@given(config=configs, ops=operations)
def test_scheduling_invariants_hold_while_organisations_are_being_discovered(
    config: dict[str, object], ops: list[tuple[str, object, object]]
) -> None:
    """The full alphabet: keys whose organisation the core does not know yet, a second key
    of one organisation, a 429 with ``Retry-After: 0``. The same checks."""
    run(_harness(config), ops)


# -- what those properties found, one case each -------------------------------------------


def _payload(job_id: str, org: str, now: float, status: Status = Status.IN_PROGRESS) -> JobStatus:
    return JobStatus(
        id=job_id,
        status=status,
        endpoint=Endpoint.DOCUMENTS_EXTRACT,
        created_at=int(now),
        started_at=int(now),
        expires_at=int(now) + 86_400,
        organization_id=org,
    )


def _max_in_window(times: list[float], window_s: float = 1.0) -> int:
    return max(i - bisect.bisect_right(times, t - window_s) + 1 for i, t in enumerate(times))


def _busy_run(
    core: Scheduler, key: Credential, org: str, until: float, start: float = T0 + 0.01
) -> list[float]:
    """Dispatch whatever is due every millisecond, answering at once; the send times."""
    sent: list[float] = []
    now = start
    while now < until:
        while (job := core.next_due(now)) is not None:
            sent.append(now)
            core.on_success(job, _payload(job.job_id, org, now), now)
        now += 0.001
    return sent


def test_an_organisations_first_second_stays_within_its_budget() -> None:
    core = Scheduler(
        backoff=backoff(learn=False),
        budget_for=lambda org: AdaptiveBudget(RateLimit(PER_S, BURST)),
        rng=random.Random(1),
        first_poll_rate_per_s=None,
    )
    for job_id in JOB_IDS:
        core.track(job_id, KEYS[0], T0)
    first_wave = []  # what goes out before the first answer comes back
    while (job := core.next_due(T0)) is not None:
        first_wave.append(job)
    for job in first_wave:
        core.on_success(job, _payload(job.job_id, "org_0", T0 + 0.01), T0 + 0.01)
    sent = [T0] * len(first_wave) + _busy_run(core, KEYS[0], "org_0", T0 + 3.0)
    assert len(sent) > 3 * PER_S * 0.9, "the budget, not the jobs, is the limit here"
    assert _max_in_window(sent) <= PER_S + BURST


def test_a_configured_organisation_limit_holds_before_the_first_answer() -> None:
    limits = {"org_0": RateLimit(10.0, 1.0)}
    core = Scheduler(
        backoff=backoff(learn=False),
        budget_for=lambda org: AdaptiveBudget(limits.get(org) if org else None),
        rng=random.Random(1),
        first_poll_rate_per_s=None,
    )
    ids = [f"job_{i}" for i in range(48)]
    for job_id in ids:
        core.track(job_id, KEYS[0], T0)
    in_flight = []
    now, sent = T0, []
    while now < T0 + 1.0:  # answers take 200 ms, as over a slow link
        while (job := core.next_due(now)) is not None:
            sent.append(now)
            in_flight.append((now + 0.2, job))
        for due, job in [f for f in in_flight if f[0] <= now]:
            in_flight.remove((due, job))
            core.on_success(job, _payload(job.job_id, "org_0", now), now)
        now += 0.001
    assert _max_in_window(sent) <= 11


def test_a_pause_given_before_the_organisation_is_known_survives_learning_it() -> None:
    # A key whose organisation is unknown sends one probe at a time; a 429 on it pauses
    # the key for the Retry-After, and nothing of the key goes before the pause ends,
    # even once another answer would name the organisation.
    core = Scheduler(
        backoff=backoff(learn=False),
        budget_for=lambda org: AdaptiveBudget(),
        rng=random.Random(1),
        first_poll_rate_per_s=None,
    )
    for i in range(5):
        core.track(f"job_{i}", KEYS[0], T0)
    first = core.next_due(T0)
    assert first is not None
    assert core.next_due(T0) is None, "one probe at a time while the organisation is unknown"
    core.on_failure(first, RateLimitedError("slow down", status=429, retry_after_s=30.0), T0)
    sent = _busy_run(core, KEYS[0], "org_0", T0 + 29.9)
    assert sent == [], f"{len(sent)} requests during the 30 s pause, the first at {sent[:1]}"
    after = _busy_run(core, KEYS[0], "org_0", T0 + 31.0, start=T0 + 30.0)
    assert len(after) >= 5, "after the pause the probe names the organisation; all go"


def test_a_retry_after_under_the_floor_does_not_break_the_floor() -> None:
    core = Scheduler(
        backoff=Backoff(learn=False),  # min_interval_s 0.25
        budget_for=lambda org: AdaptiveBudget(),
        rng=random.Random(1),
        first_poll_rate_per_s=None,
    )
    ids = [f"job_{i:03d}" for i in range(200)]
    for job_id in ids:
        core.track(job_id, KEYS[0], T0)
    now = T0
    while now < T0 + 2.0:  # a busy organisation: ~100 answers a second
        while (job := core.next_due(now)) is not None:
            core.on_success(job, _payload(job.job_id, "org_0", now), now)
        now += 0.01
    while (job := core.next_due(now)) is None:
        now += 0.001
    throttled_at = now
    core.on_failure(job, RateLimitedError("slow down", status=429, retry_after_s=0.0), now)
    while now < throttled_at + 0.25:
        while (other := core.next_due(now)) is not None:
            assert other is not job, f"re-polled {now - throttled_at:.3f} s after its 429"
            core.on_success(other, _payload(other.job_id, "org_0", now), now)
        now += 0.001
