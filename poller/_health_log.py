"""Health notices as log lines: what is failing, how many times, since when.

The core says when a scope's state changes (``poller.sched.health.Notice``), at most once
a minute for the minor states; this turns each notice into one line on the
``poller`` logger: a warning when an organisation or the whole API fails, and when
it answers again; information for throttling and its end.
"""

from __future__ import annotations

import logging
import time

from .sched.health import HealthState, Notice

__all__ = ["describe_errors", "log_notice", "notice_text"]

log = logging.getLogger("poller")


def describe_errors(errors: dict[str, int], since: float | None) -> str:
    """``ConnectError x4, ServerError x1 since 12:03:11`` (the commonest first)."""
    kinds = ", ".join(
        f"{kind} x{count}" for kind, count in sorted(errors.items(), key=lambda kv: -kv[1])
    )
    if since is None:
        return kinds or "no error"
    return f"{kinds or 'no error'} since {time.strftime('%H:%M:%S', time.localtime(since))}"


def _what(scope: str) -> str:
    if scope == "api":
        return "the API"
    if scope.startswith("key "):
        return f"{scope} (its organisation not known yet)"
    return f"organisation {scope}"


def notice_text(notice: Notice, now: float) -> tuple[int, str]:
    """The level and the line of a notice."""
    what = _what(notice.scope)
    errors = describe_errors(notice.errors, notice.since)
    state, previous = notice.state, notice.previous
    if state is HealthState.DOWN:
        if notice.scope == "api":
            head = "API unreachable"
            tail = "no organisation answers; each is probed one request at a time"
        else:
            head = f"{what} is down"
            tail = "its jobs wait; one probe at a time until it answers"
        again = " (still)" if previous is HealthState.DOWN else ""
        last = f" (last: {notice.last_error})" if notice.last_error else ""
        return logging.WARNING, f"{head}{again}: {errors}{last}; {tail}"
    if previous is HealthState.DOWN:
        lasted = max(0.0, now - notice.since)
        return logging.WARNING, (
            f"{what} answers again after {lasted:.0f} s ({errors}); back to the normal pace, "
            "ramping up from the steady rate"
        )
    if state is HealthState.DEGRADED:
        return logging.WARNING, (
            f"{what} is degraded: {notice.share:.0%} of requests failed in the last 10 s "
            f"({errors}); failed requests are retried per job"
        )
    if state is HealthState.THROTTLED:
        return logging.INFO, f"{what}: the server asked to slow down; its rate is lowered"
    if previous is HealthState.RECOVERING:
        return logging.DEBUG, f"{what}: back to the normal pace"
    return logging.INFO, f"{what}: back to normal (was {previous.value})"


def log_notice(notice: Notice, now: float | None = None) -> None:
    """Log one notice on the ``poller`` logger."""
    level, text = notice_text(notice, time.time() if now is None else now)
    log.log(level, "%s", text)
