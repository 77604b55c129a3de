"""Transition callbacks: sync ones inline, async ones on a few ordered lanes.

A synchronous callback runs inline when the transition is delivered: keep it
short, it holds up the engine while it runs. An asynchronous callback runs on
one of ``lanes`` tasks, chosen by job ID, so callbacks of one job run one after
another in transition order while different jobs' callbacks run concurrently,
at most ``lanes`` at a time. Each lane buffers up to ``lane_capacity``
invocations; beyond that an invocation is dropped and counted
(``callbacks_dropped``) rather than letting memory grow or the engine stall, and
logged at ERROR: the first drop, then a summary at most once a minute.
A callback that raises is logged and counted (``callback_errors``); it never
stops the engine or the other callbacks.

A callback gets the events delivered after it is registered. One registered late
can first be handed earlier events (``replay``), delivered to it alone within
the registration, so none can slip in between: :class:`LatestTransitions` keeps
the latest transition of every job for that (``BlockingPoller`` uses it, its
callbacks being registered from another thread while the engine runs).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import threading
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import anyio
from anyio.abc import TaskGroup

from .events import Event, Transition
from .models import Status

__all__ = [
    "CallbackHandle",
    "CallbackRunner",
    "EventCallback",
    "LatestTransitions",
    "TransitionCallback",
]

log = logging.getLogger("poller.callbacks")
_DROP_LOG_EVERY_S = 60.0
_SWEEP_AT_LEAST = 1024  # LatestTransitions: fewer jobs than this are never swept

TransitionCallback = Callable[[Transition], None] | Callable[[Transition], Awaitable[None]]
"""A callback for transitions: sync, or async."""
EventCallback = Callable[[Event], None] | Callable[[Event], Awaitable[None]]
"""A callback for transitions and tracking failures (``include_failures=True``)."""


def _is_async(callback: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(callback) or inspect.iscoroutinefunction(
        getattr(callback, "__call__", None)  # noqa: B004 - async callable objects
    )


def _being_cancelled() -> bool:
    """Whether the current task has been asked to stop (as opposed to merely seeing a
    CancelledError raised by something it awaited)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class CallbackHandle:
    """Returned by ``Poller.on_transition``; :meth:`remove` unregisters the callback.
    Also a context manager that removes it on exit."""

    __slots__ = ("_callback", "_failures", "_runner", "_statuses", "is_async")

    def __init__(
        self,
        runner: CallbackRunner,
        callback: TransitionCallback | EventCallback,
        statuses: frozenset[Status] | None,
        include_failures: bool,
    ) -> None:
        self._runner = runner
        self._callback: Callable[[Any], Any] = callback
        self._statuses = statuses
        self._failures = include_failures
        self.is_async = _is_async(callback)

    def wants(self, event: Event) -> bool:
        """Whether the callback takes ``event``: a transition its status filter accepts,
        or a tracking failure when it asked for those."""
        if isinstance(event, Transition):
            return self._statuses is None or event.current in self._statuses
        return self._failures

    def remove(self) -> None:
        """Unregister the callback (idempotent). Invocations already queued still run."""
        self._runner.remove(self)

    def __enter__(self) -> CallbackHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        name = getattr(self._callback, "__qualname__", type(self._callback).__name__)
        return f"<CallbackHandle {name}>"


class _Lane:
    __slots__ = ("queue", "waiter")

    def __init__(self) -> None:
        self.queue: deque[tuple[CallbackHandle, Event]] = deque()
        self.waiter: asyncio.Future[None] | None = None


