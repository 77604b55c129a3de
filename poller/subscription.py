"""Subscriptions: a bounded stream of events per subscriber.

Overflow policy. The engine never waits for a subscriber. Each subscription
buffers up to ``max_buffer`` events; if one more arrives while the buffer is
full, the subscription *overflows*: that event and every later one are dropped
(and counted), the events already buffered are still delivered, and then
``receive`` raises :class:`~poller.errors.SubscriberOverflowError`. Nothing is
lost silently: a consumer that sees the error knows its view is incomplete and
can resubscribe and resynchronise (for example from ``Poller.stats`` or
``Poller.status``). Memory per subscriber is therefore bounded by ``max_buffer``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable

import anyio
import msgspec
from anyio.abc import ObjectReceiveStream

from .errors import ConfigError, SubscriberOverflowError
from .events import Event, Transition
from .models import Status

__all__ = ["Subscription", "SubscriptionStatistics"]


class SubscriptionStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A subscription's buffer: ``buffered`` of ``max_buffer`` used, ``dropped`` after overflow."""

    buffered: int
    max_buffer: int
    dropped: int
    overflowed: bool
    closed: bool


class Subscription(ObjectReceiveStream[Event]):
    """The receive end of a subscription: iterate it with ``async for``.

    Yields :class:`~poller.events.Transition` and, unless excluded,
    :class:`~poller.events.TrackingFailure` events. The iteration ends when the
    subscription or the engine is closed, and raises
    :class:`~poller.errors.SubscriberOverflowError` after an overflow (see the module
    docstring).
    """

    def __init__(
        self,
        *,
        max_buffer: int,
        statuses: Iterable[Status | str] | None,
        job_ids: Iterable[str] | None,
        include_failures: bool,
        on_close: Callable[[Subscription], None],
    ) -> None:
        if not isinstance(max_buffer, int) or max_buffer < 1:
            raise ConfigError("max_buffer: must be an integer >= 1")
        self._max_buffer = max_buffer
        self._statuses = frozenset(Status(s) for s in statuses) if statuses is not None else None
        self._job_ids = frozenset(job_ids) if job_ids is not None else None
        self._include_failures = include_failures
        self._on_close = on_close
        self._buffer: deque[Event] = deque()
        self._waiters: set[asyncio.Future[None]] = set()  # one per blocked receive()
        self._dropped = 0
        self._closed = False
        self._released = False  # closed by the consumer: receive() is then an error

    # -- engine side -------------------------------------------------------------

    def wants(self, event: Event) -> bool:
        """Whether ``event`` passes this subscription's filters."""
        if self._job_ids is not None and event.job_id not in self._job_ids:
            return False
        if isinstance(event, Transition):
            return self._statuses is None or event.current in self._statuses
        return self._include_failures

    def offer(self, event: Event) -> bool:
        """Buffer ``event`` without waiting. Returns False when this event made the
        subscription overflow, True otherwise (dropped later events included)."""
        if self._closed:
            return True
        if self._dropped or len(self._buffer) >= self._max_buffer:
            self._dropped += 1
            self._wake()
            return self._dropped > 1
        self._buffer.append(event)
        self._wake()
        return True

    def end(self) -> None:
        """End the stream (the engine closed): buffered events are still delivered."""
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- consumer side -----------------------------------------------------------

    @property
    def overflowed(self) -> bool:
        """True once events have been dropped."""
        return self._dropped > 0

    async def receive(self) -> Event:
        """The next event. Raises ``anyio.EndOfStream`` at the end, and
        :class:`SubscriberOverflowError` once the buffer has drained after an overflow.

        Several tasks may receive from one subscription: each event goes to one of them.
        """
        # The one checkpoint comes first: from here on nothing yields between looking at
        # the buffer and taking from it, so a cancelled receive never loses an event and
        # a concurrent receive or aclose() cannot empty it in between.
        await anyio.lowlevel.checkpoint()
        while True:
            if self._released:
                raise anyio.ClosedResourceError
            if self._buffer:
                return self._buffer.popleft()
            if self._dropped:
                raise SubscriberOverflowError(
                    f"subscriber fell behind: its buffer of {self._max_buffer} events filled "
                    f"and {self._dropped} later event(s) were dropped; resubscribe to resume",
                    dropped=self._dropped,
                )
            if self._closed:
                raise anyio.EndOfStream
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.add(waiter)
            try:
                await waiter
            finally:
                self._waiters.discard(waiter)

    async def aclose(self) -> None:
        """Unsubscribe; buffered events are discarded."""
        if not self._released:
            self._released = self._closed = True
            self._buffer.clear()
            self._on_close(self)
            self._wake()
        await anyio.lowlevel.checkpoint()

    def statistics(self) -> SubscriptionStatistics:
        """The buffer's state."""
        return SubscriptionStatistics(
            buffered=len(self._buffer),
            max_buffer=self._max_buffer,
            dropped=self._dropped,
            overflowed=self._dropped > 0,
            closed=self._closed,
        )
