"""The engine's moving part: the workers, the dispatcher, and delivering what they find.

A fixed set of tasks runs this, however many jobs are tracked:

- ``max_connections`` workers. A worker asks the core for the next due job, fetches
  its status, reports the outcome, and delivers the resulting events; it asks again
  straight away, so under load no hand-off is needed.
- one dispatcher, which sleeps until the core's next wake-up (one loop timer in all)
  and hands due jobs to idle workers.

Delivery: transitions and tracking failures go to callbacks and subscriptions; every
job that finished settles its waiters (with its terminal payload or its error).
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections import deque
from collections.abc import Awaitable, Callable
from time import monotonic

from ._boundary import detached, scrub
from ._callbacks import CallbackRunner
from ._health_log import log_notice
from ._recorder import Recorder
from .auth import Credential
from .errors import PollerError, RequestError, TransportError
from .events import Event
from .models import JobId, JobStatus
from .sched.core import Scheduler
from .sched.queue import TrackedJob
from .subscription import Subscription

__all__ = ["Driver", "FetchStatus", "Settle"]

log = logging.getLogger("poller")

Settle = Callable[[JobStatus | PollerError], None]
"""Told a job's outcome: its terminal payload, or the error that ended its tracking."""
FetchStatus = Callable[[JobId, Credential], Awaitable[JobStatus]]
"""How the workers fetch a status: a transport's ``get_status``, or the method of the
engine's own transport that trusts a :data:`~poller.JobId` (see ``Poller.__aenter__``)."""


class Driver:
    """Runs the poll cycle for a :class:`~poller.engine.Poller` (see the module docstring).

    The containers are the Poller's own, shared: waiters by job ID, open subscriptions,
    and the futures of idle workers.
    """

    def __init__(
        self,
        *,
        core: Scheduler[Credential],
        fetch_status: FetchStatus,
        clock: Callable[[], float],
        metrics: Recorder,
        callbacks: CallbackRunner,
        waiters: dict[str, list[Settle]],
        subscriptions: list[Subscription],
    ) -> None:
        self.core = core
        self.fetch_status = fetch_status
        self.clock = clock
        self.metrics = metrics
        self.callbacks = callbacks
        self.waiters = waiters
        self.subscriptions = subscriptions
        self.idle: deque[asyncio.Future[TrackedJob[Credential]]] = deque()
        self.wake: asyncio.Future[None] | None = None
        self.sleep_until = 0.0

    def deliver(self) -> None:
        """Hand the core's new events to waiters, subscribers and callbacks."""
        core = self.core
        events = core.take_events()
        if events:
            self.metrics.events(events)
            for event in events:
                self.callbacks.dispatch(event)
                self._publish(event)
        if core.has_finished():
            for job in core.take_finished():
                assert job.final is not None
                self.settle(job.job_id, job.final)
        if core.new_notices:
            for notice in core.take_notices():
                log_notice(notice, self.clock())

    def _publish(self, event: Event) -> None:
        for subscription in self.subscriptions:
            if subscription.wants(event) and not subscription.offer(event):
                self.metrics.overflows += 1
                log.warning("a subscriber overflowed; its stream will end with an error")

    def settle(self, job_id: str, outcome: JobStatus | PollerError) -> None:
        settles = self.waiters.pop(job_id, None)
        if settles:
            for settle in settles:
                settle(outcome)

    def poke_if_due_before(self, deadline: float) -> None:
        wake = self.wake
        if wake is None or wake.done():
            return
        next_at = self.core.next_wakeup(self.clock())
        if next_at is not None and next_at < deadline:
            wake.set_result(None)

    async def work(self) -> None:
        core, clock, metrics = self.core, self.clock, self.metrics
        fetch = self.fetch_status
        loop = asyncio.get_running_loop()
        # One engine-clock reading per poll: the time the answer came is when the outcome
        # is recorded and when the next job is taken. Latency is timed on the monotonic
        # clock (the engine's may be a wall clock that steps, or a test's fake one).
        now = clock()
        while True:
            job = core.next_due(now)
            if job is None:
                parked: asyncio.Future[TrackedJob[Credential]] = loop.create_future()
                self.idle.append(parked)
                if self.sleep_until == float("inf"):
                    self.poke()  # the dispatcher was waiting for an idle worker
                else:  # jobs filed while no worker was idle may be due before its timer
                    self.poke_if_due_before(self.sleep_until)
                job = await parked
                now = clock()
            sent_at = monotonic()
            error: RequestError | None = None
            try:
                payload = await fetch(job.job_id, job.credential)
            except RequestError as exc:
                error = detached(exc)
            except Exception as exc:  # a transport bug must not take the engine down
                _log_unexpected(exc, job)
                error = TransportError(f"unexpected {type(exc).__name__}", job_id=job.job_id)
            metrics.request(job.bucket.org_id, monotonic() - sent_at, error)
            now = clock()
            try:
                if error is None:
                    core.on_success(job, payload, now)
                else:
                    core.on_failure(job, error, now)
            except Exception as exc:  # a bug must cost this job, never the engine
                log.exception("recording the outcome for job %s failed", job.job_id)
                cause = PollerError(f"internal error recording an outcome: {type(exc).__name__}")
                core.abandon(job, cause, now)
            if core.new_events or core.new_finished or core.new_notices:
                self.deliver()
                now = clock()  # callbacks run in there, and may take a while
            if self.idle:  # only idle workers need the dispatcher to know
                self.poke_if_due_before(self.sleep_until)

    def poke(self) -> None:
        wake = self.wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        core, clock, idle = self.core, self.clock, self.idle
        while True:
            now = clock()
            while idle:
                parked = idle[0]
                if parked.done():  # its worker was cancelled
                    idle.popleft()
                    continue
                job = core.next_due(now)
                if job is None:
                    break
                idle.popleft().set_result(job)
            self.deliver()  # housekeeping in next_due may have produced events
            next_at = core.next_wakeup(now) if idle else None
            # With no idle worker, busy workers serve due jobs themselves; the dispatcher
            # waits to be poked when one parks.
            self.sleep_until = next_at if next_at is not None else float("inf")
            self.wake = wake = loop.create_future()
            timer = None
            if next_at is not None:
                timer = loop.call_later(max(0.0, next_at - now), _resolve, wake)
            try:
                await wake
            finally:
                if timer is not None:
                    timer.cancel()
                self.wake = None


def _log_unexpected(exc: Exception, job: TrackedJob[Credential]) -> None:
    """Log what a transport raised outside its contract, scrubbed of the job's secrets
    (a custom transport's message may quote its URL or headers)."""
    text = "".join(traceback.format_exception(exc))
    log.error(
        "transport raised an unexpected %s for job %s:\n%s",
        type(exc).__name__,
        job.job_id,
        scrub(text, job.credential.secrets()),
    )


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
