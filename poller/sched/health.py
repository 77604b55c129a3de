"""Health of the API: telling a fault from a rate signal, and riding out outages.

Pure and synchronous, like the rest of the core: time arrives as ``now``. One
:class:`Health` watches one scope (an organisation, or a key whose organisation is
not known yet, or the whole API) and sees every request's outcome:

- an *answer*: anything the API meant to say (2xx, 404, 401/403, 429, ...);
- a *fault*: a 5xx, a connection that failed or was reset, a timeout, a body that
  is not a payload. A fault is a fault of that one request: the job retries it
  after its own backoff, and the organisation's pace is left alone.

**503 as a rate signal.** A 503 counts as a sign of load, and is handled like a
429 (the organisation pauses and slows down), only on evidence that 503s track
load: over the last ``WINDOW_S`` seconds at least ``LOAD_MIN_503`` of the scope's
answers were 503, and their share is at least ``LOAD_SHARE`` and at least
``LOAD_BACKGROUND_FACTOR`` times their long-run share (the background that a
healthy API has: deploys, cold starts, load balancers). One such episode cuts the
rate once: the next cut takes another ``WINDOW_S`` of 503s. Never while the scope
is down (an outage is no load signal), and the background does not learn from an
episode or an outage.

**Outages: a circuit breaker.** ``TRIP_STREAK`` faults in a row, of two jobs at
least, with no answer between for ``TRIP_SPAN_S`` or more, mean the scope is
*down*: its jobs wait, and one probe at a time goes out, the next
``PROBE_FIRST_S`` after a failed one, doubling up to ``PROBE_MAX_S``. The whole
API's scope has no streak of its own: the scheduler trips it when every
organisation still polling is down, and then it gates them all (one probe at a
time for the base URL). Faults while down count against no job. The first
answer brings the scope back: it *recovers* at the steady rate it had before the
trouble for a second, then at twice that until the jobs that waited are caught up
(no thundering herd), and is itself again.

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
    "RAMP_MAX_S",
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
"""Faults in a row, of two jobs at least, with no answer between, that mean the scope
is down..."""
TRIP_SPAN_S: Final = 1.0
"""...once they span this long: a burst of faults of a few jobs is not an outage."""
PROBE_FIRST_S: Final = 0.5
"""While down, the first probe goes this long after the trip; each failed one doubles it."""
PROBE_MAX_S: Final = 10.0
"""The longest gap between probes."""
RAMP_MAX_S: Final = 60.0
"""A recovery that has not caught up after this long ends anyway (the budget rules)."""
DEGRADED_SHARE: Final = 0.1
DEGRADED_MIN: Final = 10
LOAD_SHARE: Final = 0.2
LOAD_MIN_503: Final = 5
LOAD_BACKGROUND_FACTOR: Final = 3.0
_BACKGROUND_TAU_S: Final = 600.0  # the long-run 503 share forgets over ten minutes
_DECAY: Final = math.exp(-1.0 / _BACKGROUND_TAU_S)
_MIN_STEADY_PER_S: Final = 1.0
_STEADY_S: Final = 5  # seconds before an outage that tell its steady rate
_CATCH_UP: Final = 2.0  # after its first second, a recovery goes at twice the steady rate
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
        self.state = state
        self.previous = previous
        self.since = since  # when the trouble began (or the change, if no trouble)
        self.errors = errors  # faults by kind since then
        self.share = share  # the share of requests that failed over the last window
        self.streak = streak  # faults in a row at the time
        self.last_error = last_error  # the text of the last fault

    def __repr__(self) -> str:
        return f"<Notice {self.scope} {self.previous.value} -> {self.state.value}>"


class _Second:
    """The outcomes of one second of the window."""

    __slots__ = ("answers", "faults", "kinds", "unavailable")

    def __init__(self) -> None:
        self.answers = 0
        self.faults = 0
        self.unavailable = 0  # 503s
        self.kinds: dict[str, int] | None = None  # faults by kind (made at the first)

    def clear(self) -> None:
        self.answers = self.faults = self.unavailable = 0
        self.kinds = None


class Health:
    """The health of one scope (see the module docstring).

    Args:
        scope: what it watches, for notices (an organisation ID, ``"api"``, ...).
        breaker: whether faults in a row trip it by themselves (the whole API's does
            not: the scheduler trips it from its organisations').
    """

    __slots__ = (
        "_bg_503",
        "_bg_all",
        "_breaker",
        "_epoch",
        "_last_notice",
        "_load_cut_at",
        "_outage_errors",
        "_probe_gap_s",
        "_ramp_from",
        "_ramp_tokens",
        "_ramp_updated",
        "_reported",
        "_seconds",
        "_streak_first",
        "_streak_kinds",
        "_streak_many",
        "_throttled_at",
        "down_since",
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
        self._streak_first: object | None = None  # the job of that first fault
        self._streak_many = False  # whether another job failed in the streak since
        self._streak_kinds: dict[str, int] = {}  # the streak's faults by kind
        self._seconds = [_Second() for _ in range(WINDOW_S)]
        self._epoch = 0  # the second the newest entry of _seconds counts
        self._bg_all = 0.0
        self._bg_503 = 0.0
        self._throttled_at = -math.inf
        self._load_cut_at = -math.inf
        self.down_since = 0.0  # when the trouble that tripped the breaker began
        self._outage_errors: dict[str, int] = {}  # faults by kind since then
        self.last_error = ""  # the text of the last fault
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
        self._seconds[epoch % WINDOW_S].answers += 1

    def throttled(self, now: float) -> None:
        """The API asked to slow down (a 429, or a 503 taken as a rate signal), after the
        request was recorded as an answer or a fault."""
        self._throttled_at = now

    def fault(
        self,
        now: float,
        kind: str,
        status: int | None,
        message: str = "",
        request: object = None,
    ) -> bool:
        """A request failed: ``kind`` names the error, ``status`` is its HTTP status (None
        without one), ``message`` its text (free of secrets, as every error's is),
        ``request`` what it was for (its job). Returns True when this fault tripped the
        breaker."""
        self.last_error = message or kind
        self.streak += 1
        if self.streak == 1:
            self.streak_since = now
            self._streak_first = request
            self._streak_many = False
            self._streak_kinds = {}
        elif request is not self._streak_first:
            self._streak_many = True
        self._streak_kinds[kind] = self._streak_kinds.get(kind, 0) + 1
        epoch = int(now)
        if epoch != self._epoch:
            self._roll(epoch)
        second = self._seconds[epoch % WINDOW_S]
        second.faults += 1
        if status == 503:
            second.unavailable += 1
        kinds = second.kinds
        if kinds is None:
            kinds = second.kinds = {}
        kinds[kind] = kinds.get(kind, 0) + 1
        if self.state is not HealthState.OK:
            self._outage_errors[kind] = self._outage_errors.get(kind, 0) + 1
        if (
            self._breaker
            and self.state is not HealthState.DOWN
            and self.streak >= TRIP_STREAK
            and self._streak_many
            and now - self.streak_since >= TRIP_SPAN_S
        ):
            self.trip(now)
            return True
        return False

    def load_signal(self, now: float) -> bool:
        """Whether a 503 now is a rate signal (see the module docstring): 503s track load,
        the scope is not down or recovering, and no episode cut in the last window. Say
        :meth:`load_cut` when the rate was cut on it."""
        if self.state is not HealthState.OK or now - self._load_cut_at < WINDOW_S:
            return False
        self._roll(int(now))
        answers = faults = unavailable = 0
        for second in self._seconds:
            answers += second.answers
            faults += second.faults
            unavailable += second.unavailable
        if unavailable < LOAD_MIN_503:
            return False
        share = unavailable / (answers + faults)
        background = self._bg_503 / self._bg_all if self._bg_all else 0.0
        return share >= max(LOAD_SHARE, LOAD_BACKGROUND_FACTOR * background)

    def load_cut(self, now: float) -> None:
        """The rate was cut on a load signal: the episode's one cut."""
        self._load_cut_at = now
        self._throttled_at = now

    def _roll(self, epoch: int) -> None:
        """Move the window on to the second ``epoch``; the seconds that leave it join the
        long-run 503 background, unless it was an outage or a load episode."""
        if epoch <= self._epoch:
            return
        learn = self.state is HealthState.OK
        gone = min(epoch - self._epoch, WINDOW_S)
        for step in range(1, gone + 1):
            second = self._seconds[(self._epoch + step) % WINDOW_S]
            total = second.answers + second.faults
            # A second of load (503s at the load share or more) is no background.
            if learn and second.unavailable < LOAD_SHARE * total:
                self._bg_all = self._bg_all * _DECAY + total
                self._bg_503 = self._bg_503 * _DECAY + second.unavailable
            second.clear()
        if learn and epoch - self._epoch > WINDOW_S:  # quiet seconds fade the background
            factor = _DECAY ** (epoch - self._epoch - WINDOW_S)
            self._bg_all *= factor
            self._bg_503 *= factor
        self._epoch = epoch

    def _totals(self) -> tuple[int, int]:
        answers = faults = 0
        for second in self._seconds:
            answers += second.answers
            faults += second.faults
        return answers, faults

    def active(self, now: float) -> bool:
        """Whether any request of this scope ended in the last window."""
        self._roll(int(now))
        answers, faults = self._totals()
        return bool(answers or faults)

    # -- the breaker ---------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True while requests go freely (not down, not recovering)."""
        return self.state is HealthState.OK

    def trip(self, now: float) -> None:
        """The scope is down (its own streak said so, or, for the whole API, the
        scheduler did): from now on one probe at a time."""
        # The steady rate, to come back at: requests a second over the last _STEADY_S
        # seconds before the streak began (its own retries are not the normal pace): the
        # whole seconds before, and the answers of the second it began in.
        began = self.streak_since if self.streak else now
        first = int(began)
        seconds = range(max(first - _STEADY_S + 1, self._epoch - WINDOW_S + 1), first)
        total = sum(
            self._seconds[s % WINDOW_S].answers + self._seconds[s % WINDOW_S].faults
            for s in seconds
        )
        if first > self._epoch - WINDOW_S:
            total += self._seconds[first % WINDOW_S].answers
        span = len(seconds) + (began - first)
        self.steady_per_s = max(_MIN_STEADY_PER_S, total / span if span > 0.5 else 0.0)
        self.state = HealthState.DOWN
        self.state_since = now
        self.down_since = began
        # The outage's faults: its streak's (not the window's trickle of faults before it).
        self._outage_errors = dict(self._streak_kinds) if self.streak else {}
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
            self.start_ramp(now, self.steady_per_s)
            return True
        if request is self.probe:
            self.probe = None
            self._probe_gap_s = min(PROBE_MAX_S, self._probe_gap_s * 2.0)
            self.next_probe_at = now + self._probe_gap_s
            return True
        return False

    def release(self, request: object) -> bool:
        """``request`` will never land (its job was untracked or ended): if it was the
        probe, the next may go. Returns True if it was."""
        if self.probe is None or request is not self.probe:
            return False
        self.probe = None
        return True

    def probe_now(self, now: float) -> None:
        """Let the next probe go at once (the API just answered another scope)."""
        if self.state is HealthState.DOWN and self.probe is None:
            self.next_probe_at = min(self.next_probe_at, now)

    def start_ramp(self, now: float, steady_per_s: float) -> None:
        """Come back: at ``steady_per_s`` for a second, then at twice that until caught
        up (see :meth:`wait_s`)."""
        self.state = HealthState.RECOVERING
        self.state_since = now
        self.steady_per_s = max(_MIN_STEADY_PER_S, steady_per_s)
        self.probe = None
        self.streak = 0
        self._ramp_from = self._ramp_updated = now
        self._ramp_tokens = 0.0

    def _ramp_wait(self, now: float) -> float:
        elapsed = now - self._ramp_from
        rate = self.steady_per_s * (1.0 if elapsed < 1.0 else _CATCH_UP)
        cap = max(1.0, rate * _RAMP_BURST_S)
        if now > self._ramp_updated:
            self._ramp_tokens = min(cap, self._ramp_tokens + (now - self._ramp_updated) * rate)
            self._ramp_updated = now
        # Caught up: the tokens piled up to the cap since the last request, so the jobs
        # no longer come due faster than the ramp lets them go.
        if (elapsed >= 1.0 and self._ramp_tokens >= cap - 1e-9) or elapsed >= RAMP_MAX_S:
            self.state = HealthState.OK
            self.state_since = now
            return 0.0
        if self._ramp_tokens >= 1.0 - 1e-9:
            return 0.0
        return (1.0 - self._ramp_tokens) / rate

    def reset(self, now: float) -> None:
        """Forget an outage nobody is waiting on any more (no job is left to poll)."""
        if self.state is not HealthState.OK:
            self.state, self.state_since, self.probe = HealthState.OK, now, None

    # -- reporting -----------------------------------------------------------------

    def reported(self, now: float) -> HealthState:
        """The state to report (see the module docstring)."""
        if self.state is HealthState.RECOVERING and now - self._ramp_from >= RAMP_MAX_S:
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

    def _window_kinds(self) -> dict[str, int]:
        kinds: dict[str, int] = {}
        for second in self._seconds:
            if second.kinds:
                for kind, count in second.kinds.items():
                    kinds[kind] = kinds.get(kind, 0) + count
        return kinds

    def recent_errors(self, now: float) -> dict[str, int]:
        """Faults by kind: since the outage began while down or recovering, else over the
        last window."""
        if self.state is not HealthState.OK:
            return dict(self._outage_errors)
        self._roll(int(now))
        return self._window_kinds()

    def trouble_since(self, now: float) -> float | None:
        """When the current trouble began: the outage's first fault while down or
        recovering, else the oldest second of the window with a fault; None without."""
        if self.state is not HealthState.OK:
            return self.down_since
        self._roll(int(now))
        for age in range(WINDOW_S - 1, -1, -1):
            if self._seconds[(self._epoch - age) % WINDOW_S].faults:
                return float(self._epoch - age)
        return None

    def stats(self, now: float) -> HealthStats:
        """What :meth:`poller.Poller.stats` shows of this scope."""
        state = self.reported(now)
        since = self.trouble_since(now)
        return HealthStats(
            state=state.value,
            since=since,
            error_share=round(self.error_share(now), 4),
            recent_errors=self.recent_errors(now),
            streak=self.streak,
            last_error=self.last_error if since is not None else None,
        )

    def quiet(self, now: float) -> bool:
        """Nothing to report, now or soon: closed, reported ``ok``, no fault in the window."""
        return (
            self.state is HealthState.OK
            and self._reported is HealthState.OK
            and self.trouble_since(now) is None
            and now - self._throttled_at >= WINDOW_S
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
        if previous is HealthState.RECOVERING and state is not HealthState.DOWN:
            self._reported = state  # the end of a recovery: nothing to tell
            return None
        urgent = HealthState.DOWN in (state, previous)
        if not urgent and now - self._last_notice < _QUIET_S:
            return None
        return self._notice(state, previous, now)

    def sync_reported(self, now: float) -> None:
        """Take the current state as told (what happened was said in another notice)."""
        state = self.reported(now)
        if state is not HealthState.DOWN:
            self._reported = state

    def _notice(self, state: HealthState, previous: HealthState, now: float) -> Notice:
        self._reported = state
        self._last_notice = now
        since = self.trouble_since(now)
        if previous is HealthState.DOWN and state is not HealthState.DOWN:
            since = self.down_since
        return Notice(
            scope=self.scope,
            state=state,
            previous=previous,
            since=since if since is not None else now,
            errors=self.recent_errors(now)
            if state is not HealthState.RECOVERING
            else dict(self._outage_errors),
            share=self.error_share(now),
            streak=self.streak,
            last_error=self.last_error,
        )
