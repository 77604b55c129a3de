"""The Lua scripts against a real Redis, in given time (every call passes ``now``)."""

from __future__ import annotations

import bisect
import hashlib
import json
from typing import Any

import pytest

from poller._boundary import MAX_RETRY_AFTER_S
from poller.redis import LeasedBudget, RedisCoordinator
from poller.redis._client import ScriptClient
from poller.redis._coordinator import _ADAPTIVE
from poller.redis._lease import LEASE_HORIZON_S
from poller.redis._scripts import HEARTBEAT, LEARN_PUSH, LEARN_READ, LEASE, THROTTLE
from poller.sched.core import ORG_IDLE_S
from poller.sched.ratelimit import RateLimit

pytestmark = pytest.mark.anyio
T0 = 1_000.0


class Org:
    """Calls the budget scripts of one organisation the way the coordinator does."""

    def __init__(self, script_client: ScriptClient, ns: str, ceiling: float | None = 98.0) -> None:
        self.client = script_client
        self.key = f"{ns}:{{{ns}:org}}:budget"
        self.channel = f"{ns}:events"
        self.ceiling: Any = "" if ceiling is None else ceiling

    async def lease(
        self,
        now: float,
        engine: str,
        want: int,
        *,
        demand: float = -1,
        weight: float = 1.0,
        accepted: int = 0,
        give_back: int = 0,
        horizon_s: float = 0.25,
    ) -> tuple[int, float, float, float | None, float, float, int]:
        argv = [now, engine, weight, demand, want, give_back, accepted, self.ceiling]
        argv += [horizon_s, 60, 2.0, LEASE_HORIZON_S, MAX_RETRY_AFTER_S, *_ADAPTIVE]
        count, start, step, rate, share, pause, engines, _ = await self.client.run(
            LEASE, [self.key], argv
        )
        rate_per_s = float(rate)
        return (
            int(count),
            float(start),
            float(step),
            None if rate_per_s < 0 else rate_per_s,
            float(share),
            float(pause),
            int(engines),
        )

    async def throttle(self, now: float, pause_s: float, accepted: int) -> tuple[float, float, int]:
        argv = [now, pause_s, accepted, self.ceiling, 60, self.channel, "org"]
        argv += [LEASE_HORIZON_S, MAX_RETRY_AFTER_S, *_ADAPTIVE]
        pause, rate, cut = await self.client.run(THROTTLE, [self.key], argv)
        return float(pause), float(rate), int(cut)


def most_in_a_second(slots: list[float]) -> int:
    slots = sorted(slots)
    return max(bisect.bisect_left(slots, t + 1.0) - i for i, t in enumerate(slots))


def pace_at(blocks: list[tuple[float, float, int]], t: float) -> float:
    """The paces of the blocks (start, step, count) that cover ``t``, added up."""
    return sum(1 / step for start, step, count in blocks if start <= t < start + count * step)


async def test_the_paces_reserved_never_add_up_past_the_rate(
    script_client: ScriptClient, redis_ns: str
) -> None:
    """Three hungry engines, each asking every 100 ms for far more than there is: each
    gets slots at its pace, together the rate (98/s for a configured 100), never more at
    any instant, in equal shares."""
    org = Org(script_client, redis_ns)
    got = {"a": 0, "b": 0, "c": 0}
    slots: list[float] = []
    blocks: list[tuple[float, float, int]] = []
    for tick in range(100):  # 10 s
        now = T0 + tick * 0.1
        for engine in sorted(got, key=lambda e: (tick + ord(e)) % 3):  # turns vary
            count, start, step, rate, *_ = await org.lease(now, engine, 100)
            got[engine] += count
            slots += [now + start + k * step for k in range(count)]
            blocks.append((now + start, step, count))
            assert rate == pytest.approx(98.0)
    assert max(pace_at(blocks, T0 + k * 0.001) for k in range(10_000)) <= 98.0 + 1e-6
    assert most_in_a_second(slots) <= 98 + 3  # each engine one slot more at most
    total = sum(got.values())
    assert 98 * 10 - 30 <= total <= 98 * 10.25 + 2
    assert max(got.values()) - min(got.values()) <= 0.05 * total


