"""``GET /events`` in cluster mode: the Redis stream ``<p>events`` as the history that
:class:`poller.daemon.sse.EventStream` serves, from any replica.

Each event keeps its stable ID ``<job_id>:<seq>``. A client that comes back with
``Last-Event-ID`` resumes right after that event, whichever replica it reaches: the
``COMMIT`` script kept, in the job's hash, the stream entry of each of its events
(``e:<seq>``), and the stream is read from there (``XRANGE`` with an exclusive
start). An ID that is unknown, or whose entry was trimmed, replays the whole retained
history. Every client reads the stream itself (no consumer group): each sees every
event, in commit order.
"""

from __future__ import annotations

from typing import Any, Final, cast

from redis.exceptions import RedisError

from ..sse import Page
from .client import RedisLink
from .stream import entry_key

__all__ = ["StreamHistory"]

_START: Final = "0-0"


class StreamHistory:
    """:class:`poller.daemon.sse.History` of the cluster (cursors are stream entry IDs)."""

    start = _START
    errors: tuple[type[Exception], ...] = (RedisError,)

    def __init__(self, link: RedisLink) -> None:
        self._link = link

    async def position(self, event_id: str | None) -> str | None:
        """The entry after which to read: the newest one without an ID, the entry of the
        event ``event_id``, or None when it is unknown or trimmed."""
        redis, events = self._link.redis, self._link.keys.events
        if event_id is None:
            newest = await redis.xrevrange(events, count=1)
            return str(newest[0][0]) if newest else _START
        job_id, _, seq = event_id.rpartition(":")
        if not job_id or not seq.isdecimal():
            return None
        entry = await redis.hget(self._link.keys.job(job_id), f"e:{int(seq)}")
        if entry is None:
            return None
        oldest = await redis.xrange(events, count=1)
        if not oldest or entry_key(str(entry)) < entry_key(str(oldest[0][0])):
            return None  # trimmed: what followed it may be partly gone too
        return str(entry)

    async def read(self, after: Any, limit: int) -> Page:
        """The events committed after the entry ``after``."""
        entries = cast(
            "list[tuple[str, dict[str, str]]]",
            await self._link.redis.xrange(self._link.keys.events, min=f"({after}", count=limit),
        )
        events = [(f["id"], f["type"], f["body"].encode()) for _, f in entries]
        return events, entries[-1][0] if entries else after
