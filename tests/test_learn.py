"""The learned duration model: sketches, lag tables, steps, and what they are learned from."""

from __future__ import annotations

import math
import random
from array import array

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poller.auth import Credential
from poller.errors import ConfigError
from poller.models import Endpoint, JobId, JobStatus, Status
from poller.sched.backoff import Backoff
from poller.sched.core import Scheduler
from poller.sched.learn import (
    LAYOUT,
    DurationModel,
    DurationSketch,
    LearnedDurations,
    LearnedKind,
    solve_step,
    steady_hazard_step,
    tail_step,
)
from poller.sched.ratelimit import AdaptiveBudget

T0 = 1_800_000_000


def payload(
    status: Status,
    *,
    created: float = T0,
    started: float | None = None,
    completed: float | None = None,
    org: str = "org_a",
    endpoint: Endpoint = Endpoint.DOCUMENTS_EXTRACT,
) -> JobStatus:
    return JobStatus(
        id="job_1",
        status=status,
        endpoint=endpoint,
        created_at=int(created),
        expires_at=int(created) + 604_800,
        organization_id=org,
        started_at=int(started) if started is not None else None,
        completed_at=int(completed) if completed is not None else None,
    )


def teach(model: DurationModel, durations: list[float], **kwargs: object) -> None:
    """Feed finished jobs that ran ``durations`` seconds in progress."""
    for duration in durations:
        done = payload(Status.COMPLETED, started=T0 + 10, completed=T0 + 10 + duration, **kwargs)  # type: ignore[arg-type]
        model.observe(done, Status.IN_PROGRESS)


def test_sketch_cdf_is_monotone_and_reaches_one() -> None:
    sketch = DurationSketch()
    rng = random.Random(1)
    for _ in range(1000):
        sketch.add(rng.lognormvariate(math.log(25), 0.8))
    xs, ys = sketch.cdf_points()
    assert xs == sorted(xs) and ys == sorted(ys)
    assert ys[0] == 0.0 and ys[-1] == pytest.approx(1.0)
    median_x = next(x for x, y in zip(xs, ys, strict=True) if y >= 0.5)
    assert 20 <= median_x <= 36, "the median lands in the right 20% bin"


def test_sketch_memory_fades_but_keeps_the_shape() -> None:
    sketch = DurationSketch(max_weight=100.0)
    for _ in range(1000):
        sketch.add(5.0)
    assert sketch.total <= 100.0
    for _ in range(1000):
        sketch.add(500.0)
    xs, ys = sketch.cdf_points()
    below_100 = max(y for x, y in zip(xs, ys, strict=True) if x <= 100)
    assert below_100 < 0.05, "old samples faded: recent durations dominate"


def test_nothing_is_known_before_enough_samples() -> None:
    model = DurationModel(min_samples=30)
    teach(model, [20.0] * 29)
    running = payload(Status.IN_PROGRESS, started=T0 + 10)
    assert model.row_at_age(running, 5.0) is None
    teach(model, [20.0])
    assert isinstance(model.row_at_age(running, 5.0), array)


def test_statuses_without_an_age_are_not_modelled() -> None:
    model = DurationModel(min_samples=1)
    teach(model, [20.0] * 10)
    assert model.row_at_age(payload(Status.VALIDATING), 1.0) is None
    assert model.row_at_age(payload(Status("postprocessing")), 1.0) is None


def test_a_job_in_progress_without_started_at_has_no_age_and_backs_off() -> None:
    """The scheduler takes a job's age in its status from the payload's own timestamps:
    without ``started_at``, a job in progress has none, and is polled by the geometric
    backoff even where the model knows its kind."""
    model = DurationModel(min_samples=30)
    teach(model, [600.0] * 100)  # long jobs: the learned step at age 5 s is long
    backoff = Backoff(jitter=0.0, default_interval_s=1.0, initial_interval_s={})
    key = Credential("rt_test_learn", environ={})

    def next_poll_after(answer: JobStatus) -> float:
        core: Scheduler[Credential] = Scheduler(
            backoff=backoff,
            budget_for=lambda org: AdaptiveBudget(),
            rng=random.Random(0),
            first_poll_rate_per_s=None,
            learned=model.snapshot(),
        )
        core.track(JobId("job_1"), key, T0)
        job = core.next_due(T0)
        assert job is not None
        core.on_success(job, answer, T0 + 15)
        wakeup = core.next_wakeup(T0 + 15)
        assert wakeup is not None
        return wakeup - (T0 + 15)

    assert next_poll_after(payload(Status.IN_PROGRESS)) == pytest.approx(1.0)
    assert next_poll_after(payload(Status.IN_PROGRESS, started=T0 + 10)) > 5.0


