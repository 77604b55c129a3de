"""A sink of the cluster against a real Redis: it delivers only while it holds the sink
on a trusted lease, it acknowledges what it delivered even after a failed call, and
it carries on when Redis lost its consumer group."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.exceptions
from _cluster import Receiver, cluster_link, member, run, serving

from poller.daemon.cluster.client import RedisLink
from poller.daemon.cluster.membership import FENCED
from poller.daemon.cluster.stream import GroupFeed, SinkUnit, create_groups
from poller.daemon.outbox import Changes
from poller.daemon.sinks import JsonlSink
from poller.daemon.webhook import DeadLetters, WebhookSink

pytestmark = pytest.mark.anyio


@pytest.fixture
async def link(redis_url: str, redis_namespace: str) -> AsyncIterator[RedisLink]:
    async with cluster_link(redis_url, redis_namespace) as link:
        yield link


async def commit(link: RedisLink, event_id: str) -> str:
    job = event_id.partition(":")[0]
    entry: str = await link.redis.xadd(link.keys.events, {"id": event_id, "job": job, "body": "{}"})
    return entry


async def test_a_webhook_lane_sends_nothing_once_the_lease_ran_out(
    link: RedisLink, tmp_path: Path
) -> None:
    membership = await member(link, "a")
    receiver = Receiver(hold_first=True)
    changes = Changes()
    async with serving(receiver) as url:
        sink = WebhookSink(url, key=b"k" * 16, dead_letters=DeadLetters(str(tmp_path / "dl")))
        await create_groups(link, [sink.name])
        assert await run(link, "claim", "a", membership.token, 0, f"sink:{sink.name}") == [0]
        unit = SinkUnit(sink, link, changes, "a", membership.trusted)
        membership.on_fence.append(unit.cancel)
        # Two events of one job, read in one page: the lane sends the first, then the next.
        await commit(link, "j:1")
        await commit(link, "j:2")
        async with anyio.create_task_group() as group:
            unit.take(membership.token)
            group.start_soon(unit.run)
            with anyio.fail_after(5):
                await receiver.first.wait()
            # The event loop stalls past the lease's deadline while j:1 is in flight (the
            # watchdog has not run yet); then j:1's answer comes.
            membership.lease.valid_until = time.monotonic() - 0.01
            receiver.gate.set()
            with anyio.fail_after(5):
                while unit.running:  # noqa: ASYNC110 - the sink stops by itself
                    await anyio.sleep(0.01)
    assert receiver.ids == ["j:1"]  # j:2 was not sent: its next holder sends it, after j:1
    assert membership.state == FENCED and not unit.held
    # Nothing acknowledged: both stay pending for the next holder.
    pending = await link.redis.xpending(link.keys.events, sink.name)
    assert pending["pending"] == 2


class FailingPipelines:
    """``link.redis.pipeline`` whose pipelines fail to execute while ``down``."""

    def __init__(self, link: RedisLink) -> None:
        self.real = link.redis.pipeline
        self.down = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        pipe = self.real(*args, **kwargs)
        if self.down:

            async def fail() -> None:
                raise redis.exceptions.ConnectionError("down")

            pipe.execute = fail
        return pipe


async def test_events_whose_acknowledgement_failed_are_acknowledged_later(
    link: RedisLink, monkeypatch: pytest.MonkeyPatch
) -> None:
    membership = await member(link, "a")
    await create_groups(link, ["jsonl"])
    assert await run(link, "claim", "a", membership.token, 0, "sink:jsonl") == [0]
    changes = Changes()
    feed = GroupFeed(link, group="jsonl", consumer="a", token=membership.token, changes=changes)
    entries = [await commit(link, f"j:{seq}") for seq in (1, 2)]
    await link.redis.hset(link.keys.attempts("jsonl"), entries[0], 1)
    changes.ring()
    with anyio.fail_after(5):
        rows = await feed.next_page()
    assert [row.id for row in rows] == ["j:1", "j:2"]
    pipelines = FailingPipelines(link)
    monkeypatch.setattr(link.redis, "pipeline", pipelines)
    pipelines.down = True
    with anyio.fail_after(5):
        await feed.done([row.rowid for row in rows])  # delivered, but XACK fails: it gives up
    assert (await link.redis.xpending(link.keys.events, "jsonl"))["pending"] == 2
    pipelines.down = False
    await commit(link, "j:3")
    changes.ring()
    with anyio.fail_after(5):
        rows = await feed.next_page()
    # The next page acknowledged the first two (and forgot their attempts) before it read.
    assert [row.id for row in rows] == ["j:3"]
    assert (await link.redis.xpending(link.keys.events, "jsonl"))["pending"] == 1
    assert await link.redis.hlen(link.keys.attempts("jsonl")) == 0


async def test_a_sink_makes_its_group_again_when_redis_lost_it(link: RedisLink) -> None:
    membership = await member(link, "a")
    await create_groups(link, ["jsonl"])
    assert await run(link, "claim", "a", membership.token, 0, "sink:jsonl") == [0]
    changes = Changes()
    unit = SinkUnit(JsonlSink("-"), link, changes, "a", membership.trusted)
    unit.take(membership.token)
    # Redis lost the stream and its groups (restarted from an older file, say), then a
    # replica committed an event: the holder takes over, reads and delivers it.
    await link.redis.delete(link.keys.events)
    await commit(link, "j:1")
    feed = GroupFeed(link, group="jsonl", consumer="a", token=membership.token, changes=changes)
    with anyio.fail_after(5):
        await unit.adopt()
        rows = await feed.next_page()
    assert [row.id for row in rows] == ["j:1"]
    await link.redis.xgroup_destroy(link.keys.events, "jsonl")
    await commit(link, "j:2")
    changes.ring()
    with anyio.fail_after(5):
        rows = await feed.next_page()
    assert [row.id for row in rows] == ["j:1", "j:2"]  # from the stream's first entry
    assert link.error is None
