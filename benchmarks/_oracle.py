"""The least mean detection lag a polling policy can reach at a cost: an oracle that runs.

No real client can do better than a policy that knows, for every job, the true
distribution of how long each of its phases lasts. The oracle is that policy, run on
the same population as the engine and the baselines:

- it knows each class's true phase durations, failures and cancellations included,
  measured from many draws of the simulator's own lifecycles, with the far tail
  (where few draws survive) from the simulator's own distributions;
- it sees what the engine sees: it tracks each job from its creation (so it knows
  when ``validating`` ends, 0.5 s later), and it knows when processing started only
  to the whole second, as ``started_at`` tells;
- for each phase it polls by the schedule that minimises expected lag plus ``lam``
  per request, found by dynamic programming over a fine grid of ages, with one
  ``lam`` for every phase of every job, tuned so its requests per job match a target.

One ``lam`` for all is the optimum of the constrained problem (least mean lag at a
given mean number of requests), so at the engine's requests per job the oracle's lag
is about what the engine could reach if it learned everything perfectly. About: the
oracle leaves some information unused (its own polls around the start of
processing narrow it a little further), and its figure moves by a few percent with
the draws.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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


def lognormal_survival(median_s: float, sigma: float) -> Callable[[float], float]:
    """P(T > t) of a log-normal duration."""

    def survival(t: float) -> float:
        if t <= 0.0:
            return 1.0
        return 0.5 * math.erfc(math.log(t / median_s) / (sigma * math.sqrt(2.0)))

    return survival


def exponential_survival(mean_s: float) -> Callable[[float], float]:
    """P(T > t) of an exponential duration."""
    return lambda t: math.exp(-max(0.0, t) / mean_s)


@dataclass(frozen=True)
class Phase:
    """What the oracle knows of one phase: many drawn lengths, and the shape of the
    distribution's far tail (where few draws survive, a sample says little)."""

    samples: list[float]
    tail: Callable[[float], float] | None = None


class PhaseSchedule:
    """The optimal polls of one phase: from a poll at any age, the age of the next one.

    The distribution is the samples' own up to the age that ``tail_from`` of them
    outlive; past it, ``tail`` (a survival function, scaled to join there) if given. Past
    the last age considered (where one job in ten million is left), it polls as if the
    hazard were ``1 / age``."""

    def __init__(
        self,
        samples: Sequence[float],
        lam: float,
        *,
        tail: Callable[[float], float] | None = None,
        tail_from: int = 1000,
    ) -> None:
        ordered = np.sort(np.asarray(samples, dtype=float))
        count = len(ordered)
        joint = float(ordered[-1])  # where the samples stop being used
        top = joint
        if tail is not None and count > tail_from:
            joint = float(ordered[count - tail_from])
            # The share still running at the joint, as the samples count it.
            left = (count - int(np.searchsorted(ordered, joint, side="right"))) / count
            scale = tail(joint)
            top = joint
            while left * tail(top) / scale > 1e-7 and top < joint * 1e4:
                top *= 1.25
        ages = _grid(top)
        # F and M (the integral of t dF) at every grid age: from the samples up to the
        # joint, then from the tail (M by the trapezoid rule).
        index = np.searchsorted(ordered, ages, side="right")
        cdf = index / count
        moment = np.concatenate([[0.0], np.cumsum(ordered)])[index] / count
        if tail is not None and top > joint:
            beyond = np.flatnonzero(ages > joint)
            for k in beyond:
                cdf[k] = 1.0 - left * tail(float(ages[k])) / scale
                moment[k] = moment[k - 1] + (cdf[k] - cdf[k - 1]) * (ages[k] + ages[k - 1]) / 2
        survival = 1.0 - cdf
        n = len(ages)
        value = np.zeros(n)  # least expected lag + lam * polls, after a poll at ages[i]
        after = np.arange(1, n + 1)
        value[-1], after[-1] = lam, n - 1
        for i in range(n - 2, -1, -1):
            if survival[i] <= 0.0:
                value[i] = lam
                continue
            # For each next poll at ages[j]: the lag if the change falls before it, and
            # what follows it if no change came (the poll itself costs lam).
            later = slice(i + 1, n)
            cost = (
                ages[later] * (cdf[later] - cdf[i])
                - (moment[later] - moment[i])
                + survival[later] * value[later]
            )
            best = int(np.argmin(cost))
            value[i] = cost[best] / survival[i] + lam
            after[i] = i + 1 + best
        self.ages = ages
        self._after = after
        self._lam = lam
        self.cost = float(value[0])

    def next_age(self, age_s: float) -> float:
        """The age of the next poll after one at ``age_s``."""
        ages = self.ages
        i = int(np.searchsorted(ages, age_s + _EPSILON_S, side="right")) - 1
        if i >= len(ages) - 1:  # past every age considered
            return age_s + math.sqrt(2.0 * self._lam * age_s)
        nxt = float(ages[self._after[max(0, i)]])
        return nxt if nxt > age_s + _EPSILON_S else age_s + 0.01


def phase_samples(
    classes: Sequence[EndpointClass] = STANDARD_MIX,
    *,
    per_class: int = 50_000,
    seed: int = 99,
    queued_mean_s: float = 3.0,
) -> dict[str, Phase]:
    """Phase lengths as the oracle sees them: ``"queued"`` from the end of validating
    (known exactly); each class name's processing time from ``started_at`` (whole
    seconds, so it counts the fraction of a second before the true start). The far
    tails are the simulator's: exponential queueing, log-normal processing."""
    rng = random.Random(seed)
    queued: list[float] = []
    phases: dict[str, Phase] = {}
    for cls in classes:
        ran: list[float] = []
        for _ in range(per_class):
            changes = draw_lifecycle(rng, cls.endpoints[0], 0.0, outcomes=Outcomes())
            for change, following in itertools.pairwise(changes):
                if change.status == "queued":
                    queued.append(following.at - change.at)
                elif change.status == "in_progress":
                    ran.append(following.at - change.at + rng.random())
        phases[cls.name] = Phase(ran, lognormal_survival(cls.median_s, cls.sigma))
    phases["queued"] = Phase(queued, exponential_survival(queued_mean_s))
    return phases


def run_oracle(jobs: Sequence[SimJob], phases: dict[str, Phase], lam: float) -> Result:
    """The oracle over ``jobs`` at price ``lam`` (seconds of lag one request is worth)."""
    schedules = {
        name: PhaseSchedule(phase.samples, lam, tail=phase.tail) for name, phase in phases.items()
    }

    def next_poll(job: SimJob, status: str, t: float, polls: int) -> float | None:
        if status in _TERMINAL:
            return None
        if status == "validating":  # over at a known time; if not, look again soon
            return max(job.created_at + VALIDATING_S + _EPSILON_S, t + 0.01)
        if status == "queued":
            start = job.created_at + VALIDATING_S
            return start + schedules["queued"].next_age(t - start)
        started = math.floor(next(c.at for c in job.changes if c.status == "in_progress"))
        cls = endpoint_class(job.endpoint).name
        return started + schedules[cls].next_age(t - started)

    return record_polls(jobs, next_poll, "oracle", f"price {lam:.3f} s a request")
