"""Replicas of ``poller run --redis`` when Redis loses data: its last writes (who holds
which partition and sink), or everything (a restart without persistence). In this
process, against the simulator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from _cluster import overlaps, polls_by_job
from _redis_fixtures import RedisServer
from test_cluster_daemon import MEDIUM, QUICK, eventually, get_json, replica, settings_for

from poller.daemon.records import decode_record
from poller.testing import SimServer

pytestmark = pytest.mark.anyio


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def holders(redis: aioredis.Redis, namespace: str) -> list[str]:
    """The keys that name the holder of a partition or a sink."""
    keys = [key async for key in redis.scan_iter(match=f"{namespace}:s*:*")]
    return [
        k
        for k in keys
        if k.startswith((f"{namespace}:slot:", f"{namespace}:sink:"))
        and not k.endswith((":jobs", ":attempts"))
    ]


async def test_a_holder_learns_that_redis_lost_its_partitions_and_sinks(
    retab_sim: SimServer,
    redis_url: str,
    redis_namespace: str,
    tmp_path: Path,
    http: aiohttp.ClientSession,
) -> None:
    sim = retab_sim.sim
    jobs = [sim.add_job(org_id="org_test", script=MEDIUM) for _ in range(20)]
    a = settings_for(retab_sim, redis_url, redis_namespace, tmp_path, "a")
    b = settings_for(retab_sim, redis_url, redis_namespace, tmp_path, "b")
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        async with replica(a) as url_a:
            async with http.post(f"{url_a}/jobs", json={"job_ids": jobs}) as response:
                assert response.status == 201

            async def all_queued() -> bool:
                listed = await get_json(http, f"{url_a}/jobs?status=queued")
                return len(listed["jobs"]) == len(jobs)

            await eventually(all_queued)
            # Redis loses who holds what (a restart from a file a second old, a failover),
            # and another replica joins: it may claim what a still believes its own.
            await redis.delete(*await holders(redis, redis_namespace))
            async with replica(b) as url_b:

                async def all_completed() -> bool:
                    listed = await get_json(http, f"{url_a}/jobs?status=completed")
                    return len(listed["jobs"]) == len(jobs)

                await eventually(all_completed, timeout_s=15)

                async def one_holder_each() -> bool:
                    health = [await get_json(http, f"{u}/healthz") for u in (url_a, url_b)]
                    sinks = sorted(s for h in health for s in h["cluster"]["sinks"])
                    return sinks == ["jsonl"] and sum(h["cluster"]["slots"] for h in health) == 256

                await eventually(one_holder_each, timeout_s=5)
    finally:
        await redis.aclose()
    assert not overlaps(polls_by_job(sim, jobs))


async def test_a_replica_carries_on_after_redis_restarts_empty(
    retab_sim: SimServer,
    private_redis: RedisServer,
    tmp_path: Path,
    http: aiohttp.ClientSession,
) -> None:
    sim = retab_sim.sim
    a = settings_for(retab_sim, private_redis.url, "poller", tmp_path, "a")
    async with replica(a) as url_a:
        before = [sim.add_job(org_id="org_test", script=QUICK) for _ in range(3)]
        async with http.post(f"{url_a}/jobs", json={"job_ids": before}) as response:
            assert response.status == 201

        async def completed(jobs: list[str]) -> bool:
            listed = await get_json(http, f"{url_a}/jobs?status=completed")
            return {row["job_id"] for row in listed["jobs"]} >= set(jobs)

        await eventually(lambda: completed(before))
        # Redis restarts with nothing (no persistence): the job set, the leases, the
        # stream and its groups are gone. The replica registers again, the jobs added
        # from then on are polled, and their events reach the sink.
        private_redis.kill()
        private_redis.start()
        after = [sim.add_job(org_id="org_test", script=QUICK) for _ in range(3)]

        async def added() -> bool:
            async with http.post(f"{url_a}/jobs", json={"job_ids": after}) as response:
                return response.status == 201

        await eventually(added)
        await eventually(lambda: completed(after))

        async def healthy() -> bool:
            health = await get_json(http, f"{url_a}/healthz")
            cluster = health["cluster"]
            return health["status"] == "ok" and cluster["sinks"] == ["jsonl"]

        await eventually(healthy)
        client = private_redis.client()
        try:
            committed = {f[b"id"].decode() for _, f in client.xrange("poller:events")}
        finally:
            client.close()
        assert {event.partition(":")[0] for event in committed} == set(after)

        def written() -> set[str]:
            lines = (tmp_path / "a.jsonl").read_bytes().splitlines()
            return {decode_record(line).id for line in lines}

        async def delivered() -> bool:
            return committed <= written()

        await eventually(delivered)
