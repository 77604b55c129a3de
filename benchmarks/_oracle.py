"""The least mean detection lag a polling policy can reach at a cost: an oracle that runs.

No real client can do better than a policy that knows, for every job, the true
distribution of how long each of its phases lasts. The oracle is that policy, run on
the same population as the engine and the baselines:

- it knows each class's true phase durations, failures and cancellations included,
  measured from many draws of the simulator's own lifecycles;
- it sees what the engine sees: it tracks each job from its creation (so it knows
  when ``validating`` ends, 0.5 s later), and it knows when processing started only
  to the whole second, as ``started_at`` tells;
- for each phase it polls by the schedule that minimises expected lag plus ``lam``
  per request, found by dynamic programming over a fine grid of ages, with one
  ``lam`` for every phase of every job, tuned so its requests per job match a target.

One ``lam`` for all is the optimum of the constrained problem (least mean lag at a
given mean number of requests), so at the engine's requests per job the oracle's lag
is what the engine could reach if it learned everything perfectly.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence

import numpy as np

from poller.testing import STANDARD_MIX, EndpointClass, Outcomes, draw_lifecycle, endpoint_class

from .virtual_time import Result, SimJob, record_polls

VALIDATING_S = 0.5  # the simulator's validating phase: fixed, so polled once at its end
_TERMINAL = ("completed", "failed", "cancelled", "expired")
_EPSILON_S = 1e-6  # just after a known change


def _grid(top_s: float) -> np.ndarray:
    """Ages at which a poll may be placed: every 10 ms up to 2 s, then 0.25% apart, and
    past 400 s ``0.05 * sqrt(age)`` apart (finer than the optimal intervals there, which
    grow about as the square root of the age)."""
    ages, age = [], 0.0
    while age < top_s:
        ages.append(age)
        age += 0.01 if age < 2.0 else min(0.0025 * age, 0.05 * math.sqrt(age))
    ages.append(age)
    return np.array(ages)


class PhaseSchedule:
    """The optimal polls of one phase, for durations drawn from ``samples``: from a poll
    at any age, the age of the next one."""

    def __init__(self, samples: Sequence[float], lam: float) -> None:
        ordered = np.sort(np.asarray(samples, dtype=float))
        ages = _grid(float(ordered[-1]))
        # F and M (the integral of t dF) at every grid age, from the samples themselves.
        index = np.searchsorted(ordered, ages, side="right")
        cdf = index / len(ordered)
        moment = np.concatenate([[0.0], np.cumsum(ordered)])[index] / len(ordered)
        survival = 1.0 - cdf
        n = len(ages)
        value = np.zeros(n)  # least expected lag + lam * polls, after a poll at ages[i]
        after = np.arange(1, n + 1)
        value[-1], after[-1] = lam, n - 1
        for i in range(n - 2, -1, -1):
            if survival[i] <= 1e-12:
                value[i] = lam
                continue
            # For each next poll at ages[j]: the lag if the change falls before it, and
            # what follows it if no change came (the poll itself costs lam).
            tail = slice(i + 1, n)
            cost = (
                ages[tail] * (cdf[tail] - cdf[i])
                - (moment[tail] - moment[i])
                + survival[tail] * value[tail]
            )
            best = int(np.argmin(cost))
            value[i] = cost[best] / survival[i] + lam
            after[i] = i + 1 + best
        self.ages = ages
        self._after = after
        self.cost = float(value[0])

    def next_age(self, age_s: float) -> float:
        """The age of the next poll after one at ``age_s``."""
        i = max(0, int(np.searchsorted(self.ages, age_s + _EPSILON_S, side="right")) - 1)
        nxt = float(self.ages[min(int(self._after[i]), len(self.ages) - 1)])
        return nxt if nxt > age_s + _EPSILON_S else age_s + 0.01


def phase_samples(
    classes: Sequence[EndpointClass] = STANDARD_MIX, *, per_class: int = 50_000, seed: int = 99
) -> dict[str, list[float]]:
    """Phase lengths as the oracle sees them: ``"queued"`` from the end of validating
    (known exactly); each class name's processing time from ``started_at`` (whole
    seconds, so it counts the fraction of a second before the true start)."""
    rng = random.Random(seed)
    samples: dict[str, list[float]] = {"queued": []}
    for cls in classes:
        ran = samples[cls.name] = []
        for _ in range(per_class):
            changes = draw_lifecycle(rng, cls.endpoints[0], 0.0, outcomes=Outcomes())
            for change, following in itertools.pairwise(changes):
                if change.status == "queued":
                    samples["queued"].append(following.at - change.at)
                elif change.status == "in_progress":
                    ran.append(following.at - change.at + rng.random())
    return samples


def run_oracle(jobs: Sequence[SimJob], samples: dict[str, list[float]], lam: float) -> Result:
    """The oracle over ``jobs`` at price ``lam`` (seconds of lag one request is worth)."""
    schedules = {phase: PhaseSchedule(values, lam) for phase, values in samples.items()}

    def next_poll(job: SimJob, status: str, t: float, polls: int) -> float | None:
        if status in _TERMINAL:
            return None
        if status == "validating":
            return job.created_at + VALIDATING_S + _EPSILON_S
        if status == "queued":
            start = job.created_at + VALIDATING_S
            return start + schedules["queued"].next_age(t - start)
        started = math.floor(next(c.at for c in job.changes if c.status == "in_progress"))
        cls = endpoint_class(job.endpoint).name
        return started + schedules[cls].next_age(t - started)

    return record_polls(jobs, next_poll, "oracle", f"price {lam:.3f} s a request")
