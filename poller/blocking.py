"""`BlockingPoller`: the engine for synchronous code.

The event loop runs in a worker thread behind an anyio blocking portal; each
method hands its call to that loop and blocks until it completes. Callbacks
registered with :meth:`BlockingPoller.on_transition` run in the loop's thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any, TypeVar

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal

from ._callbacks import CallbackHandle, EventCallback, TransitionCallback
from ._learn import LearnedDurations
from .engine import Poller
from .errors import PollerClosedError
from .events import Event, Stats
from .models import Job, JobStatus, Status

__all__ = ["BlockingPoller"]

T = TypeVar("T")


class BlockingPoller:
    """The :class:`~poller.Poller` API for synchronous code; use it as a context manager::

        with BlockingPoller(api_key="rt_live_...") as p:
            p.track("job_123")
            job = p.wait("job_123", timeout_s=600)

    Takes the same arguments as :class:`~poller.Poller`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args = args
        self._kwargs = kwargs
        self._stack: ExitStack | None = None
        self._portal: BlockingPortal | None = None
        self._poller: Poller | None = None
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
        return Poller(*self._args, **self._kwargs)

    def __exit__(self, *exc_info: Any) -> None:
        stack, self._stack = self._stack, None
        self._portal = None
        if stack is not None:
            stack.__exit__(*exc_info)

    def _open(self) -> tuple[BlockingPortal, Poller]:
        if self._portal is None or self._poller is None:
            raise PollerClosedError("the BlockingPoller is not open")
        return self._portal, self._poller

    def track(self, job_id: str, *, api_key: str | None = None) -> None:
        """See :meth:`poller.Poller.track`."""
        portal, poller = self._open()
        portal.call(_sync, lambda: poller.track(job_id, api_key=api_key))

    def untrack(self, job_id: str) -> bool:
        """See :meth:`poller.Poller.untrack`."""
        portal, poller = self._open()
        return portal.call(_sync, lambda: poller.untrack(job_id))

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
    ) -> CallbackHandle:
        """See :meth:`poller.Poller.on_transition`. Callbacks run in the engine's thread."""
        portal, poller = self._open()
        runner = poller._callbacks
        return portal.call(_sync, lambda: runner.add(callback, statuses, include_failures))

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
