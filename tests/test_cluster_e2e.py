"""``poller run --redis`` replicas as processes. Three, one killed with ``kill -9``: every
transition is committed once with a continuous ``seq``, ends with the simulator's final
status, is delivered to the webhook at least once and in order per job, no job is
polled by two replicas within a second, and the dead replica's jobs are polled again
within 10 s. Two, one stopped (``SIGSTOP``) past its lease and resumed: it sends
nothing more, neither poll nor webhook, before it is a member again."""

from __future__ import annotations

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
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import anyio
import pytest
import redis.asyncio as aioredis
from _cluster import Receiver, out_of_order, overlaps, polls_by_job, serving
from anyio.abc import Process

from poller.daemon.records import decode_record
from poller.testing import Change, JobsSimulator, SimServer

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


@dataclass
class Cluster:
    """Replicas as processes, against a simulator and a webhook receiver."""

    tmp_path: Path
    redis: aioredis.Redis
    prefix: str
    sim: JobsSimulator
    receiver: Receiver = field(default_factory=Receiver)
    processes: dict[str, Process] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    async def add(self, job_ids: list[str], via: tuple[str, ...]) -> None:
        """POST the jobs, in one batch per replica of ``via`` (the last takes the rest)."""
        size = len(job_ids) // len(via)
        async with aiohttp.ClientSession() as http:
            for n, replica in enumerate(via):
                batch = (
                    job_ids[n * size :] if n == len(via) - 1 else job_ids[n * size : (n + 1) * size]
                )
                url = f"http://127.0.0.1:{self.ports[replica]}/jobs"
                async with http.post(url, json={"job_ids": batch}) as response:
                    assert response.status == 201, await response.text()

    async def listening(self, replica: str) -> None:
        """Once the replica's control API answers (it opens after registering)."""
        url = f"http://127.0.0.1:{self.ports[replica]}/healthz"
        async with aiohttp.ClientSession() as http:
            while True:
                process = self.processes[replica]
                assert process.returncode is None, (self.tmp_path / f"{replica}.log").read_text()
                try:
                    async with http.get(url) as response:
                        await response.read()
                        return
                except aiohttp.ClientConnectionError:
                    await anyio.sleep(0.1)

    async def sink_holder(self) -> str:
        """The replica that delivers the webhook."""
        sinks = [key async for key in self.redis.scan_iter(match=f"{self.prefix}sink:webhook:*")]
        holder = await self.redis.hget(next(k for k in sinks if k.count(":") == 3), "owner")
        assert holder in self.processes
        return str(holder)

    async def settled(
        self, job_ids: list[str]
    ) -> tuple[list[tuple[str, dict[str, str]]], dict[str, str]]:
        """Once every job ended and every event reached the webhook: the stream, and each
        job's stored status."""
        p = self.prefix
        with anyio.fail_after(30):
            while True:
                done = sum([await self.redis.zcard(f"{p}status:{status}") for status in TERMINAL])
                if done == len(job_ids):
                    break
                await anyio.sleep(0.2)
        entries = await self.redis.xrange(f"{p}events")
        stored = {job: await self.redis.hget(f"{p}job:{job}", "status") for job in job_ids}
        wanted = {fields["id"] for _, fields in entries}
        with anyio.fail_after(15):
            while not wanted <= set(self.receiver.ids):  # noqa: ASYNC110
                await anyio.sleep(0.2)
        return entries, stored

    async def stop(self) -> None:
        """SIGTERM every replica still running; each exits 0."""
        running = {r: p for r, p in self.processes.items() if p.returncode is None}
        for process in running.values():
            process.send_signal(signal.SIGTERM)
        with anyio.fail_after(15):
            for replica, process in running.items():
                assert await process.wait() == 0, (self.tmp_path / f"{replica}.log").read_text()


