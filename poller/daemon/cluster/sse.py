"""``GET /events`` in cluster mode: the stream ``<p>events`` as server-sent events.

The same protocol as the single-node daemon (:mod:`poller.daemon.sse`), from any
replica: each event is sent with its stable ID ``<job_id>:<seq>``. A client that
comes back with ``Last-Event-ID`` resumes right after that event, whichever replica
it reaches: the ``COMMIT`` script kept, in the job's hash, the stream entry of each
of its events (``e:<seq>``), and the stream is read from there (``XRANGE``, an
exclusive start). An unknown ID, or one trimmed from the stream, replays the whole
retained history after a comment saying so; without an ID the stream starts now.
Every client reads the stream itself (no consumer group): each sees every event, in
commit order.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final, cast

import anyio
from aiohttp import web
from redis.exceptions import RedisError

from ..outbox import Changes
from .client import RedisLink, describe
from .stream import entry_key

__all__ = ["ClusterEventStream"]

log = logging.getLogger("poller.daemon.cluster")

_PAGE: Final = 500
_RETRY_MS: Final = 2000
_START: Final = "0-0"


class ClusterEventStream:
    """The ``/events`` handler (see the module docstring).

    Args:
        link: the Redis connections.
        changes: the bell rung when events are committed (by any replica).
        keepalive_s: seconds between comment lines on an idle stream.
    """

    def __init__(self, link: RedisLink, changes: Changes, *, keepalive_s: float = 15.0) -> None:
        self._link = link
        self._changes = changes
        self._keepalive_s = keepalive_s
        self._closing = asyncio.Event()
        self.clients = 0

    def close(self) -> None:
        """End every stream (shutdown)."""
        self._closing.set()
        self._changes.ring()

    async def position(self, last_event_id: str | None) -> str | None:
        """The stream entry to read after: the newest one without an ID, the entry of the
        event ``last_event_id``, or None when it is unknown or trimmed.

        Raises:
            RedisError: Redis cannot be reached.
        """
        redis, events = self._link.redis, self._link.keys.events
        if last_event_id is None:
            newest = await redis.xrevrange(events, count=1)
            return str(newest[0][0]) if newest else _START
        job_id, _, seq = last_event_id.rpartition(":")
        if not job_id or not seq.isdecimal():
            return None
        entry = await redis.hget(self._link.keys.job(job_id), f"e:{int(seq)}")
        if entry is None:
            return None
        oldest = await redis.xrange(events, count=1)
        if not oldest or entry_key(str(entry)) < entry_key(str(oldest[0][0])):
            return None  # trimmed: what followed it may be partly gone too
        return str(entry)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Serve one client until it leaves or the daemon stops."""
        last_id = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
        try:
            cursor = await self.position(last_id or None)
        except RedisError as exc:
            return web.json_response(
                {
                    "error": {
                        "code": "store_unavailable",
                        "message": f"Redis cannot be reached ({type(exc).__name__})",
                    }
                },
                status=503,
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
            cursor = _START
        await response.write(preamble.encode())
        self.clients += 1
        try:
            await self._stream(response, cursor)
        except (ConnectionResetError, ConnectionError):
            pass  # the client left
        except RedisError as exc:  # the stream has begun: end it; the client resumes
            log.warning("GET /events: Redis failed (%s); stream ended", describe(exc))
        finally:
            self.clients -= 1
        return response

    async def _stream(self, response: web.StreamResponse, cursor: str) -> None:
        redis, events = self._link.redis, self._link.keys.events
        while not self._closing.is_set():
            seen = self._changes.version
            entries = cast(
                "list[tuple[str, dict[str, str]]]",
                await redis.xrange(events, min=f"({cursor}", count=_PAGE),
            )
            if entries:
                chunk = b"".join(
                    b"id: %s\nevent: %s\ndata: %s\n\n"
                    % (fields["id"].encode(), fields["type"].encode(), fields["body"].encode())
                    for _, fields in entries
                )
                await response.write(chunk)
                cursor = entries[-1][0]
                continue
            with anyio.move_on_after(self._keepalive_s) as idle:
                await self._changes.wait(seen)
            if idle.cancelled_caught:
                await response.write(b": keepalive\n\n")
