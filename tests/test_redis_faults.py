"""Redis trouble never stops polling: killed and restarted empty, paused, slow.

Each test has a redis-server of its own (``private_redis``), and coordinators with
short periods, so that falling back and rejoining take well under a second.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from typing import Any

import anyio
import pytest
import redis
from _redis_fixtures import DelayProxy, RedisServer
from redis.exceptions import TimeoutError as RedisTimeoutError
from test_redis_coordinator import ORG, _teach, _until

from poller import RateLimit
from poller.coordination import EngineLink
from poller.redis import RedisCoordinator
from poller.redis._client import ScriptClient
from poller.redis._lease import IDLE_S, LeasedBudget
from poller.redis._scripts import LEASE
from poller.sched.learn import DurationModel

pytestmark = pytest.mark.anyio


def coordinator(url: str, **settings: float) -> RedisCoordinator:
    options = {"timeout_s": 0.1, "heartbeat_s": 0.1, "sync_interval_s": 0.2, **settings}
    return RedisCoordinator(url, namespace="faults", **options)  # type: ignore[arg-type]


def spend(budget: LeasedBudget, seconds: float) -> int:
    """What the budget lets through if asked as the scheduler asks, for ``seconds``."""
    sent, now, end = 0, time.time(), time.time() + seconds
    while now < end:
        wait = budget.try_acquire(now)
        sent += wait == 0.0
        now = max(now + wait, math.nextafter(now, math.inf))  # as the scheduler moves on
    return sent


async def test_killed_and_restarted_empty(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="poller.redis")
    model = DurationModel()
    _teach(model, 40)
    coords = [coordinator(private_redis.url) for _ in range(2)]
    budgets = [c.budget(ORG, RateLimit(per_s=100)) for c in coords]
    link = EngineLink(time.time, model.snapshot, model.load)
    async with anyio.create_task_group() as tg:
        for coord in coords:
            tg.start_soon(coord.run, link)
        await _until(lambda: all(c.online and c.engines == 2 for c in coords))
        await _until(lambda: all(b.mode == "shared" for b in budgets))
        private_redis.kill()
        await _until(lambda: all(b.mode == "local" for b in budgets))
        # Each falls back to its share: the limit over the two engines last counted.
        assert budgets[0].rate_per_s == pytest.approx(50 * 0.98)
        private_redis.start()  # empty: no persistence
        await _until(lambda: all(c.online for c in coords))
        await _until(lambda: all(b.mode == "shared" for b in budgets))
        # The fleet's state is re-seeded: the budget, and the learned tables.
        client = private_redis.client()
        try:
            await _until(lambda: bool(client.keys("faults:learn:*")))
            (key,) = client.keys("faults:*:budget")
            assert json.loads(client.get(key))["ceil"] == pytest.approx(98.0)
        finally:
            client.close()
        tg.cancel_scope.cancel()
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "out of reach" in m]) == 2  # once per engine
    assert len([m for m in messages if "answers again" in m]) == 2


async def test_paused_redis(private_redis: RedisServer) -> None:
    coord = coordinator(private_redis.url)
    budget = coord.budget(ORG, RateLimit(per_s=100))
    model = DurationModel()
    async with anyio.create_task_group() as tg:
        tg.start_soon(coord.run, EngineLink(time.time, model.snapshot, model.load))
        await _until(lambda: budget.mode == "shared")
        sleeper = private_redis.client()
        try:
            # DEBUG SLEEP blocks the server for a second (sent from a thread: it blocks
            # its client too).
            paused = anyio.to_thread.run_sync(sleeper.execute_command, "DEBUG", "SLEEP", "1")
            async with anyio.create_task_group() as pauser:
                pauser.start_soon(lambda: paused)
                await _until(lambda: budget.mode == "local")
                assert spend(budget, 0.2) >= 15  # polling goes on meanwhile: ~98/s alone
        finally:
            sleeper.close()
        await _until(lambda: budget.mode == "shared")
        tg.cancel_scope.cancel()


async def test_network_delay(private_redis: RedisServer) -> None:
    """20 ms each way: leases are ahead of need, so the budget still spends its rate.
    300 ms each way: slower than the timeout, so the budget goes local."""
    async with DelayProxy(private_redis.port, delay_s=0.02) as proxy:
        coord = coordinator(proxy.url, timeout_s=0.25)
        budget = coord.budget(ORG, RateLimit(per_s=100))
        model = DurationModel()
        async with anyio.create_task_group() as tg:
            tg.start_soon(coord.run, EngineLink(time.time, model.snapshot, model.load))
            await _until(lambda: budget.mode == "shared")
            await _spend_for(budget, 0.5)  # its demand known, its leases sized
            sent = await _spend_for(budget, 1.0)
            assert budget.mode == "shared"
            assert 85 <= sent <= 102
            proxy.delay_s = 0.3
            await _until(lambda: budget.mode == "local")
            proxy.delay_s = 0.0
            await _until(lambda: budget.mode == "shared")
            tg.cancel_scope.cancel()


async def _spend_for(budget: LeasedBudget, seconds: float) -> int:
    sent, start = 0, time.time()
    while time.time() < start + seconds:
        wait = budget.try_acquire(time.time())
        sent += wait == 0.0
        await asyncio.sleep(wait)
    return sent


async def test_one_failed_call_is_a_blip_not_an_outage(
    redis_url: str, redis_ns: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A single lease round timing out (a slow moment, an event-loop stall) leaves the
    budgets shared, spending what they hold: no fallback, no warning."""
    caplog.set_level(logging.WARNING, logger="poller.redis")
    run_many = ScriptClient.run_many
    failed: list[int] = []

    async def once(self: ScriptClient, calls: Any) -> Any:
        if not failed and any(script is LEASE for script, _, _ in calls):
            failed.append(1)
            raise RedisTimeoutError("Timeout reading from 127.0.0.1:6379")
        return await run_many(self, calls)

    monkeypatch.setattr(ScriptClient, "run_many", once)
    coord = RedisCoordinator(redis_url, namespace=redis_ns)
    budget = coord.budget(ORG, RateLimit(per_s=100))
    model = DurationModel()
    modes = set()
    async with anyio.create_task_group() as tg:
        tg.start_soon(coord.run, EngineLink(time.time, model.snapshot, model.load))
        await _until(lambda: bool(failed))
        for _ in range(50):
            modes.add(budget.mode)
            await anyio.sleep(0.01)
        await _until(lambda: budget.mode == "shared")
        tg.cancel_scope.cancel()
    assert "local" not in modes and coord.online
    assert "out of reach" not in caplog.text


