"""The replica's Redis connections, the scripts, its errors, and the checks at start.

Two redis-py asyncio clients: one for commands and scripts, with short socket
timeouts and no retries of its own (a call to a Redis that does not answer must fail
within a second or two, so that a replica notices in time that it cannot renew its
lease; the callers retry on their own schedule, and every script is safe to send
again); and one for what blocks (pub/sub, ``XREAD BLOCK``), which waits
:attr:`RedisLink.block_s` for news and gives a connection up when it heard nothing
for :attr:`RedisLink.dead_after_s` (its read timeout; pub/sub pings when quiet), with
TCP keepalive probes where the platform has them: a connection that died silently (a
half-open one: Redis restarted behind a NAT, a network cut) is found within seconds,
not hours. Scripts go by ``EVALSHA`` (redis-py loads them again after
``NOSCRIPT``).

The URL may carry a password: it is never logged nor put in an error; :func:`redact`
gives what may be shown. redis-py's own messages name the host and port only.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any, Final

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from ..._redis_url import redact_url
from ...errors import PollerError, TransportError
from . import scripts
from .keys import SLOTS, Keys

__all__ = [
    "ClusterError",
    "NotOwnedError",
    "RedisLink",
    "Scripts",
    "check_server",
    "default_replica_id",
    "describe",
]

log = logging.getLogger("poller.daemon.cluster")

_TIMEOUT_S: Final = 2.0
_BLOCK_S: Final = 5.0
_SILENCE_MARGIN_S: Final = 5.0
_KEEPALIVE: Final = (  # idle 5 s, then a probe every 2 s, given up after 3; unacked: 10 s
    ("TCP_KEEPIDLE", 5),
    ("TCP_KEEPINTVL", 2),
    ("TCP_KEEPCNT", 3),
    ("TCP_USER_TIMEOUT", 10_000),
)
_MIN_VERSION: Final = (6, 2)  # XAUTOCLAIM, XTRIM MINID, exclusive XRANGE bounds


class ClusterError(PollerError):
    """The cluster cannot start: Redis is too old, or the namespace was made with other
    settings (the message says which)."""


class NotOwnedError(TransportError):
    """A poll this replica may not send: the job is not (or no longer) its own, or its
    lease is not to be trusted. The request was not sent."""


def describe(exc: BaseException) -> str:
    """A Redis error in a few words: its class, and redis-py's message (which names the
    host and port, never a password)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def default_replica_id() -> str:
    """The host name (its first label) and a random tag: unique per process."""
    host = socket.gethostname().split(".")[0] or "replica"
    clean = "".join(c if c.isalnum() or c in "_.-" else "-" for c in host)[:48]
    return f"{clean}-{os.urandom(3).hex()}"


