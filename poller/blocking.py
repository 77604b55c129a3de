"""`BlockingPoller`: the engine for synchronous code.

The event loop runs in a worker thread behind an anyio blocking portal; each
method hands its call to that loop and blocks until it completes. Callbacks
registered with :meth:`BlockingPoller.on_transition` run in the loop's thread.

The engine runs between two calls, so a job tracked by one call may be polled, and
its transitions delivered, before the next call registers a callback. Hence
``on_transition`` replays by default: the new callback first gets the latest
transition of every job already seen, in the same step of the loop as its
registration, then every later one. It keeps those latest transitions
(:class:`~poller._callbacks.LatestTransitions`) from the engine's start for this.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any, TypeVar, Unpack

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal

from ._callbacks import CallbackHandle, EventCallback, LatestTransitions, TransitionCallback
from .engine import Poller, PollerArgs
from .errors import PollerClosedError
from .events import Event, Stats
from .models import Job, JobStatus, Status
from .sched.learn import LearnedDurations

__all__ = ["BlockingPoller"]

T = TypeVar("T")


class BlockingPoller:
    """The :class:`~poller.Poller` API for synchronous code; use it as a context manager::

        with BlockingPoller(api_key="rt_live_...") as p:
            p.on_transition(print)
            p.track("job_123")
            job = p.wait("job_123", timeout_s=600)

    Takes the same arguments as :class:`~poller.Poller` (checked when entered). Unlike the
    async engine's, its ``on_transition`` first replays the latest transition of each job
    already seen (see :meth:`on_transition`), so a callback registered after ``track``
    misses no job. For that it keeps each tracked job's latest transition, with its
    payload: about 0.8 kB a job on top of the engine's own.
    """

    def __init__(
        self, api_key: str | None = None, base_url: str | None = None, **args: Unpack[PollerArgs]
    ) -> None:
        def make() -> Poller:  # called in the loop's thread, when entered
            return Poller(api_key, base_url, **args)

        self._make_poller = make
        self._stack: ExitStack | None = None
        self._portal: BlockingPortal | None = None
        self._poller: Poller | None = None
        self._latest: LatestTransitions | None = None
        self._entered = False

    def __enter__(self) -> BlockingPoller:
        if self._entered:
            raise RuntimeError("a BlockingPoller can be entered only once")
        self._entered = True
        stack = ExitStack()
        try:
            portal = stack.enter_context(start_blocking_portal("asyncio"))
            poller = portal.call(self._make)
            # One task enters and leaves the poller's task group, as anyio requires.
            stack.enter_context(portal.wrap_async_context_manager(poller))
        except BaseException:
            stack.close()
            raise
        self._stack, self._portal, self._poller = stack, portal, poller
        return self

    async def _make(self) -> Poller:
        poller = self._make_poller()  # in the loop's thread
        # The first callback, before any job is tracked: it sees every transition.
        self._latest = LatestTransitions(lambda job_id: poller.status(job_id) is not None)
        poller.on_transition(self._latest)
        return poller

    def __exit__(self, *exc_info: Any) -> None:
        stack, self._stack = self._stack, None
        self._portal = None
        if stack is not None:
            stack.__exit__(*exc_info)

    def _open(self) -> tuple[BlockingPortal, Poller]:
        if self._portal is None or self._poller is None:
            raise PollerClosedError("the BlockingPoller is not open")
        return self._portal, self._poller

    def track(
        self,
        job_id: str,
        *,
        api_key: str | None = None,
        last_status: Status | str | None = None,
        last_seq: int = 0,
    ) -> None:
        """See :meth:`poller.Poller.track`."""
        portal, poller = self._open()
        portal.call(
            _sync,
            lambda: poller.track(
                job_id, api_key=api_key, last_status=last_status, last_seq=last_seq
            ),
        )

    def untrack(self, job_id: str) -> bool:
        """See :meth:`poller.Poller.untrack`."""
        portal, poller = self._open()
        return portal.call(_sync, lambda: self._untrack(poller, job_id))

    def _untrack(self, poller: Poller, job_id: str) -> bool:
        if self._latest is not None:
            self._latest.forget(job_id)
        return poller.untrack(job_id)

    def status(self, job_id: str) -> Status | None:
        """See :meth:`poller.Poller.status`."""
        portal, poller = self._open()
        return portal.call(_sync, lambda: poller.status(job_id))

    def wait(
        self, job_id: str, *, timeout_s: float | None = None, api_key: str | None = None
    ) -> JobStatus:
        """See :meth:`poller.Poller.wait`."""
        portal, poller = self._open()
        return portal.call(lambda: poller.wait(job_id, timeout_s=timeout_s, api_key=api_key))

    def wait_all(
        self,
        job_ids: Iterable[str],
        *,
        timeout_s: float | None = None,
        api_key: str | None = None,
    ) -> dict[str, JobStatus]:
        """See :meth:`poller.Poller.wait_all`."""
        portal, poller = self._open()
        ids = list(job_ids)
        return portal.call(lambda: poller.wait_all(ids, timeout_s=timeout_s, api_key=api_key))

    def fetch(
        self,
        job_id: str,
        *,
        include_request: bool = False,
        include_response: bool = True,
        api_key: str | None = None,
    ) -> Job:
        """See :meth:`poller.Poller.fetch`."""
        portal, poller = self._open()
        return portal.call(
            lambda: poller.fetch(
                job_id,
                include_request=include_request,
                include_response=include_response,
                api_key=api_key,
            )
        )

    @contextmanager
    def subscribe(
        self,
        *,
        statuses: Iterable[Status | str] | None = None,
        job_ids: Iterable[str] | None = None,
        include_failures: bool = True,
        max_buffer: int | None = None,
    ) -> Iterator[Iterator[Event]]:
        """See :meth:`poller.Poller.subscribe`; yields a blocking iterator of events."""
        portal, poller = self._open()
        manager: AbstractContextManager[Any] = portal.wrap_async_context_manager(
            poller.subscribe(
                statuses=statuses,
                job_ids=job_ids,
                include_failures=include_failures,
                max_buffer=max_buffer,
            )
        )
        with manager as subscription:

            def events() -> Iterator[Event]:
                while True:
                    try:
                        yield portal.call(subscription.receive)
                    except anyio.EndOfStream:
                        return

            yield events()

    def on_transition(
        self,
        callback: TransitionCallback | EventCallback,
        *,
        statuses: Iterable[Status | str] | None = None,
        include_failures: bool = False,
        replay: bool = True,
    ) -> CallbackHandle:
        """See :meth:`poller.Poller.on_transition`; callbacks run in the engine's thread.

        With ``replay`` (the default), the callback is first given the latest transition
        of every tracked job that has one (to ``statuses`` only, if given), oldest first,
        then every transition after it: registered after ``track``, it still sees each
        job's current status, and its ``seq`` tells whether earlier transitions came
        before. Registered before ``track``, it sees every transition either way.
        ``replay=False``: only transitions from now on. A sync callback has its replay
        done when this returns.
        """
        portal, poller = self._open()
        runner, latest = poller._callbacks, self._latest
        assert latest is not None  # set with the poller

        def add() -> CallbackHandle:
            events = latest.snapshot() if replay else ()
            return runner.add(callback, statuses, include_failures, replay=events)

        return portal.call(_sync, add)

    def stats(self) -> Stats:
        """See :meth:`poller.Poller.stats`."""
        portal, poller = self._open()
        return portal.call(_sync, poller.stats)

    def learned_durations(self) -> LearnedDurations | None:
        """See :meth:`poller.Poller.learned_durations`."""
        portal, poller = self._open()
        return portal.call(_sync, poller.learned_durations)


async def _sync(function: Callable[[], T]) -> T:
    """Run a synchronous engine method inside the loop's thread (the engine is not
    thread-safe, so even non-blocking calls go through the portal)."""
    return function()
