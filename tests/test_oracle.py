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

from benchmarks._oracle import PhaseSchedule, phase_samples, run_oracle  # noqa: E402
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
