"""Three ``poller run --redis`` replicas as processes, one killed with ``kill -9``: every
transition is committed once with a continuous ``seq``, delivered to the webhook at
least once, no job is polled by two replicas within a second, and the dead replica's
jobs are polled again within 10 s."""

from __future__ import annotations

import itertools
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import anyio
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from anyio.abc import Process

from poller.daemon.records import decode_record
from poller.testing import Change, JobsSimulator, SimServer
from poller.testing._log import RequestRecord

pytestmark = pytest.mark.anyio

KEY = "rt_test_cluster"
SECRET = "cluster-webhook-secret-0123"
TERMINAL = ("completed", "failed", "cancelled")
REPLICAS = ("ra", "rb", "rc")


def make_jobs(sim: JobsSimulator, rng: random.Random, n: int, spread_s: float) -> list[str]:
    """Jobs whose changes are spread over the next ``spread_s`` seconds."""
    job_ids = []
    for _ in range(n):
        started = rng.uniform(0.5, spread_s / 2)
        ended = started + rng.uniform(0.5, spread_s / 2)
        script = [
            Change("queued", 0.0),
            Change("in_progress", started),
            Change(rng.choice(TERMINAL), ended),
        ]
        job_ids.append(sim.add_job(org_id="org_c", script=script))
    return job_ids


class Receiver:
    """A webhook endpoint recording the event IDs it got."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        record = decode_record(body)
        assert request.headers["webhook-id"] == record.id
        self.ids.append(record.id)
        return web.Response(status=204)


@asynccontextmanager
async def serving(receiver: Receiver) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    finally:
        await runner.cleanup()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def command(
    tmp_path: Path, replica: str, port: int, hook: str, redis_url: str, namespace: str
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "poller",
        "run",
        "--redis",
        redis_url,
        "--redis-namespace",
        namespace,
        "--replica-id",
        replica,
        "--db",
        str(tmp_path / f"{replica}.db"),
        "--jsonl",
        str(tmp_path / f"{replica}.jsonl"),
        "--webhook",
        hook,
        "--port",
        str(port),
        "--poll-interval-s",
        "0.25",
        "--max-interval-s",
        "0.5",
        "--log-format",
        "json",
    ]


async def start(cmd: list[str], env: dict[str, str], log: Path) -> Process:
    with log.open("ab") as stderr:
        return await anyio.open_process(
            cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr
        )


def replica_of(record: RequestRecord) -> str | None:
    """The replica a request came from (its User-Agent: ``poller/<v> replica/<id>``)."""
    client = record.client or ""
    return client.partition(" replica/")[2] or None


@pytest.mark.timeout(60)
async def test_kill_9_of_one_replica_loses_nothing_and_overlaps_nothing(
    tmp_path: Path, redis_url: str, redis_namespace: str
) -> None:
    rng = random.Random(17)
    sim = JobsSimulator(seed=3)
    sim.add_org("org_c", api_keys=[KEY])
    receiver = Receiver()
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    p = f"{redis_namespace}:"
    processes: dict[str, Process] = {}
    try:
        async with SimServer(sim) as server, serving(receiver) as hook:
            env = {k: v for k, v in os.environ.items() if not k.startswith(("RETAB_", "POLLER_"))}
            env |= {
                "RETAB_API_KEY": KEY,
                "RETAB_API_BASE_URL": server.base_url,
                "POLLER_WEBHOOK_SECRET": SECRET,
            }
            ports = {replica: free_port() for replica in REPLICAS}
            for replica in REPLICAS:
                cmd = command(tmp_path, replica, ports[replica], hook, redis_url, redis_namespace)
                processes[replica] = await start(cmd, env, tmp_path / f"{replica}.log")
            with anyio.fail_after(15):
                while await redis.zcard(f"{p}replicas") < len(REPLICAS):  # noqa: ASYNC110
                    await anyio.sleep(0.1)
            job_ids = make_jobs(sim, rng, 150, spread_s=10.0)
            async with aiohttp.ClientSession() as http:
                for replica, batch in zip(REPLICAS, (job_ids[:50], job_ids[50:]), strict=False):
                    url = f"http://127.0.0.1:{ports[replica]}/jobs"
                    async with http.post(url, json={"job_ids": batch}) as response:
                        assert response.status == 201, await response.text()
            await anyio.sleep(3.0)
            # Kill the replica that delivers the webhook: its partitions and the sink move.
            sinks = [key async for key in redis.scan_iter(match=f"{p}sink:webhook:*")]
            victim = await redis.hget(next(k for k in sinks if k.count(":") == 3), "owner")
            assert victim in processes
            processes[victim].send_signal(signal.SIGKILL)
            killed_at = time.time()
            await processes[victim].wait()
            with anyio.fail_after(30):
                while True:
                    done = sum([await redis.zcard(f"{p}status:{status}") for status in TERMINAL])
                    if done == len(job_ids):
                        break
                    await anyio.sleep(0.2)
            entries = await redis.xrange(f"{p}events")
            wanted = {fields["id"] for _, fields in entries}
            with anyio.fail_after(15):
                while not wanted <= set(receiver.ids):  # noqa: ASYNC110
                    await anyio.sleep(0.2)
            for replica, process in processes.items():
                if replica != victim:
                    process.send_signal(signal.SIGTERM)
            with anyio.fail_after(15):
                for replica, process in processes.items():
                    if replica != victim:
                        assert await process.wait() == 0, (tmp_path / f"{replica}.log").read_text()
    finally:
        for process in processes.values():
            if process.returncode is None:
                process.kill()
        await redis.aclose()

    # Every transition committed once, seq continuous per job, ending with a final one.
    by_job: dict[str, list[int]] = defaultdict(list)
    for _, fields in entries:
        record = decode_record(fields["body"])
        by_job[record.job_id].append(record.seq)
        assert fields["id"] == record.id == f"{record.job_id}:{record.seq}"
    assert sorted(by_job) == sorted(job_ids)
    for job_id, seqs in by_job.items():
        assert seqs == list(range(1, len(seqs) + 1)), (job_id, seqs)
    assert len(wanted) == len(entries)
    # Delivered at least once to the webhook.
    assert wanted <= set(receiver.ids)

    # No job polled by two replicas within a second of each other.
    polls: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for request in sim.log:
        replica = replica_of(request)
        if request.job_id is not None and replica is not None:
            polls[request.job_id].append((request.at, replica))
    for job_id, seen in polls.items():
        seen.sort()
        for (at, replica), (next_at, next_replica) in itertools.pairwise(seen):
            if replica != next_replica:
                assert next_at - at >= 1.0, (job_id, replica, at, next_replica, next_at)

    # The dead replica's unfinished jobs were polled again by another within 10 s.
    takeovers = []
    for seen in polls.values():
        before = [replica for at, replica in seen if at <= killed_at]
        after = [at for at, replica in seen if at > killed_at]
        if before and before[-1] == victim and after:
            takeovers.append(after[0] - killed_at)
    assert takeovers, "the victim polled no job still running when it was killed"
    assert max(takeovers) <= 10.0, sorted(takeovers)[-5:]