async def test_shares_are_max_min_fair_by_demand_and_weight(
    script_client: ScriptClient, redis_ns: str
) -> None:
    org = Org(script_client, redis_ns)
    await org.lease(T0, "small", 1, demand=10.0)
    await org.lease(T0, "heavy", 1, weight=2.0)
    _, _, _, _, share, _, engines = await org.lease(T0, "light", 1)
    # 98/s: "small" wants 10 and gets it; 88 left, shared 2:1 by weight.
    assert engines == 3
    assert share == pytest.approx(88 / 3)
    _, _, _, _, share, *_ = await org.lease(T0, "heavy", 1, weight=2.0)
    assert share == pytest.approx(88 * 2 / 3)
    # What nobody wants is spread over all by weight.
    _, _, _, _, share, *_ = await org.lease(T0 + 10, "alone", 1, demand=5.0)
    assert share == pytest.approx(98.0)  # the others' reports went stale


async def test_idle_engines_reserve_no_part_of_the_rate(
    script_client: ScriptClient, redis_ns: str
) -> None:
    """Engines that report no demand (idle budgets) leave the shares at once."""
    org = Org(script_client, redis_ns)
    for index in range(20):
        await org.lease(T0, f"busy-then-idle-{index}", 1, demand=5.0)
    _, _, _, _, share, _, engines = await org.lease(T0, "hungry", 100)
    assert engines == 21 and share == pytest.approx(98.0 / 21)  # 21 x 5/s > 98/s
    for index in range(20):
        await org.lease(T0 + 0.1, f"busy-then-idle-{index}", 0, demand=0.0)
    _, _, _, _, share, _, engines = await org.lease(T0 + 0.1, "hungry", 100)
    assert engines == 1 and share == pytest.approx(98.0)


async def test_handing_back_frees_only_the_engines_own_reservation(
    script_client: ScriptClient, redis_ns: str
) -> None:
    """Slots handed back end the engine's own reservation sooner (they are its latest,
    all to come): the room goes to the others, and nobody's slots are handed out twice."""
    org = Org(script_client, redis_ns)
    blocks: dict[str, tuple[float, float, int]] = {}

    async def lease(engine: str, want: int, give_back: int = 0) -> int:
        count, start, step, *_ = await org.lease(T0, engine, want, give_back=give_back)
        if count:
            blocks[engine] = (T0 + start, step, count)
        return count

    assert await lease("a", 100) == 24  # alone: 98/s over 250 ms
    assert await lease("b", 100) == 0  # no room before a's reservation ends
    start, step, count = blocks["a"]
    blocks["a"] = (start, step, count - 10)
    await lease("a", 0, give_back=10)  # its latest ten
    assert await lease("b", 100) > 0
    assert blocks["b"][0] >= blocks["a"][0] + 14 * blocks["a"][1] - 1e-3  # after a's
    samples = [T0 + k * 0.001 for k in range(300)]
    assert max(pace_at(list(blocks.values()), t) for t in samples) <= 98.0 + 1e-6


async def test_one_engine_cannot_take_more_than_its_share(
    script_client: ScriptClient, redis_ns: str
) -> None:
    """An engine asking ten times as often as another gets no more for it."""
    org = Org(script_client, redis_ns)
    got = {"eager": 0, "calm": 0}
    for tick in range(200):  # 4 s, 20 ms apart
        now = T0 + tick * 0.02
        got["eager"] += (await org.lease(now, "eager", 100))[0]
        if tick % 10 == 0:
            got["calm"] += (await org.lease(now, "calm", 100))[0]
    assert got["calm"] >= 0.8 * got["eager"]


async def test_a_429_pauses_every_engine_and_cuts_once_a_second(
    script_client: ScriptClient, redis_ns: str
) -> None:
    org = Org(script_client, redis_ns, ceiling=None)
    # Uncapped: no tokens to lease, engines report what was accepted.
    count, _, _, rate, *_ = await org.lease(T0, "a", 0, demand=500.0, accepted=60)
    assert count == 0 and rate is None
    await org.lease(T0 + 0.05, "b", 0, demand=500.0, accepted=20)
    pause, rate_after, cut = await org.throttle(T0 + 0.1, 2.0, accepted=20)
    assert (pause, cut) == (2.0, 1)
    assert rate_after == pytest.approx(0.9 * 100)  # beta x what the fleet had accepted
    # Every engine sees the pause at its next lease call.
    count, _, _, rate, _, pause, _ = await org.lease(T0 + 0.2, "b", 10)
    assert count == 0 and pause == pytest.approx(1.9)
    assert rate == pytest.approx(90.0, abs=0.2)  # regrowing: b wants more
    # A second 429 within the second extends the pause; no second cut.
    _, rate_again, cut = await org.throttle(T0 + 0.5, 3.0, accepted=0)
    assert cut == 0 and rate_again == pytest.approx(90.0, abs=0.5)
    # After the pause, leases resume, starting no earlier than its end.
    count, start, *_ = await org.lease(T0 + 3.5, "b", 10)
    assert count > 0 and T0 + 3.5 + start >= T0 + 3.5 - 0.02


