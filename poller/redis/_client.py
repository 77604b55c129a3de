"""The coordinator's Redis connection: URL checks, a redacted name, script calls.

One redis-py asyncio client per coordinator, with short socket timeouts and no
retries of its own: a slow or absent Redis must make a call fail fast, so that the
engine falls back to local budgets instead of waiting (the coordinator retries on its
own schedule). Scripts go by ``EVALSHA``; after ``NOSCRIPT`` (a restarted or flushed
server) they are loaded and the calls sent once more.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from ..errors import ConfigError
from ._scripts import Script

__all__ = ["Call", "ScriptClient", "check_namespace", "check_url"]

_SCHEMES: Final = ("redis", "rediss", "unix")
_NAMESPACE: Final = re.compile(r"[A-Za-z0-9_.:-]{1,64}")

Call = tuple[Script, list[str], list[Any]]
"""A script, its keys and its arguments."""


def check_url(url: object) -> str:
    """The URL, if redis-py can use it. Raises :class:`ConfigError` (never quoting the
    URL, which may carry a password)."""
    if not isinstance(url, str) or not url or not url.isprintable() or " " in url:
        raise ConfigError("redis url: must be a URL such as redis://127.0.0.1:6379/0")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError("redis url: not a valid URL") from None
    if parts.scheme not in _SCHEMES:
        raise ConfigError(f"redis url: the scheme must be one of {', '.join(_SCHEMES)}")
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigError("redis url: no host")
    try:
        aioredis.ConnectionPool.from_url(url)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"redis url: {type(exc).__name__}") from None
    return url


def check_namespace(namespace: object) -> str:
    """The namespace, if it is 1-64 letters, digits or ``_.:-``. Raises ConfigError."""
    if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
        raise ConfigError("namespace: must be 1-64 characters among letters, digits and _.:-")
    return namespace


class ScriptClient:
    """A redis-py asyncio client that runs :class:`Script` calls (see the module)."""

    def __init__(self, url: str, *, timeout_s: float) -> None:
        self.redis: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )

    async def run(self, script: Script, keys: list[str], argv: list[Any]) -> Any:
        """One script call."""
        return (await self.run_many([(script, keys, argv)]))[0]

    async def run_many(self, calls: Sequence[Call]) -> list[Any]:
        """Several script calls in one round trip; their results in order. A call that
        failed raises its error (after the others ran)."""
        for attempt in (0, 1):
            if len(calls) == 1:
                script, keys, argv = calls[0]
                try:
                    return [await self.redis.evalsha(script.sha, *script.args(keys, argv))]
                except NoScriptError:
                    if attempt:
                        raise
                    await self.redis.script_load(script.source)
                    continue
            pipe = self.redis.pipeline(transaction=False)
            for script, keys, argv in calls:
                pipe.evalsha(script.sha, *script.args(keys, argv))
            results: list[Any] = await pipe.execute(raise_on_error=False)
            missing = {c[0].source for c, r in zip(calls, results, strict=True) if _noscript(r)}
            if missing and not attempt:
                for source in missing:
                    await self.redis.script_load(source)
                continue
            for result in results:
                if isinstance(result, Exception):
                    raise result
            return results
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        """Close the connections."""
        await self.redis.aclose()


def _noscript(result: object) -> bool:
    return isinstance(result, NoScriptError) or (
        isinstance(result, RedisError) and str(result).startswith("NOSCRIPT")
    )
