"""Adaptive backoff: how long to wait before polling a job again.

Pure functions of a policy, a status, a count and a random number; no clock, no I/O.

- While a job's status stays the same, the interval grows geometrically from a
  per-status start (``queued`` and ``in_progress`` differ), with multiplicative
  jitter, between ``min_interval_s`` and ``max_interval_s``. A transition resets it.
- After a failed request the delay grows exponentially with full jitter
  (AWS-style), and never undercuts a ``Retry-After`` the server sent.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Final

import msgspec

from ..errors import ConfigError
from ..models import Status

__all__ = ["Backoff"]

_DEFAULT_INITIAL: Final[Mapping[str, float]] = {
    Status.VALIDATING.value: 0.5,
    Status.QUEUED.value: 1.0,
    Status.IN_PROGRESS.value: 1.0,
}


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class Backoff(msgspec.Struct, frozen=True, kw_only=True):
    """Polling intervals. All times in seconds.

    Attributes:
        initial_interval_s: first interval after a job enters a status, by status value
            (``"queued"``, ``"in_progress"``, ...). Statuses not listed use ``default_interval_s``.
        default_interval_s: first interval for any other non-terminal status, and for a job
            whose status is not known yet.
        multiplier: growth factor per poll that sees no change (>= 1).
        jitter: relative jitter; each interval is multiplied by a uniform factor in
            ``[1 - jitter, 1 + jitter]`` so jobs tracked together drift apart.
        min_interval_s: floor: no job is polled sooner than this after its last poll.
        max_interval_s: cap: no job waits longer than this between polls.
        error_base_s: first delay after a failed request; doubles per consecutive failure.
        error_max_s: cap of the error delay.
        max_consecutive_errors: after this many failed requests in a row a job stops being
            tracked and its error is reported; None retries forever (at ``error_max_s``).
        learn: learn how long jobs stay queued and in progress (per organisation and
            endpoint) and poll where a change is likely; the geometric intervals above
            apply until enough jobs have been seen, and when ``learn`` is False.
        request_cost_s: with ``learn``: the detection lag one request is worth. Larger
            spends fewer requests for a longer lag; the spacing of polls goes as its
            square root.
    """

    initial_interval_s: Mapping[str, float] = msgspec.field(
        default_factory=lambda: dict(_DEFAULT_INITIAL)
    )
    default_interval_s: float = 1.0
    multiplier: float = 1.5
    jitter: float = 0.2
    min_interval_s: float = 0.25
    max_interval_s: float = 30.0
    error_base_s: float = 1.0
    error_max_s: float = 60.0
    max_consecutive_errors: int | None = 30
    learn: bool = True
    request_cost_s: float = 0.125

    def __post_init__(self) -> None:
        positive = {
            "default_interval_s": self.default_interval_s,
            "min_interval_s": self.min_interval_s,
            "max_interval_s": self.max_interval_s,
            "error_base_s": self.error_base_s,
            "error_max_s": self.error_max_s,
            "request_cost_s": self.request_cost_s,
            **{f"initial_interval_s[{k!r}]": v for k, v in self.initial_interval_s.items()},
        }
        for name, value in positive.items():
            if not (_is_number(value) and math.isfinite(value) and value > 0):
                raise ConfigError(f"backoff.{name}: must be a finite number > 0, got {value!r}")
        if self.min_interval_s > self.max_interval_s:
            raise ConfigError("backoff.min_interval_s: must not exceed max_interval_s")
        if not (_is_number(self.multiplier) and 1.0 <= self.multiplier < math.inf):
            raise ConfigError(f"backoff.multiplier: must be a number >= 1, got {self.multiplier!r}")
        if not (_is_number(self.jitter) and 0.0 <= self.jitter < 1.0):
            raise ConfigError(f"backoff.jitter: must be a number in [0, 1), got {self.jitter!r}")
        limit = self.max_consecutive_errors
        if limit is not None and not (
            isinstance(limit, int) and not isinstance(limit, bool) and limit >= 1
        ):
            raise ConfigError(
                f"backoff.max_consecutive_errors: must be an integer >= 1 or None, got {limit!r}"
            )
        if not isinstance(self.learn, bool):
            raise ConfigError(f"backoff.learn: must be True or False, got {self.learn!r}")

    def interval_s(
        self,
        status: Status | None,
        unchanged_polls: int,
        rng: random.Random,
        age_s: float | None = None,
    ) -> float:
        """Seconds until the next poll of a job seen ``unchanged_polls`` times in ``status``
        since it entered it (0 right after a transition).

        When the job's time in its status is known (``age_s``, from the payload's own
        timestamps), the interval grows with that time instead, ``start + (multiplier - 1)
        * age_s``: the same schedule when every poll is on time, and right however the
        job was polled before (late, by another process, or by the learned model).
        """
        # A Status is a str equal to its value: it looks itself up (Enum.value is slow).
        start = (
            self.initial_interval_s.get(status, self.default_interval_s)
            if status is not None
            else self.default_interval_s
        )
        if age_s is not None:
            grown = start + (self.multiplier - 1.0) * max(0.0, age_s)
        else:
            # In log space, capped, so no multiplier and no poll count can overflow.
            grown = start * math.exp(min(700.0, unchanged_polls * math.log(self.multiplier)))
        low, high = self.min_interval_s, self.max_interval_s
        base = low if grown < low else high if grown > high else grown
        jittered = base * (1.0 + self.jitter * (2.0 * rng.random() - 1.0))
        return low if jittered < low else high if jittered > high else jittered

    def error_delay_s(
        self, consecutive_errors: int, retry_after_s: float | None, rng: random.Random
    ) -> float:
        """Seconds until retrying after the ``consecutive_errors``-th failure in a row (>= 1)."""
        ceiling = min(self.error_max_s, self.error_base_s * 2.0 ** min(consecutive_errors - 1, 32))
        delay = max(self.min_interval_s, rng.uniform(0.0, ceiling))
        if retry_after_s is not None:
            delay = max(delay, retry_after_s)
        return delay
