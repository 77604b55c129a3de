"""A replica's lease against a real Redis, through a slow network: a registration whose
reply was lost and was sent again is never trusted past its expiry in Redis."""

from __future__ import annotations

import time

import anyio
import pytest
from _redis_fixtures import DelayProxy, RedisServer

from poller.daemon.cluster import scripts
from poller.daemon.cluster.client import RedisLink
from poller.daemon.cluster.membership import OK, Membership

pytestmark = pytest.mark.anyio


async def test_a_retried_registration_is_not_trusted_past_its_expiry(
    private_redis: RedisServer,
) -> None:
    async with DelayProxy(private_redis.port) as proxy:
        link = RedisLink(proxy.url, "poller")
        membership = Membership(link, "a", ttl_s=5.0, margin_s=1.5)
        try:
            # A connection open (its handshake done) and the script loaded, at once.
            await link.redis.script_load(scripts.REGISTER)
            proxy.delay_s = 1.3
            async with anyio.create_task_group() as group:
                group.start_soon(membership.register)
                # The first REGISTER reaches Redis after 1.3 s, and its reply would come
                # back 1.3 s later: past the client's 2 s timeout. The retry goes through
                # a network that is fast again.
                await anyio.sleep(1.6)
                proxy.delay_s = 0.0
                with anyio.fail_after(10):
                    await membership.registered.wait()
            assert membership.state == OK
            trusted_s = membership.lease.remaining_s(time.monotonic())
            expires_s = await link.redis.pttl(link.keys.replica("a")) / 1000
            # Trusted until margin_s before Redis can expire it, never later.
            assert trusted_s + membership.lease.margin_s <= expires_s + 0.05
        finally:
            await link.aclose()
