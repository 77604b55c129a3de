"""An organisation's budget in one engine of a fleet: tokens leased from a shared bucket.

The hot path asks :meth:`LeasedBudget.try_acquire` on every poll, so the budget is
a plain synchronous object that never touches the network. The coordinator's
background task (``poller.redis._coordinator``) keeps it supplied:

- every lease period it takes a :class:`LeaseReport` (what was sent and accepted since
  the last one, the recent demand, whether the budget ran dry or was kept waiting, how
  many tokens it still holds) and asks the shared bucket for enough tokens to cover
  the period and :data:`LEASE_MARGIN_S` more of that demand. The period is the time
  :data:`LEASE_TOKENS` tokens last at that demand, between the coordinator's
  ``lease_period_s`` (100 ms) and :data:`MAX_LEASE_PERIOD_S`: a busy budget leases
  every 100 ms, and one that polls 25 times a second about once a second, so the
  lease calls per poll stay small whatever the traffic. A budget that runs dry before
  its period is over leases at once (not sooner than ``lease_period_s`` after its
  last call);
- the answer (:meth:`LeasedBudget.granted`) is a block of *dated slots*: token ``k``
  may be spent from ``start + k * step`` on, ``step`` being one over the pace the
  shared bucket gave this engine. Each engine's slots come at its own pace (its fair
  share; while the rate binds and it wants no more than it asks for, just that), and
  the bucket places every block where the paces reserved by the other engines leave
  room for it: at every instant they add up to the organisation's rate at most, so
  however the fleet is spread, the server sees the rate, not the sum of bursts. While
  the rate binds (some engine wants more than it gets: the grant is *tight*), a slot
  left unspent one interval past its time (``grace_s`` at least) is forfeited: spent
  later it would bunch up with the next ones, and a 1-second window at the server
  could then hold more than the limit. While it does not, slots are a store to spend
  as the jobs come, and keep as long as the lease is meant to last
  (:data:`LOOSE_GRACE_S` at least);
- a budget that sent nothing for :data:`IDLE_S` reports no demand, hands back every
  slot still to come and stops leasing until it is asked for a token again: an idle
  organisation costs no Redis call and reserves no part of the rate;
- a 429 here pauses this budget at once, drops its slots and is queued for the
  coordinator (:meth:`LeasedBudget.take_throttle`), which tells the fleet; a 429 seen
  elsewhere arrives as :meth:`LeasedBudget.fleet_paused`.

Modes. ``joining``: no answer from the fleet yet, so no token (a fleet of engines
starting together must not each spend the whole limit); ``shared``: spending leased
slots, or nothing to lease while the organisation is uncapped (no limit configured
and no 429 yet); ``local``: the shared store is unreachable, and, once the slots held
are spent, an :class:`~poller.sched.ratelimit.AdaptiveBudget` with this engine's share
of the configured limit (the limit divided by the live engines last counted), starting
from that share of the rate the fleet had learned, stands in.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from ..sched.ratelimit import AdaptiveBudget, RateLimit

__all__ = [
    "IDLE_S",
    "LEASE_HORIZON_S",
    "LEASE_MARGIN_S",
    "LEASE_TOKENS",
    "LOOSE_GRACE_S",
    "MAX_LEASE_PERIOD_S",
    "LeaseGrant",
    "LeaseReport",
    "LeasedBudget",
    "Mode",
]

LEASE_TOKENS: Final = 25
"""A lease period lasts as long as this many tokens do at the budget's recent demand."""
MAX_LEASE_PERIOD_S: Final = 1.0
"""The longest lease period (a budget with little demand)."""
LEASE_MARGIN_S: Final = 0.15
"""A lease covers its period and this much more of the demand (the next answer's
round trip, and a margin): a budget wanting more than it gets never runs dry."""
LEASE_HORIZON_S: Final = MAX_LEASE_PERIOD_S + LEASE_MARGIN_S
"""The longest a lease reaches ahead (slots are dated at most this far ahead)."""
_PRESS: Final = 1.25  # pressed, and not held back by the fleet: it asks this much more
_SATURATED: Final = 0.9  # sending at this share of its share at least: held back
LOOSE_GRACE_S: Final = 1.0
"""How late a slot granted while the rate does not bind may be spent, at least."""
IDLE_S: Final = 1.0
"""A budget that sent nothing for this long hands its slots back and goes quiet."""
_DRY_RETRY_S: Final = 0.02  # asked with no token held: look again this much later
_DEFAULT_PAUSE_S: Final = 1.0

