"""Rate budgets: how many requests an organisation (or a key not resolved yet) may send.

A budget is a small synchronous object that reads time only from its arguments,
behind the :class:`Budget` protocol, so that a later implementation can keep its
state in a store shared by several processes instead of in this one.

- :class:`TokenBucket`: a fixed rate with a small burst (the global cap).
- :class:`AdaptiveBudget`: every organisation's budget. It starts at the configured
  rate, or uncapped when none is configured, and learns the server's real limit
  from 429 answers, CUBIC-style (as botocore's adaptive retry mode does): on a 429
  it pauses for the ``Retry-After`` and drops to a little under the rate the server
  was accepting; then it climbs back quickly, dwells near that level, and probes
  above it ever faster while no 429 comes, never past the configured rate.
"""

from __future__ import annotations

import math
from typing import Final, Protocol

import msgspec

from ..errors import ConfigError

__all__ = ["AdaptiveBudget", "Budget", "ProbeBudget", "RateLimit", "TokenBucket"]

# A 429 cuts the rate only when at least this many requests were accepted in the second
# before it: fewer tell nothing of the rate the server would take.
_MIN_EVIDENCE: Final = 2.0
# Float refills land a hair under a whole token; count those as whole.
_EPSILON: Final = 1e-9
# AdaptiveBudget counts the answers of the last second in ten bins of 100 ms.
_BIN_S: Final = 0.1
_BINS: Final = 10


class RateLimit(msgspec.Struct, frozen=True):
    """A request budget.

    Attributes:
        per_s: sustained requests per second.
        burst: requests that may go at once after a quiet spell; None picks a small burst
            (2% of a second's worth, at least 1). With the 2% headroom the engine keeps
            below ``per_s``, no 1-second window at the server holds more than ``per_s``
            plus about one request.
        weight: the organisation's share of the global cap (``max_rate_per_s``,
            ``max_connections``) relative to the others when they compete.
    """

    per_s: float
    burst: float | None = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        for name, value in (("per_s", self.per_s), ("weight", self.weight)):
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigError(f"rate_limit.{name}: must be a finite number > 0, got {value!r}")
        if self.burst is not None and not (
            isinstance(self.burst, int | float) and math.isfinite(self.burst) and self.burst >= 1
        ):
            raise ConfigError(f"rate_limit.burst: must be >= 1, got {self.burst!r}")

    @property
    def effective_burst(self) -> float:
        """The burst in use: the configured one, or the default described above."""
        return self.burst if self.burst is not None else default_burst(self.per_s)


def default_burst(per_s: float) -> float:
    """2% of a second's worth of requests, at least one."""
    return max(1.0, 0.02 * per_s)


HEADROOM: Final = 0.98
"""A configured rate is aimed at this fraction of itself: requests bunch up a little on
their way to the server, and the limit must hold where the server counts them."""


class Budget(Protocol):
    """The rate budget shared by every job of one organisation (or one unresolved key)."""

    def try_acquire(self, now: float) -> float:
        """Take one request. Returns 0.0 on success, else the seconds to wait before retrying."""
        ...

    def on_throttled(self, now: float, retry_after_s: float | None) -> float:
        """The server answered 429 (or 503s that track load): send nothing for a while and
        slow down. Returns the pause in seconds."""
        ...

    def on_accepted(self, now: float) -> None:
        """The server answered a request without throttling it."""
        ...

    @property
    def rate_per_s(self) -> float | None:
        """The rate currently allowed; None when uncapped."""
        ...