class CallbackRunner:
    """Holds the registered callbacks and runs them (see the module docstring)."""

    def __init__(self, *, lanes: int = 16, lane_capacity: int = 10_000) -> None:
        # Both checked as the engine's settings (PollerOptions): >= 1.
        # Replaced, never changed in place: a callback that adds or removes one while
        # dispatch() runs must not make it skip (or repeat) another. The lock is for
        # BlockingPoller, whose handles may be removed from another thread.
        self._handles: tuple[CallbackHandle, ...] = ()
        self._handles_lock = threading.Lock()
        self._lanes = [_Lane() for _ in range(lanes)]
        self._lane_capacity = lane_capacity
        self._pending = 0  # queued or running async invocations
        self._idle = asyncio.Event()
        self._idle.set()
        self.errors = 0
        self.dropped = 0
        self._unreported = 0
        self._reported_at = -math.inf

    def add(
        self,
        callback: TransitionCallback | EventCallback,
        statuses: Iterable[Status | str] | None,
        include_failures: bool = False,
        *,
        replay: Iterable[Event] = (),
    ) -> CallbackHandle:
        """Register ``callback`` for transitions to ``statuses`` (all when None), and for
        tracking failures too when ``include_failures``.

        ``replay``: events delivered before, to hand to this callback alone (those it
        wants, in order) before any later one: a sync callback gets them before this
        returns, an async one has them queued first on their jobs' lanes. Call this in
        the engine's thread, between two deliveries, so no event is missed or repeated.
        """
        if not callable(callback):
            raise TypeError("callback must be callable")
        wanted = frozenset(Status(s) for s in statuses) if statuses is not None else None
        handle = CallbackHandle(self, callback, wanted, include_failures)
        with self._handles_lock:
            self._handles = (*self._handles, handle)
        for event in replay:
            if handle.wants(event):
                self._deliver(handle, event)
        return handle

    def remove(self, handle: CallbackHandle) -> None:
        """Unregister ``handle`` (idempotent; from any thread)."""
        with self._handles_lock:
            self._handles = tuple(h for h in self._handles if h is not handle)

    def __len__(self) -> int:
        return len(self._handles)

    def dispatch(self, event: Event) -> None:
        """Run sync callbacks now and queue async ones on the job's lane."""
        if not self._handles:
            return
        lane: _Lane | None = None
        for handle in self._handles:
            if not handle.wants(event):
                continue
            if not handle.is_async:
                self._run_sync(handle, event)
                continue
            if lane is None:
                lane = self._lane_of(event)
            self._queue(lane, handle, event)

    def _deliver(self, handle: CallbackHandle, event: Event) -> None:
        """Deliver one event to one callback: run it now, or queue it on the job's lane."""
        if handle.is_async:
            self._queue(self._lane_of(event), handle, event)
        else:
            self._run_sync(handle, event)

    def _lane_of(self, event: Event) -> _Lane:
        return self._lanes[zlib.crc32(event.job_id.encode()) % len(self._lanes)]

    def _queue(self, lane: _Lane, handle: CallbackHandle, event: Event) -> None:
        if len(lane.queue) >= self._lane_capacity:
            self._drop(handle, event)
            return
        lane.queue.append((handle, event))
        self._pending += 1
        self._idle.clear()
        if lane.waiter is not None and not lane.waiter.done():
            lane.waiter.set_result(None)

    def _drop(self, handle: CallbackHandle, event: Event) -> None:
        """Count a dropped invocation; log the first of an episode, then at most one summary
        a minute, so a stuck callback is reported without flooding the log."""
        self.dropped += 1
        self._unreported += 1
        now = time.monotonic()
        if now - self._reported_at >= _DROP_LOG_EVERY_S:
            log.error(
                "callback queue full: dropped %d invocation(s) (last: %r for job %s); "
                "an async callback is not keeping up",
                self._unreported,
                handle,
                event.job_id,
            )
            self._reported_at = now
            self._unreported = 0

    def _run_sync(self, handle: CallbackHandle, event: Event) -> None:
        try:
            handle._callback(event)
        except BaseException as exc:
            if not self._absorbed(handle, event, exc):
                raise

    def _absorbed(self, handle: CallbackHandle, event: Event, exc: BaseException) -> bool:
        """Count and log what a callback raised; False for what must go on up: the
        cancellation of the task running it (a callback that awaited something cancelled
        elsewhere raises CancelledError too: that one is the callback's), and exceptions
        that are no errors (KeyboardInterrupt, ...). Call it in the ``except`` block."""
        if isinstance(exc, asyncio.CancelledError):
            if _being_cancelled():
                return False
        elif not isinstance(exc, Exception):
            return False
        self.errors += 1
        log.exception("callback %r raised for job %s", handle, event.job_id)
        return True

    def start(self, task_group: TaskGroup) -> None:
        """Start the lane tasks in the engine's task group."""
        for lane in self._lanes:
            task_group.start_soon(self._run_lane, lane, name="poller-callback-lane")

    async def _run_lane(self, lane: _Lane) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not lane.queue:
                lane.waiter = loop.create_future()
                try:
                    await lane.waiter
                finally:
                    lane.waiter = None
            handle, event = lane.queue.popleft()
            try:
                result = handle._callback(event)
                if inspect.isawaitable(result):
                    await result
            except BaseException as exc:
                if not self._absorbed(handle, event, exc):
                    raise  # only the cancellation of this lane itself may end it
            finally:
                self._pending -= 1
                if not self._pending:
                    self._idle.set()
            await anyio.lowlevel.checkpoint()

    async def drain(self) -> None:
        """Wait until every queued async invocation has run."""
        await self._idle.wait()


class LatestTransitions:
    """The latest transition of every tracked job, to replay to a callback registered late.

    Register it as the engine's first callback, before any job is tracked: it is a sync
    callback that keeps one transition per job (with its payload: most of a kilobyte),
    the job's latest, and :meth:`snapshot` returns them in the order they were delivered.
    Jobs the engine no longer tracks (untracked, or finished and past their retention)
    are dropped, by asking ``is_tracked(job_id)``: for every job at each snapshot, and
    whenever the record has doubled since it was last swept, so it stays proportional to
    the tracked jobs. A job tracked again counts from its new sighting.
    """

    def __init__(self, is_tracked: Callable[[str], bool]) -> None:
        self._is_tracked = is_tracked
        self._latest: dict[str, Transition] = {}
        self._sweep_at = _SWEEP_AT_LEAST

    def __call__(self, transition: Transition) -> None:
        latest = self._latest
        latest.pop(transition.job_id, None)  # to the end: the order of delivery
        latest[transition.job_id] = transition
        if len(latest) >= self._sweep_at:
            self._sweep()

    def __len__(self) -> int:
        return len(self._latest)

    def forget(self, job_id: str) -> None:
        """Drop a job's transition (it was untracked)."""
        self._latest.pop(job_id, None)

    def snapshot(self) -> list[Transition]:
        """The latest transition of each job still tracked, oldest delivery first."""
        self._sweep()
        return list(self._latest.values())

    def _sweep(self) -> None:
        tracked = self._is_tracked
        self._latest = {k: t for k, t in self._latest.items() if tracked(k)}
        self._sweep_at = max(_SWEEP_AT_LEAST, 2 * len(self._latest))
