"""Rate budgets: how many requests an organisation (or a not-yet-known key) may send.

A budget is a small synchronous object that reads time only from its arguments,
behind the :class:`Budget` protocol, so a later implementation can keep its
state in a shared store instead of in this process.

- :class:`TokenBucket`: a fixed rate with a small burst.
- :class:`Unlimited`: no cap, but it still honours a server's ``Retry-After`` pause.
"""

from __future__ import annotations

import math
from typing import Protocol

import msgspec

from .errors import ConfigError

__all__ = ["Budget", "RateLimit", "TokenBucket", "Unlimited"]

# Float refills land a hair under a whole token; count those as whole.
_EPSILON = 1e-9


class RateLimit(msgspec.Struct, frozen=True):
    """A request budget.

    Attributes:
        per_s: sustained requests per second.
        burst: requests that may go at once after a quiet spell; None picks a small burst
            (5% of a second's worth, at least 1) so that no 1-second window ever holds
            much more than ``per_s`` requests.
    """

    per_s: float
    burst: float | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.per_s, int | float) and math.isfinite(self.per_s)):
            raise ConfigError(f"rate_limit.per_s: must be a number, got {self.per_s!r}")
        if self.per_s <= 0:
            raise ConfigError("rate_limit.per_s: must be > 0")
        if self.burst is not None and not (math.isfinite(self.burst) and self.burst >= 1):
            raise ConfigError("rate_limit.burst: must be >= 1")

    @property
    def effective_burst(self) -> float:
        """The burst in use: the configured one, or the default described above."""
        return self.burst if self.burst is not None else max(1.0, 0.05 * self.per_s)


class Budget(Protocol):
    """A rate budget shared by every job of one organisation (or one unresolved key)."""

    def try_acquire(self, now: float) -> float:
        """Take one request. Returns 0.0 on success, else the seconds to wait before retrying."""
        ...

    def pause_until(self, until: float) -> None:
        """Send nothing before ``until`` (a server asked to retry later)."""
        ...


class Unlimited:
    """No rate cap; only pauses asked for by the server."""

    __slots__ = ("_paused_until",)

    def __init__(self) -> None:
        self._paused_until = 0.0

    def try_acquire(self, now: float) -> float:
        """See :meth:`Budget.try_acquire`."""
        return 0.0 if now >= self._paused_until else self._paused_until - now

    def pause_until(self, until: float) -> None:
        """See :meth:`Budget.pause_until`."""
        self._paused_until = max(self._paused_until, until)


class TokenBucket:
    """A token bucket: ``rate_per_s`` tokens a second, holding at most ``burst``.

    It starts full. Time only moves forward as far as it is concerned: a ``now``
    earlier than one it has seen is treated as that one.
    """

    __slots__ = ("_paused_until", "_tokens", "_updated", "burst", "rate_per_s")

    def __init__(self, rate_per_s: float, burst: float) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ConfigError("rate_per_s must be > 0 and burst >= 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = burst
        self._updated: float | None = None
        self._paused_until = 0.0

    @classmethod
    def from_limit(cls, limit: RateLimit) -> TokenBucket:
        """A bucket for a configured :class:`RateLimit`."""
        return cls(limit.per_s, limit.effective_burst)

    def _refill(self, now: float) -> None:
        if self._updated is None or now > self._updated:
            if self._updated is not None:
                gained = (now - self._updated) * self.rate_per_s
                self._tokens = min(self.burst, self._tokens + gained)
            self._updated = now

    def try_acquire(self, now: float) -> float:
        """See :meth:`Budget.try_acquire`."""
        if now < self._paused_until:
            return self._paused_until - now
        self._refill(now)
        if self._tokens >= 1.0 - _EPSILON:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate_per_s

    def pause_until(self, until: float) -> None:
        """See :meth:`Budget.pause_until`. The bucket is also emptied: after a pause the
        requests resume at the sustained rate, not in a burst."""
        self._paused_until = max(self._paused_until, until)
        self._tokens = 0.0
        self._updated = until if self._updated is None else max(self._updated, until)
