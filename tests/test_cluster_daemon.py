"""Replicas of ``poller run --redis`` in this process, against a real Redis and the
simulator: one job set answered the same by every replica, ``/events`` resumed on
another replica, a graceful stop that hands the jobs over at once, a replica cut off
from Redis that stops polling before its lease can expire, health and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
import redis.asyncio as aioredis

from poller.daemon.cluster import ClusterOptions, serve_cluster
from poller.daemon.config import Settings, load_settings
from poller.daemon.records import decode_record
from poller.daemon.wiring import in_background
from poller.testing import Change, JobsSimulator, SimServer

pytestmark = pytest.mark.anyio

KEY = "rt_test_key"  # the retab_sim fixture's organisation org_test
TENANT_KEY = "rt_test_tenant"
QUICK = [Change("queued", 0.0), Change("in_progress", 0.2), Change("completed", 0.5)]
MEDIUM = [Change("queued", 0.0), Change("in_progress", 3.0), Change("completed", 4.5)]
LONG = [Change("queued", 0.0), Change("in_progress", 0.2), Change("completed", 30.0)]
FAST = ClusterOptions(lease_ttl_s=3.0, lease_margin_s=1.2, renew_every_s=0.5, tick_s=0.5)


def settings_for(
    sim: SimServer, redis_url: str, namespace: str, tmp_path: Path, replica: str, **flags: Any
) -> Settings:
    env = {
        "RETAB_API_KEY": KEY,
        "RETAB_API_BASE_URL": sim.base_url,
        "POLLER_CREDENTIAL_TENANT": TENANT_KEY,
        "POLLER_REDIS_URL": redis_url,
        "POLLER_REDIS_NAMESPACE": namespace,
    }
    base = {
        "replica_id": replica,
        "db": str(tmp_path / f"{replica}.db"),
        "port": "0",
        "jsonl": str(tmp_path / f"{replica}.jsonl"),
        "poll_interval_s": "0.1",
        "max_interval_s": "0.5",
        "shutdown_timeout_s": "3",
    }
    return load_settings({**base, **flags}, env)


def replica(settings: Settings, options: ClusterOptions = FAST) -> AbstractAsyncContextManager[str]:
    """A replica in the background; yields its control API's URL, stops it on exit
    (RuntimeError unless it stopped with status 0)."""

    def serving(stop: anyio.Event, on_ready: Callable[[str], None]) -> Awaitable[int]:
        return serve_cluster(settings, stop, on_ready=on_ready, options=options)

    return in_background(serving)


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    with anyio.fail_after(timeout_s):
        while not await check():  # noqa: ASYNC110 - polls the replicas over HTTP
            await anyio.sleep(0.05)


async def get_json(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as response:
        assert response.status == 200, await response.text()
        return await response.json()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_every_replica_answers_the_same(
    retab_sim: SimServer,
    redis_url: str,
    redis_namespace: str,
    tmp_path: Path,
    http: aiohttp.ClientSession,
) -> None:
    retab_sim.sim.add_org("org_t", api_keys=[TENANT_KEY])
    a = settings_for(retab_sim, redis_url, redis_namespace, tmp_path, "a")
    b = settings_for(retab_sim, redis_url, redis_namespace, tmp_path, "b")
    async with replica(a) as url_a, replica(b) as url_b:
        jobs = sorted(retab_sim.sim.add_job(org_id="org_test", script=QUICK) for _ in range(6))
        tenant_job = retab_sim.sim.add_job(org_id="org_t", script=QUICK)
        body = {"job_ids": jobs, "metadata": {"batch": 7}}
        async with http.post(f"{url_a}/jobs", json=body) as response:
            assert response.status == 201
            assert (await response.json())["added"] == jobs
        body = {"job_id": tenant_job, "credential": "tenant"}
        async with http.post(f"{url_b}/jobs", json=body) as response:
            assert response.status == 201
        async with http.post(f"{url_b}/jobs", json={"job_ids": jobs[:2]}) as response:
            assert response.status == 200
            assert (await response.json()) == {"added": [], "existing": jobs[:2]}

        async def all_completed() -> bool:
            listed = await get_json(http, f"{url_b}/jobs?status=completed")
            return len(listed["jobs"]) == len(jobs) + 1

        await eventually(all_completed)
        for url in (url_a, url_b):
            page = await get_json(http, f"{url}/jobs?limit=4")
            assert [row["job_id"] for row in page["jobs"]] == sorted([*jobs, tenant_job])[:4]
            rest = await get_json(http, f"{url}/jobs?after={page['next']}")
            assert len(rest["jobs"]) == 3 and rest["next"] is None
            one = await get_json(http, f"{url}/jobs/{jobs[0]}")
            assert one["status"] == "completed" and one["seq"] in (1, 2, 3)
            assert one["metadata"] == {"batch": 7} and one["job"]["status"] == "completed"
            tenant = await get_json(http, f"{url}/jobs/{tenant_job}")
            assert tenant["credential"] == "tenant" and tenant["organization_id"] == "org_t"
        async with http.delete(f"{url_b}/jobs/{jobs[0]}") as response:
            assert response.status == 200
        gone = await get_json(http, f"{url_a}/jobs/{jobs[0]}")
        assert gone["removed"] is True
        async with http.delete(f"{url_a}/jobs/{jobs[0]}") as response:
            assert response.status == 404
        listed = await get_json(http, f"{url_a}/jobs")
        assert jobs[0] not in [row["job_id"] for row in listed["jobs"]]
        async with http.get(f"{url_a}/jobs?status=nonsense") as response:
            assert response.status == 400
        async with http.post(f"{url_a}/jobs", json={"job_id": "a/b"}) as response:
            assert response.status == 400
            assert (await response.json())["error"]["field"] == "job_ids[0]"
        for name, url in (("a", url_a), ("b", url_b)):
            async with http.get(f"{url}/metrics") as response:
                text = await response.text()
            assert (
                f'poller_replica_info{{namespace="{redis_namespace}",replica="{name}"}} 1.0' in text
            )
            assert f'poller_cluster_replicas{{replica="{name}"}} 2.0' in text
            assert 'poller_jobs{status="completed"} 6.0' in text
            health = await get_json(http, f"{url}/healthz")
            assert health["status"] == "ok" and health["cluster"]["replica"] == name
            assert health["cluster"]["redis"] == "ok" and health["cluster"]["replicas"] == 2


async def read_events(response: aiohttp.ClientResponse, count: int) -> list[tuple[str, str]]:
    """(id, data) of the next ``count`` server-sent events."""
    events: list[tuple[str, str]] = []
    fields: dict[str, str] = {}
    with anyio.fail_after(10):
        while len(events) < count:
            line = (await response.content.readline()).decode().rstrip("\n")
            if not line:
                if "data" in fields:
                    events.append((fields["id"], fields["data"]))
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value
    return events


async def test_events_resume_from_another_replica(
    retab_sim: SimServer,
    redis_url: str,
    redis_namespace: str,
    tmp_path: Path,
    http: aiohttp.ClientSession,
) -> None:
    a = settings_for(retab_sim, redis_url, redis_namespace, tmp_path, "a")
    b = settings_for(retab_sim, redis_url, redis_namespace, tmp_path, "b")
    async with replica(a) as url_a, replica(b) as url_b:
        job = retab_sim.sim.add_job(org_id="org_test", script=MEDIUM)
        async with http.get(f"{url_a}/events") as stream:
            async with http.post(f"{url_b}/jobs", json={"job_id": job}):
                pass
            events = await read_events(stream, 3)
        ids = [event_id for event_id, _ in events]
        assert ids == [f"{job}:1", f"{job}:2", f"{job}:3"]
        assert decode_record(events[-1][1]).final
        headers = {"Last-Event-ID": ids[0]}
        async with http.get(f"{url_b}/events", headers=headers) as stream:
            assert [e[0] for e in await read_events(stream, 2)] == ids[1:]
        async with http.get(f"{url_b}/events?last_event_id=job_nope:4") as stream:
            first = await stream.content.readline()
            assert first.startswith(b": unknown or expired Last-Event-ID")
            assert [e[0] for e in await read_events(stream, 3)] == ids


async def test_sigterm_hands_the_jobs_over_at_once(
    retab_sim: SimServer,
    redis_url: str,
    redis_namespace: str,
    tmp_path: Path,
    http: aiohttp.ClientSession,
) -> None:
    jobs = [retab_sim.sim.add_job(org_id="org_test", script=LONG) for _ in range(40)]
    slow = ClusterOptions(lease_ttl_s=30.0, lease_margin_s=5.0)  # a lease that would wait
    a = settings_for(retab_sim, redis_url, redis_namespace, tmp_path, "a")
    b = settings_for(retab_sim, redis_url, redis_namespace, tmp_path, "b")
    async with replica(b, slow) as url_b:
        async with replica(a, slow) as url_a:
            async with http.post(f"{url_a}/jobs", json={"job_ids": jobs}) as response:
                assert response.status == 201

            async def shared() -> bool:
                health = [await get_json(http, f"{u}/healthz") for u in (url_a, url_b)]
                slots = [h["cluster"]["slots"] for h in health]
                return (
                    0 < slots[0] < 256
                    and sum(slots) == 256
                    and sum(h["cluster"]["jobs"] for h in health) == len(jobs)
                )

            await eventually(shared)
            stopped_at = anyio.current_time()
        # a stopped: b polls every job at once, without waiting for a's 30 s lease.

        async def all_b() -> bool:
            health = await get_json(http, f"{url_b}/healthz")
            return health["cluster"]["slots"] == 256 and health["cluster"]["jobs"] == len(jobs)

        await eventually(all_b, timeout_s=5.0)
        assert anyio.current_time() - stopped_at < 5.0
        health = await get_json(http, f"{url_b}/healthz")
        assert health["cluster"]["replicas"] == 1 and health["cluster"]["sinks"] == ["jsonl"]
    # The JSON-lines files of the two replicas hold every committed event between them.
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        committed = {f["id"] for _, f in await client.xrange(f"{redis_namespace}:events")}
    finally:
        await client.aclose()
    written = set()
    for name in ("a", "b"):
        path = tmp_path / f"{name}.jsonl"
        if path.exists():
            written |= {decode_record(line).id for line in path.read_bytes().splitlines()}
    assert committed and committed == written


class Proxy:
    """A TCP proxy to Redis that the test can cut (nothing passes; connections stall)."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._open = asyncio.Event()
        self._open.set()
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        self.heal()

    def cut(self) -> None:
        """Pass nothing: every connection stalls."""
        self._open.clear()

    def heal(self) -> None:
        """Pass traffic again; the stalled connections are closed."""
        self._open.set()
        for writer in self._writers:
            writer.close()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        self._writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, RuntimeError):
                while data := await src.read(65536):
                    await self._open.wait()
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def test_a_replica_cut_off_from_redis_stops_polling_before_another_takes_over(
    retab_sim: SimServer,
    redis_url: str,
    redis_namespace: str,
    tmp_path: Path,
    http: aiohttp.ClientSession,
) -> None:
    sim: JobsSimulator = retab_sim.sim
    jobs = [sim.add_job(org_id="org_test", script=LONG) for _ in range(30)]
    host, port = redis_url.split("//")[1].split("/")[0].split(":")
    proxy = Proxy(host, int(port))
    b = settings_for(retab_sim, redis_url, redis_namespace, tmp_path, "b")
    async with proxy as proxied, replica(b) as url_b:
        a = settings_for(retab_sim, proxied, redis_namespace, tmp_path, "a")
        async with replica(a) as url_a:
            async with http.post(f"{url_b}/jobs", json={"job_ids": jobs}) as response:
                assert response.status == 201

            async def a_polls() -> bool:
                health = await get_json(http, f"{url_a}/healthz")
                return bool(health["cluster"]["jobs"])

            await eventually(a_polls)
            await anyio.sleep(1.0)
            proxy.cut()
            cut_at = time.time()

            async def fenced() -> bool:
                health = await get_json(http, f"{url_a}/healthz")
                return health["cluster"]["lease"] == "fenced"

            await eventually(fenced, timeout_s=FAST.lease_ttl_s + 2)
            health = await get_json(http, f"{url_a}/healthz")
            assert health["status"] == "degraded" and health["cluster"]["jobs"] == 0
            assert {r["component"] for r in health["reasons"]} >= {"lease", "redis"}

            async def b_has_all() -> bool:
                health = await get_json(http, f"{url_b}/healthz")
                return health["cluster"]["jobs"] == len(jobs)

            await eventually(b_has_all, timeout_s=FAST.lease_ttl_s + 4)
            await anyio.sleep(1.0)
            healed_at = time.time()
            proxy.heal()

            async def a_is_back() -> bool:
                health = await get_json(http, f"{url_a}/healthz")
                return health["cluster"]["lease"] == "ok" and bool(health["cluster"]["jobs"])

            await eventually(a_is_back, timeout_s=15)
            await anyio.sleep(1.0)
    # Never two replicas on one job within a second; a fenced itself within its lease
    # (before it could expire: lease_ttl_s - lease_margin_s after its last renewal).
    polls: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for request in sim.log:
        who = (request.client or "").partition(" replica/")[2]
        if request.job_id in jobs and who:
            polls[request.job_id].append((request.at, who))
    moved = 0
    fenced_by = cut_at + FAST.lease_ttl_s - FAST.lease_margin_s + 0.2
    for seen in polls.values():
        seen.sort()
        for (at, who), (next_at, next_who) in itertools.pairwise(seen):
            if who != next_who:
                assert next_at - at >= 1.0, seen
                moved += 1
        assert not [at for at, who in seen if who == "a" and fenced_by < at < healed_at]
    assert moved
