"""This replica's membership: its lease in Redis, renewed every second, and the fence.

:meth:`Membership.register` takes a lease (a fencing token from ``INCR``) for the
replica ID; if a live lease holds the ID (the same ID restarted within the lease's
life), it waits for that lease to expire. :meth:`Membership.run` renews it every
``renew_every_s`` and learns the live replicas from each renewal; a change wakes the
owner. A watchdog fences the replica (see :mod:`.lease`) when the lease was not
renewed in time, or at once when Redis says the lease is gone: every ``on_fence``
callback runs (the owner drops every job and sink), and the replica registers again,
with a new token, once its old lease has expired in Redis.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Final

import anyio
from redis.exceptions import RedisError

from ..._version import __version__
from .client import RedisLink
from .lease import Lease

__all__ = ["FENCED", "OK", "REGISTERING", "Membership"]

log = logging.getLogger("poller.daemon.cluster")

OK: Final = "ok"
FENCED: Final = "fenced"
REGISTERING: Final = "registering"
_WATCH_S: Final = 0.1
_RETRY_S: Final = 0.5


class Membership:
    """The replica's lease (see the module docstring).

    Args:
        link: the Redis connections.
        replica_id: this replica's ID.
        ttl_s: the lease's time to live in Redis.
        margin_s: how long before the lease may expire the replica stops trusting it.
        renew_every_s: the renewal period.
    """

    def __init__(
        self,
        link: RedisLink,
        replica_id: str,
        *,
        ttl_s: float = 5.0,
        margin_s: float = 1.5,
        renew_every_s: float = 1.0,
    ) -> None:
        self.link = link
        self.id = replica_id
        self.lease = Lease(ttl_s=ttl_s, margin_s=margin_s)
        self.renew_every_s = renew_every_s
        self.state = REGISTERING
        self.live: tuple[str, ...] = ()
        """The live replicas (sorted) as of the last renewal."""
        self.on_fence: list[Callable[[], None]] = []
        self.on_change: list[Callable[[], None]] = []
        self.fences = 0
        self.registered = anyio.Event()
        self.renew_now = anyio.Event()

    @property
    def token(self) -> str:
        """The fencing token of the current registration ('' when none)."""
        return str(self.lease.token) if self.lease.token is not None else ""

    def trusted(self) -> bool:
        """Whether this replica may poll and commit now; fences it the moment its lease
        runs out (synchronous: the transport asks before every request)."""
        if self.lease.valid(time.monotonic()):
            return True
        if self.state == OK:
            self.fence("its lease was not renewed in time")
        return False

    def fence(self, why: str) -> None:
        """Stop acting as a holder of anything: every ``on_fence`` callback runs."""
        if self.state != OK:
            return
        self.state = FENCED
        self.fences += 1
        self.lease.lost()
        self.registered = anyio.Event()
        log.warning(
            "replica %s fenced: %s; it polls nothing until it registers again", self.id, why
        )
        for callback in self.on_fence:
            callback()

    async def register(self) -> None:
        """Take a lease for the replica ID; retried until it succeeds."""
        nonce = os.urandom(8).hex()
        ttl_ms = int(self.lease.ttl_s * 1000)
        while True:
            sent_at = time.monotonic()
            try:
                granted, value = await self.link.scripts.run(
                    self.link.scripts.register,
                    [self.link.keys.prefix, self.id, ttl_ms, nonce, __version__],
                )
            except RedisError as exc:
                self.link.failed(exc, "registering")
                await anyio.sleep(_RETRY_S)
                continue
            self.link.ok()
            if granted:
                break
            wait_s = max(int(value), 100) / 1000
            log.warning(
                "replica ID %s is held by a live lease (a previous run?); waiting %.1f s",
                self.id,
                wait_s,
            )
            await anyio.sleep(min(wait_s, self.lease.ttl_s))
        self.lease.registered(int(value), sent_at)
        self.state = OK
        self.registered.set()
        log.info("replica %s registered (token %s)", self.id, value, extra={"replica": self.id})
        self._changed()

    async def run(self) -> None:
        """Renew the lease forever; register again after a fence."""
        async with anyio.create_task_group() as group:
            group.start_soon(self._watch)
            while True:
                if self.state != OK:
                    await self.register()
                    continue
                await self._renew()
                with anyio.move_on_after(self.renew_every_s):
                    await self.renew_now.wait()
                self.renew_now = anyio.Event()

    async def _renew(self) -> None:
        token = self.token
        sent_at = time.monotonic()
        ttl_ms = int(self.lease.ttl_s * 1000)
        try:
            reply = await self.link.scripts.run(
                self.link.scripts.heartbeat, [self.link.keys.prefix, self.id, token, ttl_ms]
            )
        except RedisError as exc:
            self.link.failed(exc, "renewing the lease")
            return
        self.link.ok()
        if token != self.token:  # fenced meanwhile: this reply is about the old lease
            return
        if not reply[0]:
            self.fence("Redis says its lease is gone")
            return
        self.lease.renewed(sent_at)
        live = tuple(sorted(reply[2]))
        if live != self.live:
            self.live = live
            self._changed()

    async def _watch(self) -> None:
        """Fence the replica as soon as its lease is no longer to be trusted."""
        while True:
            self.trusted()
            remaining = self.lease.remaining_s(time.monotonic())
            await anyio.sleep(min(max(remaining, _WATCH_S), 1.0))

    def _changed(self) -> None:
        for callback in self.on_change:
            callback()

    async def leave(self) -> None:
        """Delete the lease (a graceful stop), so the others take over at once."""
        token = self.token
        self.state = FENCED
        self.lease.lost()
        if not token:
            return
        try:
            await self.link.scripts.run(
                self.link.scripts.leave, [self.link.keys.prefix, self.id, token]
            )
        except RedisError as exc:
            log.warning("could not delete the lease (%s): it expires by itself", exc)
