"""The event stream ``<p>events``: its sinks' consumer groups, its tail, its trimming.

**One active consumer per sink, cluster-wide.** Each push sink (``jsonl``,
``webhook:<digest>``) is a consumer group of the stream and a *unit* that one live
replica holds at a time, claimed as partitions are (see :mod:`.scripts`); the
holder reads the group with ``XREADGROUP``, delivers with the sink's own code (order
per job, retries, dead letters) and acknowledges with ``XACK`` what it delivered.
Each page is read by a script (``READ``) that first checks that Redis still names
this replica, with its token, the sink's holder: if not (Redis lost writes, and
another replica claimed the sink), nothing is read and the sink stops at once. And
before each read, each send (a webhook's POST) and each acknowledgement, the sink
checks on its own clock that it still holds the sink on a trusted lease (see
:mod:`.lease`): after a stall of the event loop past the lease's margin, it stops
before it sends anything more, and its next holder sends the rest, in order.
A sink stays with its holder (no rebalancing: a move would only cost a pause) until
the holder stops, which releases it, or dies, whose lease expiry frees it. The next
holder first takes every entry still pending in the group (``XAUTOCLAIM``, idle time
0: the unit's lease says their consumer is gone; the consumers left with nothing
pending are deleted), delivers them, then reads on. So an
event committed by a replica that dies is still delivered, at least once; failed
attempts are counted in ``<p>sink:<name>:attempts`` so that the dead-letter limit
holds across holders. The JSON-lines sink writes to the holder's own ``--jsonl``
file: together, the replicas' files hold every event at least once, each file in
order per job.

**Redis lost the stream or a group** (a restart without persistence, a failover):
a sink's holder that finds its group gone (``NOGROUP``) makes it again, from the
stream's first entry (what was committed since the loss is delivered), and carries
on.

**The tail.** One ``XREAD BLOCK`` per replica rings the local bell when another
replica commits, so this replica's sinks and ``/events`` streams wake without
polling Redis.

**Trimming.** Every ``trim_every_s``, entries are trimmed (``XTRIM MINID``) that every
sink's group has acknowledged *and* that are older than ``history_retention_s``
(what ``/events`` replays). A group whose sink no replica has announced for
``abandon_after_s`` no longer holds the stream back.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any, Final, cast

import anyio
from redis.exceptions import RedisError, ResponseError

from ..outbox import Changes
from ..rows import Pending
from ..sinks import FeedLost, Sink, run_sink
from .client import RedisLink
from .keys import SINK_UNIT

__all__ = [
    "GroupFeed",
    "SinkUnit",
    "StreamTail",
    "create_groups",
    "entry_key",
    "trim",
    "trim_forever",
]

log = logging.getLogger("poller.daemon.cluster")

_PAGE: Final = 500
_POLL_S: Final = 1.0
_RETRY_MIN_S: Final = 0.25
_RETRY_MAX_S: Final = 5.0


def entry_key(entry_id: str) -> tuple[int, int]:
    """A stream entry ID as a sortable pair: ``"1700000000000-3"`` -> ``(1700000000000, 3)``."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def create_groups(link: RedisLink, sinks: Sequence[str]) -> None:
    """A consumer group per sink, reading from now on (a new sink starts with the events
    committed from then on); an existing group is left as it is.

    Raises:
        RedisError: Redis cannot be reached.
    """
    for name in sinks:
        await _create_group(link, name, "$")


