"""Push sinks: a feed of committed events per sink, and the JSON-lines sink.

Each push sink reads its own undelivered events from the store in commit order
(:class:`Feed`), delivers them, and only then marks them delivered. A crash between
the two sends them again on restart: delivery is at least once, and consumers drop
repeats by the record's ``id``. A new sink starts with the events committed from
then on; a sink removed from the configuration keeps its backlog in the store.

Files are appended with ``O_APPEND`` in one ``write`` per batch and, for regular
files, ``fsync``-ed before the batch is marked delivered. A line cut short by a crash
in the middle of a write is closed with a newline when the file is next opened, so
every later line stays whole. A write that fails part way (the disk is full, say) is
cut off again before the batch is retried: a regular file is truncated back to its
last whole line, so retries never glue a record to a fragment nor grow the file with
partial batches; a pipe, which cannot be truncated, gets a newline that ends the cut
line first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import sys
from collections.abc import Sequence
from typing import Final, Protocol

import anyio

from .outbox import Changes
from .rows import Pending
from .store import Store

__all__ = [
    "JSONL_SINK",
    "AppendFile",
    "EventFeed",
    "Feed",
    "FeedLost",
    "JsonlSink",
    "RewindableFeed",
    "Sink",
    "run_sink",
]

log = logging.getLogger("poller.daemon.sinks")

JSONL_SINK: Final = "jsonl"
_PAGE: Final = 500
_RESTART_MIN_S: Final = 1.0
_RESTART_MAX_S: Final = 30.0


class FeedLost(Exception):
    """The feed's events are no longer this process's to deliver (cluster mode: Redis
    names another replica the sink's holder): the sink stops at once, without marking
    anything delivered."""


class EventFeed(Protocol):
    """What a push sink reads: its undelivered events, page by page (:class:`Feed` from
    the SQLite store; a Redis stream's consumer group in cluster mode)."""

    async def next_page(self) -> list[Pending]:
        """The next events to deliver; empty once the feed is closed and drained."""

    async def done(self, rowids: Sequence[int]) -> None:
        """Mark events delivered (or dead-lettered)."""

    async def attempted(self, rowid: int, attempts: int) -> None:
        """Record failed attempts, so the count survives a restart."""

    def deliverable(self) -> bool:
        """Whether the sink may send now (asked before each send: False only in cluster
        mode, once this replica may no longer hold the sink; then it raises
        :class:`FeedLost`)."""


class RewindableFeed(EventFeed, Protocol):
    """A feed that can read again from its first undelivered event."""

    def rewind(self) -> None:
        """Read again from the first undelivered event (after a sink failed)."""


class Sink(Protocol):
    """A push sink the daemon runs until its feed ends."""

    name: str
    delivered: int
    dead_lettered: int
    errors: int
    failing: str | None
    """Why the last delivery attempt failed (for ``/healthz``: no path, URL or secret);
    None once one succeeds."""

    async def run(self, feed: EventFeed) -> None:
        """Deliver the feed's events until it ends."""


class Feed:
    """A sink's undelivered events, page by page, in commit order.

    :meth:`next_page` waits for new events while the daemon runs; after :meth:`close`
    it returns what is left and then an empty page, which ends the sink.
    """

    def __init__(self, store: Store, changes: Changes, sink: str, *, page: int = _PAGE) -> None:
        self._store = store
        self._changes = changes
        self.sink = sink
        self._page = page
        self._cursor = 0
        self._closed = False

    def close(self) -> None:
        """Deliver what is committed, then end."""
        self._closed = True
        self._changes.ring()  # wake the sink if it is waiting for news

    def rewind(self) -> None:
        """Read again from the first undelivered event (after a sink failed)."""
        self._cursor = 0

    async def next_page(self) -> list[Pending]:
        """The next events to deliver; empty once closed and drained."""
        while True:
            seen = self._changes.version
            rows = await self._store.call(
                self._store.pending, self.sink, after=self._cursor, limit=self._page
            )
            if rows:
                self._cursor = rows[-1].rowid
                return rows
            if self._closed:
                return []
            await self._changes.wait(seen)

    async def done(self, rowids: Sequence[int]) -> None:
        """Mark events delivered (or dead-lettered)."""
        if rowids:
            await self._store.call(self._store.delivered, self.sink, list(rowids))

    async def attempted(self, rowid: int, attempts: int) -> None:
        """Record failed attempts, so the count survives a restart."""
        await self._store.call(self._store.attempted, self.sink, rowid, attempts)

    def deliverable(self) -> bool:
        """Always: the daemon alone owns its store."""
        return True


class AppendFile:
    """A file (or ``-``: standard output) that whole lines are appended to.

    Writes run in a worker thread: a slow pipe or disk never blocks the event loop.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self._is_file = False
        # After a failed write: the size to cut a regular file back to (its last whole
        # line), or, for a pipe, that a line may be left unfinished.
        self._mend_to: int | None = None
        self._cut = False

    def open(self) -> None:
        """Open for appending (creating it with mode 0600), mending a cut last line.
        Raises ``OSError``."""
        if self.path == "-":
            self._fd = sys.stdout.fileno()
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._fd = fd
        status = os.fstat(fd)
        self._is_file = stat.S_ISREG(status.st_mode)
        if self._is_file and status.st_size:
            with open(self.path, "rb") as existing:
                existing.seek(status.st_size - 1)
                if existing.read(1) != b"\n":
                    self._write(b"\n")

    def _write(self, data: bytes) -> None:
        assert self._fd is not None
        fd = self._fd
        if self._mend_to is not None:  # the last write failed part way: cut it off first
            os.ftruncate(fd, self._mend_to)
            self._mend_to = None
        if self._cut:
            data = b"\n" + data
        start = os.fstat(fd).st_size if self._is_file else 0
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view) :]
            if self._is_file:
                os.fsync(fd)
        except OSError:
            if self._is_file:
                self._mend_to = start
                with contextlib.suppress(OSError):  # else: before the next write
                    os.ftruncate(fd, start)
                    self._mend_to = None
            elif len(view) < len(data):
                self._cut = not data[: len(data) - len(view)].endswith(b"\n")
            raise
        self._cut = False

    async def write(self, data: bytes) -> None:
        """Append ``data`` (whole lines) and, for a file, make it durable. If it fails
        (``OSError``), the next write first cuts off what this one left."""
        await anyio.to_thread.run_sync(self._write, data)

    def close(self) -> None:
        """Close the file (standard output stays open)."""
        if self._fd is not None and self.path != "-":
            os.close(self._fd)
        self._fd = None


class JsonlSink:
    """Every event as one JSON line, to a file or standard output.

    Args:
        path: the file, or ``-`` for standard output.
        retry_min_s, retry_max_s: the wait after a failed write, doubling from the first
            to the second.
    """

    def __init__(self, path: str, *, retry_min_s: float = 0.5, retry_max_s: float = 10.0) -> None:
        self.name = JSONL_SINK
        self.file = AppendFile(path)
        self._retry_min_s = retry_min_s
        self._retry_max_s = retry_max_s
        self.delivered = 0
        self.dead_lettered = 0
        self.errors = 0
        self.failing: str | None = None

    async def run(self, feed: EventFeed) -> None:
        """Write page by page; a failed write is retried (the page stays undelivered)."""
        self.file.open()
        try:
            while rows := await feed.next_page():
                data = b"".join(row.body + b"\n" for row in rows)
                delay_s = self._retry_min_s
                while True:
                    try:
                        await self.file.write(data)
                        break
                    except OSError as exc:
                        # What the failed write left is cut off before the retry (see
                        # AppendFile), and the page is written again whole.
                        self.errors += 1
                        self.failing = f"write failed: {exc.strerror or exc}"
                        log.error("cannot write to %s: %s; retrying", self.file.path, exc)
                        await anyio.sleep(delay_s)
                        delay_s = min(self._retry_max_s, delay_s * 2)
                self.failing = None
                await feed.done([row.rowid for row in rows])
                self.delivered += len(rows)
        finally:
            self.file.close()


async def run_sink(
    sink: Sink, feed: RewindableFeed, *, errors: tuple[type[Exception], ...]
) -> None:
    """Run a sink until its feed ends; if it fails with one of ``errors`` (its disk, the
    store), start it again from its first undelivered event, after a pause that doubles
    (nothing is acknowledged that was not delivered)."""
    delay_s = _RESTART_MIN_S
    while True:
        failure: BaseException | None = None
        try:
            await sink.run(feed)
            return
        except* errors as group:  # a sink's task group wraps them
            failure = group.exceptions[0]
        log.error("sink %s failed (%s); restarting in %.0f s", sink.name, failure, delay_s)
        sink.failing = f"stopped on an error ({_describe(failure)}); restarting"
        feed.rewind()
        await anyio.sleep(delay_s)
        delay_s = min(_RESTART_MAX_S, delay_s * 2)


def _describe(exc: BaseException) -> str:
    """An error in a few words, without the file name an ``OSError`` carries."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
