"""The cluster's Lua scripts against a real Redis: leases and fencing tokens, claims,
the job set, and the commit that keeps every event in the stream exactly once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import msgspec
import pytest
from _cluster import cluster_link, run

from poller.daemon.cluster.client import RedisLink
from poller.daemon.cluster.keys import slot_of
from poller.daemon.cluster.stream import create_groups, trim

pytestmark = pytest.mark.anyio

TTL_MS = 2000
GAP_MS = 1000


@pytest.fixture
async def link(redis_url: str, redis_namespace: str) -> AsyncIterator[RedisLink]:
    async with cluster_link(redis_url, redis_namespace) as link:
        yield link


async def register(link: RedisLink, replica: str, nonce: str = "n") -> str:
    granted, token = await run(link, "register", replica, TTL_MS, nonce, "test")
    assert granted == 1
    return str(token)


def event(
    job: str,
    seq: int,
    *,
    gen: int = 1,
    previous: str = "",
    status: str = "queued",
    final: bool = False,
    kind: str = "transition",
) -> list[Any]:
    body = msgspec.json.encode({"id": f"{job}:{seq}", "seq": seq, "status": status}).decode()
    payload = "" if kind == "failure" else msgspec.json.encode({"status": status}).decode()
    error = '{"kind":"X","message":"m"}' if kind == "failure" else ""
    return [
        job,
        slot_of(job),
        gen,
        seq,
        previous,
        kind,
        status,
        "org_a",
        payload,
        error,
        body,
        "1" if final else "0",
    ]


async def commit(link: RedisLink, replica: str, token: str, *events: list[Any]) -> list[str]:
    args: list[Any] = [replica, token]
    for item in events:
        args += item
    result: list[str] = await run(link, "commit", *args)
    return result


async def test_a_replica_id_has_one_lease_and_each_registration_a_new_token(
    link: RedisLink,
) -> None:
    first = await register(link, "a", nonce="n1")
    assert await register(link, "a", nonce="n1") == first  # a retry of the same call
    granted, ttl_ms = await run(link, "register", "a", TTL_MS, "n2", "test")
    assert granted == 0 and 0 < ttl_ms <= TTL_MS  # held: wait that long
    other = await register(link, "b")
    assert int(other) > int(first)
    ok, _, live = await run(link, "heartbeat", "a", first, TTL_MS)
    assert ok == 1 and sorted(live) == ["a", "b"]
    assert await run(link, "heartbeat", "a", "999", TTL_MS) == [0]  # not its token
    assert await run(link, "leave", "a", first) == 1
    ok, _, live = await run(link, "heartbeat", "b", other, TTL_MS)
    assert live == ["b"]
    again = await register(link, "a", nonce="n3")
    assert int(again) > int(other)


async def test_a_retried_registration_counts_the_lease_from_the_retry(link: RedisLink) -> None:
    # The first call was processed but its reply lost; the retry comes a while later: the
    # replica counts its lease from the retry, so Redis must not expire it sooner.
    await register(link, "a", nonce="n1")
    await anyio.sleep(0.5)
    await register(link, "a", nonce="n1")
    assert await link.redis.pttl(link.keys.replica("a")) > TTL_MS - 200
    (score,) = await link.redis.zmscore(link.keys.replicas, ["a"])
    seconds, micros = await link.redis.time()
    assert score > int(seconds) * 1000 + int(micros) // 1000 + TTL_MS - 200


async def test_a_partition_is_claimed_only_when_free_released_or_its_holder_is_gone(
    link: RedisLink,
) -> None:
    a, b = await register(link, "a"), await register(link, "b")
    # Never held: used a gap after the claim (Redis may have lost who held it).
    assert await run(link, "claim", "a", a, GAP_MS, "slot:1", "slot:2") == [GAP_MS, GAP_MS]
    assert await run(link, "claim", "b", b, GAP_MS, "slot:1") == [-1]  # a is alive
    assert await run(link, "claim", "a", a, GAP_MS, "slot:1") == [0]  # a holds it already
    assert await run(link, "release", "b", b, "slot:1") == 0  # not b's to release
    assert await run(link, "release", "a", a, "slot:1") == 1
    (wait_ms,) = await run(link, "claim", "b", b, GAP_MS, "slot:1")
    assert 900 <= wait_ms <= GAP_MS  # used a second after its release
    await link.redis.delete(link.keys.replica("a"))  # a's lease expired
    assert await run(link, "claim", "b", b, GAP_MS, "slot:2") == [0]
    assert await run(link, "claim", "zzz", "1", GAP_MS, "slot:3") == [-2]  # no lease
    # Redis lost the partition's record (a restart, a failover): its holder, which sends
    # it at every step, is answered as a new claimant, and waits.
    await link.redis.delete(link.keys.unit("slot:2"))
    assert await run(link, "claim", "b", b, GAP_MS, "slot:2") == [GAP_MS]


async def test_a_partition_of_a_replica_that_registered_again_is_free(link: RedisLink) -> None:
    old = await register(link, "a", nonce="n1")
    assert await run(link, "claim", "a", old, GAP_MS, "slot:5") == [GAP_MS]
    await link.redis.delete(link.keys.replica("a"))
    new = await register(link, "a", nonce="n2")
    assert await run(link, "claim", "a", new, GAP_MS, "slot:5") == [0]
    assert await link.redis.hget(link.keys.unit("slot:5"), "token") == new


async def test_commit_appends_each_seq_once_and_only_from_the_holder(link: RedisLink) -> None:
    a, b = await register(link, "a"), await register(link, "b")
    job = "job_one"
    assert await run(link, "add", "", "", job, slot_of(job)) == ["new"]
    unit = f"slot:{slot_of(job)}"
    assert await run(link, "claim", "a", a, GAP_MS, unit) == [GAP_MS]
    first = event(job, 1, status="queued")
    (entry,) = await commit(link, "a", a, first)
    assert "-" in entry
    assert await commit(link, "a", a, first) == ["dup"]  # a retry after a lost reply
    # Another event under a seq already committed (a view of the job that was behind):
    # not the same event, so not a duplicate to drop silently.
    assert await commit(link, "a", a, event(job, 1, status="in_progress")) == ["stale"]
    assert await commit(link, "b", b, event(job, 2, previous="queued")) == ["notmine"]
    assert await commit(link, "a", "999", event(job, 2, previous="queued")) == ["fenced"]
    assert await commit(link, "a", a, event(job, 3, previous="queued")) == ["stale"]  # a gap
    assert await commit(link, "a", a, event(job, 2, previous="x")) == ["stale"]
    assert await commit(link, "a", a, event(job, 2, previous="queued", gen=2)) == ["stale"]
    last = event(job, 2, previous="queued", status="completed", final=True)
    (entry2,) = await commit(link, "a", a, last)
    entries = await link.redis.xrange(link.keys.events)
    assert [fields["id"] for _, fields in entries] == [f"{job}:1", f"{job}:2"]
    stored = await link.redis.hgetall(link.keys.job(job))
    assert stored["seq"] == "2" and stored["status"] == "completed"
    assert stored["e:1"] == entry and stored["e:2"] == entry2
    assert await link.redis.zrange(link.keys.slot_jobs(slot_of(job)), 0, -1) == []
    assert await link.redis.zrange(link.keys.status("completed"), 0, -1) == [job]
    assert await link.redis.zcard(link.keys.status("pending")) == 0


async def test_add_remove_and_revive_keep_the_sets_and_the_seq(link: RedisLink) -> None:
    a = await register(link, "a")
    job = "job_two"
    slot = slot_of(job)
    async with link.blocking.pubsub() as pubsub:
        await pubsub.subscribe(link.keys.intake_channel)
        assert await run(link, "add", "tenant", '{"k":1}', job, slot) == ["new"]
        assert await run(link, "add", "tenant", "", job, slot) == ["known"]
        assert await run(link, "remove", job) == 1
        assert await run(link, "remove", job) == 0
        messages = []
        with anyio.fail_after(5):
            while len(messages) < 2:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                if message is not None:
                    messages.append(message["data"])
        assert messages == [f"+{job}", f"-{job}"]
    assert await link.redis.zcard(link.keys.jobs) == 0
    assert await run(link, "add", "", "", job, slot) == ["revived"]
    stored = await link.redis.hgetall(link.keys.job(job))
    assert stored["gen"] == "2" and stored["metadata"] == '{"k":1}' and "credential" not in stored
    await run(link, "claim", "a", a, GAP_MS, f"slot:{slot}")
    failure = event(job, 1, gen=2, status="error", kind="failure", final=True)
    await commit(link, "a", a, failure)
    assert await link.redis.zrange(link.keys.status("error"), 0, -1) == [job]
    assert await run(link, "add", "", "", job, slot) == ["revived"]  # failed: added again
    stored = await link.redis.hgetall(link.keys.job(job))
    assert stored["status"] == "pending" and stored["seq"] == "1" and stored["gen"] == "3"
    assert await link.redis.zrange(link.keys.slot_jobs(slot), 0, -1) == [job]


async def test_the_stream_is_trimmed_of_what_every_sink_acknowledged(link: RedisLink) -> None:
    events = link.keys.events
    await create_groups(link, ["jsonl", "webhook:x", "gone"])
    ids = [await link.redis.xadd(events, {"id": f"j:{i}"}) for i in range(6)]
    await link.redis.hset(link.keys.sinks, mapping={"jsonl": 2**50, "webhook:x": 2**50})
    # jsonl read and acknowledged four; the webhook read five and acknowledged two.
    await link.redis.xreadgroup("jsonl", "r", {events: ">"}, count=4)
    await link.redis.xack(events, "jsonl", *ids[:4])
    await link.redis.xreadgroup("webhook:x", "r", {events: ">"}, count=5)
    await link.redis.xack(events, "webhook:x", ids[0], ids[1])
    # Within the history window nothing goes.
    assert await trim(link, retention_s=3600, abandon_after_s=600) == 0
    assert await trim(link, retention_s=0, abandon_after_s=600) == 2
    # "gone" was never announced: it holds nothing back; the webhook's pending third does.
    assert [entry for entry, _ in await link.redis.xrange(events)] == ids[2:]
    await link.redis.xack(events, "webhook:x", *ids[2:5])
    assert await trim(link, retention_s=0, abandon_after_s=600) == 2  # jsonl is at the 5th
    assert [entry for entry, _ in await link.redis.xrange(events)] == ids[4:]


async def test_a_sink_is_read_and_taken_over_only_by_its_holder(link: RedisLink) -> None:
    a, b = await register(link, "a"), await register(link, "b")
    events = link.keys.events
    await create_groups(link, ["jsonl"])
    ids = [
        await link.redis.xadd(events, {"id": f"j:{i}", "job": "j", "body": "{}"}) for i in range(3)
    ]
    await link.redis.hset(link.keys.attempts("jsonl"), ids[0], 2)
    assert await run(link, "claim", "a", a, 0, "sink:jsonl") == [0]
    # Not b's: nothing read, nothing taken from a's consumer.
    assert await run(link, "read", "b", b, "jsonl", ">", 10) == [0]
    ok, entries, attempts = await run(link, "read", "a", a, "jsonl", ">", 2)
    assert ok == 1 and [entry for entry, _ in entries] == ids[:2] and attempts == ["2", None]
    assert entries[0][1] == ["id", "j:0", "job", "j", "body", "{}"]
    assert await run(link, "adopt", "b", b, "jsonl", "0-0", 10) == [0]
    assert await run(link, "read", "a", "999", "jsonl", ">", 10) == [0]  # not a's token
    # Redis lost who holds the sink; b claims it (a gap later) and takes a's pending two.
    await link.redis.delete(link.keys.unit("sink:jsonl"))
    assert await run(link, "claim", "b", b, 0, "sink:jsonl") == [0]
    assert await run(link, "read", "a", a, "jsonl", ">", 10) == [0]
    assert await run(link, "adopt", "b", b, "jsonl", "0-0", 10) == [1, "0-0", 2]
    ok, entries, _ = await run(link, "read", "b", b, "jsonl", "0", 10)
    assert [entry for entry, _ in entries] == ids[:2]
    # a has nothing pending any more: it is no longer a consumer of the group.
    consumers = await link.redis.xinfo_consumers(link.keys.events, "jsonl")
    assert [consumer["name"] for consumer in consumers] == ["b"]


async def test_sinks_are_announced_on_the_clock_of_redis(
    link: RedisLink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("time.time", lambda: 0.0)  # a replica whose clock is far off
    await create_groups(link, ["jsonl"])
    await trim(link, retention_s=3600, abandon_after_s=600, announce=["jsonl"])
    seconds, micros = await link.redis.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    announced = int(await link.redis.hget(link.keys.sinks, "jsonl"))
    assert now_ms - 1000 < announced <= now_ms
