"""Learning how long jobs stay in a status, and polling where a change is likely.

**What is learned.** For each (organisation, endpoint, status) a small log-bucketed
histogram of how long jobs stay there, from the timestamps the API itself reports:
time queued is ``started_at - created_at``, time in progress is ``completed_at -
started_at``. Those are whole seconds, truncated, and ages are measured from them,
so a difference of ``D`` means the change came between ``D`` and ``D + 1`` seconds
of age: the duration is recorded as that interval. The payload has no timestamp for
the end of ``validating`` (and ``created_at`` is too coarse for a phase that lasts a
fraction of a second), so that phase is timed by the engine's own polls, for jobs it
saw from their creation: from the first sighting, the change happened between the
last poll that showed ``validating`` and the first that did not, and that interval is
what is recorded. An interval's weight is spread over the bins it covers (see
:meth:`DurationSketch.add_between`). Memory is bounded: ~100 counters per key, at
most ``max_keys`` keys, and old samples fade (all counts halve once they pass
``max_weight``).

**How it is used.** After a poll that shows a job of age ``a`` (time since it
entered its status) unchanged, the expected detection lag piling up until the next
poll ``d`` seconds later is ``G(d) = integral over u in [0, d] of P(changed within u
| unchanged at a)``. Polling when ``G`` reaches a threshold ``theta`` is the classic
optimal inspection rule for minimising lag plus ``theta`` per request (for a steady
hazard ``h`` it gives ``d = sqrt(2 theta / h)``): jobs likely to change soon are
polled often, jobs unlikely to change for a while are left alone. ``theta`` is
``Backoff.request_cost_s`` times the organisation's pressure (see
``poller.sched.queue``), so a scarce budget goes where a change is likeliest.

``G`` comes from a precomputed table per key (ages x steps), rebuilt as samples
arrive, so finding the step for a threshold costs a binary search.

**Warm start.** What was learned can be taken out (:meth:`DurationModel.snapshot`, a
:class:`LearnedDurations` that msgspec encodes to JSON) and given to a later engine
(:meth:`DurationModel.load`), so a restarted worker polls well from its first job
instead of relearning with the geometric backoff.
"""

from __future__ import annotations

import bisect
import math
from array import array
from collections import OrderedDict
from typing import Final, Literal, TypeAlias

import msgspec

from ..errors import ConfigError
from ..models import JobStatus, Status

__all__ = [
    "DurationModel",
    "DurationSketch",
    "LearnedDurations",
    "LearnedKind",
    "solve_step",
    "steady_hazard_step",
    "tail_step",
]

Row: TypeAlias = "array[float]"
"""A table row: ``G`` over ``_STEPS``, as doubles (8 bytes a value, no float objects)."""

_MIN_S: Final = 0.05
_RATIO: Final = 1.2
_BINS: Final = 100  # 0.05 s to ~4 days at a 20% resolution
_EDGES: Final = [_MIN_S * _RATIO**i for i in range(_BINS)]
_LONGEST_S: Final = 1e12  # far past the last bin, far below any float overflow
# Names the bin layout in a snapshot: counts kept under another layout mean nothing here.
LAYOUT: Final = f"log-bins/{_MIN_S}/{_RATIO}/{_BINS}"
_LEARNED_STATUSES: Final = frozenset(
    s.value for s in (Status.VALIDATING, Status.QUEUED, Status.IN_PROGRESS)
)
_LOG_RATIO: Final = math.log(_RATIO)
# How much of a censored duration's weight is spread evenly over its interval rather
# than where earlier durations put the change (so no bin is ever ruled out for good).
_PLAIN_SHARE: Final = 0.1

# The table: ages at which the step is solved, and candidate steps.
_AGES: Final = [0.0] + [0.1 * 1.25**i for i in range(70)]  # up to ~6 days
_STEPS: Final = [0.02 * 1.4**i for i in range(42)]  # 20 ms to ~10 days


def _seconds(whole: int) -> float:
    """A difference of whole-second timestamps as a float, clamped so that even an
    absurd one (any int decodes) cannot overflow: it lands in the first or last bin."""
    return float(max(-_LONGEST_S, min(whole, _LONGEST_S)))


def _bin(value: float) -> int:
    if value < _MIN_S:
        return 0
    if value >= _EDGES[-1]:  # compared exactly, so even an int beyond any float is safe
        return _BINS - 1
    return min(_BINS - 1, 1 + int(math.log(value / _MIN_S) / _LOG_RATIO))