async def test_budgets_rejoin_only_once_a_lease_goes_through(
    redis_url: str, redis_ns: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The heartbeat answers but LEASE keeps failing: the budgets stay local, with one
    warning (they rejoined on every heartbeat and went local again, warning each time);
    once a lease goes through, they rejoin, with one line."""
    caplog.set_level(logging.WARNING, logger="poller.redis")
    coord = RedisCoordinator(redis_url, namespace=redis_ns, heartbeat_s=0.1)
    budget = coord.budget(ORG, RateLimit(per_s=100))
    client = redis.Redis.from_url(redis_url)
    key = f"{redis_ns}:{{{redis_ns}:{ORG}}}:budget"
    model = DurationModel()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(coord.run, EngineLink(time.time, model.snapshot, model.load))
            tg.start_soon(_keep_spending, budget)
            await _until(lambda: budget.mode == "shared")
            client.set(key, "not json")  # every LEASE call fails from now on
            await _until(lambda: budget.mode == "local")
            modes = set()
            for _ in range(100):  # a second: ten heartbeats
                modes.add(budget.mode)
                await anyio.sleep(0.01)
            assert modes == {"local"} and not coord.online
            client.delete(key)
            await _until(lambda: budget.mode == "shared")
            tg.cancel_scope.cancel()
    finally:
        client.close()
    assert caplog.text.count("out of reach") == 1
    assert caplog.text.count("answers again") == 1


async def _keep_spending(budget: LeasedBudget, scope: anyio.CancelScope | None = None) -> None:
    """A job due every 10 ms: the budget has demand, so it leases (until ``scope`` is
    cancelled)."""
    with scope if scope is not None else anyio.CancelScope():
        while True:
            budget.try_acquire(time.time())
            await anyio.sleep(0.01)


async def test_a_silent_events_connection_is_found_out(private_redis: RedisServer) -> None:
    """A half-open connection (a NAT or a peer gone without a word) stays silent, not
    closed: the listener PINGs it, and gives it up when no answer comes, so that 429s
    are heard again on a new one (they were lost for good)."""
    async with DelayProxy(private_redis.port) as proxy:
        coord = coordinator(proxy.url)  # PINGs every 0.5 s, gives up 0.4 s later
        client = ScriptClient(proxy.url, timeout_s=0.1)
        try:
            async with anyio.create_task_group() as tg:
                heard: list[float] = []

                async def listen() -> None:
                    with pytest.raises(TimeoutError):
                        await coord._listen(client)
                    heard.append(time.monotonic())

                tg.start_soon(listen)
                await anyio.sleep(0.3)
                cut = time.monotonic()
                proxy.cut()
                await _until(lambda: bool(heard), timeout_s=3.0)
        finally:
            await client.aclose()
    assert heard[0] - cut <= 0.5 + 0.4 + 0.3


async def test_429s_are_heard_again_after_an_outage(private_redis: RedisServer) -> None:
    """Every connection went silent (half-open): the engine falls back, rejoins through
    new ones, and subscribes anew, so a 429 elsewhere reaches even an idle budget (one
    that makes no lease call, and learns of a pause only so)."""
    async with DelayProxy(private_redis.port) as proxy:
        a, b = coordinator(proxy.url), coordinator(private_redis.url)
        budget_a = a.budget(ORG, RateLimit(per_s=50))
        budget_b = b.budget(ORG, RateLimit(per_s=50))
        model = DurationModel()
        link = EngineLink(time.time, model.snapshot, model.load)
        async with anyio.create_task_group() as tg:
            tg.start_soon(a.run, link)
            tg.start_soon(b.run, link)
            await _until(lambda: budget_a.mode == budget_b.mode == "shared")
            await anyio.sleep(0.3)
            proxy.cut()
            proxy.refusing = True
            spending = anyio.CancelScope()
            tg.start_soon(_keep_spending, budget_a, spending)  # its leases fail
            await _until(lambda: budget_a.mode == "local")
            proxy.refusing = False
            await _until(lambda: budget_a.mode == "shared")
            spending.cancel()
            await anyio.sleep(IDLE_S + 0.5)  # budget_a idle: no lease call
            budget_b.on_throttled(time.time(), 2.0)
            # Not asked for a token (a dry budget would lease, and hear it so): watched.
            await _until(lambda: budget_a._paused_until > time.time() + 1.0, timeout_s=1.0)
            tg.cancel_scope.cancel()