async def test_late_reports_lift_a_cut_measured_on_too_little(
    script_client: ScriptClient, redis_ns: str
) -> None:
    org = Org(script_client, redis_ns, ceiling=None)
    await org.throttle(T0, 1.0, accepted=30)  # one engine's count alone
    _, lifted, cut = await org.throttle(T0 + 0.3, 1.0, accepted=70)  # the others'
    assert cut == 0 and lifted == pytest.approx(90.0)


async def test_the_rate_regrows_while_engines_want_more(
    script_client: ScriptClient, redis_ns: str
) -> None:
    org = Org(script_client, redis_ns, ceiling=None)
    await org.throttle(T0, 0.1, accepted=100)
    rates = []
    for tick in range(1, 81):  # every 0.5 s, always wanting more than is granted
        rates.append((await org.lease(T0 + tick / 2, "a", 1000))[3])
    assert rates[0] == pytest.approx(90.0)  # nobody wanted more yet
    assert rates[2] == pytest.approx(91.0, abs=0.1)  # one second up the curve
    assert rates == sorted(rates)
    assert rates[56] < 100.0 < rates[-1]  # back at w_max after recovery_s, then probing


async def test_a_throttle_is_published(script_client: ScriptClient, redis_ns: str) -> None:
    org = Org(script_client, redis_ns)
    pubsub = script_client.redis.pubsub()
    await pubsub.subscribe(org.channel)
    await org.throttle(T0, 1.5, accepted=50)
    message = None
    for _ in range(50):
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message is not None:
            break
    await pubsub.aclose()
    assert message is not None
    assert json.loads(message["data"]) == {"org": "org", "pause": 1.5, "rate": pytest.approx(45.0)}


async def test_an_empty_redis_is_reseeded_by_the_next_call(
    script_client: ScriptClient, redis_ns: str
) -> None:
    org = Org(script_client, redis_ns)
    await org.lease(T0, "a", 10)
    await script_client.redis.delete(org.key)
    count, _, _, rate, *_ = await org.lease(T0 + 1, "a", 10)
    assert count == 10 and rate == pytest.approx(98.0)


async def test_every_key_has_a_ttl(script_client: ScriptClient, redis_ns: str) -> None:
    org = Org(script_client, redis_ns)
    await org.lease(T0, "a", 10)
    await org.throttle(T0, 1.0, accepted=5)
    keys = [f"{redis_ns}:engines", f"{redis_ns}:epoch"]
    await script_client.run(HEARTBEAT, keys, [T0, "a", 5, 60, "e1", "0", 3600])
    learn = Learn(script_client, redis_ns)
    await learn.push(1, [["org\t/v1/x\tqueued", {"2": 1.0}]], engine="e1", epoch="e1")
    found = [key async for key in script_client.redis.scan_iter(match=f"{redis_ns}:*")]
    assert len(found) == 6  # budget, engines, epoch, learn index, one table, e1's push
    for key in found:
        assert await script_client.redis.ttl(key) > 0, key


async def test_what_the_fleet_learned_outlives_an_idle_hour(
    script_client: ScriptClient, redis_url: str, redis_ns: str
) -> None:
    """An engine keeps an idle organisation's budget ORG_IDLE_S: the fleet's adaptive
    state (an undisclosed limit learned from 429s) lives as long in Redis."""
    coord = RedisCoordinator(redis_url, namespace=redis_ns)
    budget = coord.budget("org", None)
    assert isinstance(budget, LeasedBudget)
    await script_client.run(*coord._lease_call("org", budget, budget.report(T0), now=T0))
    key = f"{redis_ns}:{{{redis_ns}:org}}:budget"
    assert await script_client.redis.ttl(key) >= ORG_IDLE_S - 5


