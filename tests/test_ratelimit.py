"""Rate budgets under a fake clock: token bucket, adaptive budget, configuration."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poller.errors import ConfigError
from poller.sched.ratelimit import HEADROOM, AdaptiveBudget, RateLimit, TokenBucket, default_burst

UNIX_NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z: clock values of realistic magnitude


def max_in_any_window(times: list[float], width: float = 1.0) -> int:
    """The most grants in any closed window ``[t, t + width]``."""
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] < t - width:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def greedy_grants(
    bucket: TokenBucket | AdaptiveBudget,
    start: float,
    seconds: float,
    rng: random.Random | None = None,
) -> list[float]:
    """A client asking for ``seconds``: again as soon as it is told to, or (with ``rng``) at
    irregular moments: at once, a little later, or later than told."""
    granted: list[float] = []
    now = start
    while now < start + seconds:
        wait = bucket.try_acquire(now)
        if wait == 0.0:
            granted.append(now)
            if rng is not None:
                now += rng.choice([0.0, 0.0, rng.uniform(0.0, 0.01)])
        else:
            assert wait > 0.0
            if rng is not None:
                wait *= rng.choice([1.0, 1.0, 1.5])
            # As the scheduler does: always move forward, even when the wait is below the
            # clock's resolution.
            now = max(now + wait, math.nextafter(now, math.inf))
    return granted


# -- RateLimit ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("per_s", "expected"), [(0.5, 1.0), (10, 1.0), (50, 1.0), (75, 1.5), (100, 2.0), (1000, 20.0)]
)
def test_default_burst_is_two_percent_of_a_second_at_least_one(
    per_s: float, expected: float
) -> None:
    assert RateLimit(per_s=per_s).effective_burst == expected


def test_configured_burst_is_used() -> None:
    assert RateLimit(per_s=100, burst=3).effective_burst == 3
    assert RateLimit(per_s=0.1, burst=1).effective_burst == 1


@pytest.mark.parametrize("per_s", [0, -1, -0.001, math.nan, math.inf, -math.inf, "10", None])
def test_invalid_rate_is_a_config_error_naming_it(per_s: object) -> None:
    with pytest.raises(ConfigError) as info:
        RateLimit(per_s=per_s)
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith("rate_limit.per_s")


@pytest.mark.parametrize("burst", [0, 0.5, 0.999, -1, math.nan, math.inf])
def test_invalid_burst_is_a_config_error_naming_it(burst: float) -> None:
    with pytest.raises(ConfigError) as info:
        RateLimit(per_s=10, burst=burst)
    assert str(info.value).startswith("rate_limit.burst")


@pytest.mark.parametrize("burst", ["2", [2]])
def test_wrong_type_burst_is_a_config_error(burst: object) -> None:
    with pytest.raises(ConfigError, match=r"^rate_limit\.burst"):
        RateLimit(per_s=10, burst=burst)


@pytest.mark.parametrize("weight", [0, -1.0, math.nan, math.inf, "1"])
def test_invalid_weight_is_a_config_error_naming_it(weight: object) -> None:
    with pytest.raises(ConfigError, match=r"^rate_limit\.weight"):
        RateLimit(per_s=10, weight=weight)


def test_default_burst_helper_matches_the_limit() -> None:
    for per_s in (0.5, 10.0, 20.0, 30.0, 1000.0):
        assert default_burst(per_s) == RateLimit(per_s=per_s).effective_burst


def test_rate_limit_is_frozen() -> None:
    limit = RateLimit(per_s=10)
    with pytest.raises(AttributeError):
        limit.per_s = 20  # type: ignore[misc]


# -- TokenBucket ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "burst"), [(0, 1), (-1, 1), (1, 0.5), (1, 0), (math.nan, 1), (1, math.nan)]
)
def test_token_bucket_refuses_invalid_settings(rate: float, burst: float) -> None:
    with pytest.raises(ConfigError):
        TokenBucket(rate, burst)


def test_from_limit_uses_the_effective_burst() -> None:
    bucket = TokenBucket.from_limit(RateLimit(per_s=100))
    assert (bucket.rate_per_s, bucket.burst) == (100 * HEADROOM, 2.0)
    bucket = TokenBucket.from_limit(RateLimit(per_s=8, burst=3))
    assert (bucket.rate_per_s, bucket.burst) == (8 * HEADROOM, 3)


@pytest.mark.parametrize("start", [0.0, 1000.0, UNIX_NOW])
def test_burst_then_steady_rate(start: float) -> None:
    bucket = TokenBucket(4.0, 3.0)

    # It starts full: the burst goes at once, then one token every 1/rate seconds.
    assert [bucket.try_acquire(start) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.try_acquire(start) == 0.25
    assert bucket.try_acquire(start + 0.125) == 0.125
    assert bucket.try_acquire(start + 0.25) == 0.0
    assert bucket.try_acquire(start + 0.25) == 0.25
    assert bucket.try_acquire(start + 0.5) == 0.0
    assert bucket.try_acquire(start + 0.75) == 0.0
    assert bucket.try_acquire(start + 0.75) == 0.25


def test_steady_rate_over_a_minute() -> None:
    bucket = TokenBucket(10.0, 1.0)
    granted = greedy_grants(bucket, UNIX_NOW, 60.0)
    # One token up front, then ten a second.
    assert 600 <= len(granted) <= 601
    gaps = [b - a for a, b in itertools.pairwise(granted)]
    assert min(gaps) >= 0.1 - 1e-6
    assert max(gaps) <= 0.1 + 1e-6


def test_tokens_do_not_accumulate_beyond_the_burst() -> None:
    bucket = TokenBucket(10.0, 2.0)
    assert bucket.try_acquire(0.0) == 0.0
    # An hour idle earns two tokens, not 36000.
    granted = sum(bucket.try_acquire(3600.0) == 0.0 for _ in range(100))
    assert granted == 2


@pytest.mark.parametrize("rate", [0.5, 3.0, 7.0, 13.7, 100.0])
def test_waiting_the_returned_time_is_enough(rate: float) -> None:
    bucket = TokenBucket(rate, 1.0)
    now = 0.0
    assert bucket.try_acquire(now) == 0.0
    for _ in range(50):
        wait = bucket.try_acquire(now)
        assert wait == pytest.approx(1.0 / rate)
        now += wait
        # At small clock values the arithmetic is exact enough to grant right away.
        assert bucket.try_acquire(now) == 0.0


@settings(max_examples=200, derandomize=True, database=None, deadline=None)
@given(
    rate=st.floats(0.01, 10_000.0),
    burst=st.floats(1.0, 50.0),
    start=st.sampled_from([0.0, 12_345.678, UNIX_NOW]),
    offset=st.floats(0.0, 1.0),
)
def test_the_wait_is_correct_up_to_clock_resolution(
    rate: float, burst: float, start: float, offset: float
) -> None:
    def drained() -> tuple[TokenBucket, float, float]:
        bucket = TokenBucket(rate, burst)
        while bucket.try_acquire(start) == 0.0:
            pass
        now = start + offset / rate
        return bucket, now, bucket.try_acquire(now)

    bucket, now, wait = drained()
    if wait == 0.0:
        return  # the offset alone refilled a token
    assert wait <= 1.0 / rate * (1 + 1e-9)
    # Not granted noticeably earlier than promised (asked of an identical twin) ...
    early = now + wait * 0.9
    if now + wait - early > 1e-6:
        twin, _, _ = drained()
        assert twin.try_acquire(early) > 0.0
    # ... and granted when promised, up to a residual below a clock's resolution (rounding
    # can leave the bucket a hair short of a whole token; the scheduler steps past it).
    assert bucket.try_acquire(now + wait) < 1e-6


def test_time_going_backwards_is_treated_as_the_latest_time_seen() -> None:
    bucket = TokenBucket(4.0, 1.0)
    assert bucket.try_acquire(10.0) == 0.0
    # An earlier clock reading earns nothing, and the wait is counted from it.
    assert bucket.try_acquire(5.0) == 0.25
    assert bucket.try_acquire(9.0) == 0.25
    assert bucket.try_acquire(10.25) == 0.0


def test_drain_empties_the_bucket() -> None:
    bucket = TokenBucket(4.0, 3.0)
    assert bucket.try_acquire(0.0) == 0.0  # two tokens left
    bucket.drain(10.0)
    # Emptied: the rate applies from here, not the burst (nor the 10 s idle).
    assert bucket.try_acquire(10.0) == 0.25
    assert bucket.try_acquire(10.25) == 0.0
    assert bucket.try_acquire(10.25) == 0.25


def test_peek_takes_nothing() -> None:
    bucket = TokenBucket(4.0, 1.0)
    assert bucket.peek(0.0) == 0.0
    assert bucket.peek(0.0) == 0.0
    assert bucket.try_acquire(0.0) == 0.0
    assert bucket.peek(0.0) == 0.25
    assert bucket.peek(0.125) == 0.125
    assert bucket.try_acquire(0.25) == 0.0


def test_set_rate_keeps_earned_tokens_up_to_the_new_burst() -> None:
    bucket = TokenBucket(4.0, 3.0)
    bucket.set_rate(2.0, 1.0, 0.0)
    assert (bucket.rate_per_s, bucket.burst) == (2.0, 1.0)
    assert bucket.try_acquire(0.0) == 0.0
    assert bucket.try_acquire(0.0) == 0.5  # three tokens cut to the new burst of one
    assert bucket.try_acquire(0.5) == 0.0


@settings(max_examples=80, derandomize=True, database=None, deadline=None)
@given(
    per_s=st.floats(0.2, 2000.0),
    start=st.sampled_from([0.0, 1234.5, UNIX_NOW]),
    seed=st.integers(0, 2**32),
    gaps=st.lists(st.tuples(st.floats(0.0, 3.0), st.floats(0.0, 2.0)), max_size=3),
)
def test_default_burst_never_exceeds_the_rate_in_any_one_second_window(
    per_s: float, start: float, seed: int, gaps: list[tuple[float, float]]
) -> None:
    bucket = TokenBucket.from_limit(RateLimit(per_s=per_s))
    rng = random.Random(seed)
    granted: list[float] = []
    segment_start = start
    # Greedy clients, with quiet spells in between that end with the bucket drained (as
    # after a server-requested pause) or not.
    for at, length in sorted(gaps):
        granted += greedy_grants(bucket, segment_start, start + at - segment_start, rng)
        segment_start = max(segment_start, start + at) + length
        if rng.random() < 0.5:
            bucket.drain(segment_start)
    granted += greedy_grants(bucket, segment_start, start + 4.0 - segment_start, rng)

    assert granted == sorted(granted)
    assert max_in_any_window(granted) <= per_s * 1.05 + 1


@pytest.mark.parametrize("per_s", [0.5, 1.0, 7.0, 19.0, 21.0, 100.0, 550.0, 2000.0])
@pytest.mark.parametrize("start", [0.0, UNIX_NOW])
def test_a_greedy_client_gets_the_full_rate_and_no_more(per_s: float, start: float) -> None:
    limit = RateLimit(per_s=per_s)
    granted = greedy_grants(TokenBucket.from_limit(limit), start, 10.0)

    assert max_in_any_window(granted) <= per_s * 1.05 + 1
    # The whole budget is used, less the headroom: the burst, then the sustained rate.
    expected = limit.effective_burst + per_s * HEADROOM * 10.0
    assert expected - 2 <= len(granted) <= expected + 1


@pytest.mark.parametrize("per_s", [1.0, 10.0, 25.0, 100.0, 1000.0])
def test_random_attempt_times_never_exceed_the_rate_in_any_window(per_s: float) -> None:
    bucket = TokenBucket.from_limit(RateLimit(per_s=per_s))
    rng = random.Random(int(per_s))
    attempts = sorted(UNIX_NOW + rng.uniform(0.0, 5.0) for _ in range(int(per_s * 40) + 100))
    granted = [t for t in attempts if bucket.try_acquire(t) == 0.0]

    assert max_in_any_window(granted) <= per_s * 1.05 + 1
    assert len(granted) >= per_s * HEADROOM * 4.5


def test_window_helper_counts_a_closed_window() -> None:
    assert max_in_any_window([]) == 0
    assert max_in_any_window([0.0, 0.5, 1.0, 1.5, 2.01]) == 3
    assert max_in_any_window([0.0, 1.0001, 2.0002]) == 1


# -- AdaptiveBudget --------------------------------------------------------------------


def accept(budget: AdaptiveBudget, start: float, count: int) -> None:
    """``count`` requests answered without throttling, spread over the second from ``start``."""
    for i in range(count):
        budget.on_accepted(start + i / count)


def test_uncapped_budget_grants_everything() -> None:
    budget = AdaptiveBudget()
    assert budget.rate_per_s is None
    assert all(budget.try_acquire(UNIX_NOW) == 0.0 for _ in range(10_000))


def test_uncapped_budget_honours_retry_after() -> None:
    budget = AdaptiveBudget()
    accept(budget, 99.0, 100)

    assert budget.on_throttled(100.0, 5.0) == 5.0
    assert budget.try_acquire(100.0) == 5.0
    assert budget.try_acquire(101.0) == 4.0
    assert budget.try_acquire(104.5) == 0.5
    # After the pause it sends again, below the rate the server was accepting.
    granted = greedy_grants(budget, 105.0, 1.0)
    assert granted
    assert granted[0] >= 105.0
    assert budget.rate_per_s is not None
    assert budget.rate_per_s < 100
    assert len(granted) <= 100


def test_throttle_without_retry_after_pauses_for_the_default() -> None:
    budget = AdaptiveBudget(default_pause_s=2.0)
    assert budget.on_throttled(50.0, None) == 2.0
    assert budget.try_acquire(51.0) == 1.0


def test_a_shorter_pause_does_not_cut_a_longer_one() -> None:
    budget = AdaptiveBudget()
    budget.on_throttled(100.0, 50.0)
    budget.on_throttled(101.0, 1.0)
    assert budget.try_acquire(120.0) == 30.0


def test_a_throttle_drains_the_budget_no_burst_after_the_pause() -> None:
    budget = AdaptiveBudget(RateLimit(per_s=4.0, burst=3.0))
    assert budget.try_acquire(0.0) == 0.0  # two tokens left
    budget.on_throttled(0.0, 10.0)
    assert budget.try_acquire(9.0) == 1.0
    # Paused, then empty: the first request after the pause waits for a token.
    assert budget.try_acquire(10.0) > 0.0


def test_configured_budget_starts_at_the_configured_rate() -> None:
    budget = AdaptiveBudget(RateLimit(per_s=10.0))
    assert budget.rate_per_s == 10.0 * HEADROOM
    granted = greedy_grants(budget, UNIX_NOW, 10.0)
    assert 98 <= len(granted) <= 99
    assert max_in_any_window(granted) <= 10 * 1.05 + 1


@pytest.mark.parametrize(
    "kwargs",
    [{"beta": 0.0}, {"beta": 1.0}, {"beta": math.nan}, {"recovery_s": 0}, {"min_rate_per_s": 0}],
)
def test_adaptive_budget_refuses_invalid_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        AdaptiveBudget(**kwargs)


@settings(max_examples=40, derandomize=True, database=None, deadline=None)
@given(
    per_s=st.floats(1.0, 500.0),
    seed=st.integers(0, 2**32),
    throttles=st.lists(
        st.tuples(st.floats(0.0, 20.0), st.none() | st.floats(0.0, 2.0)), max_size=4
    ),
)
def test_adaptive_budget_never_exceeds_the_configured_rate(
    per_s: float, seed: int, throttles: list[tuple[float, float | None]]
) -> None:
    budget = AdaptiveBudget(RateLimit(per_s=per_s))
    rng = random.Random(seed)
    pending = sorted(throttles)
    granted: list[float] = []
    now = UNIX_NOW
    end = UNIX_NOW + 20.0
    while now < end:
        while pending and UNIX_NOW + pending[0][0] <= now:
            _, retry_after_s = pending.pop(0)
            budget.on_throttled(now, retry_after_s)
        wait = budget.try_acquire(now)
        if wait == 0.0:
            granted.append(now)
            budget.on_accepted(now)
            now += rng.choice([0.0, 0.0, rng.uniform(0.0, 0.01)])
        else:
            assert wait > 0.0
            now = max(now + wait, math.nextafter(now, math.inf))
        rate = budget.rate_per_s
        assert rate is not None
        assert rate <= per_s

    assert max_in_any_window(granted) <= per_s * 1.05 + 1


def test_an_adaptive_budget_may_start_from_a_learned_rate() -> None:
    """As a fleet's engine falling back to a local budget does: at what the fleet had
    learned, cut from there by the next 429, never past a configured limit."""
    budget = AdaptiveBudget(initial_rate_per_s=40.0)
    assert budget.rate_per_s == pytest.approx(40.0)
    capped = AdaptiveBudget(RateLimit(per_s=10), initial_rate_per_s=40.0)
    assert capped.rate_per_s == pytest.approx(10 * 0.98)
    for _ in range(30):
        budget.on_accepted(100.0)
    budget.on_throttled(100.0, 1.0)
    assert budget.rate_per_s == pytest.approx(0.9 * 30)
    with pytest.raises(ConfigError):
        AdaptiveBudget(initial_rate_per_s=0.0)