class Scripts:
    """The Lua scripts of :mod:`.scripts`, registered on a client."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.register = client.register_script(scripts.REGISTER)
        self.heartbeat = client.register_script(scripts.HEARTBEAT)
        self.leave = client.register_script(scripts.LEAVE)
        self.claim = client.register_script(scripts.CLAIM)
        self.release = client.register_script(scripts.RELEASE)
        self.add = client.register_script(scripts.ADD)
        self.remove = client.register_script(scripts.REMOVE)
        self.commit = client.register_script(scripts.COMMIT)
        self.adopt = client.register_script(scripts.ADOPT)
        self.read = client.register_script(scripts.READ)

    @staticmethod
    async def run(script: AsyncScript, args: list[Any]) -> Any:
        """Run a script with these arguments (keys are built from ``args[0]``)."""
        return await script(keys=[], args=args)


class RedisLink:
    """The replica's connections to Redis, and whether Redis answered lately.

    Args:
        url: the Redis URL (secret: may carry a password).
        namespace: the key prefix.
        block_s: how long a blocking call waits for news.
        silence_margin_s: how much longer a blocking connection may stay silent before
            it is given up.
    """

    def __init__(
        self,
        url: str,
        namespace: str,
        *,
        block_s: float = _BLOCK_S,
        silence_margin_s: float = _SILENCE_MARGIN_S,
    ) -> None:
        self.name = redact_url(url)
        self.keys = Keys(namespace)
        self.block_s = block_s
        self.dead_after_s = block_s + silence_margin_s
        self.redis: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_timeout=_TIMEOUT_S,
            socket_connect_timeout=_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )
        # Pub/sub and XREAD BLOCK wait on their connection: up to block_s for news, and
        # never longer than dead_after_s for an answer.
        self.blocking: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_timeout=self.dead_after_s,
            socket_connect_timeout=_TIMEOUT_S,
            socket_keepalive=True,
            socket_keepalive_options={
                getattr(socket, name): value for name, value in _KEEPALIVE if hasattr(socket, name)
            },
            health_check_interval=15,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )
        self.scripts = Scripts(self.redis)
        self.error: str | None = None
        """The last Redis error (None once a call succeeds)."""
        self.errors = 0
        self._failing_since: float | None = None

    def ok(self) -> None:
        """A call succeeded."""
        if self._failing_since is not None:
            down_s = time.monotonic() - self._failing_since
            log.warning("Redis %s answers again (after %.1f s)", self.name, down_s)
            self._failing_since = None
        self.error = None

    def failed(self, exc: BaseException, doing: str) -> None:
        """A call failed: logged once per outage (then at debug level)."""
        self.errors += 1
        self.error = describe(exc)
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            log.error("Redis %s: %s failed (%s); retrying", self.name, doing, self.error)
        else:
            log.debug("Redis %s: %s failed (%s)", self.name, doing, self.error)

    async def aclose(self) -> None:
        """Close every connection."""
        await self.redis.aclose()
        await self.blocking.aclose()


async def check_server(link: RedisLink) -> None:
    """Check Redis before the replica joins: its version, its persistence (a warning
    when a crash of Redis would lose transitions), its eviction policy (a warning when
    it may evict keys: leases, holders, jobs), and the namespace's partition count.

    Raises:
        ClusterError: Redis is too old, or the namespace has another partition count.
        RedisError: Redis cannot be reached.
    """
    r = link.redis
    server = await r.info("server")
    version = tuple(int(x) for x in str(server.get("redis_version", "0.0")).split(".")[:2])
    if version < _MIN_VERSION:
        raise ClusterError(
            f"Redis {server.get('redis_version')} is too old: cluster mode needs 6.2 or later"
        )
    await _check_persistence(r, link.name)
    await _check_eviction(r, link.name)
    await r.hsetnx(link.keys.meta, "slots", SLOTS)
    slots = str(await r.hget(link.keys.meta, "slots"))
    if slots != str(SLOTS):
        raise ClusterError(
            f"the namespace was made with {slots} partitions, this version uses {SLOTS}: "
            "use another redis_namespace"
        )


async def _check_eviction(r: aioredis.Redis, name: str) -> None:
    memory = await r.info("memory")
    policy = str(memory.get("maxmemory_policy", "noeviction"))
    if int(memory.get("maxmemory", 0) or 0) and policy != "noeviction":
        log.warning(
            "Redis %s has maxmemory-policy %s: when full it evicts keys, which may be a "
            "replica's lease, who holds a partition or a sink, or jobs (lost silently); set "
            "maxmemory-policy noeviction (writes then fail, and the replicas say so)",
            name,
            policy,
        )


async def _check_persistence(r: aioredis.Redis, name: str) -> None:
    persistence = await r.info("persistence")
    aof = str(persistence.get("aof_enabled", "0")) == "1"
    try:
        config = await r.config_get("save")
        fsync = (await r.config_get("appendfsync")).get("appendfsync")
        snapshots = bool(str(config.get("save", "")).strip())
    except ResponseError:  # CONFIG is refused on many managed services: say what is known
        snapshots, fsync = True, None
    if not aof and not snapshots:
        log.warning(
            "Redis %s runs without persistence (no AOF, no RDB snapshots): if Redis restarts, "
            "the job set and every undelivered event are lost; set appendonly yes and "
            "appendfsync everysec",
            name,
        )
    elif not aof:
        log.warning(
            "Redis %s persists by RDB snapshots only: a crash of Redis loses the transitions "
            "committed since the last snapshot; set appendonly yes and appendfsync everysec",
            name,
        )
    elif fsync == "no":
        log.warning(
            "Redis %s has appendfsync no: a crash of its machine loses up to ~30 s of "
            "transitions; appendfsync everysec bounds that at ~1 s",
            name,
        )