def test_steps_follow_the_hazard() -> None:
    model = DurationModel(min_samples=30)
    rng = random.Random(3)
    teach(model, [rng.lognormvariate(math.log(60), 0.3) for _ in range(500)])

    def step(age: float, theta: float = 0.125) -> float:
        row = model.row_at_age(payload(Status.IN_PROGRESS, started=T0 + 10), age)
        assert isinstance(row, array)
        return solve_step(row, theta)

    # Changes are unlikely in the first seconds of a ~60 s job, likely near 60 s.
    assert step(5.0) > 3 * step(55.0)
    # A higher threshold always waits longer.
    assert step(55.0, 0.125) < step(55.0, 2.0) < step(55.0, 32.0)


def test_a_job_older_than_the_data_is_in_the_tail() -> None:
    model = DurationModel(min_samples=30)
    teach(model, [10.0 + i % 5 for i in range(100)])
    old = payload(Status.IN_PROGRESS, started=T0 + 10)
    assert model.row_at_age(old, 500.0) == "tail"


def test_queued_time_is_learned_from_started_minus_created() -> None:
    model = DurationModel(min_samples=10)
    for _ in range(20):
        started = payload(Status.IN_PROGRESS, started=T0 + 3)
        model.observe(started, Status.QUEUED)
    queued = payload(Status.QUEUED)
    row = model.row_at_age(queued, 1.0)
    assert isinstance(row, array)
    # Everything starts 3 s after creation: at age 1 the change is ~2 s away.
    assert 1.0 <= solve_step(row, 0.125) <= 3.5


def _learned_mean(model: DurationModel, status: Status) -> float:
    """The mean duration a key's sketch holds: the integral of its survival function."""
    (entry,) = (e for k, e in model._entries.items() if k[2] == status.value)
    xs, ys = entry.sketch.cdf_points()
    pairs = zip(xs, xs[1:], ys, ys[1:], strict=False)
    return sum((x1 - x0) * (1 - (y0 + y1) / 2) for x0, x1, y0, y1 in pairs)


def test_whole_second_timestamps_put_a_duration_within_the_second_after_it() -> None:
    """started_at - created_at = 3 (whole seconds, truncated) means the job left queued
    between 3 and 4 s after the created_at the engine measures ages from."""
    model = DurationModel(min_samples=10)
    for _ in range(200):
        model.observe(payload(Status.IN_PROGRESS, started=T0 + 3), Status.QUEUED)
    teach(model, [20.0] * 200)
    assert _learned_mean(model, Status.QUEUED) == pytest.approx(3.5, abs=0.15)
    # 20% bins (17.1-20.5, 20.5-24.6 s here) blur it, but no longer all below 20.5 s
    # (a mean of ~18.8 s, as when durations were taken at their whole seconds).
    assert _learned_mean(model, Status.IN_PROGRESS) == pytest.approx(20.5, abs=1.0)


def test_keys_are_bounded() -> None:
    model = DurationModel(min_samples=1, max_keys=5)
    for org in range(20):
        teach(model, [5.0], org=f"org_{org}")
    assert len(model) == 5


def test_organisations_and_endpoints_learn_separately() -> None:
    model = DurationModel(min_samples=30)
    teach(model, [5.0] * 100, org="org_fast")
    teach(model, [500.0] * 100, org="org_slow")
    fast = model.row_at_age(payload(Status.IN_PROGRESS, started=T0, org="org_fast"), 2.0)
    slow = model.row_at_age(payload(Status.IN_PROGRESS, started=T0, org="org_slow"), 2.0)
    assert isinstance(fast, array) and isinstance(slow, array)
    assert solve_step(fast, 0.125) < solve_step(slow, 0.125) / 10


@settings(max_examples=200, derandomize=True, database=None)
@given(
    first=st.floats(0.05, 600.0),
    theta0=st.floats(0.01, 10.0),
    factor=st.floats(1.0, 1e5),
)
def test_steady_hazard_step_reaches_the_threshold(
    first: float, theta0: float, factor: float
) -> None:
    theta = theta0 * factor
    step = steady_hazard_step(first, theta0, theta)
    hazard = 2.0 * theta0 / first**2
    piled = step - (1.0 - math.exp(-hazard * step)) / hazard
    assert piled == pytest.approx(theta, rel=1e-3)
    assert steady_hazard_step(first, theta0, theta * 2) > step


