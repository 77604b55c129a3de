"""Adaptive backoff: pure functions of a policy, a status, a count and a random source."""

from __future__ import annotations

import itertools
import math
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poller.errors import ConfigError
from poller.models import Status
from poller.sched.backoff import Backoff

_PROPERTY = settings(max_examples=200, derandomize=True, database=None, deadline=None)


class MidRandom(random.Random):
    """A random source pinned to the middle of [0, 1): jitter factor exactly 1."""

    def random(self) -> float:
        return 0.5


def no_jitter(**changes: Any) -> Backoff:
    settings_: dict[str, Any] = {"jitter": 0.0, "min_interval_s": 0.01, "max_interval_s": 1e6}
    settings_.update(changes)
    return Backoff(**settings_)


# -- polling interval -------------------------------------------------------------------


@pytest.mark.parametrize("status", [Status.QUEUED, Status.IN_PROGRESS, Status.VALIDATING])
def test_interval_grows_geometrically_per_unchanged_poll(status: Status) -> None:
    backoff = no_jitter(multiplier=1.5)
    rng = random.Random(0)
    intervals = [backoff.interval_s(status, n, rng) for n in range(8)]

    start = intervals[0]
    for n, value in enumerate(intervals):
        assert value == pytest.approx(start * 1.5**n)
    for earlier, later in itertools.pairwise(intervals):
        assert later / earlier == pytest.approx(1.5)


def test_a_transition_starts_over() -> None:
    backoff = no_jitter()
    rng = random.Random(0)
    grown = backoff.interval_s(Status.QUEUED, 6, rng)
    # The engine passes 0 unchanged polls after a transition: back to the start.
    assert backoff.interval_s(Status.IN_PROGRESS, 0, rng) == 1.0 < grown


def test_default_starting_intervals_differ_by_status() -> None:
    backoff = no_jitter()
    rng = random.Random(0)
    assert backoff.interval_s(Status.VALIDATING, 0, rng) == 0.5
    assert backoff.interval_s(Status.QUEUED, 0, rng) == 1.0
    assert backoff.interval_s(Status.IN_PROGRESS, 0, rng) == 1.0


def test_configured_starting_intervals_by_status() -> None:
    backoff = no_jitter(initial_interval_s={"queued": 2.0, "in_progress": 5.0})
    rng = random.Random(0)

    assert backoff.interval_s(Status.QUEUED, 0, rng) == 2.0
    assert backoff.interval_s(Status.IN_PROGRESS, 0, rng) == 5.0
    assert backoff.interval_s(Status.QUEUED, 2, rng) == pytest.approx(2.0 * 1.5**2)
    assert backoff.interval_s(Status.IN_PROGRESS, 2, rng) == pytest.approx(5.0 * 1.5**2)
    # Not listed: the default.
    assert backoff.interval_s(Status.VALIDATING, 0, rng) == 1.0


@pytest.mark.parametrize(
    "status", [None, Status("paused"), Status.UNKNOWN, Status.COMPLETED], ids=str
)
def test_unlisted_unknown_or_unseen_status_uses_the_default(status: Status | None) -> None:
    backoff = no_jitter(default_interval_s=3.0)
    rng = random.Random(0)
    assert backoff.interval_s(status, 0, rng) == 3.0
    assert backoff.interval_s(status, 1, rng) == pytest.approx(4.5)


def test_interval_is_capped_at_max_and_floored_at_min() -> None:
    backoff = no_jitter(min_interval_s=0.8, max_interval_s=10.0)
    rng = random.Random(0)

    assert backoff.interval_s(Status.VALIDATING, 0, rng) == 0.8  # 0.5, raised to the floor
    assert backoff.interval_s(Status.QUEUED, 100, rng) == 10.0
    assert backoff.interval_s(Status.QUEUED, 10**9, rng) == 10.0


def test_jitter_spreads_values_around_the_interval() -> None:
    backoff = Backoff(jitter=0.2)
    rng = random.Random(42)
    values = [backoff.interval_s(Status.QUEUED, 3, rng) for _ in range(500)]
    base = 1.0 * 1.5**3

    assert all(base * 0.8 <= v <= base * 1.2 for v in values)
    assert min(values) < base * 0.85
    assert max(values) > base * 1.15
    assert len(set(values)) > 450
    # Centred on the interval.
    assert sum(values) / len(values) == pytest.approx(base, rel=0.03)


def test_jitter_factor_is_one_in_the_middle() -> None:
    assert Backoff(jitter=0.2).interval_s(Status.QUEUED, 2, MidRandom()) == pytest.approx(2.25)


def test_same_seed_same_schedule() -> None:
    backoff = Backoff()
    first = [backoff.interval_s(Status.QUEUED, n, random.Random(7)) for n in range(20)]
    again = [backoff.interval_s(Status.QUEUED, n, random.Random(7)) for n in range(20)]
    assert first == again


@_PROPERTY
@given(
    min_s=st.floats(0.001, 100.0),
    span=st.floats(1.0, 1000.0),
    start=st.floats(1e-6, 1e6),
    multiplier=st.floats(1.0, 100.0),
    jitter=st.floats(0.0, 0.99),
    status=st.sampled_from([*Status, None, Status("paused")]),
    unchanged_polls=st.integers(-1000, 10**12),
    seed=st.integers(0, 2**32),
)
def test_interval_stays_within_min_and_max_for_every_input(
    min_s: float,
    span: float,
    start: float,
    multiplier: float,
    jitter: float,
    status: Status | None,
    unchanged_polls: int,
    seed: int,
) -> None:
    backoff = Backoff(
        initial_interval_s={"queued": start, "in_progress": start * 2},
        default_interval_s=start,
        multiplier=multiplier,
        jitter=jitter,
        min_interval_s=min_s,
        max_interval_s=min_s * span,
    )
    value = backoff.interval_s(status, unchanged_polls, random.Random(seed))
    assert math.isfinite(value)
    assert backoff.min_interval_s <= value <= backoff.max_interval_s