class DurationSketch:
    """A log-bucketed histogram of durations with fading memory."""

    __slots__ = ("_counts", "max_weight", "total")

    def __init__(self, *, max_weight: float = 4000.0) -> None:
        self._counts = [0.0] * _BINS
        self.total = 0.0
        self.max_weight = max_weight

    def add(self, duration_s: float) -> None:
        """Record one duration (negative ones count as zero)."""
        self._counts[_bin(max(0.0, duration_s))] += 1.0
        self._added()

    def add_between(self, low_s: float, high_s: float) -> None:
        """Record one duration known only to lie in ``[low_s, high_s]``.

        Its weight goes to the bins the interval covers, each in proportion to how
        much of the bin the interval covers times what the bin already holds (mixed
        with a little of the plain share of the interval): where earlier durations say
        the change is likely, as the self-consistent (Turnbull) estimate of censored
        data does, done once per sample instead of iterated."""
        low, high = max(0.0, low_s), max(0.0, high_s)
        first, last = _bin(low), _bin(high)
        if first == last or high - low <= 0.0:
            self._counts[last] += 1.0
            self._added()
            return
        counts = self._counts
        span = high - low
        shares, held = [], []
        for index in range(first, last + 1):
            start = _EDGES[index - 1] if index else 0.0
            end = _EDGES[index] if index < _BINS - 1 else max(_EDGES[index], high)
            covered = min(end, high) - max(start, low)
            shares.append(covered / span)
            # The density the bin holds over the part covered (bins widen as they go).
            held.append(covered / (end - start) * counts[index])
        total_held = sum(held)
        for k, share in enumerate(shares):
            likely = held[k] / total_held if total_held > 0.0 else share
            counts[first + k] += (1.0 - _PLAIN_SHARE) * likely + _PLAIN_SHARE * share
        self._added()

    @property
    def counts(self) -> tuple[float, ...]:
        """The weight in each bin."""
        return tuple(self._counts)

    def restore(self, counts: list[float]) -> None:
        """Replace what is held by ``counts`` (one weight per bin, as :attr:`counts`)."""
        if len(counts) != _BINS:
            raise ValueError(f"expected {_BINS} counts, got {len(counts)}")
        self._counts = [float(c) for c in counts]
        self.total = sum(self._counts)
        while self.total > self.max_weight:
            self._counts = [c / 2.0 for c in self._counts]
            self.total /= 2.0

    def _added(self) -> None:
        self.total += 1.0
        if self.total > self.max_weight:
            self._counts = [c / 2.0 for c in self._counts]
            self.total /= 2.0

    def cdf_points(self) -> tuple[list[float], list[float]]:
        """The cumulative distribution at the bin edges, for interpolation."""
        xs = [0.0]
        ys = [0.0]
        running = 0.0
        for upper, count in zip(_EDGES, self._counts, strict=True):
            running += count
            xs.append(upper)  # bin 0 holds [0, _MIN_S), bin i [_EDGES[i-1], _EDGES[i])
            ys.append(running / self.total if self.total else 0.0)
        return xs, ys


def _interpolate(xs: list[float], ys: list[float], x: float) -> float:
    if x >= xs[-1]:
        return ys[-1]
    index = bisect.bisect_right(xs, x)
    x0, x1 = xs[index - 1], xs[index]
    y0, y1 = ys[index - 1], ys[index]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else y1


class _StepTable:
    """For each age on ``_AGES``, the expected lag ``G(d)`` piled up over each step ``d`` in
    ``_STEPS`` (increasing in ``d``), or None where too few jobs survive to say."""

    __slots__ = ("rows",)

    def __init__(self, sketch: DurationSketch, *, min_survivors: float) -> None:
        xs, ys = sketch.cdf_points()
        rows: list[Row | None] = []
        for age in _AGES:
            base = _interpolate(xs, ys, age)
            alive = 1.0 - base
            if alive * sketch.total < min_survivors:
                rows.append(None)
                continue
            row = array("d")  # 8 bytes a value, not a float object each
            pending = 0.0  # G at the previous step
            previous_step = previous_p = 0.0
            for step in _STEPS:
                p = (_interpolate(xs, ys, age + step) - base) / alive
                pending += (step - previous_step) * (p + previous_p) / 2.0
                row.append(pending)
                previous_step, previous_p = step, p
            rows.append(row)
        self.rows = rows

    def row(self, age_s: float) -> Row | None:
        """``G`` over ``_STEPS`` for a job of this age, or None (no data at this age)."""
        return self.rows[max(0, bisect.bisect_right(_AGES, age_s) - 1)]