class TokenBucket:
    """``rate_per_s`` tokens a second, holding at most ``burst``; it starts full.

    Time only moves forward as far as it is concerned: a ``now`` earlier than one
    it has seen counts as that one.
    """

    __slots__ = ("_tokens", "_updated", "burst", "rate_per_s")

    def __init__(self, rate_per_s: float, burst: float) -> None:
        if not rate_per_s > 0 or not burst >= 1:
            raise ConfigError("rate_per_s must be > 0 and burst >= 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = burst
        self._updated: float | None = None

    @classmethod
    def from_limit(cls, limit: RateLimit) -> TokenBucket:
        """A bucket for a configured :class:`RateLimit`, aimed :data:`HEADROOM` below it."""
        return cls(limit.per_s * HEADROOM, limit.effective_burst)

    def _refill(self, now: float) -> None:
        if self._updated is None:
            self._updated = now
        elif now > self._updated:
            gained = (now - self._updated) * self.rate_per_s
            self._tokens = min(self.burst, self._tokens + gained)
            self._updated = now

    def peek(self, now: float) -> float:
        """Seconds until a token is available (0.0: now), taking nothing."""
        self._refill(now)
        if self._tokens >= 1.0 - _EPSILON:
            return 0.0
        return (1.0 - self._tokens) / self.rate_per_s

    def try_acquire(self, now: float) -> float:
        """Take a token. Returns 0.0 on success, else the seconds until one is available."""
        wait = self.peek(now)
        if wait == 0.0:
            self._tokens -= 1.0
        return wait

    def drain(self, now: float) -> None:
        """Empty the bucket: what follows goes at the sustained rate, not in a burst."""
        self._refill(now)
        self._tokens = 0.0

    def set_rate(self, rate_per_s: float, burst: float, now: float) -> None:
        """Change the rate from ``now`` on (tokens earned so far are kept, up to the burst)."""
        self._refill(now)
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = min(self._tokens, burst)


class AdaptiveBudget:
    """An organisation's budget, learning the server's limit from 429s (see the module).

    Args:
        limit: the configured budget; None: uncapped until the first 429.
        beta: after a 429 the rate drops to ``beta`` times the rate the server was
            accepting over the last second.
        recovery_s: time to climb back to that rate; past it, probing accelerates.
        min_rate_per_s: the rate never drops below this.
        min_growth_per_s: while wanting more, the rate climbs at least this much a second.
        doubling_s: and at least doubles from ``min_rate_per_s`` this often (slow start).
        default_pause_s: pause after a 429 that carries no ``Retry-After``.
        initial_rate_per_s: start at this rate, as if it had been learned (the curve at
            its plateau: it probes above it while refused, never past ``limit``), instead
            of at ``limit`` or uncapped. For a budget taking over from one that learned
            the server's limit (an engine of a fleet falling back to a local budget).
    """

    __slots__ = (
        "_bins",
        "_bucket",
        "_ceiling",
        "_ceiling_burst",
        "_cut_at",
        "_epoch",
        "_grown_at",
        "_growth_s",
        "_last_refused",
        "_pause_started",
        "_paused_until",
        "_pre_pause",
        "_w_max",
        "beta",
        "default_pause_s",
        "doubling_s",
        "min_growth_per_s",
        "min_rate_per_s",
        "recovery_s",
        "throttles",
    )

    def __init__(
        self,
        limit: RateLimit | None = None,
        *,
        beta: float = 0.9,
        recovery_s: float = 30.0,
        min_rate_per_s: float = 0.5,
        min_growth_per_s: float = 0.05,
        doubling_s: float = 10.0,
        default_pause_s: float = 1.0,
        initial_rate_per_s: float | None = None,
    ) -> None:
        if not 0.0 < beta < 1.0 or not recovery_s > 0 or not min_rate_per_s > 0:
            raise ConfigError("beta must be in (0, 1), recovery_s and min_rate_per_s > 0")
        if initial_rate_per_s is not None and not 0 < initial_rate_per_s < math.inf:
            raise ConfigError("initial_rate_per_s must be a finite number > 0")
        self.beta = beta
        self.recovery_s = recovery_s
        self.min_rate_per_s = min_rate_per_s
        self.min_growth_per_s = min_growth_per_s
        self.doubling_s = doubling_s
        self.default_pause_s = default_pause_s
        self._ceiling = limit.per_s * HEADROOM if limit is not None else None
        self._ceiling_burst = limit.effective_burst if limit is not None else None
        self._bucket = TokenBucket.from_limit(limit) if limit is not None else None
        self._w_max: float | None = None  # the accepted rate when the last 429 came
        self._cut_at = 0.0
        self._growth_s = 0.0  # time spent wanting more than the rate since the last cut
        self._grown_at = 0.0
        self._last_refused = -math.inf
        self._paused_until = -math.inf
        self._pause_started = -math.inf
        self._pre_pause = 0.0  # answers accepted in the second before the last pause began
        # Answers accepted in the last second, by 100 ms bin; _epoch: the newest bin's
        # index, in bins since time zero.
        self._bins = [0] * _BINS
        self._epoch = 0
        self.throttles = 0
        if initial_rate_per_s is not None:
            self._w_max = max(min_rate_per_s, initial_rate_per_s)
            self._growth_s = recovery_s
            rate = self._target()
            assert rate is not None
            burst = self._ceiling_burst if rate == self._ceiling else default_burst(rate)
            self._bucket = TokenBucket(rate, burst or default_burst(rate))

    @property
    def rate_per_s(self) -> float | None:
        """The rate currently allowed; None while uncapped."""
        return self._bucket.rate_per_s if self._bucket is not None else None

    def _target(self) -> float | None:
        """The rate the CUBIC curve allows now, capped by the configured rate."""
        if self._w_max is None:
            return self._ceiling
        k = self.recovery_s
        w_max = self._w_max
        offset = self._growth_s - k
        rate = w_max + w_max * (1.0 - self.beta) * (offset / k) ** 3
        # The curve is relative to w_max: after a cut to a very low rate it alone would take
        # minutes to recover, so the rate also climbs by at least min_growth_per_s a second,
        # and doubles from the floor every doubling_s at least (a slow start).
        linear = self.beta * w_max + self.min_growth_per_s * self._growth_s
        doublings = min(self._growth_s / self.doubling_s, 60.0)
        slow_start: float = self.min_rate_per_s * math.pow(2.0, doublings)
        rate = max(self.min_rate_per_s, rate, linear, slow_start)
        return min(rate, self._ceiling) if self._ceiling is not None else rate

    def _regrow(self, now: float) -> None:
        if self._w_max is None or self._bucket is None:
            return
        if now > self._grown_at:
            # Climb only while there is demand for more: an idle organisation must not
            # wake up believing in a rate it never tried.
            # (Below a request a second, the queue asks again only every 1/rate s.)
            rate = self._bucket.rate_per_s
            if now - self._last_refused < max(1.0, 2.0 / rate):
                self._growth_s += now - self._grown_at
            self._grown_at = now
        target = self._target()
        assert target is not None
        if abs(target - self._bucket.rate_per_s) > 1e-6 * target:
            burst = self._ceiling_burst if target == self._ceiling else default_burst(target)
            self._bucket.set_rate(target, burst or default_burst(target), now)

    def try_acquire(self, now: float) -> float:
        """See :meth:`Budget.try_acquire`."""
        if now < self._paused_until:
            return self._paused_until - now
        if self._bucket is None:
            return 0.0
        self._regrow(now)
        wait = self._bucket.try_acquire(now)
        if wait > 0.0:
            self._last_refused = now
        return wait

    def on_accepted(self, now: float) -> None:
        """See :meth:`Budget.on_accepted`. Runs on every answer."""
        epoch = int(now / _BIN_S)
        if epoch != self._epoch:  # a new bin: rare next to the calls
            epoch = self._advance(now)
        self._bins[epoch % _BINS] += 1

    def _advance(self, now: float) -> int:
        """Move the bins on to ``now`` (emptying those that left the last second); returns
        the index of ``now``'s bin."""
        epoch = int(now / _BIN_S)
        if epoch > self._epoch:
            for index in range(self._epoch + 1, min(epoch, self._epoch + _BINS) + 1):
                self._bins[index % _BINS] = 0
            self._epoch = epoch
        return epoch

    def on_throttled(self, now: float, retry_after_s: float | None) -> float:
        """See :meth:`Budget.on_throttled`.

        The cut is relative to the rate that was limiting: what the server accepted in
        the second before (or, just after a pause, in the second before the pause), and
        only when that rate was ours to lower: the budget was refusing requests, or we
        sent at least half of what it allowed. A 429 when we sent next to nothing, or far
        less than the budget allows (the limit is shared, or was spent before we came),
        pauses, but does not cut: an under-loaded engine must not ratchet its rate down."""
        self.throttles += 1
        pause_s = self.default_pause_s if retry_after_s is None else retry_after_s
        self._advance(now)
        accepted = float(sum(self._bins))
        if now >= self._paused_until:  # a new pause: remember what the server was taking
            self._pre_pause, self._pause_started = accepted, now
        elif now - self._pause_started < 2.0:
            accepted = max(accepted, self._pre_pause)
        self._paused_until = max(self._paused_until, now + pause_s)
        current = self.rate_per_s
        evidence = accepted >= _MIN_EVIDENCE
        if evidence and current is not None:
            binding = now - self._last_refused < 2.0
            evidence = binding or accepted >= 0.5 * current
        # Answers to requests sent before the cut arrive after it: cut once per second.
        if evidence and (now - self._cut_at >= 1.0 or self._w_max is None):
            current = self.rate_per_s
            if current is not None:
                accepted = min(accepted, current)
            self._w_max = max(self.min_rate_per_s, accepted)
            self._cut_at = self._grown_at = now
            self._growth_s = 0.0
            rate = max(self.min_rate_per_s, self.beta * self._w_max)
            if self._bucket is None:
                self._bucket = TokenBucket(rate, default_burst(rate))
            else:
                self._bucket.set_rate(rate, default_burst(rate), now)
        if self._bucket is not None:
            self._bucket.drain(max(now, self._paused_until))
        return pause_s


class ProbeBudget:
    """The budget of a key whose organisation is not known yet: one request at a time.

    Which organisation a key belongs to (and so which budget, and which configured
    limit, applies) is only known from its first answer. Until then the key's jobs send
    one probe at a time: the next goes when the probe ends (any answer, even an error
    status, or a failure to get one), or ``retry_s`` later if its outcome is never
    reported, and never faster than ``inner`` allows. A 429 pauses the probes as it
    pauses any budget. Once the organisation is known, the key's jobs move to its
    budget and this one is done.
    """

    __slots__ = ("_inner", "_next", "paused_until", "retry_s")

    def __init__(self, inner: Budget, *, retry_s: float = 1.0) -> None:
        self._inner = inner
        self._next = -math.inf
        self.retry_s = retry_s
        self.paused_until = -math.inf  # the end of the last 429's pause

    @property
    def rate_per_s(self) -> float | None:
        """See :meth:`Budget.rate_per_s`."""
        return self._inner.rate_per_s

    def busy(self, now: float | None) -> bool:
        """Whether its state matters at ``now``: a probe is out (for ``retry_s`` at most) or
        a 429's pause runs. Without a time: not."""
        return now is not None and now < self._next

    def try_acquire(self, now: float) -> float:
        """See :meth:`Budget.try_acquire`."""
        if now < self._next:
            return self._next - now
        wait = self._inner.try_acquire(now)
        if wait == 0.0:
            self._next = now + self.retry_s
        return wait

    def on_accepted(self, now: float) -> None:
        """See :meth:`Budget.on_accepted`; an answer frees the next probe."""
        self._inner.on_accepted(now)
        self._next = now

    def settled(self, now: float) -> None:
        """The probe's request ended without an answer (a timeout, a reset): the next
        probe may go."""
        self._next = min(self._next, now)

    def on_throttled(self, now: float, retry_after_s: float | None) -> float:
        """See :meth:`Budget.on_throttled`."""
        pause_s = self._inner.on_throttled(now, retry_after_s)
        self._next = now + pause_s
        self.paused_until = max(self.paused_until, self._next)
        return pause_s
