"""Request timeouts with one shared timer instead of one timer per request.

aiohttp's own ``ClientTimeout(total=...)`` arms a loop timer for every request and
wraps each read in a timer context; at thousands of requests a second that is about a
tenth of the client's CPU (measured: ``benchmarks/throughput.py``). Here a request
only notes when it started. One periodic check, armed only while requests are under
way, cancels the task of any request older than the timeout, and the request turns
that cancellation back into a timeout, the way ``asyncio.timeout`` does (cancel, then
``uncancel``). A request is cut between ``timeout_s`` and ``timeout_s * (1 +
1 / CHECKS_PER_TIMEOUT)`` after it started.
"""

from __future__ import annotations

import asyncio
from time import monotonic
from typing import Final

__all__ = ["CHECKS_PER_TIMEOUT", "Deadlines"]

CHECKS_PER_TIMEOUT: Final = 8


class Deadlines:
    """The requests under way, by the task that awaits each, and the check that ends
    the ones past ``timeout_s``. A task awaits one request at a time."""

    __slots__ = ("_closed", "_expired", "_period_s", "_started", "_timer", "timeout_s")

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._period_s = timeout_s / CHECKS_PER_TIMEOUT
        # When each request started, and how many cancellations its task had pending then
        # (a request made while its task is being cancelled, in clean-up code, still
        # times out as a timeout).
        self._started: dict[asyncio.Task[object], tuple[float, int]] = {}
        self._expired: dict[asyncio.Task[object], int] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    def __len__(self) -> int:
        return len(self._started)

    def start(self, task: asyncio.Task[object]) -> None:
        """``task`` starts a request now."""
        self._started[task] = (monotonic(), task.cancelling())
        if self._timer is None and not self._closed:
            self._timer = task.get_loop().call_later(self._period_s, self._check)

    def finish(self, task: asyncio.Task[object]) -> None:
        """``task``'s request is over, however it ended."""
        self._started.pop(task, None)
        if self._expired.pop(task, None) is not None:
            task.uncancel()  # cut, but the cancellation never reached the request

    def absorb(self, task: asyncio.Task[object]) -> bool:
        """Whether a ``CancelledError`` raised in ``task``'s request is this timeout's
        doing alone; if so it is undone and the request should raise a timeout. False: the
        task was cancelled by someone else too (or only), and must stay cancelled."""
        baseline = self._expired.pop(task, None)
        if baseline is None:
            return False
        return task.uncancel() <= baseline

    def _check(self) -> None:
        self._timer = None
        now = monotonic()
        loop: asyncio.AbstractEventLoop | None = None
        for task, (started, cancelling) in list(self._started.items()):
            if now - started >= self.timeout_s:
                del self._started[task]
                if not task.done():
                    self._expired[task] = cancelling
                    task.cancel()
            elif loop is None:
                loop = task.get_loop()
        if loop is not None:
            self._timer = loop.call_later(self._period_s, self._check)

    def close(self) -> None:
        """Stop the check for good (requests still under way are no longer timed)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
