"""The replica's blocking connections to Redis (``XREAD BLOCK``, pub/sub) when one dies
without a word (half-open: nothing comes back, nothing is closed): each is given up
and opened again within seconds, not when TCP gives up hours later; and what the
subscription brings while the replica holds nothing is not kept."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from _cluster import cluster_link, owner_for

from poller.daemon.cluster.membership import OK, Membership
from poller.daemon.cluster.stream import StreamTail
from poller.daemon.outbox import Changes

pytestmark = pytest.mark.anyio

# Short waits, so that a dead connection is given up within a second.
QUICK = {"block_s": 0.3, "silence_margin_s": 0.5}


class HalfOpen:
    """A TCP proxy to Redis whose connections can be made half-open: from then on they
    pass nothing and stay open, while new connections pass as usual."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._live: list[asyncio.Event] = []
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> HalfOpen:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/0"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def silence(self) -> None:
        """Every connection open now passes nothing more, and is never closed."""
        for passing in self._live:
            passing.clear()
        self._live.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._port)
        self._writers += [writer, up_writer]
        passing = asyncio.Event()
        passing.set()
        self._live.append(passing)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, RuntimeError):
                while data := await src.read(65536):
                    if not passing.is_set():
                        await asyncio.Event().wait()  # swallowed, forever
                    dst.write(data)
                    await dst.drain()

        with contextlib.suppress(asyncio.CancelledError):  # closed at the end of the test
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.fixture
async def half_open(redis_url: str) -> AsyncIterator[HalfOpen]:
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    async with HalfOpen(port) as proxy:
        yield proxy


@pytest.fixture
async def direct(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


async def test_the_tail_gives_up_a_silent_connection_and_reads_on(
    half_open: HalfOpen, direct: aioredis.Redis, redis_namespace: str
) -> None:
    changes = Changes()
    async with (
        cluster_link(half_open.url, redis_namespace, **QUICK) as link,
        anyio.create_task_group() as group,
    ):
        group.start_soon(StreamTail(link, changes).run)
        await anyio.sleep(0.5)  # XREAD BLOCK waiting
        half_open.silence()
        seen = changes.version
        await direct.xadd(link.keys.events, {"id": "j:1"})
        with anyio.fail_after(5):
            await changes.wait(seen)
        group.cancel_scope.cancel()


async def test_the_subscription_gives_up_a_silent_connection_and_subscribes_again(
    half_open: HalfOpen, direct: aioredis.Redis, redis_namespace: str
) -> None:
    async with cluster_link(half_open.url, redis_namespace, **QUICK) as link:
        membership = Membership(link, "a")
        membership.state = OK
        owner = owner_for(link, membership)
        async with anyio.create_task_group() as group:
            group.start_soon(owner._subscribe)
            subscribed = [(link.keys.intake_channel, 1)]
            while await direct.pubsub_numsub(link.keys.intake_channel) != subscribed:  # noqa: ASYNC110
                await anyio.sleep(0.05)
            half_open.silence()
            silenced_at = time.monotonic()
            with anyio.fail_after(5):
                while owner._messages == []:  # published until it comes
                    await direct.publish(link.keys.intake_channel, "+job_1")
                    await anyio.sleep(0.1)
            assert time.monotonic() - silenced_at < 3.0
            group.cancel_scope.cancel()


async def test_news_of_jobs_is_not_kept_while_the_replica_is_not_registered(
    redis_url: str, direct: aioredis.Redis, redis_namespace: str
) -> None:
    async with cluster_link(redis_url, redis_namespace) as link:
        owner = owner_for(link, Membership(link, "a"))  # registering: it holds nothing
        async with anyio.create_task_group() as group:
            group.start_soon(owner.run)
            with anyio.fail_after(5):
                while not await direct.publish(link.keys.intake_channel, "+job_0"):  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            for n in range(1, 50):
                await direct.publish(link.keys.intake_channel, f"+job_{n}")
            await anyio.sleep(0.3)
            assert owner._messages == []
            group.cancel_scope.cancel()