def solve_step(row: Row, theta: float) -> float:
    """The step ``d`` at which the piled-up lag ``G(d)`` (a table row) reaches ``theta``."""
    j = bisect.bisect_left(row, theta)
    if j == 0:
        return _STEPS[0]
    if j == len(row):
        return _STEPS[-1]
    # Interpolate between the two steps that bracket theta.
    lo, hi = row[j - 1], row[j]
    fraction = (theta - lo) / (hi - lo) if hi > lo else 1.0
    return _STEPS[j - 1] + fraction * (_STEPS[j] - _STEPS[j - 1])


def steady_hazard_step(first_step_s: float, theta0: float, theta: float) -> float:
    """The step at which lag piles up to ``theta`` for a job whose change comes at a steady
    rate, calibrated so that lag reaches ``theta0`` after ``first_step_s`` (the geometric
    backoff's interval, when nothing has been learned).

    With hazard ``h``, ``G(d) = d - (1 - exp(-h d)) / h``: quadratic at first, linear
    once the change has surely happened.
    """
    hazard = 2.0 * theta0 / (first_step_s * first_step_s)  # from G(d) ~ h d^2 / 2
    target = hazard * theta  # solve x - 1 + exp(-x) = target for x = h d
    x = max(math.sqrt(2.0 * target), target + 1.0 - 1.0 / (1.0 + target))
    for _ in range(4):  # Newton; the start is within a few percent everywhere
        slope = 1.0 - math.exp(-x)
        if slope <= 0.0:
            break
        x -= (x - 1.0 + math.exp(-x) - target) / slope
    return x / hazard


def tail_step(age_s: float, theta: float) -> float:
    """The step for a job older than the data: with nothing better to go on, assume (as
    Lindy's law does) that it has about as long ahead of it as behind it, a steady hazard
    of ``1 / age``, so the lag threshold is reached after ``sqrt(2 * theta * age)``."""
    return math.sqrt(2.0 * theta * max(age_s, _MIN_S))


class LearnedKind(msgspec.Struct, frozen=True, kw_only=True):
    """How long one kind of job (organisation, endpoint, status) stayed in its status:
    weights per duration bin (see :data:`LAYOUT`)."""

    organization_id: str
    endpoint: str
    status: str
    counts: list[float]


