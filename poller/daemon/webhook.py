"""The webhook sink: one signed POST per event, retried, in order per job.

Each event's record is POSTed as is (``Content-Type: application/json``), signed as
Standard Webhooks lay it out (:mod:`.signature`: ``webhook-id`` is the record's
stable ``id``, drop repeats by it; ``webhook-timestamp``; ``webhook-signature``), and
with ``X-Poller-Attempt``: 1 for the first try. Each attempt is signed afresh, with
its own timestamp.

A 2xx answer delivers the event. A connection error, a timeout, 408, 425, 429 or a
5xx is retried after an exponential delay (``backoff_s`` doubling up to
``backoff_max_s``, with jitter, never under a ``Retry-After``); any other answer is
permanent. After ``max_attempts`` (or a permanent answer) the event goes to the
dead-letter file with the reason, and the job's next event follows.

Order: events are dealt to ``concurrency`` lanes by job ID, and a lane sends one
event at a time, so a job's events arrive in order while other jobs proceed. Before
each attempt the lane asks the feed whether it may still send (in cluster mode: this
replica still holds the sink, on a trusted lease); if not, the sink stops at once
(:class:`~.sinks.FeedLost`), and the sink's next holder sends what is left, in order.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
import zlib
from collections.abc import Sequence
from typing import Final

import aiohttp
import anyio
import msgspec
from anyio.abc import ObjectReceiveStream
from anyio.streams.memory import MemoryObjectSendStream
from yarl import URL

from .._boundary import parse_retry_after
from .._version import __version__
from . import signature
from .rows import Pending
from .sinks import AppendFile, EventFeed, FeedLost

__all__ = ["ATTEMPT_HEADER", "DeadLetters", "WebhookSink", "retry_delay_s"]

log = logging.getLogger("poller.daemon.webhook")

ATTEMPT_HEADER: Final = "X-Poller-Attempt"
_RETRYABLE_STATUSES: Final = frozenset({408, 425, 429})
_LANE_BUFFER: Final = 64
_ACK_DELAY_S: Final = 0.05


def retry_delay_s(
    attempt: int,
    *,
    base_s: float,
    max_s: float,
    rng: random.Random,
    retry_after_s: float | None = None,
) -> float:
    """The wait after failed attempt number ``attempt`` (1 for the first): ``base_s *
    2**(attempt-1)`` capped at ``max_s``, times a random factor in [0.5, 1], and never
    under the server's ``Retry-After`` (itself capped at ``max_s``)."""
    delay = min(max_s, base_s * 2.0 ** min(attempt - 1, 60)) * (0.5 + 0.5 * rng.random())
    if retry_after_s is not None:
        delay = max(delay, min(max_s, retry_after_s))
    return delay


def _is_retryable(status: int) -> bool:
    return status >= 500 or status in _RETRYABLE_STATUSES


def _origin(url: str) -> str:
    """The URL without path, query or credentials: safe to log."""
    parsed = URL(url)
    return str(parsed.origin()) if parsed.absolute else "?"


class DeadLetters:
    """The dead-letter file: one JSON line per event given up on, with the reason."""

    def __init__(self, path: str) -> None:
        self.file = AppendFile(path)
        self._lock = anyio.Lock()
        self._opened = False

    async def write(self, sink: str, row: Pending, attempts: int, reason: str) -> None:
        """Append an event (the record itself, under ``event``), durably."""
        await self.write_many(sink, [(row, attempts)], reason)

    async def write_many(self, sink: str, rows: Sequence[tuple[Pending, int]], reason: str) -> None:
        """Append events with their attempts so far, in one durable write."""
        dead_at = time.time()
        lines = b"".join(
            msgspec.json.encode(
                {
                    "sink": sink,
                    "event_id": row.id,
                    "job_id": row.job_id,
                    "attempts": attempts,
                    "reason": reason,
                    "dead_at": dead_at,
                    "event": msgspec.Raw(row.body),
                }
            )
            + b"\n"
            for row, attempts in rows
        )
        async with self._lock:
            if not self._opened:
                self.file.open()
                self._opened = True
            await self.file.write(lines)

    def close(self) -> None:
        """Close the file."""
        self.file.close()


