"""``poller run --redis`` replicas as processes. Three, one killed with ``kill -9``: every
transition is committed once with a continuous ``seq``, ends with the simulator's final
status, is delivered to the webhook at least once and in order per job, no job is
polled by two replicas within a second, and the dead replica's jobs are polled again
within 10 s. Two, one stopped (``SIGSTOP``) past its lease and resumed: it sends
nothing more, neither poll nor webhook, before it is a member again."""

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
    """A webhook endpoint recording the event IDs it got, and when."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.times: list[float] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        record = decode_record(body)
        assert request.headers["webhook-id"] == record.id
        self.ids.append(record.id)
        self.times.append(time.time())
        return web.Response(status=204)


def out_of_order(ids: list[str]) -> list[str]:
    """Events received before an earlier event of their job was (repeats are allowed:
    delivery is at least once)."""
    seen: dict[str, set[int]] = defaultdict(set)
    wrong = []
    for event_id in ids:
        job, _, seq = event_id.rpartition(":")
        if int(seq) not in seen[job] and not set(range(1, int(seq))) <= seen[job]:
            wrong.append(event_id)
        seen[job].add(int(seq))
    return wrong


def polls_by_job(sim: JobsSimulator) -> dict[str, list[tuple[float, str]]]:
    """(time, replica) of every poll, per job, in time order."""
    polls: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for request in sim.log:
        replica = replica_of(request)
        if request.job_id is not None and replica is not None:
            polls[request.job_id].append((request.at, replica))
    for seen in polls.values():
        seen.sort()
    return polls


def overlaps(polls: dict[str, list[tuple[float, str]]]) -> list[tuple[str, float, float]]:
    """Polls of one job by two replicas within a second of each other."""
    found = []
    for job_id, seen in polls.items():
        for (at, replica), (next_at, next_replica) in itertools.pairwise(seen):
            if replica != next_replica and next_at - at < 1.0:
                found.append((job_id, at, next_at))
    return found


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
            stored = {job: await redis.hget(f"{p}job:{job}", "status") for job in job_ids}
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
    # Each job ends as the simulator says, in Redis and in its last event.
    last = {decode_record(f["body"]).job_id: decode_record(f["body"]) for _, f in entries}
    assert stored == {job: sim.status(job) for job in job_ids}
    assert {job: record.current for job, record in last.items() if record.final} == stored
    # Delivered at least once to the webhook, in order per job.
    assert wanted <= set(receiver.ids)
    assert not out_of_order(receiver.ids)

    # No job polled by two replicas within a second of each other.
    polls = polls_by_job(sim)
    assert not overlaps(polls)

    # The dead replica's unfinished jobs were polled again by another within 10 s.
    takeovers = []
    for seen in polls.values():
        before = [replica for at, replica in seen if at <= killed_at]
        after = [at for at, replica in seen if at > killed_at]
        if before and before[-1] == victim and after:
            takeovers.append(after[0] - killed_at)
    assert takeovers, "the victim polled no job still running when it was killed"
    assert max(takeovers) <= 10.0, sorted(takeovers)[-5:]


@pytest.mark.timeout(60)
async def test_a_replica_stopped_past_its_lease_sends_nothing_when_it_resumes(
    tmp_path: Path, redis_url: str, redis_namespace: str
) -> None:
    rng = random.Random(18)
    sim = JobsSimulator(seed=4)
    sim.add_org("org_c", api_keys=[KEY])
    receiver = Receiver()
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    p = f"{redis_namespace}:"
    replicas = REPLICAS[:2]
    processes: dict[str, Process] = {}
    try:
        async with SimServer(sim) as server, serving(receiver) as hook:
            env = {k: v for k, v in os.environ.items() if not k.startswith(("RETAB_", "POLLER_"))}
            env |= {
                "RETAB_API_KEY": KEY,
                "RETAB_API_BASE_URL": server.base_url,
                "POLLER_WEBHOOK_SECRET": SECRET,
            }
            ports = {replica: free_port() for replica in replicas}
            for replica in replicas:
                cmd = command(tmp_path, replica, ports[replica], hook, redis_url, redis_namespace)
                processes[replica] = await start(cmd, env, tmp_path / f"{replica}.log")
            with anyio.fail_after(15):
                while await redis.zcard(f"{p}replicas") < len(replicas):  # noqa: ASYNC110
                    await anyio.sleep(0.1)
            job_ids = make_jobs(sim, rng, 60, spread_s=14.0)
            async with aiohttp.ClientSession() as http:
                url = f"http://127.0.0.1:{ports[replicas[0]]}/jobs"
                async with http.post(url, json={"job_ids": job_ids}) as response:
                    assert response.status == 201, await response.text()
            await anyio.sleep(3.0)
            # Stop the replica that delivers the webhook for longer than its lease (5 s):
            # the other takes its partitions and the sink; then it resumes.
            sinks = [key async for key in redis.scan_iter(match=f"{p}sink:webhook:*")]
            victim = await redis.hget(next(k for k in sinks if k.count(":") == 3), "owner")
            assert victim in processes
            processes[victim].send_signal(signal.SIGSTOP)
            await anyio.sleep(7.0)
            resumed_at = time.time()
            processes[victim].send_signal(signal.SIGCONT)
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
            for process in processes.values():
                process.send_signal(signal.SIGTERM)
            with anyio.fail_after(15):
                for replica, process in processes.items():
                    assert await process.wait() == 0, (tmp_path / f"{replica}.log").read_text()
    finally:
        for process in processes.values():
            if process.returncode is None:
                process.send_signal(signal.SIGCONT)
                process.kill()
        await redis.aclose()

    log = (tmp_path / f"{victim}.log").read_text()
    assert "fenced" in log
    # Resumed, the victim sent no poll before it was a member again (registered, then a
    # partition claimed and its gap waited), and no job was polled by both within 1 s.
    polls = polls_by_job(sim)
    assert not overlaps(polls)
    early = [at for seen in polls.values() for at, who in seen if who == victim]
    assert not [at for at in early if resumed_at < at < resumed_at + 1.0]
    # Every event delivered, in order per job.
    assert wanted <= set(receiver.ids)
    assert not out_of_order(receiver.ids)
