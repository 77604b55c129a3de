"""Sharing learned durations: what to push to the fleet's tables, and what to load back.

Each engine learns job durations locally (``poller.sched.learn``: one 100-bin histogram
per organisation, endpoint and status, fading by halving past a total weight). The
fleet's merged table for a kind is the sum of every engine's *new* samples, faded by
the same rule, in Redis. :class:`LearnSync` is the pure bookkeeping between the two:

- the *baseline* of a kind is what the engine's histogram held right after it last
  loaded the merged table: everything in it is in Redis already;
- a push sends ``local - baseline`` (the samples learned since). When the local
  histogram halved meanwhile (its total fell below the baseline's), the baseline is
  halved as often before the difference is taken;
- the merged tables that come back are loaded into the engine with the samples it
  learned while the call was out added on top (they are not in Redis yet), and become
  the new baseline.

After Redis loses the namespace (a restart with no persistence), every baseline is
dropped and the engines push what they know whole: the tables are re-seeded.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from ..sched.learn import LAYOUT, LearnedDurations, LearnedKind

__all__ = ["KIND_SEPARATOR", "LearnSync", "kind_id"]

KIND_SEPARATOR: Final = "\t"
_BINS: Final = 100
_MIN_DELTA: Final = 1e-6

Kind = tuple[str, str, str]
Delta = dict[str, float]  # bin index (as a JSON object key) -> weight


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
        self._pushed: dict[Kind, list[float]] = {}  # local counts when the push was taken
        self.since = 0.0  # the server time of the last read: later changes come next

    def reset(self) -> None:
        """The fleet's tables are gone: push everything whole, read everything."""
        self._baseline.clear()
        self._pushed.clear()
        self.since = 0.0

    def deltas(self, learned: LearnedDurations | None) -> list[tuple[str, Delta]]:
        """What to push: for each kind, the weight learned per bin since the baseline."""
        self._pushed.clear()
        if learned is None or learned.layout != LAYOUT:
            return []
        out: list[tuple[str, Delta]] = []
        for item in learned.kinds:
            kind = (item.organization_id, item.endpoint, item.status)
            counts = list(item.counts)
            self._pushed[kind] = counts
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
                out.append((kind_id(kind), delta))
        return out

    def merge(
        self, tables: Iterable[tuple[str, list[float]]], learned_now: LearnedDurations | None
    ) -> LearnedDurations | None:
        """What to load into the engine, given the fleet's ``tables`` (kind name, bins) and
        what the engine holds now; None when nothing changed. Sets the baselines."""
        local: dict[Kind, list[float]] = {}
        if learned_now is not None:
            local = {
                (k.organization_id, k.endpoint, k.status): list(k.counts) for k in learned_now.kinds
            }
        kinds: list[LearnedKind] = []
        for name, merged in tables:
            kind = _parse_kind(name)
            if kind is None or len(merged) != _BINS:
                continue
            counts = [max(0.0, float(c)) for c in merged]
            pushed, current = self._pushed.get(kind), local.get(kind)
            if current is not None:
                # Learned while the call was out: not in the merged table yet.
                # (Everything, for a kind first met during the call.)
                before = pushed if pushed is not None else self._baseline.get(kind)
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
        self._pushed.clear()
        return LearnedDurations(layout=LAYOUT, kinds=kinds) if kinds else None
