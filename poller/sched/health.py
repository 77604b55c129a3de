"""Health of the API: telling a fault from a rate signal, and riding out outages.

Pure and synchronous, like the rest of the core: time arrives as ``now``. One
:class:`Health` watches one scope (an organisation, or a key whose organisation is
not known yet, or the whole API for reporting) and sees every request's outcome:

- an *answer*: anything the API meant to say (2xx, 404, 401/403, 429, ...);
- a *fault*: a 5xx, a connection that failed or was reset, a timeout, a body that
  is not a payload. A fault is a fault of that one request: the job retries it
  after its own backoff, and the organisation's pace is left alone.

**503 as a rate signal.** A 503 counts as a sign of load, and is handled like a
429 (the organisation pauses and slows down), only on evidence that 503s track
load: over the last ``WINDOW_S`` seconds at least ``LOAD_MIN_503`` of the scope's
answers were 503, and their share is at least ``LOAD_SHARE`` and at least
``LOAD_BACKGROUND_FACTOR`` times their long-run share (the background that a
healthy API has: deploys, cold starts, load balancers).

**Outages: a circuit breaker.** ``TRIP_STREAK`` faults in a row, with no answer
between for ``TRIP_SPAN_S`` at least, mean the scope is *down*: its jobs wait, and
one probe at a time goes out, the next ``PROBE_FIRST_S`` after a failed one,
doubling up to ``PROBE_MAX_S``. Faults while down count against no job. The first
answer brings the scope back: it *recovers* at the steady rate it had before the
trouble, doubling every second (no thundering herd), and is itself again after
``RAMP_S``.

States, as reported: ``ok``; ``throttled`` (a 429, or a 503 taken as one, in the
last ``WINDOW_S``); ``degraded`` (at least ``DEGRADED_MIN`` faults, and
``DEGRADED_SHARE`` of the requests, in the last ``WINDOW_S``); ``down`` (probing);
``recovering`` (ramping back up).
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Final

from ..events import HealthStats

__all__ = [
    "DEGRADED_MIN",
    "DEGRADED_SHARE",
    "LOAD_BACKGROUND_FACTOR",
    "LOAD_MIN_503",
    "LOAD_SHARE",
    "PROBE_FIRST_S",
    "PROBE_MAX_S",
    "RAMP_S",
    "TRIP_SPAN_S",
    "TRIP_STREAK",
    "WINDOW_S",
    "Health",
    "HealthState",
    "Notice",
]

WINDOW_S: Final = 10
"""Seconds of outcomes that the shares (faults, 503s) are taken over."""
TRIP_STREAK: Final = 8
"""Faults in a row, with no answer between, that mean the scope is down..."""
TRIP_SPAN_S: Final = 1.0
"""...once they span this long: a burst of faults of a few jobs is not an outage."""
PROBE_FIRST_S: Final = 0.5
"""While down, the first probe goes this long after the trip; each failed one doubles it."""
PROBE_MAX_S: Final = 10.0
"""The longest gap between probes."""
RAMP_S: Final = 5.0
"""After an outage, the rate doubles every second from the steady one for this long."""
DEGRADED_SHARE: Final = 0.1
DEGRADED_MIN: Final = 10
LOAD_SHARE: Final = 0.2
LOAD_MIN_503: Final = 5
LOAD_BACKGROUND_FACTOR: Final = 3.0
_BACKGROUND_TAU_S: Final = 600.0  # the long-run 503 share forgets over ten minutes
_DECAY: Final = math.exp(-1.0 / _BACKGROUND_TAU_S)
_MIN_STEADY_PER_S: Final = 1.0
_STEADY_S: Final = 5  # seconds before an outage that tell its steady rate
_RAMP_BURST_S: Final = 0.1  # the ramp banks at most this many seconds' worth
_QUIET_S: Final = 60.0  # degraded / throttled / their end: reported at most this often
_REMIND_S: Final = 300.0  # a scope still down is reported again this often


class HealthState(StrEnum):
    """How a scope of the API is doing, as :meth:`poller.Poller.stats` reports it."""

    OK = "ok"
    THROTTLED = "throttled"
    DEGRADED = "degraded"
    DOWN = "down"
    RECOVERING = "recovering"


class Notice:
    """A change of a scope's state worth telling a person (the engine logs it)."""

    __slots__ = ("errors", "last_error", "previous", "scope", "share", "since", "state", "streak")

    def __init__(
        self,
        *,
        scope: str,
        state: HealthState,
        previous: HealthState,
        since: float,
        errors: dict[str, int],
        share: float,
        streak: int,
        last_error: str,
    ) -> None:
        self.scope = scope
        self.last_error = last_error  # the text of the last fault
        self.state = state
        self.previous = previous
        self.since = since  # when the trouble began (its first fault), or the change
        self.errors = errors  # faults by kind since then
        self.share = share  # the share of requests that failed over the last window
        self.streak = streak  # faults in a row at the time

    def __repr__(self) -> str:
        return f"<Notice {self.scope} {self.previous.value} -> {self.state.value}>"


