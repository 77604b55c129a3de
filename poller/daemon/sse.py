"""``GET /events``: committed events as a server-sent event stream, resumable.

Each event is sent as ``id: <record id>``, ``event: transition|failure`` and
``data: <record JSON>``. A client that reconnects with ``Last-Event-ID`` (the header
browsers send by themselves, or the ``last_event_id`` query parameter) gets every
event committed after that one, from the store's history, then the live ones; the
history is kept ``history_retention_s``. An unknown or pruned ID replays the whole
retained history, after a comment saying so. Without an ID the stream starts now.

The stream reads the store, never the engine: what it shows is committed, in
commit order, the same for every client. A comment line every ``keepalive_s`` keeps
proxies from closing an idle stream.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from typing import Final

import anyio
from aiohttp import web

from .outbox import Changes
from .store import Store

__all__ = ["EventStream"]

log = logging.getLogger("poller.daemon.sse")

_PAGE: Final = 500
_RETRY_MS: Final = 2000


class EventStream:
    """The ``/events`` handler (see the module docstring).

    Args:
        store: where the history is read.
        changes: rung after each commit.
        keepalive_s: seconds between comment lines on an idle stream.
    """

    def __init__(self, store: Store, changes: Changes, *, keepalive_s: float = 15.0) -> None:
        self._store = store
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
        store = self._store
        cursor = await store.call(store.position, last_id or None)
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
            cursor = 0
        await response.write(preamble.encode())
        self.clients += 1
        try:
            while not self._closing.is_set():
                seen = self._changes.version
                rows = await store.call(store.history, after=cursor, limit=_PAGE)
                if rows:
                    chunk = b"".join(
                        b"id: %s\nevent: %s\ndata: %s\n\n"
                        % (row.id.encode(), row.type.encode(), row.body)
                        for row in rows
                    )
                    await response.write(chunk)
                    cursor = rows[-1].rowid
                    continue
                with anyio.move_on_after(self._keepalive_s) as idle:
                    await self._changes.wait(seen)
                if idle.cancelled_caught:
                    await response.write(b": keepalive\n\n")
        except (ConnectionResetError, ConnectionError):
            pass  # the client left
        except sqlite3.Error as exc:  # the stream has begun: end it; the client resumes
            log.warning("GET /events: the database failed (%s); stream ended", exc)
        finally:
            self.clients -= 1
        return response