def test_a_large_accepted_multiplier_does_not_overflow() -> None:
    backoff = Backoff(multiplier=1e5)  # accepted by validation
    assert backoff.interval_s(Status.QUEUED, 100, random.Random(0)) == backoff.max_interval_s


# -- error delay ------------------------------------------------------------------------


@pytest.mark.parametrize("failures", range(1, 10))
def test_error_delay_is_full_jitter_below_an_exponential_ceiling(failures: int) -> None:
    backoff = Backoff(error_base_s=1.0, error_max_s=60.0, min_interval_s=0.25)
    rng = random.Random(failures)
    ceiling = min(60.0, 2.0 ** (failures - 1))
    delays = [backoff.error_delay_s(failures, None, rng) for _ in range(400)]

    assert all(0.25 <= d <= max(ceiling, 0.25) for d in delays)
    if ceiling >= 4:
        # Full jitter: spread over the whole range, not bunched near the ceiling.
        assert min(delays) < ceiling * 0.2
        assert max(delays) > ceiling * 0.8


def test_error_delay_ceiling_doubles_then_caps() -> None:
    backoff = Backoff(error_base_s=1.0, error_max_s=60.0, min_interval_s=0.01)
    rng = random.Random(3)
    maxima = [max(backoff.error_delay_s(n, None, rng) for _ in range(300)) for n in range(1, 9)]

    for n, top in enumerate(maxima, start=1):
        assert top <= min(60.0, 2.0 ** (n - 1))
        assert top > 0.9 * min(60.0, 2.0 ** (n - 1))


@pytest.mark.parametrize("retry_after_s", [0.0, 5.0, 45.0, 60.0, 3600.0])
def test_error_delay_never_undercuts_retry_after(retry_after_s: float) -> None:
    backoff = Backoff(error_base_s=1.0, error_max_s=60.0)
    rng = random.Random(1)
    for failures in range(1, 12):
        for _ in range(50):
            delay = backoff.error_delay_s(failures, retry_after_s, rng)
            assert delay >= retry_after_s
            assert delay >= backoff.min_interval_s
            # Retry-After is honoured even above error_max_s, but not inflated.
            assert delay <= max(60.0, retry_after_s)


@_PROPERTY
@given(
    failures=st.integers(-5, 10**9),
    retry_after_s=st.none() | st.floats(0.0, 86_400.0),
    base=st.floats(0.001, 100.0),
    cap=st.floats(0.001, 10_000.0),
    seed=st.integers(0, 2**32),
)
def test_error_delay_bounds_for_every_input(
    failures: int, retry_after_s: float | None, base: float, cap: float, seed: int
) -> None:
    backoff = Backoff(error_base_s=base, error_max_s=cap)
    delay = backoff.error_delay_s(failures, retry_after_s, random.Random(seed))
    floor = max(backoff.min_interval_s, retry_after_s or 0.0)
    assert math.isfinite(delay)
    assert floor <= delay <= max(cap, floor)


# -- configuration ----------------------------------------------------------------------


def test_defaults_are_valid() -> None:
    backoff = Backoff()
    assert backoff.min_interval_s <= backoff.max_interval_s
    assert backoff.max_consecutive_errors == 30
    assert Backoff(max_consecutive_errors=None).max_consecutive_errors is None


def test_backoff_is_keyword_only_and_frozen() -> None:
    with pytest.raises(TypeError):
        Backoff(1.0)  # type: ignore[misc]
    backoff = Backoff()
    with pytest.raises(AttributeError):
        backoff.jitter = 0.5  # type: ignore[misc]


BAD_SETTINGS = [
    *[
        (name, value)
        for name in (
            "default_interval_s",
            "min_interval_s",
            "max_interval_s",
            "error_base_s",
            "error_max_s",
        )
        for value in (0, -1.0, math.nan, math.inf, "1", None)
    ],
    ("multiplier", 0.5),
    ("multiplier", 0),
    ("multiplier", math.nan),
    ("multiplier", math.inf),
    ("jitter", -0.1),
    ("jitter", 1.0),
    ("jitter", 2),
    ("jitter", math.nan),
    ("max_consecutive_errors", 0),
    ("max_consecutive_errors", -3),
]


@pytest.mark.parametrize(("name", "value"), BAD_SETTINGS)
def test_invalid_setting_raises_config_error_naming_it(name: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        Backoff(**{name: value})
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith(f"backoff.{name}")


@pytest.mark.parametrize("value", [0, -2.0, math.nan, math.inf, "1"])
def test_invalid_initial_interval_names_the_status(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        Backoff(initial_interval_s={"queued": 1.0, "in_progress": value})  # type: ignore[dict-item]
    assert str(info.value).startswith("backoff.initial_interval_s['in_progress']")


def test_min_above_max_is_refused_naming_min() -> None:
    with pytest.raises(ConfigError, match=r"^backoff\.min_interval_s"):
        Backoff(min_interval_s=5.0, max_interval_s=1.0)
    assert Backoff(min_interval_s=2.0, max_interval_s=2.0).max_interval_s == 2.0


@pytest.mark.parametrize(
    ("name", "value"), [("multiplier", "2"), ("jitter", "0.1"), ("max_consecutive_errors", "3")]
)
def test_wrong_type_raises_config_error_naming_it(name: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"^backoff\.{name}"):
        Backoff(**{name: value})
