"""LeasedBudget and LearnSync: the pure parts of poller.redis, no Redis, no event loop."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from poller.redis import LeasedBudget
from poller.redis._learning import PUSH_KINDS, LearnSync, kind_id
from poller.redis._lease import (
    IDLE_S,
    LEASE_MARGIN_S,
    LEASE_TOKENS,
    MAX_LEASE_PERIOD_S,
    LeaseGrant,
)
from poller.sched.learn import LAYOUT, DurationSketch, LearnedDurations, LearnedKind
from poller.sched.ratelimit import RateLimit

T0 = 1_000.0


def grant(count: int, *, start_in_s: float = 0.0, step_s: float = 0.1, **kw: object) -> LeaseGrant:
    fields = {"rate_per_s": 10.0, "share_per_s": 10.0, "pause_s": 0.0, "engines": 1, **kw}
    return LeaseGrant(count=count, start_in_s=start_in_s, step_s=step_s, **fields)  # type: ignore[arg-type]


def test_joining_budget_sends_nothing_and_asks_for_a_lease() -> None:
    woken = []
    budget = LeasedBudget("org_a", RateLimit(per_s=10), wake=lambda: woken.append(1))
    assert budget.mode == "joining"
    assert budget.try_acquire(T0) > 0
    assert budget.try_acquire(T0) > 0
    assert woken == [1]  # once per dry spell, not per refusal
    assert budget.needs_lease()


def test_slots_are_spent_at_their_times_and_not_before() -> None:
    budget = LeasedBudget("org_a", RateLimit(per_s=10))
    budget.granted(T0, grant(3, start_in_s=0.0, step_s=0.1))
    assert budget.mode == "shared" and budget.held_at(T0) == 3
    assert budget.try_acquire(T0) == 0.0
    assert budget.try_acquire(T0) == pytest.approx(0.1)
    assert budget.try_acquire(T0 + 0.1) == 0.0
    assert budget.try_acquire(T0 + 0.2) == 0.0
    assert budget.held_at(T0 + 0.2) == 0
    assert budget.try_acquire(T0 + 0.3) > 0  # dry: wait for the next lease


def test_later_blocks_queue_behind_the_current_one() -> None:
    budget = LeasedBudget("org_a", RateLimit(per_s=10))
    budget.granted(T0, grant(1, start_in_s=0.0, step_s=0.1))
    budget.granted(T0, grant(2, start_in_s=0.5, step_s=0.1))
    assert budget.held_at(T0) == 3
    assert budget.try_acquire(T0) == 0.0
    assert budget.try_acquire(T0) == pytest.approx(0.5)
    assert budget.try_acquire(T0 + 0.5) == 0.0


def test_a_slot_left_past_the_grace_is_forfeited() -> None:
    """Spent late, slots would bunch up with later ones at the server."""
    budget = LeasedBudget("org_a", RateLimit(per_s=100), grace_s=0.02)
    budget.granted(T0, grant(5, start_in_s=0.0, step_s=0.01))
    # At T0 + 0.045 the slots of T0, T0 + 0.01 and T0 + 0.02 are past their grace.
    assert budget.try_acquire(T0 + 0.045) == 0.0  # T0 + 0.03's
    assert budget.expired == 3
    assert budget.try_acquire(T0 + 0.045) == 0.0  # T0 + 0.04's
    assert budget.held_at(T0 + 0.045) == 0


def test_a_slot_keeps_one_interval_past_its_time() -> None:
    """Slots come at the engine's pace: one a job did not take at its time may go with
    the next job, if that comes before the next slot's time (later, it would bunch up
    with the next ones)."""
    budget = LeasedBudget("org_a", RateLimit(per_s=100), grace_s=0.02)
    budget.granted(T0, grant(3, step_s=0.1))
    assert budget.try_acquire(T0 + 0.09) == 0.0  # T0's slot, 90 ms late
    assert budget.expired == 0 and budget.held_at(T0 + 0.09) == 2
    assert budget.held_at(T0 + 0.25) == 1  # T0 + 0.1's went unspent past T0 + 0.2
    assert budget.expired == 1


def test_an_idle_budget_hands_everything_back_and_goes_quiet() -> None:
    """After IDLE_S with nothing sent: demand 0, every slot to come handed back, and no
    more lease calls until it is asked for a token again."""
    woken = []
    budget = LeasedBudget("org_a", RateLimit(per_s=100), wake=lambda: woken.append(1))
    budget.report(T0)
    budget.granted(T0, grant(2, step_s=0.01))
    assert budget.try_acquire(T0) == 0.0
    now, report = T0, budget.report(T0 + 0.1)
    assert report.sent == 1 and report.demand_per_s > 0
    calls = 0
    while budget.needs_lease():
        now += 0.1
        budget.granted(now, grant(1, start_in_s=0.55, step_s=0.01))  # what it asked for
        report = budget.report(now)
        calls += 1
        assert calls < 30, "still leasing"
    assert now - T0 <= IDLE_S + 0.25
    assert report.demand_per_s == 0 and report.want == 0 and report.held == 0
    assert report.give_back > 0 and budget.held_at(now) == 0
    # Asked again: dry, so it wakes the coordinator and leases once more.
    assert budget.try_acquire(now + 5.0) > 0 and woken and budget.needs_lease()


def test_a_429_pauses_at_once_drops_the_slots_and_is_queued_for_the_fleet() -> None:
    woken = []
    budget = LeasedBudget("org_a", RateLimit(per_s=10), wake=lambda: woken.append(1))
    budget.granted(T0, grant(5))
    assert budget.on_throttled(T0, 2.0) == 2.0
    assert budget.held_at(T0) == 0
    assert budget.try_acquire(T0 + 1.0) == pytest.approx(1.0)
    budget.on_throttled(T0, None)  # the default pause: 1 s
    assert budget.take_throttle() == 2.0
    assert budget.take_throttle() is None
    assert woken


def test_a_429_elsewhere_pauses_this_engine_too() -> None:
    budget = LeasedBudget("org_a", None)
    budget.granted(T0, grant(5))
    budget.fleet_paused(T0, 1.5)
    assert budget.held_at(T0) == 0
    assert budget.try_acquire(T0 + 1.0) == pytest.approx(0.5)


def test_a_lease_answer_that_comes_after_a_pause_brings_no_slot() -> None:
    """The fleet's pause was heard (pub/sub) while the lease call was out: the answer's
    slots were meant for before it, and must not go out when it ends."""
    budget = LeasedBudget("org_a", RateLimit(per_s=100))
    budget.granted(T0, grant(2))
    report = budget.report(T0 + 0.1)
    budget.fleet_paused(T0 + 0.1, 1.0)
    budget.granted(T0 + 0.11, grant(5), report)
    assert budget.held_at(T0 + 0.11) == 0
    assert budget.try_acquire(T0 + 1.2) > 0  # after the pause: nothing to spend
    budget.granted(T0 + 1.2, grant(3), budget.report(T0 + 1.2))
    assert budget.held_at(T0 + 1.2) == 3


def test_uncapped_organisations_need_no_token() -> None:
    budget = LeasedBudget("org_a", None)
    budget.granted(T0, grant(0, rate_per_s=None))  # type: ignore[arg-type]
    assert budget.rate_per_s is None
    assert all(budget.try_acquire(T0) == 0.0 for _ in range(1000))
    report = budget.report(T0 + 1.0)
    assert report.sent == 1000 and report.want == 0


def spending(count: int, step_s: float) -> LeasedBudget:
    """A budget that was granted ``count`` slots ``step_s`` apart from T0, and spent each
    at its time."""
    budget = LeasedBudget("org_a", RateLimit(per_s=1000))
    budget.report(T0)
    budget.granted(T0, grant(count, step_s=step_s))
    for i in range(count):
        assert budget.try_acquire(T0 + i * step_s) == 0.0
    return budget


def test_report_sizes_the_lease_to_recent_demand() -> None:
    budget = spending(100, 0.001)
    budget.try_acquire(T0 + 0.1)  # dry: hungry
    report = budget.report(T0 + 0.1)
    assert report.sent == 100 and report.hungry
    # ~1000/s, padded, over 250 ms; doubled while hungry.
    assert report.want >= 250
    assert budget.report(T0 + 0.2).sent == 0


def test_report_tells_the_rate_sent_unpadded_and_hungry_only_after_running_dry() -> None:
    budget = spending(40, 0.001)
    report = budget.report(T0 + 1.0)
    assert report.demand_per_s == pytest.approx(40.0) and not report.hungry
    # 40/s: a period of 25 tokens is 0.625 s, and the lease covers 0.15 s more.
    assert report.period_s == pytest.approx(LEASE_TOKENS / 40.0)
    assert report.horizon_s == pytest.approx(LEASE_TOKENS / 40.0 + LEASE_MARGIN_S)
    assert report.want == math.ceil(40.0 * report.horizon_s)  # nothing held


@pytest.mark.parametrize(
    ("wasted", "cut_short", "hungry"),
    [(True, True, False), (False, False, False), (False, True, True)],
)
def test_kept_waiting_is_hungry_only_when_held_back_with_no_slot_unspent(
    wasted: bool, cut_short: bool, hungry: bool
) -> None:
    """An engine whose slots come a little faster than its jobs is kept waiting now and
    then too (their times do not match): no sign that it wants more. Nor is it when the
    fleet gave it all it asked for: it then asks for more, leaving the rate alone."""
    budget = LeasedBudget("org_a", RateLimit(per_s=100), grace_s=0.01)
    asked = budget.report(T0)
    asked = dataclasses.replace(asked, want=30 if cut_short else 20)
    budget.granted(T0, grant(20, step_s=0.01, share_per_s=100.0), asked)
    start = T0 + 0.05 if wasted else T0  # the first five slots go unspent
    for i in range(10):
        assert budget.try_acquire(start + i * 0.01) == 0.0
    assert budget.try_acquire(start + 0.095) > 0  # kept waiting, sending at its share
    report = budget.report(start + 0.1)
    assert report.hungry is hungry
    pressed = not wasted and not hungry
    sent_per_s = 10 / (start + 0.1 - T0)
    assert report.demand_per_s == pytest.approx(sent_per_s * (1.25 if pressed else 1.0))


def test_the_lease_period_grows_as_demand_falls() -> None:
    """At least LEASE_TOKENS tokens a lease, between the coordinator's lease_period_s and
    MAX_LEASE_PERIOD_S: a budget polling a few times a second costs a call a second."""
    periods = {}
    for per_s in (2000.0, 100.0, 40.0, 5.0):
        budget = LeasedBudget("org_a", None, min_period_s=0.1)
        budget.report(T0)
        budget.granted(T0, grant(0, rate_per_s=None))  # type: ignore[arg-type]
        for _ in range(int(per_s)):
            budget.try_acquire(T0 + 0.5)
        periods[per_s] = budget.report(T0 + 1.0).period_s
    assert periods == {
        2000.0: 0.1,
        100.0: pytest.approx(0.25),
        40.0: pytest.approx(0.625),
        5.0: MAX_LEASE_PERIOD_S,
    }


def test_report_gives_back_what_demand_no_longer_needs() -> None:
    budget = LeasedBudget("org_a", RateLimit(per_s=1000))
    budget.report(T0)
    budget.granted(T0, grant(200, start_in_s=1.0, step_s=0.001))
    report = budget.report(T0 + 0.1)  # nothing sent: no demand
    assert report.give_back == 200 and report.held == 0
    assert budget.held_at(T0 + 0.1) == 0


def test_only_slots_still_to_come_are_handed_back() -> None:
    """A slot whose time has come is the schedule's past: spent (within its grace) or
    forfeited, never handed back for the fleet to grant again."""
    budget = LeasedBudget("org_a", RateLimit(per_s=100), grace_s=0.05)
    budget.report(T0)
    budget.granted(T0, grant(4, step_s=0.01))  # T0 .. T0 + 0.03
    budget.granted(T0, grant(3, start_in_s=0.5, step_s=0.01))
    report = budget.leave(T0 + 0.015)
    assert report.give_back == 3 + 2  # the later block, and T0 + 0.02, T0 + 0.03
    assert report.held == 2 and report.demand_per_s == 0 and report.want == 0
    assert budget.try_acquire(T0 + 0.015) == 0.0  # T0's slot, within its grace


def test_going_local_spends_a_share_of_the_configured_limit() -> None:
    budget = LeasedBudget("org_a", RateLimit(per_s=100))
    budget.granted(T0, grant(5, rate_per_s=98.0, step_s=0.04))
    budget.go_local(T0, engines=4)
    # The slots it holds are the fleet's, good until their time: spent first.
    assert budget.mode == "local" and budget.held_at(T0) == 5
    assert budget.rate_per_s == pytest.approx(25 * 0.98)
    now, sent = T0, 0
    while now < T0 + 10.0:  # asked again after each wait, as the scheduler does
        wait = budget.try_acquire(now)
        sent += wait == 0.0
        now = max(now + wait, math.nextafter(now, math.inf))  # as the scheduler moves on
    assert 240 <= sent <= 252  # 5 slots in 0.2 s, then 24.5/s
    budget.rejoin()
    assert budget.mode == "joining" and budget.try_acquire(T0 + 11) > 0


@pytest.mark.parametrize("limit", [None, RateLimit(per_s=100)])
def test_going_local_keeps_what_the_fleet_learned(limit: RateLimit | None) -> None:
    """The fleet had cut an undisclosed (or configured) limit to 80/s: a Redis blip must
    not leave each engine uncapped (a storm of 429s), nor at the configured share."""
    budget = LeasedBudget("org_a", limit)
    budget.granted(T0, grant(5, rate_per_s=80.0, share_per_s=20.0))
    budget.go_local(T0, engines=4)
    assert budget.rate_per_s == pytest.approx(20.0)
    now, sent = T0, 0
    while now < T0 + 10.0:
        wait = budget.try_acquire(now)
        sent += wait == 0.0
        now = max(now + wait, math.nextafter(now, math.inf))
    assert 195 <= sent <= 215  # ~20/s, climbing slowly while refused


def test_going_local_with_nothing_learned_learns_alone() -> None:
    budget = LeasedBudget("org_a", None)
    budget.go_local(T0, engines=3)
    assert budget.rate_per_s is None and budget.try_acquire(T0) == 0.0
    for _ in range(10):
        budget.on_accepted(T0)
    assert budget.on_throttled(T0, 1.0) == 1.0
    assert budget.take_throttle() is None  # local: nobody to tell
    assert budget.rate_per_s is not None


# -- LearnSync ------------------------------------------------------------------------

KIND = ("org_a", "/v1/documents/extract", "queued")


def snapshot(counts: list[float], kind: tuple[str, str, str] = KIND) -> LearnedDurations:
    org, endpoint, status = kind
    item = LearnedKind(organization_id=org, endpoint=endpoint, status=status, counts=counts)
    return LearnedDurations(layout=LAYOUT, kinds=[item])


def bins(**weights: float) -> list[float]:
    counts = [0.0] * 100
    for name, weight in weights.items():
        counts[int(name[1:])] = weight
    return counts


def pushed(sync: LearnSync, learned: LearnedDurations) -> list[tuple[str, dict[str, float]]]:
    """What ``sync`` pushes of ``learned``, every push acknowledged."""
    sync.take(learned)
    out = []
    while (push := sync.pending()) is not None:
        out += [(name, delta) for name, delta in json.loads(push[1])]
        sync.acknowledged(push[0])
    return out


def sparse(counts: list[float]) -> dict[str, float]:
    return {str(i): c for i, c in enumerate(counts) if c}


def test_learn_sync_pushes_only_what_is_new() -> None:
    sync = LearnSync()
    assert pushed(sync, snapshot(bins(b3=2.0))) == [(kind_id(KIND), {"3": 2.0})]
    merged = sync.merge([(kind_id(KIND), sparse(bins(b3=2.0, b4=5.0)))], snapshot(bins(b3=2.0)))
    assert merged is not None and merged.kinds[0].counts == bins(b3=2.0, b4=5.0)
    # Loaded; one more sample locally: only it is pushed.
    assert pushed(sync, snapshot(bins(b3=2.0, b4=5.0, b7=1.0))) == [(kind_id(KIND), {"7": 1.0})]


def test_learn_sync_keeps_what_was_learned_since_the_push() -> None:
    sync = LearnSync()
    pushed(sync, snapshot(bins(b3=2.0)))
    merged = sync.merge(
        [(kind_id(KIND), sparse(bins(b3=2.0, b4=5.0)))], snapshot(bins(b3=2.0, b9=1.0))
    )
    assert merged is not None and merged.kinds[0].counts == bins(b3=2.0, b4=5.0, b9=1.0)
    assert pushed(sync, snapshot(bins(b3=2.0, b4=5.0, b9=1.0))) == [(kind_id(KIND), {"9": 1.0})]


def test_learn_sync_follows_the_local_fading() -> None:
    sync = LearnSync(max_weight=10.0)
    pushed(sync, snapshot(bins(b1=8.0)))
    sync.merge([(kind_id(KIND), sparse(bins(b1=8.0)))], snapshot(bins(b1=8.0)))
    # Three more samples push the local total past 10: everything halved, (8 + 3) / 2.
    faded = DurationSketch(max_weight=10.0)
    faded.restore(bins(b1=8.0))
    for _ in range(3):
        faded.add(0.08)  # bin 2
    counts = list(faded.counts)
    assert sum(counts) < 8.0
    delta = dict(pushed(sync, snapshot(counts)))[kind_id(KIND)]
    assert delta == {"3": pytest.approx(1.5)}


def test_learn_sync_halves_what_it_loads_past_the_max_weight() -> None:
    sync = LearnSync(max_weight=10.0)
    merged = sync.merge([(kind_id(KIND), sparse(bins(b1=8.0)))], snapshot(bins(b2=6.0)))
    assert merged is not None and sum(merged.kinds[0].counts) == pytest.approx(7.0)


def test_learn_sync_reset_pushes_everything_again() -> None:
    sync = LearnSync()
    pushed(sync, snapshot(bins(b3=2.0)))
    sync.merge([(kind_id(KIND), sparse(bins(b3=2.0)))], snapshot(bins(b3=2.0)))
    assert pushed(sync, snapshot(bins(b3=2.0))) == []
    sync.reset()
    assert pushed(sync, snapshot(bins(b3=2.0))) == [(kind_id(KIND), {"3": 2.0})]


def test_learn_sync_pushes_a_few_dozen_kinds_at_a_time_until_acknowledged() -> None:
    """2,000 kinds go in pushes of PUSH_KINDS; one not acknowledged (its answer lost) is
    sent again with its number, and nothing of it is taken twice."""
    sync = LearnSync()
    kinds = [
        LearnedKind(
            organization_id=f"org_{i}", endpoint="/v1/x", status="queued", counts=bins(b1=1)
        )
        for i in range(2_000)
    ]
    sync.take(LearnedDurations(layout=LAYOUT, kinds=kinds))
    first = sync.pending()
    assert first is not None and len(json.loads(first[1])) == PUSH_KINDS
    sync.take(LearnedDurations(layout=LAYOUT, kinds=kinds))  # nothing new meanwhile
    assert sync.pending() == first  # not acknowledged: the same push, the same number
    numbers = []
    while (push := sync.pending()) is not None:
        numbers.append(push[0])
        sync.acknowledged(push[0])
    assert len(numbers) == 2_000 // PUSH_KINDS and numbers == sorted(set(numbers))


def test_learn_sync_ignores_tables_it_cannot_use() -> None:
    sync = LearnSync()
    tables = [(kind_id(KIND), {"100": 1.0}), ("no tabs", {"1": 1.0}), (kind_id(KIND), [1.0])]
    assert sync.merge(tables, None) is None  # type: ignore[arg-type]
