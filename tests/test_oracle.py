"""The efficiency benchmark's oracle: optimal polling for a known distribution."""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._oracle import (  # noqa: E402
    PhaseSchedule,
    lognormal_survival,
    phase_samples,
    run_oracle,
)
from benchmarks.virtual_time import (  # noqa: E402
    equal_mix,
    population,
    run_exponential,
    run_fixed,
    tune,
)


def test_a_memoryless_phase_is_polled_at_a_steady_interval() -> None:
    rng = random.Random(1)
    mean, lam = 3.0, 0.05
    schedule = PhaseSchedule([rng.expovariate(1 / mean) for _ in range(50_000)], lam)
    first = schedule.next_age(0.0)
    later = schedule.next_age(6.0) - 6.0
    # Constant hazard h: the interval minimising lag + lam per poll is about sqrt(2 lam / h).
    assert first == pytest.approx(math.sqrt(2 * lam * mean), rel=0.1)
    assert later == pytest.approx(first, rel=0.1)


def test_a_phase_of_known_length_is_polled_once_just_after_its_end() -> None:
    lam = 0.1
    schedule = PhaseSchedule([5.0] * 1000, lam)
    assert 5.0 <= schedule.next_age(0.0) < 5.02
    assert schedule.cost == pytest.approx(lam, abs=0.02)  # one poll, next to no lag


def test_a_higher_price_per_request_polls_less_often() -> None:
    rng = random.Random(2)
    samples = [rng.lognormvariate(math.log(25), 0.8) for _ in range(20_000)]
    cheap, dear = PhaseSchedule(samples, 0.05), PhaseSchedule(samples, 0.5)
    assert cheap.next_age(20.0) < dear.next_age(20.0)


def test_the_oracle_beats_every_baseline_at_its_own_cost() -> None:
    jobs = population(300, endpoints=equal_mix(), arrival_per_s=1.0, seed=3)
    oracle = run_oracle(jobs, phase_samples(per_class=5_000), 0.1)
    target = oracle.requests_per_job
    fixed = tune(lambda interval: run_fixed(jobs, interval), target, 0.05, 3600.0)
    exponential = tune(lambda cap: run_exponential(jobs, cap), target, 1.0, 36000.0)
    assert oracle.lag.missed == 0
    for baseline in (fixed, exponential):
        assert baseline.requests_per_job == pytest.approx(target, rel=0.02)
        assert oracle.lag.mean_s < baseline.lag.mean_s


def test_past_every_draw_it_polls_as_a_steady_hazard_would() -> None:
    lam = 0.1
    schedule = PhaseSchedule([10.0 + i / 100 for i in range(1000)], lam)
    # A job older than every draw: no 10 ms polling, but sqrt(2 lam age) apart.
    assert schedule.next_age(500.0) - 500.0 == pytest.approx(math.sqrt(2 * lam * 500.0))


def test_the_far_tail_comes_from_the_distribution_not_from_the_last_draws() -> None:
    lam, median, sigma = 0.093, 600.0, 1.0
    schedules = []
    for seed in (1, 2):
        rng = random.Random(seed)
        draws = [rng.lognormvariate(math.log(median), sigma) for _ in range(20_000)]
        schedules.append(PhaseSchedule(draws, lam, tail=lognormal_survival(median, sigma)))
    for schedule in schedules:
        # At 14,600 s (beyond all but a handful of draws) the true hazard calls for a
        # poll about every 28 s; draws alone would leave gaps of thousands of seconds.
        assert 10.0 < schedule.next_age(14_600.0) - 14_600.0 < 80.0
    assert schedules[0].cost == pytest.approx(schedules[1].cost, rel=0.03)
