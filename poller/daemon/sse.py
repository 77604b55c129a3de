"""``GET /events``: committed events as a server-sent event stream, resumable.

Each event is sent as ``id: <record id>``, ``event: transition|failure`` and
``data: <record JSON>``. A client that reconnects with ``Last-Event-ID`` (the header
browsers send by themselves, or the ``last_event_id`` query parameter) gets every
event committed after that one, from the history, then the live ones; the history
is kept ``history_retention_s``. An unknown or pruned ID replays the whole retained
history, after a comment saying so. Without an ID the stream starts now.

The stream reads the committed history (:class:`History`: the store's, or the Redis
stream in cluster mode), never the engine: what it shows is committed, in commit
order, the same for every client. A comment line every ``keepalive_s`` keeps
proxies from closing an idle stream.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Sequence
from typing import Any, Final, Protocol

import anyio
import msgspec
from aiohttp import web

from .outbox import Changes
from .store import Store

__all__ = ["EventStream", "History", "StoreHistory"]

log = logging.getLogger("poller.daemon.sse")

_PAGE: Final = 500
_RETRY_MS: Final = 2000

Page = tuple[Sequence[tuple[str, str, bytes]], Any]
"""Events as (id, type, body), and the cursor after the last of them."""


class History(Protocol):
    """Where ``/events`` reads committed events, by an opaque cursor."""

    start: Any
    """The cursor before the first event kept."""
    errors: tuple[type[Exception], ...]
    """What a read raises when the store fails."""

    async def position(self, event_id: str | None) -> Any | None:
        """The cursor right after the event ``event_id`` (None if unknown or pruned);
        with None, the cursor after the last event committed."""

    async def read(self, after: Any, limit: int) -> Page:
        """Up to ``limit`` events committed after the cursor ``after``."""


class StoreHistory:
    """:class:`History` of the SQLite store (cursors are row IDs)."""

    start = 0
    errors: tuple[type[Exception], ...] = (sqlite3.Error,)

    def __init__(self, store: Store) -> None:
        self._store = store

    async def position(self, event_id: str | None) -> int | None:
        """See :meth:`History.position`."""
        return await self._store.call(self._store.position, event_id)

    async def read(self, after: Any, limit: int) -> Page:
        """See :meth:`History.read`."""
        rows = await self._store.call(self._store.history, after=after, limit=limit)
        events = [(row.id, row.type, row.body) for row in rows]
        return events, rows[-1].rowid if rows else after


class EventStream:
    """The ``/events`` handler (see the module docstring).

    Args:
        history: where committed events are read.
        changes: rung after each commit.
        keepalive_s: seconds between comment lines on an idle stream.
    """

    def __init__(self, history: History, changes: Changes, *, keepalive_s: float = 15.0) -> None:
        self._history = history
        self._changes = changes
        self._keepalive_s = keepalive_s
        self._closing = asyncio.Event()
        self.clients = 0

    def close(self) -> None:
        """End every stream (shutdown): each handler returns after its current write."""
        self._closing.set()
        self._changes.ring()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Serve one client until it leaves or the daemon stops."""
        last_id = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
        history = self._history
        try:
            cursor = await history.position(last_id or None)
        except history.errors as exc:
            log.error("GET /events: the store failed (%s)", exc)
            error = {"code": "store_unavailable", "message": "the store cannot be read"}
            return web.Response(
                body=msgspec.json.encode({"error": error}),
                status=503,
                content_type="application/json",
            )
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        preamble = f"retry: {_RETRY_MS}\n\n"
        if cursor is None:
            preamble = ": unknown or expired Last-Event-ID; replaying the history\n" + preamble
            cursor = history.start
        await response.write(preamble.encode())
        self.clients += 1
        try:
            while not self._closing.is_set():
                seen = self._changes.version
                events, cursor = await history.read(cursor, _PAGE)
                if events:
                    chunk = b"".join(
                        b"id: %s\nevent: %s\ndata: %s\n\n" % (id.encode(), type.encode(), body)
                        for id, type, body in events
                    )
                    await response.write(chunk)
                    continue
                with anyio.move_on_after(self._keepalive_s) as idle:
                    await self._changes.wait(seen)
                if idle.cancelled_caught:
                    await response.write(b": keepalive\n\n")
        except (ConnectionResetError, ConnectionError):
            pass  # the client left
        except history.errors as exc:  # the stream has begun: end it; the client resumes
            log.warning("GET /events: the store failed (%s); stream ended", exc)
        finally:
            self.clients -= 1
        return response