class Health:
    """The health of one scope (see the module docstring).

    Args:
        scope: what it watches, for notices (an organisation ID, ``"api"``, ...).
        breaker: whether faults in a row trip it (the whole API's is only reported:
            its state is set from its organisations').
    """

    __slots__ = (
        "_bg_503",
        "_bg_all",
        "_bins",
        "_breaker",
        "_epoch",
        "_errors",
        "_last_notice",
        "_probe_gap_s",
        "_ramp_from",
        "_ramp_tokens",
        "_ramp_updated",
        "_reported",
        "_throttled_at",
        "_trouble_at",
        "last_error",
        "next_probe_at",
        "probe",
        "scope",
        "state",
        "state_since",
        "steady_per_s",
        "streak",
        "streak_since",
    )

    def __init__(self, scope: str, *, breaker: bool = True) -> None:
        self.scope = scope
        self._breaker = breaker
        self.state = HealthState.OK  # the breaker's own state: OK, DOWN or RECOVERING
        self.state_since = 0.0
        self.streak = 0
        self.streak_since = 0.0  # when the first fault of the streak came
        # Per second of the window: [answers, faults, 503s]; _epoch is the current second.
        self._bins = [[0, 0, 0] for _ in range(WINDOW_S)]
        self._epoch = 0
        self._bg_all = 0.0
        self._bg_503 = 0.0
        self._errors: dict[str, int] = {}
        self._trouble_at: float | None = None
        self.last_error = ""  # the text of the last fault
        self._throttled_at = -math.inf
        self._reported = HealthState.OK
        self._last_notice = -math.inf
        self.probe: object | None = None
        self.next_probe_at = 0.0
        self._probe_gap_s = PROBE_FIRST_S
        self.steady_per_s = _MIN_STEADY_PER_S
        self._ramp_from = 0.0
        self._ramp_tokens = 0.0
        self._ramp_updated = 0.0

    def __repr__(self) -> str:
        return f"<Health {self.scope} {self.state.value} streak={self.streak}>"

    # -- outcomes ------------------------------------------------------------------

    def answered(self, now: float) -> None:
        """A request got an answer (any status but a 5xx). Runs on every poll."""
        self.streak = 0
        epoch = int(now)
        if epoch != self._epoch:
            self._roll(epoch)
        self._bins[epoch % WINDOW_S][0] += 1

    def throttled(self, now: float) -> None:
        """The API asked to slow down (a 429, or a 503 taken as a rate signal), after the
        request was recorded as an answer or a fault."""
        self._throttled_at = now

    def fault(self, now: float, kind: str, status: int | None, message: str = "") -> bool:
        """A request failed: ``kind`` names the error, ``status`` is its HTTP status (None
        without one), ``message`` is its text (free of secrets, as every error's is).
        Returns True when this fault tripped the breaker."""
        self.last_error = message or kind
        self.streak += 1
        if self.streak == 1:
            self.streak_since = now
        epoch = int(now)
        if epoch != self._epoch:
            self._roll(epoch)
        counts = self._bins[epoch % WINDOW_S]
        counts[1] += 1
        if status == 503:
            counts[2] += 1
        if self._trouble_at is None:
            self._trouble_at = now
        self._errors[kind] = self._errors.get(kind, 0) + 1
        if (
            self._breaker
            and self.streak >= TRIP_STREAK
            and now - self.streak_since >= TRIP_SPAN_S
            and self.state is not HealthState.DOWN
        ):
            self._trip(now)
            return True
        return False

    def load_signal(self, now: float) -> bool:
        """Whether 503s track load now (see the module docstring)."""
        self._roll(int(now))
        answers = faults = unavailable = 0
        for counts in self._bins:
            answers += counts[0]
            faults += counts[1]
            unavailable += counts[2]
        if unavailable < LOAD_MIN_503:
            return False
        share = unavailable / (answers + faults)
        background = self._bg_503 / self._bg_all if self._bg_all else 0.0
        return share >= max(LOAD_SHARE, LOAD_BACKGROUND_FACTOR * background)

    def _roll(self, epoch: int) -> None:
        """Move the window on to the second ``epoch``; the seconds that leave it join the
        long-run background."""
        if epoch <= self._epoch:
            return
        if epoch - self._epoch >= 2 * WINDOW_S:
            # Long quiet (or the first outcome): fold the window in one go.
            for counts in self._bins:
                self._bg_all += counts[0] + counts[1]
                self._bg_503 += counts[2]
                counts[0] = counts[1] = counts[2] = 0
            factor = _DECAY ** (epoch - self._epoch) if self._epoch else 1.0
            self._bg_all *= factor
            self._bg_503 *= factor
        else:
            for step in range(1, min(epoch - self._epoch, WINDOW_S) + 1):
                counts = self._bins[(self._epoch + step) % WINDOW_S]
                self._bg_all = self._bg_all * _DECAY + counts[0] + counts[1]
                self._bg_503 = self._bg_503 * _DECAY + counts[2]
                counts[0] = counts[1] = counts[2] = 0
        self._epoch = epoch
        if (
            self.state is HealthState.OK
            and self._trouble_at is not None
            and not any(counts[1] for counts in self._bins)
        ):
            self._trouble_at = None  # a whole window without a fault: it is over
            self._errors = {}

    def _totals(self) -> tuple[int, int]:
        answers = faults = 0
        for counts in self._bins:
            answers += counts[0]
            faults += counts[1]
        return answers, faults

    # -- the breaker ---------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True while requests go freely (not down, not recovering)."""
        return self.state is HealthState.OK

    def _trip(self, now: float) -> None:
        # The steady rate, to come back at: requests a second over the last _STEADY_S
        # seconds before the streak began (its own retries are not the normal pace): the
        # whole seconds before, and the answers of the second it began in.
        began = self.streak_since
        first = int(began)
        seconds = range(max(first - _STEADY_S + 1, self._epoch - WINDOW_S + 1), first)
        total = sum(self._bins[s % WINDOW_S][0] + self._bins[s % WINDOW_S][1] for s in seconds)
        if first > self._epoch - WINDOW_S:
            total += self._bins[first % WINDOW_S][0]
        span = len(seconds) + (began - first)
        self.steady_per_s = max(_MIN_STEADY_PER_S, total / span if span > 0.5 else 0.0)
        self.state = HealthState.DOWN
        self.state_since = now
        self.probe = None
        self._probe_gap_s = PROBE_FIRST_S
        self.next_probe_at = now + PROBE_FIRST_S

    def wait_s(self, now: float) -> float:
        """Seconds until the breaker lets the next request go (0.0: now)."""
        state = self.state
        if state is HealthState.DOWN:
            if self.probe is not None:
                return PROBE_MAX_S  # its outcome opens the way sooner (see landed)
            return max(0.0, self.next_probe_at - now)
        if state is HealthState.RECOVERING:
            return self._ramp_wait(now)
        return 0.0

    def sent(self, request: object) -> None:
        """A request went out with the breaker not closed: the probe, or a ramp request."""
        if self.state is HealthState.DOWN:
            self.probe = request
        elif self.state is HealthState.RECOVERING:
            self._ramp_tokens -= 1.0

    def landed(self, request: object, now: float, answered: bool) -> bool:
        """A request's outcome while the breaker is not closed, after :meth:`answered` or
        :meth:`fault` recorded it. Returns True when the breaker's wait got shorter (the
        probe ended, or the scope is back)."""
        if self.state is not HealthState.DOWN:
            return False
        if answered:
            self._recover(now)
            return True
        if request is self.probe:
            self.probe = None
            self._probe_gap_s = min(PROBE_MAX_S, self._probe_gap_s * 2.0)
            self.next_probe_at = now + self._probe_gap_s
            return True
        return False

    def probe_now(self, now: float) -> None:
        """Let the next probe go at once (the API just answered another scope)."""
        if self.state is HealthState.DOWN and self.probe is None:
            self.next_probe_at = min(self.next_probe_at, now)

    def _recover(self, now: float) -> None:
        self.state = HealthState.RECOVERING
        self.state_since = now
        self.probe = None
        self.streak = 0
        self._ramp_from = self._ramp_updated = now
        self._ramp_tokens = 0.0

    def _ramp_wait(self, now: float) -> float:
        elapsed = now - self._ramp_from
        if elapsed >= RAMP_S:
            self.state = HealthState.OK
            self.state_since = now
            return 0.0
        # The steady rate in the first second, twice that in the second, ... (the rate of
        # the second in progress, so the doubling never runs ahead of itself).
        rate = self.steady_per_s * 2.0 ** math.floor(elapsed)
        if now > self._ramp_updated:
            gained = (now - self._ramp_updated) * rate
            self._ramp_tokens = min(max(1.0, rate * _RAMP_BURST_S), self._ramp_tokens + gained)
            self._ramp_updated = now
        if self._ramp_tokens >= 1.0 - 1e-9:
            return 0.0
        return (1.0 - self._ramp_tokens) / rate

    def set_down(self, down: bool, now: float) -> None:
        """Set the state of a scope without a breaker (from the scopes it covers)."""
        if down and self.state is not HealthState.DOWN:
            self.state, self.state_since = HealthState.DOWN, now
        elif not down and self.state is HealthState.DOWN:
            self.state, self.state_since = HealthState.OK, now

    # -- reporting -----------------------------------------------------------------

    def reported(self, now: float) -> HealthState:
        """The state to report (see the module docstring)."""
        if self.state is HealthState.RECOVERING and now - self._ramp_from >= RAMP_S:
            self.state = HealthState.OK
            self.state_since = now
        if self.state is not HealthState.OK:
            return self.state
        if now - self._throttled_at < WINDOW_S:
            return HealthState.THROTTLED
        self._roll(int(now))
        answers, faults = self._totals()
        if faults >= DEGRADED_MIN and faults >= DEGRADED_SHARE * (answers + faults):
            return HealthState.DEGRADED
        return HealthState.OK

    def error_share(self, now: float) -> float:
        """The share of requests that failed over the last window (0.0 with none)."""
        self._roll(int(now))
        answers, faults = self._totals()
        return faults / (answers + faults) if answers + faults else 0.0

    def recent_errors(self) -> dict[str, int]:
        """Faults by kind since the current trouble began (empty once it is over)."""
        return dict(self._errors)

    @property
    def trouble_since(self) -> float | None:
        """When the current trouble began (its first fault); None when there is none."""
        return self._trouble_at

    def stats(self, now: float) -> HealthStats:
        """What :meth:`poller.Poller.stats` shows of this scope."""
        state = self.reported(now)
        return HealthStats(
            state=state.value,
            since=self._trouble_at,
            error_share=round(self.error_share(now), 4),
            recent_errors=dict(self._errors),
            streak=self.streak,
            last_error=self.last_error if self._trouble_at is not None else None,
        )

    def notice(self, now: float) -> Notice | None:
        """A :class:`Notice` if the reported state changed since the last one: going down
        and coming back at once, the rest at most once a minute, and a reminder every few
        minutes while down. None otherwise."""
        state = self.reported(now)
        previous = self._reported
        if state is previous:
            if state is HealthState.DOWN and now - self._last_notice >= _REMIND_S:
                return self._notice(state, previous, now)
            return None
        urgent = HealthState.DOWN in (state, previous)
        if not urgent and now - self._last_notice < _QUIET_S:
            return None
        return self._notice(state, previous, now)

    def _notice(self, state: HealthState, previous: HealthState, now: float) -> Notice:
        self._reported = state
        self._last_notice = now
        return Notice(
            scope=self.scope,
            state=state,
            previous=previous,
            since=self._trouble_at if self._trouble_at is not None else now,
            errors=dict(self._errors),
            share=self.error_share(now),
            streak=self.streak,
            last_error=self.last_error,
        )