class LearnedDurations(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of what the engine learned about job durations, to save (for example
    ``msgspec.json.encode(snapshot)``) and give to a later engine
    (``Poller(learned_durations=...)``), so it need not learn again from scratch."""

    layout: str
    kinds: list[LearnedKind]


class _Entry:
    __slots__ = ("fresh", "sketch", "table")

    def __init__(self) -> None:
        self.sketch = DurationSketch()
        self.table: _StepTable | None = None
        self.fresh = 0  # samples since the table was built


class DurationModel:
    """Learned durations per (organisation, endpoint, status); see the module docstring.

    Args:
        min_samples: samples a key needs before its table is trusted.
        rebuild_every: samples between table rebuilds.
        max_keys: keys kept; the least recently used beyond that are forgotten.
    """

    def __init__(
        self, *, min_samples: int = 30, rebuild_every: int = 50, max_keys: int = 2_000
    ) -> None:
        self._entries: OrderedDict[tuple[str, str, str], _Entry] = OrderedDict()
        self._min_samples = min_samples
        self._rebuild_every = rebuild_every
        self._max_keys = max_keys
        self.samples = 0

    def __len__(self) -> int:
        return len(self._entries)

    def _entry(self, key: tuple[str, str, str], create: bool) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is None and create:
            entry = self._entries[key] = _Entry()
            if len(self._entries) > self._max_keys:
                self._entries.popitem(last=False)
        elif entry is not None:
            self._entries.move_to_end(key)
        return entry

    def _add(
        self, key: tuple[str, str, str], duration_s: float, high_s: float | None = None
    ) -> None:
        entry = self._entry(key, create=True)
        assert entry is not None
        if high_s is None:
            entry.sketch.add(duration_s)
        else:
            entry.sketch.add_between(duration_s, high_s)
        entry.fresh += 1
        self.samples += 1
        if entry.table is None or entry.fresh >= self._rebuild_every:
            self._rebuild(entry)

    def _rebuild(self, entry: _Entry) -> None:
        """Build the entry's table from its sketch, once it holds enough samples."""
        if entry.sketch.total >= self._min_samples:
            entry.table = _StepTable(entry.sketch, min_survivors=self._min_samples / 3)
            entry.fresh = 0

    def snapshot(self) -> LearnedDurations:
        """What has been learned so far, least recently used kind first."""
        return LearnedDurations(
            layout=LAYOUT,
            kinds=[
                LearnedKind(
                    organization_id=org,
                    endpoint=endpoint,
                    status=status,
                    counts=list(entry.sketch.counts),
                )
                for (org, endpoint, status), entry in self._entries.items()
            ],
        )

    def load(self, learned: LearnedDurations) -> None:
        """Add a :meth:`snapshot` (of this or an earlier engine) to what is known; a kind
        known already is replaced. Raises :class:`~poller.ConfigError`, loading nothing,
        when the snapshot is not one this version can use."""
        if not isinstance(learned, LearnedDurations):
            raise ConfigError("learned_durations: must be a poller.LearnedDurations")
        if learned.layout != LAYOUT:
            raise ConfigError(
                f"learned_durations: saved with bin layout {learned.layout!r}, this version "
                f"uses {LAYOUT!r}; learn afresh"
            )
        checked = []
        for index, kind in enumerate(learned.kinds):
            where = f"learned_durations.kinds[{index}]"
            if not isinstance(kind, LearnedKind):
                raise ConfigError(f"{where}: must be a LearnedKind")
            if kind.status not in _LEARNED_STATUSES:
                raise ConfigError(f"{where}.status: {kind.status!r} is not a learned status")
            counts = kind.counts
            if len(counts) != _BINS or not all(
                isinstance(c, int | float) and not isinstance(c, bool) and 0.0 <= c < math.inf
                for c in counts
            ):
                raise ConfigError(f"{where}.counts: must be {_BINS} finite numbers >= 0")
            checked.append(((kind.organization_id, kind.endpoint, kind.status), counts))
        for key, counts in checked[-self._max_keys :]:
            entry = self._entry(key, create=True)
            assert entry is not None
            entry.sketch.restore(counts)
            entry.fresh, entry.table = 0, None
            self._rebuild(entry)

    def observe(self, payload: JobStatus, previous: Status | None) -> None:
        """Learn from a transition to ``payload.status`` (from ``previous``)."""
        org, endpoint = payload.organization_id, payload.endpoint.value
        started, current = payload.started_at, payload.status
        if started is not None and previous in (None, Status.VALIDATING, Status.QUEUED):
            queued = _seconds(started - payload.created_at)
            self._add((org, endpoint, Status.QUEUED.value), queued, queued + 1.0)
        if current.is_terminal and started is not None and payload.completed_at is not None:
            ran = _seconds(payload.completed_at - started)
            self._add((org, endpoint, Status.IN_PROGRESS.value), ran, ran + 1.0)

    def observe_validating(
        self, organization_id: str, endpoint: str, low_s: float, high_s: float
    ) -> None:
        """Learn that a job left ``validating`` between ``low_s`` and ``high_s`` after it
        was first seen (the engine's polls on either side of the change)."""
        if not 0.0 <= low_s <= high_s < math.inf:
            return  # a clock that stepped, not a duration
        self._add((organization_id, endpoint, Status.VALIDATING.value), low_s, high_s)

    def row_at_age(self, payload: JobStatus, age_s: float) -> Row | Literal["tail"] | None:
        """The lag table row (see :func:`solve_step`) for a job in ``payload``'s state, in
        that status for ``age_s`` seconds (the scheduler tells, from the payload's own
        timestamps); ``"tail"`` when the job has outlived almost every job of its kind seen
        so far; None when there is nothing to go on (unlearned key, or a status not
        modelled)."""
        key = (payload.organization_id, payload.endpoint.value, payload.status.value)
        entry = self._entries.get(key)
        if entry is None or entry.table is None:
            return None
        row = entry.table.row(max(0.0, age_s))
        return row if row is not None else "tail"
