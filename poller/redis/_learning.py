"""Sharing learned durations: what to push to the fleet's tables, and what to load back.

Each engine learns job durations locally (``poller.sched.learn``: one 100-bin histogram
per organisation, endpoint and status, fading by halving past a total weight). The
fleet's merged table for a kind is the sum of every engine's *new* samples, faded by
the same rule, in Redis. :class:`LearnSync` is the pure bookkeeping between the two:

- the *baseline* of a kind is what Redis holds of the engine's histogram: what it
  pushed (or is pushing), or what it loaded from the merged table;
- :meth:`LearnSync.take` turns ``local - baseline`` (the samples learned since) into
  *pushes* of at most :data:`PUSH_KINDS` kinds each, numbered, in an outbox; the
  baseline moves on at once. When the local histogram halved meanwhile (its total fell
  below the baseline's), the baseline is halved as often before the difference is
  taken. A push stays in the outbox until Redis acknowledges it, and is sent again,
  with its number, until then: Redis applies a number once (a push whose answer was
  lost is not counted twice);
- the merged tables are read back a page at a time (kinds changed after the last
  change number read), and loaded into the engine with the samples it learned since
  its last push added on top (they are not in Redis yet); they become the baseline.

After Redis loses the namespace (a restart with no persistence), every baseline is
dropped and the engines push what they know whole: the tables are re-seeded.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Final

import orjson

from ..sched.learn import LAYOUT, LearnedDurations, LearnedKind

__all__ = ["KIND_SEPARATOR", "PUSH_KINDS", "LearnSync", "Push", "kind_id"]

KIND_SEPARATOR: Final = "\t"
PUSH_KINDS: Final = 50
"""At most this many kinds in one push, and in one page read: each script call stays
short however much was learned (2,000 kinds in one call took 245 ms inside Redis)."""
_BINS: Final = 100
_MIN_DELTA: Final = 1e-6

Kind = tuple[str, str, str]
Delta = dict[str, float]  # bin index (as a JSON object key) -> weight
Push = tuple[int, str]  # its number, and its deltas as JSON


def kind_id(kind: Kind) -> str:
    """A kind's name in Redis: organisation, endpoint and status."""
    return KIND_SEPARATOR.join(kind)


def _parse_kind(name: str) -> Kind | None:
    parts = name.split(KIND_SEPARATOR)
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else None


def _halve_until(counts: list[float], total: float, max_weight: float) -> tuple[list[float], int]:
    halvings = 0
    while total > max_weight:
        counts = [c / 2.0 for c in counts]
        total /= 2.0
        halvings += 1
    return counts, halvings


class LearnSync:
    """Bookkeeping of one engine's share in the fleet's learned tables (see the module).

    Args:
        max_weight: the histograms' fading threshold (``DurationSketch.max_weight``).
    """

    def __init__(self, *, max_weight: float = 4000.0) -> None:
        self.max_weight = max_weight
        self._baseline: dict[Kind, list[float]] = {}
        self._outbox: deque[Push] = deque()
        self._number = 0  # the last push's number (never reused, not even after reset)
        self.after = "0"  # the last change number read: later changes come next

    def reset(self) -> None:
        """The fleet's tables are gone: push everything whole, read everything."""
        self._baseline.clear()
        self._outbox.clear()
        self.after = "0"

    def take(self, learned: LearnedDurations | None) -> None:
        """Queue pushes of what was learned since the baseline (see the module)."""
        if learned is None or learned.layout != LAYOUT:
            return
        batch: list[tuple[str, Delta]] = []
        for item in learned.kinds:
            kind = (item.organization_id, item.endpoint, item.status)
            counts = list(item.counts)
            base = self._baseline.get(kind)
            if base is not None:
                local_total, base_total = sum(counts), sum(base)
                while base_total > local_total + _MIN_DELTA and base_total > 0:
                    base = [b / 2.0 for b in base]  # the local histogram faded meanwhile
                    base_total /= 2.0
            delta = {
                str(i): c - (base[i] if base is not None else 0.0)
                for i, c in enumerate(counts)
                if c - (base[i] if base is not None else 0.0) > _MIN_DELTA
            }
            if delta:
                self._baseline[kind] = counts
                batch.append((kind_id(kind), delta))
                if len(batch) == PUSH_KINDS:
                    self._queue(batch)
                    batch = []
        if batch:
            self._queue(batch)

    def pending(self) -> Push | None:
        """The next push to send (again, if it was sent and not acknowledged), or None."""
        return self._outbox[0] if self._outbox else None

    def acknowledged(self, number: int) -> None:
        """Redis applied push ``number`` (now, or before its answer was lost)."""
        if self._outbox and self._outbox[0][0] == number:
            self._outbox.popleft()

    def merge(
        self,
        tables: Iterable[tuple[str, Mapping[str, float]]],
        learned_now: LearnedDurations | None,
    ) -> LearnedDurations | None:
        """What to load into the engine, given a page of the fleet's ``tables`` (kind
        name, sparse bins) and what the engine holds now; None when nothing changed.
        Sets the baselines."""
        local: dict[Kind, list[float]] = {}
        if learned_now is not None:
            local = {
                (k.organization_id, k.endpoint, k.status): list(k.counts) for k in learned_now.kinds
            }
        kinds: list[LearnedKind] = []
        for name, sparse in tables:
            kind = _parse_kind(name)
            counts = _dense(sparse)
            if kind is None or counts is None:
                continue
            current = local.get(kind)
            if current is not None:
                # Learned since the last push: not in the merged table yet. (Everything,
                # for a kind this engine never pushed.)
                before = self._baseline.get(kind)
                extra = [
                    max(0.0, c - (before[i] if before is not None else 0.0))
                    for i, c in enumerate(current)
                ]
                loaded = [m + x for m, x in zip(counts, extra, strict=True)]
            else:
                loaded = counts
            loaded, halvings = _halve_until(loaded, sum(loaded), self.max_weight)
            self._baseline[kind] = [c / 2.0**halvings for c in counts]
            if current is not None and loaded == current:
                continue
            kinds.append(
                LearnedKind(
                    organization_id=kind[0], endpoint=kind[1], status=kind[2], counts=loaded
                )
            )
        return LearnedDurations(layout=LAYOUT, kinds=kinds) if kinds else None

    def _queue(self, batch: list[tuple[str, Delta]]) -> None:
        self._number += 1
        self._outbox.append((self._number, orjson.dumps(batch).decode()))


def _dense(sparse: object) -> list[float] | None:
    """A sparse table read from Redis ({bin: weight}) as the 100 bins; None if it is not
    one this version can use."""
    if not isinstance(sparse, Mapping):
        return None
    counts = [0.0] * _BINS
    for bin_name, weight in sparse.items():
        try:
            index, value = int(bin_name), float(weight)
        except (TypeError, ValueError):
            return None
        if not 0 <= index < _BINS or not 0.0 <= value < math.inf:
            return None
        counts[index] = value
    return counts