async def test_times_from_a_clock_that_went_back_are_bounded(
    script_client: ScriptClient, redis_ns: str
) -> None:
    """Stored times are the server's: after a failover to a server whose clock is a week
    behind, the fleet is not paused, reserved or climbing for a week."""
    org = Org(script_client, redis_ns)
    week = 7 * 86_400.0
    await org.lease(T0 + week, "a", 100)  # a's reservation: a week ahead of T0
    _, start, *_ = await org.lease(T0, "b", 100)  # the clock went back a week
    assert start <= LEASE_HORIZON_S + 1e-6  # a's reservation ends soon, not in a week
    count, start, *_ = await org.lease(T0 + 2, "b", 100)
    assert count > 0 and start == pytest.approx(0.0)
    await org.throttle(T0 + week, 5.0, accepted=50)
    *_, pause, _ = await org.lease(T0 + 3, "b", 10)
    assert pause == pytest.approx(MAX_RETRY_AFTER_S)  # bounded, not a week


async def test_heartbeats_count_live_engines(script_client: ScriptClient, redis_ns: str) -> None:
    keys = [f"{redis_ns}:engines", f"{redis_ns}:epoch"]

    async def beat(now: float, engine: str, leaving: str = "0") -> list[Any]:
        result: list[Any] = await script_client.run(
            HEARTBEAT, keys, [now, engine, 5, 60, "e", leaving, 60]
        )
        return result

    assert await beat(T0, "a") == [1, "e"]
    assert (await beat(T0 + 1, "b"))[0] == 2
    assert (await beat(T0 + 7, "b"))[0] == 1  # a missed its heartbeats
    await beat(T0 + 7, "b", leaving="1")
    assert (await beat(T0 + 7, ""))[0] == 0


class Learn:
    """Calls the learning scripts the way the coordinator does."""

    def __init__(self, script_client: ScriptClient, ns: str, max_weight: float = 4000.0) -> None:
        self.client = script_client
        self.ns = ns
        self.max_weight = max_weight

    async def push(
        self, number: int, deltas: list[Any], *, engine: str = "a", epoch: str = "e", kinds: int = 2
    ) -> tuple[str, str]:
        keys = [f"{self.ns}:learn", f"{self.ns}:epoch", f"{self.ns}:learn-seq:{engine}"]
        argv = [epoch, "e", number, self.max_weight, kinds, 3600, f"{self.ns}:learn:", 100]
        result = await self.client.run(LEARN_PUSH, keys, [*argv, json.dumps(deltas)])
        return result[0], result[1]

    async def read(self, after: str = "0", page: int = 50, epoch: str = "e") -> Any:
        keys = [f"{self.ns}:learn", f"{self.ns}:epoch"]
        _, ok, body, last, done = await self.client.run(
            LEARN_READ, keys, [epoch, after, page, f"{self.ns}:learn:"]
        )
        return ok, json.loads(body), last, done


async def test_an_engine_is_counted_alive_between_its_heartbeats(
    script_client: ScriptClient, redis_url: str, redis_ns: str
) -> None:
    """The liveness window follows heartbeat_s (it was 5 s whatever heartbeat_s)."""
    coord = RedisCoordinator(redis_url, namespace=redis_ns, heartbeat_s=5.0)
    keys = [f"{redis_ns}:engines", f"{redis_ns}:epoch"]

    async def beat(now: float, engine: str) -> int:
        argv = [now, engine, coord._alive_s, 60, "e", "0", 60]
        count, _ = await script_client.run(HEARTBEAT, keys, argv)
        return int(count)

    await beat(T0, "a")
    assert await beat(T0 + 4.9, "b") == 2
    assert await beat(T0 + 9.9, "b") == 2  # a's next beat is due at T0 + 10


def test_an_engines_weight_is_its_own() -> None:
    """A limit's weight is an organisation's share of the global cap, not an engine's
    share of the organisation."""
    coord = RedisCoordinator("redis://127.0.0.1:6379/0", weight=2.0)
    budget = coord.budget("org", RateLimit(per_s=10, weight=3.0))
    assert isinstance(budget, LeasedBudget)
    _, _, argv = coord._lease_call("org", budget, budget.report(T0))
    assert argv[2] == 2.0


