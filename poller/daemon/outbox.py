"""The outbox writer: engine events in, committed records out, in order.

The engine hands each transition to a *synchronous* callback, inline, while it
delivers events; a tracking failure arrives through a subscription. Both only call
:meth:`Outbox.offer`, which appends to a list: the engine never waits for the disk.
:meth:`Outbox.run` commits what has piled up in one transaction (``Store.commit``,
in a worker thread), then rings :class:`Changes`, which wakes the sinks and the
``/events`` streams. So nothing reaches a sink before it is committed, and the
batches grow by themselves when the disk is slow.

A failed commit (disk full, say) is logged and retried with the same events in
front: order is kept, nothing is skipped. Events still uncommitted when the process
dies are not lost either: their jobs' rows still hold the previous status and
``seq``, so the next run observes the same changes again, under the same IDs.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from typing import Final

import anyio

from ..events import Event
from .store import Store

__all__ = ["Changes", "Outbox"]

log = logging.getLogger("poller.daemon.outbox")

_BATCH_MAX: Final = 5000
_RETRY_MIN_S: Final = 0.5
_RETRY_MAX_S: Final = 10.0


class Changes:
    """A broadcast bell: :meth:`ring` wakes everyone in :meth:`wait`.

    ``version`` counts the rings, so a reader that checked the store at version ``v``
    waits with ``wait(v)`` and cannot miss a ring that came in between.
    """

    def __init__(self) -> None:
        self.version = 0
        self._event = asyncio.Event()

    def ring(self) -> None:
        """Wake every waiter."""
        self.version += 1
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, seen: int) -> None:
        """Return once ``version`` is past ``seen``."""
        while self.version <= seen:
            await self._event.wait()


class Outbox:
    """Commits engine events to the store in order (see the module docstring).

    Args:
        store: where events are committed.
        changes: rung after every commit.
        batch_max: events per transaction at most.
    """

    def __init__(self, store: Store, changes: Changes, *, batch_max: int = _BATCH_MAX) -> None:
        self._store = store
        self._changes = changes
        self._batch_max = batch_max
        self._queue: list[Event] = []
        self._wake = asyncio.Event()
        self._closed = False
        self.committed = 0
        self.failures = 0

    @property
    def backlog(self) -> int:
        """Events offered but not committed yet."""
        return len(self._queue)

    def offer(self, event: Event) -> None:
        """Queue an event for the next commit; never blocks. Also the engine callback."""
        self._queue.append(event)
        self._wake.set()

    def close(self) -> None:
        """No more events will come: :meth:`run` returns once the queue is committed."""
        self._closed = True
        self._wake.set()

    async def run(self) -> None:
        """Commit batches until closed and empty."""
        delay_s = _RETRY_MIN_S
        while True:
            if not self._queue:
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._queue[: self._batch_max]
            try:
                added = await self._store.call(self._store.commit, batch)
            except sqlite3.Error as exc:
                # A full disk is no bug: one line, and the traceback only when debugging.
                self.failures += 1
                log.error(
                    "cannot commit %d event(s) (%s); retrying in %.1f s", len(batch), exc, delay_s
                )
                log.debug("commit failure", exc_info=True)
                await anyio.sleep(delay_s)
                delay_s = min(_RETRY_MAX_S, delay_s * 2)
                continue
            delay_s = _RETRY_MIN_S
            del self._queue[: len(batch)]
            self.committed += added
            if added:
                self._changes.ring()
