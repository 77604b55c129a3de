"""The least mean detection lag any polling policy can reach at a given cost: an estimate.

For one phase of a job (a status it leaves at a random time with density ``f``,
survival ``S`` and hazard ``h = f / S``), polling at a rate ``n(t)`` costs
``R = integral S n dt`` requests and, when polls are close together against the
changes of ``h``, leaves ``L = integral f / (2 n) dt`` of lag. Minimising
``L + lambda R`` gives the square-root rule ``n ~ sqrt(h)``, and then
``L R = A**2 / 2`` with ``A = integral sqrt(f S) dt``. Over a population, one
``lambda`` for every phase of every job: mean lag per job ``= mean(A)**2 / (2 R)``.

This is what a policy that knew each job's true distribution and exact age could
do; it is a continuous approximation (polls are discrete and a phase starts before
the poll that sees it), good to a few percent, not a strict bound.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from poller.testing import EndpointClass

_STEPS = 4000
_Z = 9.0


def lognormal_a(median_s: float, sigma: float) -> float:
    """``A`` of a log-normal duration: ``integral sqrt(f S) dt`` (substituting
    ``t = median * exp(sigma * z)``: ``sqrt(phi(z) Q(z) t sigma) dz``)."""
    total = 0.0
    dz = 2 * _Z / _STEPS
    for i in range(_STEPS + 1):
        z = -_Z + i * dz
        phi = math.exp(-z * z / 2) / math.sqrt(2 * math.pi)
        survival = 0.5 * math.erfc(z / math.sqrt(2))
        t = median_s * math.exp(sigma * z)
        weight = 0.5 if i in (0, _STEPS) else 1.0
        total += weight * math.sqrt(phi * survival * t * sigma)
    return total * dz


def exponential_a(mean_s: float) -> float:
    """``A`` of an exponential duration: constant hazard, ``sqrt(mean)``."""
    return math.sqrt(mean_s)


def mean_lag_bound(
    classes: Sequence[EndpointClass],
    *,
    queued_mean_s: float,
    requests_per_job: float,
    fixed_requests_per_job: float,
    changes_per_job: float,
) -> float:
    """The least mean lag per status change at ``requests_per_job``, for jobs drawn from
    ``classes`` in equal shares: queued (exponential), then in progress (log-normal).
    ``fixed_requests_per_job`` are spent on what no policy can save (the first sighting,
    and a validating phase of known length: polled once, at its end)."""
    shares = [lognormal_a(c.median_s, c.sigma) for c in classes]
    a = exponential_a(queued_mean_s) + sum(shares) / len(shares)
    spare = requests_per_job - fixed_requests_per_job
    if spare <= 0:
        return math.inf
    return a * a / (2 * spare) / changes_per_job
