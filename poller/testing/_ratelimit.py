"""The simulator's per-organisation rate limit: a strict sliding one-second window.

Unlike a token bucket, a sliding window over accepted requests never allows a
burst above the limit in any one-second interval, which makes it the harder
limit for a client to live under, and makes "accepted requests never exceed the
limit in any window" a property tests can check exactly against the request log.
"""

from __future__ import annotations

__all__ = ["RETRY_AFTER_STYLES", "RetryAfterStyle", "SlidingWindow", "retry_after_header"]

import collections
import email.utils
import math
from typing import Final, Literal

RetryAfterStyle = Literal["seconds", "http-date", "none"]
RETRY_AFTER_STYLES: Final[tuple[RetryAfterStyle, ...]] = ("seconds", "http-date", "none")

_WINDOW_S: Final = 1.0


class SlidingWindow:
    """At most ``limit_per_s`` accepted requests in any window ``(t - 1 s, t]``.

    Raises ``ValueError`` when ``limit_per_s`` is below 1.
    """

    __slots__ = ("_accepted", "limit_per_s")

    def __init__(self, limit_per_s: int) -> None:
        if limit_per_s < 1:
            raise ValueError(f"rate_limit_per_s must be >= 1, got {limit_per_s}")
        self.limit_per_s = limit_per_s
        self._accepted: collections.deque[float] = collections.deque()

    def try_acquire(self, now: float) -> float:
        """Accept a request at ``now`` and return 0.0, or refuse it and return the wait (> 0)
        until a slot frees. Refused requests do not count against the window."""
        self._expire(now)
        if len(self._accepted) < self.limit_per_s:
            self._accepted.append(now)
            return 0.0
        return self._accepted[0] + _WINDOW_S - now

    def remaining(self, now: float) -> int:
        """How many more requests the window accepts at ``now``."""
        self._expire(now)
        return self.limit_per_s - len(self._accepted)

    def _expire(self, now: float) -> None:
        horizon = now - _WINDOW_S
        while self._accepted and self._accepted[0] <= horizon:
            self._accepted.popleft()


def retry_after_header(wait_s: float, now: float, style: RetryAfterStyle) -> str | None:
    """The ``Retry-After`` value telling a client to wait ``wait_s`` from ``now``.

    ``seconds`` rounds up to a whole number of at least 1 (waiting less could still be
    refused); ``http-date`` names the first whole second at or after the slot frees;
    ``none`` sends no header.
    """
    if style == "seconds":
        return str(max(1, math.ceil(wait_s)))
    if style == "http-date":
        return email.utils.formatdate(math.ceil(now + wait_s), usegmt=True)
    return None
