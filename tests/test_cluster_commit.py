"""The cluster's outbox and job set against a real Redis: what the outbox does with what
``COMMIT`` refuses, and what the owner does meanwhile."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
from _cluster import Engine, cluster_link, member, owner_for, run
from test_daemon_store import transition

from poller.daemon.cluster.client import RedisLink
from poller.daemon.cluster.commit import ClusterOutbox, Owned
from poller.daemon.cluster.jobset import ClusterJobs
from poller.daemon.cluster.keys import slot_of, slot_unit
from poller.daemon.outbox import Changes

pytestmark = pytest.mark.anyio


@pytest.fixture
async def link(redis_url: str, redis_namespace: str) -> AsyncIterator[RedisLink]:
    async with cluster_link(redis_url, redis_namespace) as link:
        yield link


class Told:
    """What the outbox told its owner."""

    def __init__(self) -> None:
        self.stale: list[str] = []
        self.lost: list[tuple[list[int], str]] = []

    def on_stale(self, job_ids: list[str]) -> None:
        self.stale += job_ids

    def on_lost(self, slots: list[int], token: str) -> None:
        self.lost.append((slots, token))


async def settle(outbox: ClusterOutbox) -> None:
    with anyio.fail_after(5):
        await outbox.flush()


async def test_events_refused_as_notmine_tell_the_owner_their_partition(link: RedisLink) -> None:
    membership = await member(link, "a")
    job = "job_lost"
    slot = slot_of(job)
    assert await run(link, "add", "", "", job, slot) == ["new"]
    await run(link, "claim", "a", membership.token, 0, slot_unit(slot))
    owned = {job: Owned(slot, 1, 0, None, None, None)}
    told = Told()
    outbox = ClusterOutbox(link, membership, owned, Changes(), told.on_stale, told.on_lost)
    async with anyio.create_task_group() as group:
        group.start_soon(outbox.run)
        outbox.offer(transition(job, 1, None, "queued"))
        await settle(outbox)
        assert outbox.committed == 1 and told.lost == []
        # Redis lost who holds the partition: the next commit is refused, and the owner
        # hears which partition is not its own.
        await link.redis.delete(link.keys.unit(slot_unit(slot)))
        outbox.offer(transition(job, 2, "queued", "in_progress"))
        await settle(outbox)
        outbox.close()
    assert told.lost == [([slot], membership.token)]
    assert outbox.dropped == 1 and told.stale == []


async def test_a_job_whose_final_event_is_on_its_way_is_not_tracked_again(
    link: RedisLink,
) -> None:
    membership = await member(link, "a")
    job = "job_final"
    slot = slot_of(job)
    assert await run(link, "add", "", "", job, slot) == ["new"]
    await run(link, "claim", "a", membership.token, 0, slot_unit(slot))
    engine = Engine()
    owner = owner_for(link, membership, engine)
    outbox = owner.outbox = ClusterOutbox(
        link, membership, owner.owned, Changes(), owner.reload, owner.lost
    )
    owner.slots.add(slot)
    owner.owned[job] = Owned(slot, 1, 0, None, None, None)
    outbox.offer(transition(job, 1, None, "completed"))
    assert job not in owner.owned and outbox.finishing == {job}
    # The partition is read again before the final event is committed: Redis still has
    # the job to poll, but it is not tracked again (it would be seen ending twice).
    await owner._reconcile(membership.token)
    assert engine.tracked == []
    async with anyio.create_task_group() as group:
        group.start_soon(outbox.run)
        await settle(outbox)
        outbox.close()
    assert outbox.finishing == set() and outbox.committed == 1
    assert await link.redis.hget(link.keys.job(job), "status") == "completed"


async def test_a_removal_that_succeeds_says_redis_answers_again(link: RedisLink) -> None:
    jobs = ClusterJobs(link, credentials=(), default_key=True)
    await jobs.add(["job_gone"])
    link.failed(ConnectionError("down"), "adding jobs")
    assert await jobs.remove("job_gone") is True
    assert link.error is None