def test_tail_step_grows_with_age_and_threshold() -> None:
    assert tail_step(100.0, 0.125) == pytest.approx(5.0)
    assert tail_step(400.0, 0.125) == pytest.approx(10.0)
    assert tail_step(100.0, 0.5) == pytest.approx(10.0)


def test_a_censored_duration_spreads_one_sample_over_its_interval() -> None:
    sketch = DurationSketch()
    sketch.add_between(0.2, 2.0)
    xs, ys = sketch.cdf_points()
    assert sketch.total == 1.0 and ys[-1] == pytest.approx(1.0)
    below = max(y for x, y in zip(xs, ys, strict=True) if x <= 0.2)
    above = min(y for x, y in zip(xs, ys, strict=True) if x >= 2.0)
    assert below == 0.0 and above == pytest.approx(1.0)  # nothing outside [0.2, 2.0]
    at_one = max(y for x, y in zip(xs, ys, strict=True) if x <= 1.0)
    assert 0.3 < at_one < 0.5  # spread evenly over the interval: ~45% below 1.0


def test_a_censored_duration_goes_where_earlier_ones_put_the_change() -> None:
    sketch = DurationSketch()
    for _ in range(50):
        sketch.add(0.5)
    sketch.add_between(0.0, 3.0)  # says only "somewhere in the first 3 s"
    xs, ys = sketch.cdf_points()
    share_near_half = sum(
        y1 - y0 for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:], strict=False) if x0 <= 0.5 < x1
    )
    # Of the new sample's weight, nearly all (all but the even 10%) joins the 0.5 s bin.
    assert share_near_half * 51 > 50 + 0.85


def test_a_censored_duration_weighs_bins_by_what_they_hold_per_second() -> None:
    sketch = DurationSketch()
    for _ in range(50):
        sketch.add(0.06)  # a narrow bin (about 0.01 s wide)
        sketch.add(1.0)  # a wide one (about 0.18 s wide)
    before = list(sketch._counts)
    sketch.add_between(0.05, 2.0)
    gained = [after - was for after, was in zip(sketch._counts, before, strict=True)]
    narrow, wide = (gained[i] for i, count in enumerate(before) if count == 50)
    assert sum(gained) == pytest.approx(1.0)
    # Equal counts, so the interval says as much for either: about an even split of
    # the 90% that follows the data (a bin's width must not buy it weight).
    assert narrow == pytest.approx(wide, rel=0.25)
    assert narrow > 0.35


def test_a_censored_duration_past_the_last_bin_keeps_its_whole_weight() -> None:
    sketch = DurationSketch()
    sketch.add_between(1e6, 1e8)
    assert sum(sketch._counts) == pytest.approx(1.0)


def test_validating_is_learned_from_the_engines_own_sightings() -> None:
    model = DurationModel(min_samples=10)
    for _ in range(30):  # polls on either side of a change ~0.5 s after first sight
        model.observe_validating("org_a", Endpoint.DOCUMENTS_EXTRACT.value, 0.45, 0.55)
    validating = payload(Status.VALIDATING)
    row = model.row_at_age(validating, 0.0)
    assert isinstance(row, array)
    # Just seen: the change is ~0.5 s away, so the next poll comes soon after it.
    assert 0.45 <= solve_step(row, 0.125) <= 0.8


@pytest.mark.parametrize(("low", "high"), [(0.5, -9.1), (-3.0, 1.0), (0.1, math.inf)])
def test_an_interval_from_a_clock_that_stepped_teaches_nothing(low: float, high: float) -> None:
    model = DurationModel(min_samples=1)
    model.observe_validating("org_a", Endpoint.DOCUMENTS_EXTRACT.value, low, high)
    assert len(model) == 0 and model.samples == 0


# -- warm start: snapshot and load -------------------------------------------------


def _taught() -> DurationModel:
    """A model whose tables are up to date: built at 30 samples, then every 50."""
    model = DurationModel(min_samples=30)
    rng = random.Random(5)
    teach(model, [rng.lognormvariate(math.log(60), 0.5) for _ in range(280)])
    for _ in range(80):
        model.observe(payload(Status.IN_PROGRESS, started=T0 + 3), Status.QUEUED)
    return model


