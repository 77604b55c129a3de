"""Detection lag: how long after a job's true status change the poller reported it.

The simulator knows when every status change really happened
(:meth:`JobsSimulator.changes`); the poller reports what it observed
(:class:`~poller.events.Transition`). A true change counts as detected by the
first observation that shows that status *or a later one of the same timeline*:
a poll that skipped over a short-lived status still detects that change, late.
Matching is by position in the timeline, not by timestamps alone, so a change
that happened while a request was in flight is never credited to that request.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import msgspec

from ._lifecycle import Change

__all__ = ["LagSummary", "detection_lags", "summarize_lags"]


def detection_lags(
    changes: Sequence[Change], observations: Iterable[tuple[str, float]], *, since: float
) -> tuple[list[float], int]:
    """Lags of one job's true changes at or after ``since``.

    Args:
        changes: the job's true timeline, in order.
        observations: ``(status, observed_at)`` of each transition reported, in order.
        since: when tracking began; earlier changes are not counted.

    Returns:
        the lag of each detected change, and how many changes were never detected.
    """
    # Where in the timeline each observation stands: the next position, at or after the
    # last one matched, whose status it shows.
    positions: list[tuple[int, float]] = []
    cursor = 0
    for status, observed_at in observations:
        for index in range(cursor, len(changes)):
            if changes[index].status == status and changes[index].at <= observed_at:
                positions.append((index, observed_at))
                cursor = index
                break
    lags: list[float] = []
    missed = 0
    pointer = 0
    for index, change in enumerate(changes):
        if change.at < since:
            continue
        while pointer < len(positions) and positions[pointer][0] < index:
            pointer += 1
        if pointer == len(positions):
            missed += 1
            continue
        lags.append(max(0.0, positions[pointer][1] - change.at))
    return lags, missed


class LagSummary(msgspec.Struct, frozen=True, kw_only=True):
    """Detection lag statistics, in seconds."""

    count: int
    missed: int
    mean_s: float
    p50_s: float
    p95_s: float
    max_s: float


def _quantile(ordered: Sequence[float], q: float) -> float:
    if not ordered:
        return math.nan
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


def summarize_lags(lags: Iterable[float], missed: int = 0) -> LagSummary:
    """Mean, median, 95th percentile and maximum of ``lags`` (NaN when empty)."""
    ordered = sorted(lags)
    return LagSummary(
        count=len(ordered),
        missed=missed,
        mean_s=sum(ordered) / len(ordered) if ordered else math.nan,
        p50_s=_quantile(ordered, 0.50),
        p95_s=_quantile(ordered, 0.95),
        max_s=ordered[-1] if ordered else math.nan,
    )