async def test_a_table_in_another_layout_starts_afresh(
    script_client: ScriptClient, redis_ns: str
) -> None:
    learn = Learn(script_client, redis_ns)
    kind = "org\t/v1/x\tqueued"
    await learn.push(1, [[kind, {"1": 1.0}]])
    key = f"{redis_ns}:learn:{hashlib.sha1(kind.encode()).hexdigest()}"
    await script_client.redis.set(key, json.dumps({"t": 1, "c": [1] + [0] * 99}))  # before v
    assert await learn.push(2, [[kind, {"3": 1.0}]]) == ("e", "1")
    _, tables, *_ = await learn.read()
    assert tables == [[kind, {"3": 1}]]


async def test_learned_tables_merge_fade_and_stay_bounded(
    script_client: ScriptClient, redis_ns: str
) -> None:
    learn = Learn(script_client, redis_ns, max_weight=10.0)
    kind_a = "org\t/v1/x\tqueued"
    assert await learn.push(1, [[kind_a, {"0": 2.0, "5": 1.0}]]) == ("e", "1")
    _, tables, last, done = await learn.read()
    assert tables == [[kind_a, {"0": 2, "5": 1}]] and done == "1"  # sparse
    await learn.push(1, [[kind_a, {"5": 3.0}]], engine="b")  # another engine's samples
    _, tables, *_ = await learn.read()
    assert tables[0][1]["5"] == 4
    await learn.push(2, [[kind_a, {"5": 5.0}]], engine="b")  # total 11 > 10: halved
    _, tables, *_ = await learn.read()
    assert tables[0][1] == {"0": 1, "5": 4.5}
    # At most two kinds: the least recently changed goes.
    await learn.push(2, [["org\t/v1/x\tin_progress", {"1": 1.0}]])
    await learn.push(3, [["org\t/v1/y\tqueued", {"1": 1.0}]])
    _, tables, last, _ = await learn.read()
    assert [k for k, _ in tables] == ["org\t/v1/x\tin_progress", "org\t/v1/y\tqueued"]
    # Only what changed after the last change read comes back.
    await learn.push(4, [["org\t/v1/y\tqueued", {"2": 1.0}]])
    _, tables, _, _ = await learn.read(after=last)
    assert [k for k, _ in tables] == ["org\t/v1/y\tqueued"]
    # An engine that knew another epoch pushes nothing: it must send its tables whole.
    assert await learn.push(5, [[kind_a, {"1": 1.0}]], epoch="old") == ("e", "0")
    assert (await learn.read(epoch="old"))[0] == "0"


async def test_a_push_sent_again_is_counted_once(
    script_client: ScriptClient, redis_ns: str
) -> None:
    """Its answer was lost (a timeout after Redis applied it): the engine sends it again,
    with its number, and Redis does not add it twice."""
    learn = Learn(script_client, redis_ns)
    kind = "org\t/v1/x\tqueued"
    assert await learn.push(7, [[kind, {"3": 1.0}]]) == ("e", "1")
    assert await learn.push(7, [[kind, {"3": 1.0}]]) == ("e", "2")
    assert await learn.push(6, [[kind, {"3": 1.0}]]) == ("e", "2")
    _, tables, *_ = await learn.read()
    assert tables == [[kind, {"3": 1}]]


async def test_the_learned_tables_are_read_a_page_at_a_time(
    script_client: ScriptClient, redis_ns: str
) -> None:
    learn = Learn(script_client, redis_ns)
    names = [f"org_{i:03}\t/v1/x\tqueued" for i in range(120)]
    for number, start in enumerate(range(0, 120, 50), start=1):
        chunk = [[name, {"1": 1.0}] for name in names[start : start + 50]]
        await learn.push(number, chunk, kinds=1000)
    seen, after, pages = [], "0", 0
    while True:
        _, tables, after, done = await learn.read(after=after, page=50)
        pages += 1
        seen += [name for name, _ in tables]
        if done == "1":
            break
    assert seen == names and pages == 3
    # An index that started over (it expired) is read from its start.
    await script_client.redis.delete(f"{redis_ns}:learn")
    await learn.push(9, [[names[0], {"1": 1.0}]], kinds=1000)
    _, tables, *_ = await learn.read(after=after)
    assert [name for name, _ in tables] == [names[0]]