def _steps(model: DurationModel) -> list[float]:
    running = payload(Status.IN_PROGRESS, started=T0 + 10)
    steps = []
    for age in (1.0, 20.0, 55.0, 90.0):
        row = model.row_at_age(running, age)
        assert isinstance(row, array)
        steps.append(solve_step(row, 0.125))
    return steps


def test_a_loaded_snapshot_polls_as_the_model_it_came_from() -> None:
    source = _taught()
    data = msgspec.json.encode(source.snapshot())  # as a user would save it
    fresh = DurationModel(min_samples=30)
    fresh.load(msgspec.json.decode(data, type=LearnedDurations))
    assert len(fresh) == len(source) == 2
    assert _steps(fresh) == pytest.approx(_steps(source))
    assert fresh.snapshot() == source.snapshot()
    # And it goes on learning from there.
    teach(fresh, [60.0] * 10)
    assert fresh.snapshot() != source.snapshot()


def test_loading_replaces_a_kind_known_already() -> None:
    model = DurationModel(min_samples=30)
    teach(model, [500.0] * 100)
    model.load(_taught().snapshot())
    assert _steps(model) == pytest.approx(_steps(_taught()))


def _kind(**changes: object) -> LearnedKind:
    values: dict[str, object] = {
        "organization_id": "org_a",
        "endpoint": Endpoint.DOCUMENTS_EXTRACT.value,
        "status": "in_progress",
        "counts": [1.0] * 100,
    }
    values.update(changes)
    return LearnedKind(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("snapshot", "names"),
    [
        (LearnedDurations(layout="log-bins/0.1/1.5/40", kinds=[]), "layout"),
        (LearnedDurations(layout=LAYOUT, kinds=[_kind(status="completed")]), "status"),
        (LearnedDurations(layout=LAYOUT, kinds=[_kind(counts=[1.0] * 99)]), "counts"),
        (LearnedDurations(layout=LAYOUT, kinds=[_kind(counts=[-1.0] + [1.0] * 99)]), "counts"),
        (LearnedDurations(layout=LAYOUT, kinds=[_kind(counts=[math.nan] * 100)]), "counts"),
        (LearnedDurations(layout=LAYOUT, kinds=[_kind(counts=[math.inf] * 100)]), "counts"),
        (LearnedDurations(layout=LAYOUT, kinds=[_kind(counts=[True] * 100)]), "counts"),
        ("not a snapshot", "LearnedDurations"),
    ],
)
def test_a_snapshot_this_version_cannot_use_is_refused_whole(snapshot: object, names: str) -> None:
    model = DurationModel(min_samples=1)
    good = _kind(organization_id="org_good")
    if isinstance(snapshot, LearnedDurations):
        snapshot = LearnedDurations(layout=snapshot.layout, kinds=[good, *snapshot.kinds])
    with pytest.raises(ConfigError, match=names):
        model.load(snapshot)  # type: ignore[arg-type]
    assert len(model) == 0, "nothing loaded, not even the valid kinds before the bad one"


def test_loading_keeps_the_most_recent_kinds_within_the_bound() -> None:
    model = DurationModel(min_samples=1, max_keys=3)
    kinds = [_kind(organization_id=f"org_{i}") for i in range(10)]
    model.load(LearnedDurations(layout=LAYOUT, kinds=kinds))
    assert [k.organization_id for k in model.snapshot().kinds] == ["org_7", "org_8", "org_9"]


def test_restored_counts_past_the_weight_limit_fade_like_learned_ones() -> None:
    sketch = DurationSketch(max_weight=100.0)
    sketch.restore([10.0] * 100)  # 1000 samples' worth
    assert sketch.total <= 100.0
    assert sum(sketch.counts) == pytest.approx(sketch.total)


def test_an_absurd_timestamp_costs_only_its_own_sample() -> None:
    """Any int decodes (msgspec), so a created_at hundreds of digits long must not stop
    the job's other, sane, duration from being learned."""
    model = DurationModel(min_samples=1)
    absurd = JobStatus(
        id="job_1",
        status=Status.COMPLETED,
        endpoint=Endpoint.DOCUMENTS_EXTRACT,
        created_at=-(10**320),
        expires_at=T0 + 604_800,
        organization_id="org_a",
        started_at=T0,
        completed_at=T0 + 20,
    )
    model.observe(absurd, None)
    assert model.samples == 2
    assert _learned_mean(model, Status.IN_PROGRESS) == pytest.approx(20.5, abs=1.0)