async def _create_group(link: RedisLink, name: str, start: str) -> None:
    try:
        await link.redis.xgroup_create(link.keys.events, name, id=start, mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def _recreate_group(link: RedisLink, name: str, exc: RedisError) -> bool:
    """Make the group again if ``exc`` says Redis lost it (or the stream); whether it did.

    Raises:
        RedisError: Redis cannot be reached.
    """
    if not isinstance(exc, ResponseError) or "NOGROUP" not in str(exc):
        return False
    log.warning("sink %s: Redis lost its consumer group (a restart?): made again", name)
    await _create_group(link, name, "0")
    return True


class GroupFeed:
    """A sink's undelivered events from its consumer group, page by page: first those
    pending for this consumer (taken over, or read before a restart), then new ones.
    It is the sink's :class:`~poller.daemon.sinks.EventFeed`.

    Args:
        link: the Redis connections.
        group: the group (the sink's name).
        consumer: this replica's ID.
        token: the fencing token this replica claimed the sink with.
        changes: the bell rung when events are committed.
        deliverable: whether this replica may still deliver the sink (asked before each
            read, send and acknowledgement).
    """

    def __init__(
        self,
        link: RedisLink,
        *,
        group: str,
        consumer: str,
        token: str,
        changes: Changes,
        deliverable: Callable[[], bool] = lambda: True,
        page: int = _PAGE,
    ) -> None:
        self._link = link
        self._group = group
        self._consumer = consumer
        self._token = token
        self.deliverable = deliverable
        self._changes = changes
        self._page = page
        self._attempts_key = link.keys.attempts(group)
        self._position = "0"
        self._entries: dict[int, str] = {}
        self._unacked: list[str] = []
        """Entries delivered whose acknowledgement failed: sent again with the next."""
        self._next_rowid = 0
        self._closed = False

    def close(self) -> None:
        """End the feed: the sink finishes what it has read; the rest stays in the group."""
        self._closed = True
        self._changes.ring()

    def rewind(self) -> None:
        """Read again from the first event pending for this consumer (after a failure)."""
        self._position = "0"
        self._entries.clear()

    async def next_page(self) -> list[Pending]:
        """The next events to deliver; empty once closed.

        Raises:
            FeedLost: Redis does not name this replica the sink's holder.
        """
        delay_s = _RETRY_MIN_S
        while not self._closed:
            seen = self._changes.version
            try:
                if self._unacked and self.deliverable():  # else they hold the trim back
                    await self._acknowledge()
                rows = await self._read()
            except RedisError as exc:
                with contextlib.suppress(RedisError):
                    if await _recreate_group(self._link, self._group, exc):
                        continue
                self._link.failed(exc, f"reading the events of sink {self._group}")
                await anyio.sleep(delay_s)
                delay_s = min(_RETRY_MAX_S, delay_s * 2)
                continue
            self._link.ok()
            delay_s = _RETRY_MIN_S
            if rows:
                return rows
            if self._position == ">" and not self._closed:
                with anyio.move_on_after(_POLL_S):
                    await self._changes.wait(seen)
        return []

    async def _read(self) -> list[Pending]:
        link = self._link
        if not self.deliverable():
            raise FeedLost(f"sink {self._group} is no longer this replica's")
        args = [link.keys.prefix, self._consumer, self._token, self._group]
        reply = await link.scripts.run(link.scripts.read, [*args, self._position, self._page])
        if not reply[0]:
            raise FeedLost(f"sink {self._group} is not this replica's in Redis")
        entries = cast("list[tuple[str, list[str] | None]]", reply[1])
        counts = cast("list[str | None]", reply[2])
        if self._position != ">":
            if not entries:
                self._position = ">"  # every pending one read: on to new ones
                return []
            self._position = entries[-1][0]
        gone = [entry for entry, fields in entries if not fields]
        if gone:  # trimmed while pending (not by this cluster's trimming): nothing to send
            await link.redis.xack(link.keys.events, self._group, *gone)
        rows = []
        for (entry, flat), attempts in zip(entries, counts, strict=True):
            if not flat:
                continue
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            self._next_rowid += 1
            self._entries[self._next_rowid] = entry
            rows.append(
                Pending(
                    rowid=self._next_rowid,
                    id=fields["id"],
                    job_id=fields["job"],
                    body=fields["body"].encode(),
                    attempts=int(attempts or 0),
                )
            )
        return rows

    async def done(self, rowids: Sequence[int]) -> None:
        """Acknowledge delivered (or dead-lettered) events. If Redis cannot be reached,
        they are acknowledged with the next ones, or before the next page is read; when
        the sink is no longer this replica's, they stay pending (its next holder sends
        them again: at least once)."""
        entries = [self._entries.pop(rowid) for rowid in rowids if rowid in self._entries]
        if not self.deliverable():
            return
        self._unacked += entries
        for attempt in range(3):
            if not self._unacked:
                return
            try:
                await self._acknowledge()
                return
            except RedisError as exc:
                self._link.failed(exc, f"acknowledging events of sink {self._group}")
                await anyio.sleep(_RETRY_MIN_S * 2**attempt)

    async def _acknowledge(self) -> None:
        """Acknowledge :attr:`_unacked` (kept if Redis cannot be reached)."""
        entries, self._unacked = self._unacked, []
        try:
            pipe = self._link.redis.pipeline(transaction=False)
            pipe.xack(self._link.keys.events, self._group, *entries)
            pipe.hdel(self._attempts_key, *entries)
            await pipe.execute()
        except BaseException:
            self._unacked = entries + self._unacked
            raise

    async def attempted(self, rowid: int, attempts: int) -> None:
        """Count failed attempts in Redis, so the count survives a change of holder."""
        entry = self._entries.get(rowid)
        if entry is None:
            return
        try:
            await self._link.redis.hset(self._attempts_key, entry, attempts)
        except RedisError as exc:
            self._link.failed(exc, f"counting attempts of sink {self._group}")


class SinkUnit:
    """A push sink as a unit of the cluster: delivered by this replica while it holds
    it (see the module docstring)."""

    def __init__(
        self,
        sink: Sink,
        link: RedisLink,
        changes: Changes,
        consumer: str,
        trusted: Callable[[], bool] = lambda: True,
    ) -> None:
        self.sink = sink
        self.name = sink.name
        self.unit = f"{SINK_UNIT}{sink.name}"
        self._link = link
        self._changes = changes
        self._consumer = consumer
        self._trusted = trusted
        self._scope: anyio.CancelScope | None = None
        self._feed: GroupFeed | None = None
        self.token = ""
        self.held = False
        self.running = False

    def take(self, token: str) -> None:
        """This replica claimed the sink with ``token``: :meth:`run` delivers it."""
        self.token = token
        self.held = self.running = True

    async def run(self, delay_s: float = 0.0) -> None:
        """After ``delay_s`` (what the claim said to wait), take over what is pending in
        the group, then deliver until stopped, or until Redis names another holder."""
        self.running = True
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                await anyio.sleep(delay_s)
                await self.adopt()
                feed = self._feed = GroupFeed(
                    self._link,
                    group=self.name,
                    consumer=self._consumer,
                    token=self.token,
                    changes=self._changes,
                    deliverable=self.deliverable,
                )
                await run_sink(self.sink, feed, errors=(OSError, RedisError))
        except* FeedLost as lost:
            self.held = False
            log.warning("sink %s stopped: %s", self.name, lost.exceptions[0])
        finally:
            self._scope = self._feed = None
            self.running = False

    def deliverable(self) -> bool:
        """Whether this replica may deliver the sink now: it holds it, and its lease is
        trusted (asking fences the replica if the lease ran out: see :mod:`.membership`)."""
        return self.held and self._trusted()

    def stop(self) -> None:
        """Finish what was read, then end (a graceful stop)."""
        if self._feed is not None:
            self._feed.close()
        elif self._scope is not None:
            self._scope.cancel()

    def cancel(self) -> None:
        """End at once (fenced): what is not acknowledged stays pending for the next holder."""
        self.held = False
        if self._scope is not None:
            self._scope.cancel()

    async def adopt(self) -> None:
        """Make every entry pending in the group this consumer's (``XAUTOCLAIM``, by the
        ``ADOPT`` script: only while the sink is this replica's in Redis).

        Raises:
            FeedLost: it is not.
        """
        link = self._link
        delay_s = _RETRY_MIN_S
        start = "0-0"
        adopted = 0
        while True:
            args = [link.keys.prefix, self._consumer, self.token, self.name, start, _PAGE]
            try:
                reply: list[Any] = await link.scripts.run(link.scripts.adopt, args)
            except RedisError as exc:
                with contextlib.suppress(RedisError):
                    if await _recreate_group(link, self.name, exc):
                        continue
                link.failed(exc, f"taking over sink {self.name}")
                await anyio.sleep(delay_s)
                delay_s = min(_RETRY_MAX_S, delay_s * 2)
                continue
            link.ok()
            if not reply[0]:
                raise FeedLost(f"sink {self.name} is not this replica's in Redis")
            start = str(reply[1])
            adopted += int(reply[2])
            if start == "0-0":
                break
        if adopted:
            log.info("sink %s taken over with %d pending event(s)", self.name, adopted)


class StreamTail:
    """Rings the bell when any replica commits events (one ``XREAD BLOCK``)."""

    def __init__(self, link: RedisLink, changes: Changes) -> None:
        self._link = link
        self._changes = changes

    async def run(self) -> None:
        """Forever."""
        last = "$"
        while True:
            try:
                if last == "$":  # from the newest entry: none is missed if a read fails
                    newest = await self._link.redis.xrevrange(self._link.keys.events, count=1)
                    last = str(newest[0][0]) if newest else "0-0"
                reply = cast(
                    "list[tuple[str, list[tuple[str, dict[str, str]]]]]",
                    await self._link.blocking.xread(
                        {self._link.keys.events: last},
                        count=_PAGE,
                        block=int(self._link.block_s * 1000),
                    ),
                )
            except RedisError:
                await anyio.sleep(_POLL_S)  # the others report Redis' state
                continue
            if reply:
                last = reply[0][1][-1][0]
                self._changes.ring()


async def trim(
    link: RedisLink,
    *,
    retention_s: float,
    abandon_after_s: float,
    announce: Sequence[str] = (),
) -> int:
    """Announce these sinks (as this replica's, now on Redis's clock: the one every
    replica compares with), then trim the stream once (see the module docstring);
    returns the entries removed.

    Raises:
        RedisError: Redis cannot be reached.
    """
    redis, events = link.redis, link.keys.events
    seconds, micros = await redis.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    if announce:
        await redis.hset(link.keys.sinks, mapping=dict.fromkeys(announce, now_ms))
    try:
        groups = await redis.xinfo_groups(events)
    except ResponseError:  # no stream yet
        return 0
    announced = {name: int(at) for name, at in (await redis.hgetall(link.keys.sinks)).items()}
    bound = (now_ms - int(retention_s * 1000), 0)
    for group in groups:
        name = str(group["name"])
        if announced.get(name, 0) < now_ms - abandon_after_s * 1000:
            continue
        ms, seq = entry_key(str(group["last-delivered-id"]))
        safe = (ms, seq + 1)
        if int(group["pending"]):
            oldest = (await redis.xpending(events, name))["min"]
            if oldest is not None:  # None: acknowledged since XINFO answered
                safe = min(safe, entry_key(str(oldest)))
        bound = min(bound, safe)
    if bound[0] <= 0:
        return 0
    removed: int = await redis.xtrim(events, minid=f"{bound[0]}-{bound[1]}", approximate=False)
    return removed


async def trim_forever(
    link: RedisLink,
    sinks: Sequence[str],
    *,
    retention_s: float,
    every_s: float = 10.0,
    abandon_after_s: float = 600.0,
) -> None:
    """Announce this replica's sinks and trim the stream, every ``every_s``."""
    while True:
        try:
            removed = await trim(
                link, retention_s=retention_s, abandon_after_s=abandon_after_s, announce=sinks
            )
            if removed:
                log.debug("trimmed %d event(s) from the stream", removed)
        except RedisError as exc:
            link.failed(exc, "trimming the stream")
        await anyio.sleep(every_s)