Mode = Literal["joining", "shared", "local"]


@dataclass(frozen=True, slots=True)
class LeaseReport:
    """What a budget tells the shared bucket at a lease call.

    Attributes:
        sent: requests sent since the last report.
        accepted: answers that were not 429 since the last report.
        demand_per_s: the rate this engine sent at lately (smoothed, not padded: what it
            does not use, the others may have).
        hungry: since the last report it ran out of slots, or was kept waiting for the
            next one while sending at (nearly) its whole share: it wants more than it
            has. The only sign that the rate binds.
        held: leased tokens not spent yet.
        want: tokens asked for now.
        give_back: tokens handed back (demand dropped).
        generation: the budget's generation when the report was taken (an answer to it
            that comes after a pause or a fallback brings no slot).
        period_s: when to report next (unless it runs dry sooner).
        horizon_s: the lease covers this much of the demand, slots at most this far
            ahead.
    """

    sent: int
    accepted: int
    demand_per_s: float
    hungry: bool
    held: int
    want: int
    give_back: int
    generation: int = 0
    period_s: float = 0.1
    horizon_s: float = 0.1 + LEASE_MARGIN_S


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    """The shared bucket's answer to a lease call.

    Attributes:
        count: tokens granted.
        start_in_s: when the first may be spent, from the answer's arrival (may be < 0).
        step_s: the interval between the granted slots.
        rate_per_s: the organisation's fleet-wide rate; None while uncapped.
        share_per_s: this engine's fair share of it.
        pause_s: the organisation is paused this much longer (0: not paused).
        engines: engines of this organisation with a fresh demand report.
        tight: the rate binds (an engine wants more than it gets): slots must be spent
            on time, or be forfeited.
    """

    count: int
    start_in_s: float
    step_s: float
    rate_per_s: float | None
    share_per_s: float
    pause_s: float
    engines: int
    tight: bool = True


