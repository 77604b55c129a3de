"""The engine end to end, against the simulator over a real loopback socket."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import time
from collections import defaultdict
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import pytest
from _helpers import FAST

from poller import (
    AuthenticationError,
    Backoff,
    Event,
    JobNotFoundError,
    JobsFailedError,
    LearnedDurations,
    Poller,
    PollerClosedError,
    Status,
    SubscriberOverflowError,
    TrackingFailure,
    Transition,
    UntrackedError,
)
from poller import errors as poller_errors
from poller.testing import Change, Faults, JobsSimulator, SimServer
from poller.testing.pytest_plugin import TEST_API_KEY, TEST_ORG_ID
from poller.transport import AiohttpTransport

pytestmark = pytest.mark.anyio

QUICK_ENDPOINTS = ("/v1/documents/classify", "/v1/documents/extract", "/v1/documents/split")


def engine(server: SimServer, **kwargs) -> Poller:
    options = {
        "api_key": TEST_API_KEY,
        "base_url": server.base_url,
        "backoff": FAST,
        "first_poll_rate_per_s": None,
        "seed": 1,
    }
    options.update(kwargs)
    return Poller(**options)


def scripted(sim: JobsSimulator, *steps: tuple[str, float], **kwargs) -> str:
    return sim.add_job(
        org_id=TEST_ORG_ID, script=[Change(status, at) for status, at in steps], **kwargs
    )


async def test_two_thousand_jobs_each_reach_their_terminal_status_once_and_in_order(
    retab_sim: SimServer,
) -> None:
    sim = retab_sim.sim
    sim.time_scale = 0.002
    job_ids = []
    for endpoint in QUICK_ENDPOINTS:
        job_ids += sim.add_jobs(667, org_ids=[TEST_ORG_ID], endpoint=endpoint)
    job_ids = job_ids[:2000]
    received: dict[str, list[Transition]] = defaultdict(list)
    async with engine(retab_sim) as poller:
        async with poller.subscribe() as stream, anyio.create_task_group() as tg:

            async def collect() -> None:
                async for event in stream:
                    assert isinstance(event, Transition), event
                    received[event.job_id].append(event)

            tg.start_soon(collect)
            results = await poller.wait_all(job_ids, timeout_s=60)
            await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
        stats = poller.stats()
    assert set(results) == set(job_ids)
    truth_end = time.time()
    for job_id in job_ids:
        transitions = received[job_id]
        true_final = sim.changes(job_id, now=truth_end)[-1].status
        assert results[job_id].status.value == true_final
        assert [t.seq for t in transitions] == list(range(1, len(transitions) + 1))
        assert transitions[0].previous is None
        for before, after in itertools.pairwise(transitions):
            assert after.previous == before.current != after.current
            assert after.observed_at >= before.observed_at
        terminal = [t for t in transitions if t.current.is_terminal]
        assert len(terminal) == 1 and terminal[0] is transitions[-1]
        true_order = [c.status for c in sim.changes(job_id, now=truth_end)]
        seen = [t.current.value for t in transitions]
        assert _is_subsequence(seen, true_order), (seen, true_order)
    assert stats.tracked == 2000
    assert sum(stats.by_status.values()) == 2000
    assert stats.in_flight == 0


def _is_subsequence(items: list[str], of: list[str]) -> bool:
    remaining = iter(of)
    return all(item in remaining for item in items)


async def test_wait_returns_the_terminal_payload(retab_sim: SimServer) -> None:
    job_id = scripted(retab_sim.sim, ("queued", 0.0), ("in_progress", 0.05), ("completed", 0.1))
    async with engine(retab_sim) as poller:
        job = await poller.wait(job_id, timeout_s=10)
        assert job.status is Status.COMPLETED and job.id == job_id
        # A finished job answers at once, without another request.
        polls = poller.stats().polls
        assert (await poller.wait(job_id)).status is Status.COMPLETED
        assert poller.stats().polls == polls


async def test_wait_timeout_raises_builtin_timeout_and_keeps_tracking(
    retab_sim: SimServer,
) -> None:
    job_id = scripted(retab_sim.sim, ("queued", 0.0), ("completed", 0.4))
    async with engine(retab_sim) as poller:
        with pytest.raises(TimeoutError):
            await poller.wait(job_id, timeout_s=0.05)
        assert (await poller.wait(job_id, timeout_s=10)).status is Status.COMPLETED


async def test_wait_all_reports_failures_with_every_result(retab_sim: SimServer) -> None:
    done = scripted(retab_sim.sim, ("queued", 0.0), ("failed", 0.05))
    async with engine(retab_sim) as poller:
        with pytest.raises(JobsFailedError) as caught:
            await poller.wait_all([done, "job_missing"], timeout_s=10)
    assert caught.value.results[done].status is Status.FAILED
    assert isinstance(caught.value.errors["job_missing"], JobNotFoundError)


async def test_wait_all_answers_in_the_order_asked(retab_sim: SimServer) -> None:
    sim = retab_sim.sim
    slow = scripted(sim, ("queued", 0.0), ("completed", 0.3))
    fast = scripted(sim, ("queued", 0.0), ("completed", 0.05))
    async with engine(retab_sim) as poller:
        results = await poller.wait_all([slow, fast, slow], timeout_s=10)
    assert list(results) == [slow, fast]  # not the order they finished in; repeats once


async def test_not_found_ends_tracking_without_retries(retab_sim: SimServer) -> None:
    async with engine(retab_sim) as poller, poller.subscribe() as stream:
        with pytest.raises(JobNotFoundError):
            await poller.wait("job_does_not_exist", timeout_s=10)
        event = await stream.receive()
        assert isinstance(event, TrackingFailure)
        assert isinstance(event.error, JobNotFoundError)
        await anyio.sleep(0.1)
    assert len(retab_sim.sim.log.for_job("job_does_not_exist")) == 1


async def test_bad_key_fails_its_jobs_and_not_the_others(retab_sim: SimServer) -> None:
    sim = retab_sim.sim
    good = scripted(sim, ("queued", 0.0), ("completed", 0.05))
    other = scripted(sim, ("queued", 0.0), ("completed", 0.05))
    async with engine(retab_sim) as poller:
        with pytest.raises(AuthenticationError) as caught:
            await poller.wait(other, api_key="rt_test_wrong", timeout_s=10)
        assert "rt_test_wrong" not in str(caught.value)
        assert (await poller.wait(good, timeout_s=10)).status is Status.COMPLETED


async def test_job_that_expires_reports_expired(retab_sim: SimServer) -> None:
    job_id = scripted(retab_sim.sim, ("queued", 0.0), ("in_progress", 0.02), ttl_s=0.3)
    async with engine(retab_sim) as poller:
        job = await poller.wait(job_id, timeout_s=10)
    assert job.status is Status.EXPIRED


async def test_untrack_releases_waiters_and_stops_polling(retab_sim: SimServer) -> None:
    job_id = scripted(retab_sim.sim, ("queued", 0.0), ("completed", 30.0))
    async with engine(retab_sim) as poller:
        async with anyio.create_task_group() as tg:

            async def waiter() -> None:
                with pytest.raises(UntrackedError):
                    await poller.wait(job_id)

            tg.start_soon(waiter)
            await anyio.sleep(0.1)
            assert poller.untrack(job_id)
        requests = len(retab_sim.sim.log.for_job(job_id))
        await anyio.sleep(0.2)
        assert len(retab_sim.sim.log.for_job(job_id)) == requests
        assert not poller.untrack(job_id)


async def test_callbacks_sync_and_async_in_order_and_errors_contained(
    retab_sim: SimServer, caplog: pytest.LogCaptureFixture
) -> None:
    sim = retab_sim.sim
    job_ids = [
        scripted(sim, ("queued", 0.0), ("in_progress", 0.03), ("completed", 0.06))
        for _ in range(20)
    ]
    sync_seen: list[Transition] = []
    async_seen: dict[str, list[int]] = defaultdict(list)

    def broken(transition: Transition) -> None:
        raise RuntimeError("callback bug")

    async def slow(transition: Transition) -> None:
        await anyio.sleep(0.001)
        async_seen[transition.job_id].append(transition.seq)

    async with engine(retab_sim) as poller:
        poller.on_transition(sync_seen.append)
        poller.on_transition(broken, statuses=["completed"])
        poller.on_transition(slow)
        with caplog.at_level(logging.ERROR, logger="poller.callbacks"):
            await poller.wait_all(job_ids, timeout_s=10)
            await anyio.sleep(0.1)
        stats = poller.stats()
    assert stats.callback_errors == 20
    assert sum("callback bug" in r.exc_text for r in caplog.records if r.exc_text) == 20
    assert {t.job_id for t in sync_seen} == set(job_ids)
    for job_id in job_ids:
        sync_seqs = [t.seq for t in sync_seen if t.job_id == job_id]
        assert sync_seqs == list(range(1, len(sync_seqs) + 1))
        assert async_seen[job_id] == sync_seqs


async def test_removed_callback_is_not_called(retab_sim: SimServer) -> None:
    job_id = scripted(retab_sim.sim, ("queued", 0.0), ("completed", 0.05))
    calls: list[Transition] = []
    async with engine(retab_sim) as poller:
        handle = poller.on_transition(calls.append)
        handle.remove()
        await poller.wait(job_id, timeout_s=10)
    assert calls == []


async def test_a_callback_removing_itself_costs_the_others_nothing(
    retab_sim: SimServer,
) -> None:
    job_id = scripted(retab_sim.sim, ("queued", 0.0), ("in_progress", 0.2), ("completed", 0.4))
    first: list[str] = []
    second: list[str] = []
    async with engine(retab_sim) as poller:

        def one_shot(t: Transition) -> None:
            first.append(t.current.value)
            handle.remove()

        handle = poller.on_transition(one_shot)
        poller.on_transition(lambda t: second.append(t.current.value))
        await poller.wait(job_id, timeout_s=10)
    assert first == ["queued"]
    assert second == ["queued", "in_progress", "completed"]


async def test_several_readers_of_one_subscription_share_it_and_all_see_its_end(
    retab_sim: SimServer,
) -> None:
    sim = retab_sim.sim
    job_ids = [scripted(sim, ("queued", 0.0), ("completed", 0.05)) for _ in range(20)]
    got: dict[str, list[str]] = {"a": [], "b": [], "c": []}
    ended: list[str] = []

    all_seen, all_ended = anyio.Event(), anyio.Event()

    async def read(name: str, stream: Any) -> None:
        async for event in stream:
            got[name].append(f"{event.job_id}:{event.seq}")
            if sum(len(v) for v in got.values()) == 2 * len(job_ids):
                all_seen.set()
        ended.append(name)
        if len(ended) == len(got):
            all_ended.set()

    async with contextlib.AsyncExitStack() as stack, anyio.create_task_group() as readers:
        poller = engine(retab_sim)
        closing = contextlib.AsyncExitStack()  # the engine, closed first below
        await closing.enter_async_context(poller)
        stream = await stack.enter_async_context(poller.subscribe())
        for name in got:
            readers.start_soon(read, name, stream)
        await poller.wait_all(job_ids, timeout_s=10)
        with anyio.fail_after(5):
            await all_seen.wait()
        await closing.aclose()  # the engine closes while all three wait: each one ends
        with anyio.fail_after(5):
            await all_ended.wait()
    seen = [e for v in got.values() for e in v]
    assert sorted(seen) == sorted(f"{j}:{s}" for j in job_ids for s in (1, 2)), "each once"
    assert sorted(ended) == ["a", "b", "c"]


async def test_subscription_filters(retab_sim: SimServer) -> None:
    sim = retab_sim.sim
    wanted = scripted(sim, ("queued", 0.0), ("in_progress", 0.03), ("completed", 0.06))
    other = scripted(sim, ("queued", 0.0), ("completed", 0.03))
    async with (
        engine(retab_sim) as poller,
        poller.subscribe(statuses=["completed"], job_ids=[wanted]) as stream,
    ):
        await poller.wait_all([wanted, other], timeout_s=10)
        event = await stream.receive()
        assert isinstance(event, Transition)
        assert (event.job_id, event.current) == (wanted, Status.COMPLETED)
        assert stream.statistics().buffered == 0


async def test_slow_subscriber_overflows_loudly_and_never_stalls_the_engine(
    retab_sim: SimServer,
) -> None:
    sim = retab_sim.sim
    job_ids = [
        scripted(sim, ("queued", 0.0), ("in_progress", 0.1), ("completed", 0.2)) for _ in range(50)
    ]
    async with (
        engine(retab_sim) as poller,
        poller.subscribe(max_buffer=10) as stuck,
        poller.subscribe() as healthy,
    ):
        results = await poller.wait_all(job_ids, timeout_s=10)
        assert len(results) == 50
        received: list[Event] = []
        with pytest.raises(SubscriberOverflowError) as caught:
            async for event in stuck:
                received.append(event)
        assert len(received) == 10
        assert caught.value.dropped >= 1
        stats = poller.stats()
        assert healthy.statistics().buffered == stats.transitions >= 100
        assert caught.value.dropped == stats.transitions - 10
        assert stats.subscriber_overflows == 1


async def test_twenty_thousand_jobs_do_not_make_twenty_thousand_tasks_or_timers(
    retab_sim: SimServer,
) -> None:
    sim = retab_sim.sim
    job_ids = [
        sim.add_job(org_id=TEST_ORG_ID, script=[Change("queued", 0.0)]) for _ in range(20_000)
    ]
    loop = asyncio.get_running_loop()
    tasks_before = len(asyncio.all_tasks())
    async with engine(
        retab_sim, max_connections=8, first_poll_rate_per_s=2000.0, backoff=Backoff()
    ) as poller:
        for job_id in job_ids:
            poller.track(job_id)
        await anyio.sleep(0.5)
        assert len(poller.stats().by_status) >= 1
        tasks = len(asyncio.all_tasks()) - tasks_before
        engine_tasks = sorted(t.get_name() for t in asyncio.all_tasks() if "poller" in t.get_name())
        timers = len(loop._scheduled)  # type: ignore[attr-defined]
        coroutines = sum(1 for o in gc.get_objects() if asyncio.iscoroutine(o))
    # The engine's fixed set: 8 workers, 1 dispatcher, 16 callback lanes.
    assert engine_tasks == sorted(
        ["poller-worker"] * 8 + ["poller-dispatcher"] + ["poller-callback-lane"] * 16
    )
    # Everything else belongs to the simulator (a handler task per open connection) and
    # aiohttp's own housekeeping: a handful, nowhere near one per job.
    assert tasks < 50, tasks
    assert timers < 100, timers
    assert coroutines < 1000, coroutines


async def test_cancelled_wait_leaves_nothing_behind(retab_sim: SimServer) -> None:
    job_id = scripted(retab_sim.sim, ("queued", 0.0), ("completed", 30.0))
    async with engine(retab_sim) as poller:
        with anyio.move_on_after(0.1):
            await poller.wait(job_id)
        assert poller._waiters == {}
    await anyio.lowlevel.checkpoint()
    assert [t for t in asyncio.all_tasks() if "poller" in t.get_name()] == []


async def test_leaving_mid_flight_closes_everything(retab_sim: SimServer) -> None:
    sim = retab_sim.sim
    job_ids = sim.add_jobs(500, org_ids=[TEST_ORG_ID])
    async with anyio.create_task_group() as tg, engine(retab_sim) as poller:

        async def waiter() -> None:
            with pytest.raises(PollerClosedError):
                await poller.wait_all(job_ids)

        tg.start_soon(waiter)
        await anyio.sleep(0.2)
        assert poller.stats().polls > 0
    gc.collect()  # an unclosed session would warn here, and warnings are errors
    assert [t for t in asyncio.all_tasks() if "poller" in t.get_name()] == []
    with pytest.raises(PollerClosedError):
        poller.track(job_ids[0])


async def test_resumed_jobs_carry_on_without_repeating_transitions(retab_sim: SimServer) -> None:
    sim = retab_sim.sim
    running = scripted(sim, ("queued", 0.0), ("in_progress", 0.01), ("completed", 0.1))
    finished = scripted(sim, ("queued", 0.0), ("completed", 0.01))
    await anyio.sleep(0.03)
    async with engine(retab_sim) as poller, poller.subscribe() as stream:
        poller.track(running, last_status="in_progress", last_seq=2)
        poller.track(finished, last_status=Status.COMPLETED, last_seq=2)
        # A job resumed in a terminal status finishes silently, and still answers wait.
        assert (await poller.wait(finished, timeout_s=10)).status is Status.COMPLETED
        assert (await poller.wait(running, timeout_s=10)).status is Status.COMPLETED
        event = await stream.receive()
        assert isinstance(event, Transition)
        assert (event.job_id, event.previous, event.current, event.seq) == (
            running,
            Status.IN_PROGRESS,
            Status.COMPLETED,
            3,
        )
        assert stream.statistics().buffered == 0
        with pytest.raises(poller_errors.ConfigError):
            poller.track("job_other", last_seq=-1)


async def test_callbacks_can_take_tracking_failures_too(retab_sim: SimServer) -> None:
    done = scripted(retab_sim.sim, ("queued", 0.0), ("completed", 0.02))
    transitions_only: list[Event] = []
    everything: list[Event] = []
    async with engine(retab_sim) as poller:
        poller.on_transition(transitions_only.append)
        poller.on_transition(everything.append, include_failures=True)
        with pytest.raises(JobsFailedError):
            await poller.wait_all([done, "job_gone"], timeout_s=10)
    assert all(isinstance(e, Transition) for e in transitions_only)
    failures = [e for e in everything if isinstance(e, TrackingFailure)]
    assert [f.job_id for f in failures] == ["job_gone"]
    assert isinstance(failures[0].error, JobNotFoundError)
    assert [e for e in everything if isinstance(e, Transition)] == transitions_only


async def test_a_disguised_job_id_reaches_the_url_as_the_id_checked(retab_sim: SimServer) -> None:
    class Disguised(str):
        def __format__(self, spec: str) -> str:
            return "../../admin?x="

    job_id = scripted(retab_sim.sim, ("completed", 0.0))
    async with engine(retab_sim) as poller:
        final = await poller.wait(Disguised(job_id), timeout_s=10)
        transport = poller._transport
        assert isinstance(transport, AiohttpTransport)
        direct = await transport.get_status(Disguised(job_id), poller._credential(None))
    assert final.id == job_id and direct.id == job_id


async def test_request_latency_is_timed_on_the_monotonic_clock(retab_sim: SimServer) -> None:
    """The engine's clock may be a wall clock that steps (or a test's fake one): a
    step during a request is no latency."""
    sim = retab_sim.sim
    sim.faults = Faults(slow=1.0, slow_delay_s=0.05)
    job_id = scripted(sim, ("queued", 0.0), ("completed", 0.3))
    offset = [0.0]
    async with engine(retab_sim, clock=lambda: time.time() + offset[0], max_connections=1) as p:
        p.track(job_id)
        await asyncio.sleep(0.02)  # the first request is under way (answered in 50 ms)
        offset[0] += 3600.0  # an NTP step
        await p.wait(job_id, timeout_s=10)
        latency = p.stats().request_latency
    assert latency.count >= 2 and latency.sum < 5.0


async def test_learned_durations_carry_over_to_a_new_engine(retab_sim: SimServer) -> None:
    job_ids = [
        scripted(retab_sim.sim, ("queued", 0.0), ("in_progress", 0.01), ("completed", 0.03))
        for _ in range(5)
    ]
    async with engine(retab_sim) as poller:
        for job_id in job_ids:
            poller.track(job_id)
        await poller.wait_all(job_ids, timeout_s=10)
        learned = poller.learned_durations()
    assert learned is not None
    assert {(k.organization_id, k.status) for k in learned.kinds} >= {
        (TEST_ORG_ID, "queued"),
        (TEST_ORG_ID, "in_progress"),
    }
    saved = msgspec.json.encode(learned)
    restored = msgspec.json.decode(saved, type=LearnedDurations)
    assert engine(retab_sim, learned_durations=restored).learned_durations() == learned
    assert engine(retab_sim, backoff=Backoff(learn=False)).learned_durations() is None
    with pytest.raises(poller_errors.ConfigError, match="learn"):
        engine(retab_sim, backoff=Backoff(learn=False), learned_durations=restored)
    broken = msgspec.json.decode(saved.replace(b"log-bins", b"lin-bins"), type=LearnedDurations)
    with pytest.raises(poller_errors.ConfigError, match="layout"):
        engine(retab_sim, learned_durations=broken)
