"""The cluster's outbox: engine events in, committed once to Redis, in order.

The engine hands each event to :meth:`ClusterOutbox.offer`, inline. The event's
record is built there, from what the owner knows of the job (:class:`Owned`: its
generation, ``seq`` and last status, credential name and metadata), which it then
advances; the record waits in a list. :meth:`ClusterOutbox.run` sends what has piled
up to the ``COMMIT`` script, in order, one batch per call (see :mod:`.scripts`), and
rings the bell for the sinks and ``/events`` streams of this replica.

What the script refuses is dropped, never retried: ``fenced``/``notmine`` (the job is
no longer this replica's: its next owner resumes from the stored status and ``seq``
and observes the change again, under the same event ID; on ``notmine`` the owner is
told the partition, which Redis does not name this replica's, and stops polling it),
``stale``/``unknown`` (this replica's view of the job was behind: the owner reloads
it). A call that fails (Redis
unreachable) is retried with the same events in front; a retry of a batch Redis did
commit finds them ``dup``. Events still queued when the process dies are observed
again by the next owner, as after a crash of the single-node daemon.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import anyio
import msgspec
from redis.exceptions import RedisError

from ...events import Event, Transition
from ..outbox import Changes
from ..records import encode_record, error_info, failure_record, transition_record
from .client import RedisLink
from .membership import Membership

__all__ = ["ClusterOutbox", "Owned"]

log = logging.getLogger("poller.daemon.cluster")

_BATCH_MAX: Final = 500
_RETRY_MIN_S: Final = 0.25
_RETRY_MAX_S: Final = 5.0
_ERROR: Final = "error"


@dataclass(slots=True)
class Owned:
    """A job this replica polls, as it last committed it (advanced at each event)."""

    slot: int
    gen: int
    seq: int
    last_status: str | None
    credential: str | None
    metadata: dict[str, Any] | None


class ClusterOutbox:
    """Commits engine events to Redis (see the module docstring).

    Args:
        link: the Redis connections.
        membership: whose token every commit carries.
        owned: the jobs this replica polls (the owner's table, shared).
        changes: rung after each commit that added events.
        on_stale: told the jobs whose view was behind, to reload them.
        on_lost: told the partitions of events refused as ``notmine``, with the token
            the commit carried.
    """

    def __init__(
        self,
        link: RedisLink,
        membership: Membership,
        owned: MutableMapping[str, Owned],
        changes: Changes,
        on_stale: Callable[[list[str]], None],
        on_lost: Callable[[list[int], str], None] | None = None,
    ) -> None:
        self._link = link
        self._membership = membership
        self._owned = owned
        self._changes = changes
        self._on_stale = on_stale
        self._on_lost = on_lost
        self._queue: list[list[Any]] = []
        self._wake = anyio.Event()
        self._idle = anyio.Event()
        self._idle.set()
        self._closed = False
        self.finishing: set[str] = set()
        """Jobs whose final event is queued or being sent: their owner must not track
        them again from Redis meanwhile (Redis does not know yet that they ended)."""
        self.committed = 0
        self.dropped = 0
        self.failures = 0

    @property
    def backlog(self) -> int:
        """Events offered, not committed yet."""
        return len(self._queue)

    def offer(self, event: Event) -> None:
        """Build the event's record and queue it; never blocks (the engine callback)."""
        owned = self._owned.get(event.job_id)
        if owned is None:  # not ours (any more): its next owner observes it again
            self.dropped += 1
            return
        seq = owned.seq + 1
        if isinstance(event, Transition):
            record = transition_record(
                event,
                seq=seq,
                previous=owned.last_status,
                credential=owned.credential,
                metadata=owned.metadata,
            )
            status = event.current.value
            args = [
                event.job_id,
                owned.slot,
                owned.gen,
                seq,
                owned.last_status or "",
                record.type,
                status,
                event.organization_id or "",
                msgspec.json.encode(event.job).decode(),
                "",
            ]
            owned.last_status = status
        else:
            record = failure_record(
                event, seq=seq, credential=owned.credential, metadata=owned.metadata
            )
            error = msgspec.json.encode(error_info(event.error)).decode()
            args = [
                event.job_id,
                owned.slot,
                owned.gen,
                seq,
                "",
                record.type,
                _ERROR,
                event.organization_id or "",
                "",
                error,
            ]
        args += [encode_record(record).decode(), "1" if record.final else "0"]
        owned.seq = seq
        if record.final:
            del self._owned[event.job_id]
            self.finishing.add(event.job_id)
        self._queue.append(args)
        self._idle = anyio.Event() if self._idle.is_set() else self._idle
        self._wake.set()

    def close(self) -> None:
        """No more events will come: :meth:`run` returns once the queue is sent."""
        self._closed = True
        self._wake.set()

    def clear(self) -> int:
        """Drop every queued event (fenced: they are no longer this replica's to commit).
        Returns how many."""
        dropped = len(self._queue)
        self._queue.clear()
        self.finishing.clear()
        self.dropped += dropped
        self._idle.set()
        return dropped

    async def flush(self) -> None:
        """Wait until everything offered so far is sent (or dropped)."""
        await self._idle.wait()

    async def run(self) -> None:
        """Commit batches until closed and empty."""
        delay_s = _RETRY_MIN_S
        while True:
            if not self._queue:
                self._idle.set()
                if self._closed:
                    return
                await self._wake.wait()
                self._wake = anyio.Event()
                continue
            batch = self._queue[:_BATCH_MAX]
            token = self._membership.token
            try:
                results = await self._commit(batch, token)
            except RedisError as exc:
                self.failures += 1
                self._link.failed(exc, f"committing {len(batch)} event(s)")
                await anyio.sleep(delay_s)
                delay_s = min(_RETRY_MAX_S, delay_s * 2)
                continue
            self._link.ok()
            delay_s = _RETRY_MIN_S
            # The queue may have been cleared meanwhile (a fence): drop only what was sent.
            if self._queue[: len(batch)] == batch:
                del self._queue[: len(batch)]
            self._settle(batch, results, token)

    async def _commit(self, batch: Sequence[list[Any]], token: str) -> list[str]:
        args: list[Any] = [self._link.keys.prefix, self._membership.id, token]
        for item in batch:
            args += item
        results: list[str] = await self._link.scripts.run(self._link.scripts.commit, args)
        return results

    def _settle(self, batch: Sequence[list[Any]], results: Sequence[str], token: str) -> None:
        for item in batch:
            if item[-1] == "1":
                self.finishing.discard(item[0])
        if results == ["fenced"]:
            self.dropped += len(batch)
            log.warning("%d event(s) not committed: this replica's lease is gone", len(batch))
            return
        added = 0
        stale: list[str] = []
        lost: set[int] = set()
        for item, result in zip(batch, results, strict=True):
            if result in ("stale", "unknown"):
                stale.append(item[0])
            elif result == "notmine":
                self.dropped += 1
                lost.add(item[1])
            elif result != "dup":
                added += 1
        if lost and self._on_lost is not None:
            log.warning("%d event(s) refused: their partition is not this replica's", len(lost))
            self._on_lost(sorted(lost), token)
        if stale:
            log.info("%d event(s) refused (behind the stored state): reloading", len(stale))
            self._on_stale(list(dict.fromkeys(stale)))
            self.dropped += len(stale)
        if added:
            self.committed += added
            self._changes.ring()