class LeasedBudget:
    """One organisation's :class:`~poller.sched.ratelimit.Budget` in a fleet (see the module).

    Args:
        org_id: the organisation.
        limit: its configured limit; None: undisclosed.
        wake: called (from the hot path) when the coordinator should lease now: the
            budget ran dry, or a 429 came. Must be cheap.
        grace_s: how late a slot may be spent before it is forfeited.
        min_period_s: the shortest lease period (the coordinator's ``lease_period_s``).
    """

    __slots__ = (
        "_accepted",
        "_blocks",
        "_cut_short",
        "_demand",
        "_expired_reported",
        "_generation",
        "_grace",
        "_horizon_s",
        "_hungry",
        "_left",
        "_local",
        "_next_at",
        "_paused_until",
        "_quiet_since",
        "_refused",
        "_reported_at",
        "_reported_demand",
        "_sent",
        "_step",
        "_throttles",
        "_uncapped",
        "_wake",
        "expired",
        "grace_s",
        "limit",
        "min_period_s",
        "mode",
        "org_id",
        "rate_per_fleet",
        "share_per_s",
    )

    def __init__(
        self,
        org_id: str,
        limit: RateLimit | None,
        *,
        wake: Callable[[], None] = lambda: None,
        grace_s: float = 0.02,
        min_period_s: float = 0.1,
    ) -> None:
        self.org_id = org_id
        self.limit = limit
        self.grace_s = grace_s
        self.min_period_s = min_period_s
        self._horizon_s = min_period_s + LEASE_MARGIN_S
        self._wake = wake
        self.mode: Mode = "joining"
        self._local: AdaptiveBudget | None = None
        self._uncapped = False
        # The block being spent (next slot, interval, slots left, how late a slot may be
        # spent), then later blocks.
        self._next_at = 0.0
        self._step = 0.0
        self._left = 0
        self._grace = grace_s
        self._blocks: deque[tuple[float, float, int, float]] = deque()
        self._generation = 0  # bumped whenever the slots are dropped
        self._cut_short = True  # the last lease gave less than asked (none yet: unknown)
        self._paused_until = -math.inf
        self._sent = 0
        self._accepted = 0
        self._hungry = False  # asked with no slot held at all (the coordinator was woken)
        self._refused = False  # asked before the next slot's time
        self._demand = 0.0
        self._reported_at: float | None = None
        self._reported_demand = 0.0  # the demand the fleet last heard of
        self._quiet_since: float | None = None  # nothing sent since (at report times)
        self._throttles: list[float] = []  # pauses asked by 429s, not told to the fleet yet
        self.expired = 0  # slots forfeited, unspent
        self._expired_reported = 0
        self.rate_per_fleet: float | None = None
        self.share_per_s: float | None = None

    def __repr__(self) -> str:
        return f"<LeasedBudget {self.org_id} {self.mode} held={self._count()}>"

    # -- the Budget protocol (the hot path) ---------------------------------------

    @property
    def rate_per_s(self) -> float | None:
        """This engine's share of the organisation's rate; None while uncapped."""
        if self._local is not None:
            return self._local.rate_per_s
        return None if self._uncapped else self.share_per_s

    def try_acquire(self, now: float) -> float:
        """See :meth:`poller.sched.ratelimit.Budget.try_acquire`."""
        if now < self._paused_until:
            return self._paused_until - now
        if self._uncapped:
            self._sent += 1
            return 0.0
        while True:
            if self._left <= 0:
                if not self._blocks:
                    local = self._local
                    if local is not None:  # the slots held when it went local are spent
                        wait = local.try_acquire(now)
                        if wait == 0.0:
                            self._sent += 1
                        return wait
                    if not self._hungry:
                        self._hungry = True
                        self._wake()
                    return _DRY_RETRY_S
                self._next_at, self._step, self._left, self._grace = self._blocks.popleft()
            at = self._next_at
            if at > now:
                self._refused = True
                return at - now
            late = now - self._grace - at
            if late > 0.0:
                skip = min(self._left, int(late / self._step) + 1 if self._step > 0 else 1)
                self._left -= skip
                self._next_at = at + skip * self._step
                self.expired += skip
                continue
            self._left -= 1
            self._next_at = at + self._step
            self._sent += 1
            return 0.0

    def on_accepted(self, now: float) -> None:
        """See :meth:`poller.sched.ratelimit.Budget.on_accepted`."""
        self._accepted += 1
        if self._local is not None:
            self._local.on_accepted(now)

    def on_throttled(self, now: float, retry_after_s: float | None) -> float:
        """See :meth:`poller.sched.ratelimit.Budget.on_throttled`: pause here at once, and have
        the coordinator pause the fleet (and cut its rate)."""
        if self._local is not None:
            pause_s = self._local.on_throttled(now, retry_after_s)
        else:
            pause_s = _DEFAULT_PAUSE_S if retry_after_s is None else retry_after_s
            self._throttles.append(pause_s)
            self._wake()
        self._pause(now, pause_s)
        return pause_s

    # -- the coordinator's side ---------------------------------------------------

    def held_at(self, now: float) -> int:
        """Leased slots still good at ``now`` (those past their grace are forfeited first)."""
        self._expire(now)
        return self._count()

    def needs_lease(self) -> bool:
        """Whether a lease call has anything to ask or tell: something sent or answered,
        a dry spell, a 429, or a demand the fleet still counts on (an idle budget says
        once that it wants nothing, then is quiet)."""
        return bool(
            self._sent
            or self._accepted
            or self._hungry
            or self._throttles
            or self._reported_demand
            or self.mode == "joining"
        )

    @property
    def dry(self) -> bool:
        """It was asked for a token with none held since the last report."""
        return self._hungry

    def report(self, now: float) -> LeaseReport:
        """What to tell the shared bucket now; resets the counters it reports."""
        previous = self._reported_at
        elapsed = now - previous if previous is not None else 0.0
        self._reported_at = now
        if self._sent or self._hungry:
            self._quiet_since = None
        elif self._quiet_since is None:
            self._quiet_since = previous if previous is not None else now
        idle = self._quiet_since is not None and now - self._quiet_since >= IDLE_S
        rate = self._sent / elapsed if elapsed > 0.0 else 0.0
        if idle:
            self._demand = 0.0
        elif elapsed > 0.0:
            # Smoothed over a few periods, but quick to follow a rise.
            self._demand = rate if rate > self._demand else 0.5 * (self._demand + rate)
        # Kept waiting for a slot while it let none go unspent, it is *pressed*: it wants
        # more than it asked for (its slots come at the pace it asked for: one that comes
        # a little faster than its jobs is kept waiting now and then too, but lets some
        # go). Pressed while the fleet held it back (its last lease was cut short, and
        # it sends at nearly its whole share), or out of slots, it is *hungry*: it wants
        # more than the rate gives it, the one sign that the rate binds (it may then
        # climb). Pressed otherwise, it asks for a little more, and the fleet's rate is
        # left alone: it must not climb with no demand behind it.
        self._expire(now)
        pressed = self._refused and self.expired == self._expired_reported
        self._expired_reported = self.expired
        share = self.share_per_s
        held_back = self._cut_short and (share is None or rate >= _SATURATED * share)
        hungry = self._hungry or (pressed and held_back)
        demand = self._demand * (_PRESS if pressed and not hungry else 1.0)
        period_s = self.min_period_s
        if demand > 0.0:
            period_s = min(MAX_LEASE_PERIOD_S, max(period_s, LEASE_TOKENS / demand))
        horizon_s = self._horizon_s = period_s + LEASE_MARGIN_S
        held = self.held_at(now)
        target = max(1, math.ceil(demand * horizon_s)) if demand else 0
        if hungry:
            target = max(2 * target, 1)
        want = max(0, target - held) if not self._uncapped else 0
        give_back = 0
        if idle:
            give_back = self._take_tail(held, now)
        elif not hungry and held > 2 * target + 2:
            give_back = self._take_tail(held - target, now)
        report = LeaseReport(
            sent=self._sent,
            accepted=self._accepted,
            demand_per_s=demand,
            hungry=hungry,
            held=held - give_back,
            want=want,
            give_back=give_back,
            generation=self._generation,
            period_s=period_s,
            horizon_s=horizon_s,
        )
        self._sent = self._accepted = 0
        self._hungry = self._refused = False
        self._reported_demand = demand
        return report

    def granted(self, now: float, grant: LeaseGrant, report: LeaseReport | None = None) -> None:
        """Apply a lease answer that arrived at ``now`` (this engine's clock), to
        ``report`` (None: one of the current generation, nothing asked). The slots of an
        answer that comes after the budget dropped its slots (a pause, told by another
        engine while the call was out) are not taken: they were meant for before."""
        generation = report.generation if report is not None else None
        self._cut_short = report is not None and grant.count < report.want
        if self._local is not None:
            return  # gone local while the call was out: the answer is stale
        self.mode = "shared"
        self.rate_per_fleet = grant.rate_per_s
        self.share_per_s = grant.share_per_s
        self._uncapped = grant.rate_per_s is None
        if grant.pause_s > 0.0:
            self._pause(now, grant.pause_s)
        if grant.tight:
            self._tighten()
        if grant.count > 0 and (generation is None or generation == self._generation):
            grace = self._grace_for(grant.tight, grant.step_s)
            # A block dated before the answer came (the server's clock is not this
            # engine's) starts on arrival, or its grace would already be running.
            block = (now + max(0.0, grant.start_in_s), grant.step_s, grant.count, grace)
            if self._left <= 0 and not self._blocks:
                self._next_at, self._step, self._left, self._grace = block
            else:
                self._blocks.append(block)

    def leave(self, now: float) -> LeaseReport:
        """The last report, when the engine closes: no demand, every slot still to come
        handed back."""
        held = self.held_at(now)
        give_back = self._take_tail(held, now)
        self._demand = self._reported_demand = 0.0
        report = LeaseReport(
            sent=self._sent,
            accepted=self._accepted,
            demand_per_s=0.0,
            hungry=False,
            held=held - give_back,
            want=0,
            give_back=give_back,
        )
        self._sent = self._accepted = 0
        return report

    def take_throttle(self) -> float | None:
        """The longest pause asked by 429s since the last call, to tell the fleet; None if
        there was none."""
        if not self._throttles:
            return None
        pause_s = max(self._throttles)
        self._throttles.clear()
        return pause_s

    def take_accepted(self) -> int:
        """Answers counted since the last report, taken (a 429 report carries them)."""
        accepted, self._accepted = self._accepted, 0
        return accepted

    def fleet_paused(self, now: float, pause_s: float) -> None:
        """Another engine met a 429 for this organisation: pause, drop unspent slots."""
        self._pause(now, pause_s)

    def go_local(self, now: float, engines: int) -> None:
        """The shared store is out of reach: spend a local share (``1 / engines``) of the
        configured limit, starting from that share of the rate the fleet had learned
        (an undisclosed limit is not forgotten); learn alone only when nothing was known
        (no limit configured, no 429 yet)."""
        engines = max(1, engines)
        share = None
        if self.limit is not None:
            per_s = self.limit.per_s / engines
            burst = None if self.limit.burst is None else max(1.0, self.limit.burst / engines)
            share = RateLimit(per_s=per_s, burst=burst, weight=self.limit.weight)
        learned = self.rate_per_fleet
        initial = learned / engines if learned is not None and not self._uncapped else None
        self._local = AdaptiveBudget(share, initial_rate_per_s=initial)
        self._uncapped = False
        self.mode = "local"
        self._throttles.clear()
        # The slots it holds are the fleet's, good until their time: spent first.

    def rejoin(self) -> None:
        """The shared store answers again: take leases from it (none held until then)."""
        self._local = None
        self._uncapped = False
        self.mode = "joining"
        self._drop()

    # -- internals ------------------------------------------------------------------

    def _pause(self, now: float, pause_s: float) -> None:
        self._paused_until = max(self._paused_until, now + pause_s)
        self._drop()

    def _grace_for(self, tight: bool, step_s: float) -> float:
        """How late a slot may be spent. While the rate binds, one interval at most:
        later, it would bunch up with the next ones, and a second at the server could
        hold more than the rate. While it does not, as long as the lease is meant to
        last: the slots are a store to spend as the jobs come (bursts and all)."""
        if tight:
            return max(self.grace_s, step_s)
        return max(self.grace_s, LOOSE_GRACE_S, 2.0 * self._horizon_s)

    def _tighten(self) -> None:
        """The rate binds now: the slots held lose the longer grace they had."""
        if self._left > 0:
            self._grace = self._grace_for(True, self._step)
        self._blocks = deque(
            (start, step, left, self._grace_for(True, step))
            for start, step, left, _ in self._blocks
        )

    def _count(self) -> int:
        return max(0, self._left) + sum(block[2] for block in self._blocks)

    def _expire(self, now: float) -> None:
        """Forfeit the slots past their grace at ``now`` (as try_acquire would)."""
        while True:
            if self._left <= 0:
                if not self._blocks:
                    return
                self._next_at, self._step, self._left, self._grace = self._blocks.popleft()
            late = now - self._grace - self._next_at
            if late <= 0.0:
                return
            skip = min(self._left, int(late / self._step) + 1 if self._step > 0 else self._left)
            self._left -= skip
            self._next_at += skip * self._step
            self.expired += skip

    def _drop(self) -> None:
        self._generation += 1
        self._left = 0
        self._blocks.clear()

    def _take_tail(self, count: int, now: float) -> int:
        """Remove up to ``count`` of the latest slots dated after ``now`` (a slot whose
        time has come is spent or forfeited, never handed back: the fleet's reservation has
        moved past it); returns how many were removed."""
        taken = 0
        kept: list[tuple[float, float, int, float]] = []
        while taken < count and self._blocks:
            start, step, left, grace = self._blocks.pop()
            take = min(_future(start, step, left, now), count - taken)
            taken += take
            if left > take:
                kept.append((start, step, left - take, grace))
                break
        self._blocks.extend(reversed(kept))
        if taken < count and self._left > 0 and not self._blocks:
            take = min(_future(self._next_at, self._step, self._left, now), count - taken)
            self._left -= take
            taken += take
        return taken


def _future(start: float, step: float, count: int, now: float) -> int:
    """How many of ``count`` slots from ``start``, ``step`` apart, are dated after ``now``."""
    if start > now:
        return count
    if step <= 0.0:
        return 0
    return max(0, count - (math.floor((now - start) / step) + 1))
