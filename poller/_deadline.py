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

    __slots__ = ("_expired", "_period_s", "_started", "_timer", "timeout_s")

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._period_s = timeout_s / CHECKS_PER_TIMEOUT
        self._started: dict[asyncio.Task[object], float] = {}
        self._expired: set[asyncio.Task[object]] = set()
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._started)

    def start(self, task: asyncio.Task[object]) -> None:
        """``task`` starts a request now."""
        self._started[task] = monotonic()
        if self._timer is None:
            self._timer = task.get_loop().call_later(self._period_s, self._check)

    def finish(self, task: asyncio.Task[object]) -> None:
        """``task``'s request is over, however it ended."""
        self._started.pop(task, None)
        if task in self._expired:  # cut, but the cancellation never reached the request
            self._expired.discard(task)
            task.uncancel()

    def absorb(self, task: asyncio.Task[object]) -> bool:
        """Whether a ``CancelledError`` raised in ``task``'s request is this timeout's
        doing alone; if so it is undone and the request should raise a timeout. False: the
        task was cancelled by someone else too (or only), and must stay cancelled."""
        if task not in self._expired:
            return False
        self._expired.discard(task)
        return task.uncancel() == 0

    def _check(self) -> None:
        self._timer = None
        now = monotonic()
        loop: asyncio.AbstractEventLoop | None = None
        for task, started in list(self._started.items()):
            if now - started >= self.timeout_s:
                del self._started[task]
                if not task.done():
                    self._expired.add(task)
                    task.cancel()
            elif loop is None:
                loop = task.get_loop()
        if loop is not None:
            self._timer = loop.call_later(self._period_s, self._check)

    def close(self) -> None:
        """Stop the check (requests still under way are no longer timed)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