class WebhookSink:
    """POSTs every event to ``url`` (see the module docstring), signed with ``key``
    (the HMAC key: :func:`.signature.signing_key` of the configured secret)."""

    def __init__(
        self,
        url: str,
        *,
        key: bytes,
        dead_letters: DeadLetters,
        max_attempts: int = 10,
        timeout_s: float = 10.0,
        backoff_s: float = 1.0,
        backoff_max_s: float = 60.0,
        concurrency: int = 8,
        seed: int | None = None,
    ) -> None:
        # The name is stored with each undelivered event: stable, and no secret in it
        # (a URL may carry a token, so only a digest of it is used).
        self.name = "webhook:" + hashlib.sha256(url.encode()).hexdigest()[:12]
        self.origin = _origin(url)
        self._url = url
        self._key = key
        self._dead_letters = dead_letters
        self._max_attempts = max_attempts
        self._timeout_s = timeout_s
        self._backoff_s = backoff_s
        self._backoff_max_s = backoff_max_s
        self._concurrency = concurrency
        self._rng = random.Random(seed)
        self._acks: list[int] = []
        self._ack_wake = anyio.Event()
        self._lanes_done = False
        self.delivered = 0
        self.dead_lettered = 0
        self.errors = 0
        self.failing: str | None = None

    async def run(self, feed: EventFeed) -> None:
        """Deliver the feed's events until it ends; acknowledgements are batched."""
        timeout = aiohttp.ClientTimeout(total=self._timeout_s)
        connector = aiohttp.TCPConnector(limit=self._concurrency)
        async with (
            aiohttp.ClientSession(timeout=timeout, connector=connector) as session,
            anyio.create_task_group() as acks,
        ):
            acks.start_soon(self._acknowledge, feed)
            async with anyio.create_task_group() as lanes:
                sends: list[MemoryObjectSendStream[Pending]] = []
                for _ in range(self._concurrency):
                    send, receive = anyio.create_memory_object_stream[Pending](_LANE_BUFFER)
                    sends.append(send)
                    lanes.start_soon(self._lane, session, receive, feed)
                try:
                    while rows := await feed.next_page():
                        for row in rows:
                            lane = zlib.crc32(row.job_id.encode()) % len(sends)
                            await sends[lane].send(row)
                finally:
                    for stream in sends:
                        stream.close()
            self._lanes_done = True
            self._ack_wake.set()

    async def _acknowledge(self, feed: EventFeed) -> None:
        try:
            while True:
                await self._ack_wake.wait()
                self._ack_wake = anyio.Event()
                await anyio.sleep(_ACK_DELAY_S)  # let a few more pile up
                await self._flush_acks(feed)
                if self._lanes_done and not self._acks:
                    return
        finally:
            # Cancelled at the shutdown deadline: still record what was delivered.
            with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
                await self._flush_acks(feed)

    async def _flush_acks(self, feed: EventFeed) -> None:
        rowids, self._acks = self._acks, []
        await feed.done(rowids)

    async def _lane(
        self,
        session: aiohttp.ClientSession,
        receive: ObjectReceiveStream[Pending],
        feed: EventFeed,
    ) -> None:
        async with receive:
            async for row in receive:
                await self._deliver(session, row, feed)
                self._acks.append(row.rowid)
                self._ack_wake.set()

    async def _deliver(self, session: aiohttp.ClientSession, row: Pending, feed: EventFeed) -> None:
        attempts = row.attempts
        while True:
            if not feed.deliverable():
                raise FeedLost(f"event {row.id} not sent: the sink is no longer this replica's")
            attempts += 1
            status, retry_after_s, reason = await self._post(session, row, attempts)
            if status is not None and 200 <= status < 300:
                self.delivered += 1
                self.failing = None
                return
            self.errors += 1
            self.failing = f"delivery failed: {reason}"
            permanent = status is not None and not _is_retryable(status)
            if permanent or attempts >= self._max_attempts:
                await self._dead_letters.write(self.name, row, attempts, reason)
                self.dead_lettered += 1
                log.warning(
                    "webhook %s: event %s dead-lettered after %d attempt(s): %s",
                    self.origin,
                    row.id,
                    attempts,
                    reason,
                )
                return
            await feed.attempted(row.rowid, attempts)
            delay_s = retry_delay_s(
                attempts,
                base_s=self._backoff_s,
                max_s=self._backoff_max_s,
                rng=self._rng,
                retry_after_s=retry_after_s,
            )
            log.info(
                "webhook %s: event %s attempt %d failed (%s); retrying in %.1f s",
                self.origin,
                row.id,
                attempts,
                reason,
                delay_s,
            )
            await anyio.sleep(delay_s)

    async def _post(
        self, session: aiohttp.ClientSession, row: Pending, attempt: int
    ) -> tuple[int | None, float | None, str]:
        """One attempt: (HTTP status or None, Retry-After seconds, reason). The one place
        where aiohttp errors are caught; only the class name is kept, as an aiohttp
        message may quote the URL."""
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"poller/{__version__}",
            **signature.headers(self._key, row.id, row.body),
            ATTEMPT_HEADER: str(attempt),
        }
        try:
            async with session.post(
                self._url, data=row.body, headers=headers, allow_redirects=False
            ) as response:
                await response.read()
                retry_after_s = parse_retry_after(response.headers.get("Retry-After"), time.time())
                return response.status, retry_after_s, f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return None, None, type(exc).__name__
