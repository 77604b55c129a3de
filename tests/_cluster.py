"""Helpers of the cluster tests: the scripts and a lease without a replica around them,
an owner with no engine, a webhook receiver, and what the simulator's log says about
who polled what."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from poller.daemon.cluster.client import RedisLink
from poller.daemon.cluster.jobset import ClusterJobs
from poller.daemon.cluster.membership import OK, Membership
from poller.daemon.cluster.owner import Owner
from poller.testing import JobsSimulator

Polls = dict[str, list[tuple[float, str]]]


@asynccontextmanager
async def cluster_link(url: str, namespace: str, **options: Any) -> AsyncIterator[RedisLink]:
    """A replica's connections to Redis, closed on exit."""
    link = RedisLink(url, namespace, **options)
    try:
        yield link
    finally:
        await link.aclose()


async def run(link: RedisLink, name: str, *args: Any) -> Any:
    """One of the cluster's scripts, by name."""
    return await link.scripts.run(getattr(link.scripts, name), [link.keys.prefix, *args])


async def member(link: RedisLink, replica: str) -> Membership:
    """A registered membership (its lease trusted for a while; never renewed)."""
    membership = Membership(link, replica, ttl_s=30.0, margin_s=1.0)
    granted, token = await run(link, "register", replica, 30_000, "n", "test")
    assert granted == 1
    membership.lease.registered(int(token), time.monotonic())
    membership.state = OK
    return membership


class Engine:
    """The engine as an owner sees it: what it tracks."""

    def __init__(self) -> None:
        self.tracked: list[str] = []

    def track(self, job_id: str, **kwargs: Any) -> None:
        self.tracked.append(job_id)

    def untrack(self, job_id: str) -> bool:
        return False


def owner_for(link: RedisLink, membership: Membership, engine: Engine | None = None) -> Owner:
    """An owner of no sink, over ``engine`` (by default one that records only)."""
    return Owner(
        link=link,
        membership=membership,
        jobs=ClusterJobs(link, credentials=(), default_key=True),
        engine=engine or Engine(),  # type: ignore[arg-type]
        credentials={},
        default_key=True,
    )


class Receiver:
    """A webhook endpoint recording the event IDs (``webhook-id``) and bodies it got,
    and when. With ``hold_first``, the first request waits for :attr:`gate`."""

    def __init__(self, *, hold_first: bool = False) -> None:
        self.ids: list[str] = []
        self.bodies: list[bytes] = []
        self.times: list[float] = []
        self.first = asyncio.Event()
        self.gate = asyncio.Event()
        if not hold_first:
            self.gate.set()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.ids.append(request.headers["webhook-id"])
        self.bodies.append(body)
        self.times.append(time.time())
        if not self.first.is_set():
            self.first.set()
            await self.gate.wait()
        return web.Response(status=204)


@asynccontextmanager
async def serving(receiver: Receiver) -> AsyncIterator[str]:
    """The receiver on a free loopback port; yields its URL."""
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


def polls_by_job(sim: JobsSimulator, jobs: Iterable[str] | None = None) -> Polls:
    """(time, replica) of every poll a replica sent (its User-Agent: ``poller/<v>
    replica/<id>``), per job, in time order; of ``jobs`` only, if given."""
    wanted = set(jobs) if jobs is not None else None
    polls: Polls = defaultdict(list)
    for request in sim.log:
        replica = (request.client or "").partition(" replica/")[2]
        if request.job_id is None or not replica:
            continue
        if wanted is None or request.job_id in wanted:
            polls[request.job_id].append((request.at, replica))
    for seen in polls.values():
        seen.sort()
    return polls


def overlaps(polls: Polls, within_s: float = 1.0) -> list[tuple[str, float, float]]:
    """Polls of one job by two replicas less than ``within_s`` apart."""
    found = []
    for job_id, seen in polls.items():
        for (at, replica), (next_at, next_replica) in itertools.pairwise(seen):
            if replica != next_replica and next_at - at < within_s:
                found.append((job_id, at, next_at))
    return found