@asynccontextmanager
async def cluster(
    tmp_path: Path, redis_url: str, namespace: str, sim: JobsSimulator, replicas: tuple[str, ...]
) -> AsyncIterator[Cluster]:
    """The replicas started and registered; killed on exit if still running."""
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    running = Cluster(tmp_path, redis, f"{namespace}:", sim)
    try:
        async with SimServer(sim) as server, serving(running.receiver) as hook:
            env = {k: v for k, v in os.environ.items() if not k.startswith(("RETAB_", "POLLER_"))}
            env |= {
                "RETAB_API_KEY": KEY,
                "RETAB_API_BASE_URL": server.base_url,
                "POLLER_WEBHOOK_SECRET": SECRET,
            }
            for replica in replicas:
                port = running.ports[replica] = free_port()
                cmd = command(tmp_path, replica, port, hook, redis_url, namespace)
                running.processes[replica] = await start(cmd, env, tmp_path / f"{replica}.log")
            with anyio.fail_after(30):
                while await redis.zcard(f"{namespace}:replicas") < len(replicas):  # noqa: ASYNC110
                    await anyio.sleep(0.1)
                for replica in replicas:
                    await running.listening(replica)
            yield running
    finally:
        for process in running.processes.values():
            if process.returncode is None:
                process.send_signal(signal.SIGCONT)
                process.kill()
            await process.aclose()
        await redis.aclose()


def check_log(
    sim: JobsSimulator,
    job_ids: list[str],
    entries: list[tuple[str, dict[str, str]]],
    stored: dict[str, str],
    receiver: Receiver,
) -> None:
    """Every transition committed once, seq continuous per job, each job ending as the
    simulator says (in Redis and in its last event), every event delivered to the
    webhook at least once and in order per job."""
    by_job: dict[str, list[int]] = defaultdict(list)
    last = {}
    for _, fields in entries:
        record = decode_record(fields["body"])
        by_job[record.job_id].append(record.seq)
        last[record.job_id] = record
        assert fields["id"] == record.id == f"{record.job_id}:{record.seq}"
    assert sorted(by_job) == sorted(job_ids)
    for job_id, seqs in by_job.items():
        assert seqs == list(range(1, len(seqs) + 1)), (job_id, seqs)
    assert stored == {job: sim.status(job) for job in job_ids}
    assert {job: record.current for job, record in last.items() if record.final} == stored
    assert {fields["id"] for _, fields in entries} <= set(receiver.ids)
    assert all(
        decode_record(body).id == event_id
        for event_id, body in zip(receiver.ids, receiver.bodies, strict=True)
    )
    assert not out_of_order(receiver.ids)


@pytest.mark.timeout(60)
async def test_kill_9_of_one_replica_loses_nothing_and_overlaps_nothing(
    tmp_path: Path, redis_url: str, redis_namespace: str
) -> None:
    rng = random.Random(17)
    sim = JobsSimulator(seed=3)
    sim.add_org("org_c", api_keys=[KEY])
    async with cluster(tmp_path, redis_url, redis_namespace, sim, REPLICAS) as running:
        job_ids = make_jobs(sim, rng, 150, spread_s=10.0)
        await running.add(job_ids, via=REPLICAS[:2])
        await anyio.sleep(3.0)
        # Kill the replica that delivers the webhook: its partitions and the sink move.
        victim = await running.sink_holder()
        running.processes[victim].send_signal(signal.SIGKILL)
        killed_at = time.time()
        await running.processes[victim].wait()
        entries, stored = await running.settled(job_ids)
        await running.stop()
    check_log(sim, job_ids, entries, stored, running.receiver)

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
    async with cluster(tmp_path, redis_url, redis_namespace, sim, REPLICAS[:2]) as running:
        job_ids = make_jobs(sim, rng, 60, spread_s=14.0)
        await running.add(job_ids, via=REPLICAS[:1])
        await anyio.sleep(3.0)
        # Stop the replica that delivers the webhook for longer than its lease (5 s):
        # the other takes its partitions and the sink; then it resumes.
        victim = await running.sink_holder()
        running.processes[victim].send_signal(signal.SIGSTOP)
        await anyio.sleep(7.0)
        resumed_at = time.time()
        running.processes[victim].send_signal(signal.SIGCONT)
        entries, stored = await running.settled(job_ids)
        await running.stop()
    check_log(sim, job_ids, entries, stored, running.receiver)
    assert "fenced" in (tmp_path / f"{victim}.log").read_text()
    # Resumed, the victim sent no poll before it was a member again (registered, then a
    # partition claimed and its gap waited), and no job was polled by both within 1 s.
    polls = polls_by_job(sim)
    assert not overlaps(polls)
    resumed = [at for seen in polls.values() for at, who in seen if who == victim]
    assert not [at for at in resumed if resumed_at < at < resumed_at + 1.0]
