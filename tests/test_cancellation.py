"""Cancellation at any await point leaves nothing behind.

Each scenario (entering and leaving the engine, ``wait``, ``wait_all``, ``fetch``, a
subscription being iterated, async callbacks running, requests in flight) is cancelled
after every few event-loop iterations in turn, and by deadlines from 0 to 100 ms, against
the simulator over real sockets. After each cancellation: no ``poller-*`` task and no
other new task is left, the engine is closed and holds no waiter or subscription, its
aiohttp session and connector are closed, the server sees no open connection, and a
garbage collection surfaces no unclosed-session or unclosed-connector warning.
"""

from __future__ import annotations

import asyncio
import gc
import warnings
from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel
import pytest
from _helpers import poller_tasks

from poller import Backoff, Poller, PollerClosedError, Transition
from poller.testing import Change, JobsSimulator, SimServer
from poller.testing.pytest_plugin import TEST_API_KEY, TEST_ORG_ID
from poller.transport import AiohttpTransport

pytestmark = pytest.mark.anyio

FAST = Backoff(
    initial_interval_s={"validating": 0.01, "queued": 0.01, "in_progress": 0.01},
    default_interval_s=0.01,
    min_interval_s=0.005,
    max_interval_s=0.05,
    multiplier=1.0,
    error_base_s=0.01,
    error_max_s=0.05,
    learn=False,
)
SCRIPT = [Change("queued", 0.0), Change("in_progress", 0.02), Change("completed", 0.06)]


def _jobs(sim: JobsSimulator, n: int) -> list[str]:
    return [sim.add_job(org_id=TEST_ORG_ID, script=SCRIPT) for _ in range(n)]


async def _enter_exit(poller: Poller, sim: JobsSimulator) -> None:
    await anyio.lowlevel.checkpoint()


async def _wait(poller: Poller, sim: JobsSimulator) -> None:
    (job_id,) = _jobs(sim, 1)
    await poller.wait(job_id, timeout_s=5)


async def _wait_all(poller: Poller, sim: JobsSimulator) -> None:
    await poller.wait_all(_jobs(sim, 30), timeout_s=5)


async def _fetch(poller: Poller, sim: JobsSimulator) -> None:
    for job_id in _jobs(sim, 5):
        await poller.fetch(job_id, include_request=True)


async def _subscribe(poller: Poller, sim: JobsSimulator) -> None:
    job_ids = _jobs(sim, 10)
    async with poller.subscribe() as stream:
        for job_id in job_ids:
            poller.track(job_id)
        ended = 0
        async for event in stream:
            assert isinstance(event, Transition)
            ended += event.current.is_terminal
            if ended == len(job_ids):
                break


async def _callbacks(poller: Poller, sim: JobsSimulator) -> None:
    async def slow(transition: Transition) -> None:
        await anyio.sleep(0.005)

    poller.on_transition(slow)
    poller.on_transition(lambda t: None)
    await poller.wait_all(_jobs(sim, 10), timeout_s=5)


async def _in_flight(poller: Poller, sim: JobsSimulator) -> None:
    for job_id in _jobs(sim, 100):
        poller.track(job_id)
    await anyio.sleep(1)


SCENARIOS: dict[str, Callable[[Poller, JobsSimulator], Awaitable[None]]] = {
    "enter-exit": _enter_exit,
    "wait": _wait,
    "wait_all": _wait_all,
    "fetch": _fetch,
    "subscribe": _subscribe,
    "callbacks": _callbacks,
    "in-flight": _in_flight,
}


async def _assert_nothing_left(
    poller: Poller, server: SimServer, tasks_before: set[asyncio.Task[object]]
) -> None:
    # The server's handlers notice the closed connections within a few loop iterations.
    with anyio.move_on_after(2):
        while server._runner is not None and server._runner.server.connections:  # noqa: ASYNC110
            await anyio.sleep(0.005)
    assert poller_tasks() == []
    current = asyncio.current_task()
    leftover = [t for t in asyncio.all_tasks() - tasks_before if t is not current and not t.done()]
    assert leftover == [], [t.get_coro() for t in leftover]
    assert poller._waiters == {}
    assert poller._subscriptions == []
    transport = poller._transport
    if transport is not None:
        assert isinstance(transport, AiohttpTransport)
        assert transport._session.closed
        connector = transport._session.connector
        assert connector is None or connector.closed
    assert server._runner is not None and server._runner.server.connections == []
    with pytest.raises(PollerClosedError):
        poller.track("job_after")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    assert [str(w.message) for w in caught] == []


async def _run_cancelled(
    scenario: str, cancel: Callable[[anyio.CancelScope], Awaitable[None]]
) -> bool:
    """Run ``scenario`` inside a scope that ``cancel`` cancels; True if it finished first."""
    sim = JobsSimulator(seed=3)
    sim.add_org(TEST_ORG_ID, api_keys=[TEST_API_KEY])
    async with SimServer(sim) as server:
        tasks_before = set(asyncio.all_tasks())
        poller = Poller(
            api_key=TEST_API_KEY,
            base_url=server.base_url,
            backoff=FAST,
            first_poll_rate_per_s=None,
            max_connections=8,
        )
        finished = False
        scope = anyio.CancelScope()

        async def body() -> None:
            nonlocal finished
            with scope:
                async with poller:
                    await SCENARIOS[scenario](poller, sim)
                finished = True

        async with anyio.create_task_group() as tg:
            tg.start_soon(body)
            await cancel(scope)
        await _assert_nothing_left(poller, server, tasks_before)
    return finished


def _after_iterations(n: int) -> Callable[[anyio.CancelScope], Awaitable[None]]:
    async def cancel(scope: anyio.CancelScope) -> None:
        for _ in range(n):
            await anyio.lowlevel.checkpoint()
        scope.cancel()

    return cancel


def _after_seconds(delay_s: float) -> Callable[[anyio.CancelScope], Awaitable[None]]:
    async def cancel(scope: anyio.CancelScope) -> None:
        await anyio.sleep(delay_s)
        scope.cancel()

    return cancel


@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_cancelled_after_any_number_of_loop_iterations(scenario: str) -> None:
    """Cancelled after 0, 1, 2, ... loop iterations: every await point on the way in, in
    the middle and on the way out gets hit by one of them."""
    outcomes = [await _run_cancelled(scenario, _after_iterations(n)) for n in range(0, 60, 2)]
    assert not outcomes[0], "cancelled before it could finish"


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("delay_s", [0.0, 0.0005, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1])
async def test_cancelled_by_a_deadline(scenario: str, delay_s: float) -> None:
    await _run_cancelled(scenario, _after_seconds(delay_s))


async def test_a_move_on_after_around_the_whole_engine_closes_it() -> None:
    """The shape users write: a deadline around ``async with Poller``, nested deadlines in
    ``wait``; the outer one fires while the inner ones are still running."""
    sim = JobsSimulator(seed=4)
    sim.add_org(TEST_ORG_ID, api_keys=[TEST_API_KEY])
    job_ids = [sim.add_job(org_id=TEST_ORG_ID, script=[Change("queued", 0.0)]) for _ in range(50)]
    async with SimServer(sim) as server:
        tasks_before = set(asyncio.all_tasks())
        poller = Poller(api_key=TEST_API_KEY, base_url=server.base_url, backoff=FAST)
        with anyio.move_on_after(0.2) as scope:
            async with poller, anyio.create_task_group() as tg:
                for job_id in job_ids:
                    tg.start_soon(lambda j=job_id: poller.wait(j, timeout_s=60))
        assert scope.cancelled_caught
        assert poller.stats().polls > 0
        await _assert_nothing_left(poller, server, tasks_before)


async def test_an_async_callback_that_raises_cancelled_error_is_contained(
    retab_sim: SimServer,
) -> None:
    sim = retab_sim.sim
    first = sim.add_job(org_id=TEST_ORG_ID, script=[Change("completed", 0.0)])
    later = _jobs(sim, 5)
    calls: list[str] = []

    async def callback(transition: Transition) -> None:
        if transition.job_id == first:
            cancelled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            cancelled.cancel()
            await cancelled  # raises CancelledError, as awaiting a cancelled future does
        calls.append(transition.job_id)

    outcome: BaseException | None = None
    try:
        async with Poller(
            api_key=TEST_API_KEY,
            base_url=retab_sim.base_url,
            backoff=FAST,
            first_poll_rate_per_s=None,
            callback_concurrency=1,  # one lane: every later callback depends on it
        ) as poller:
            poller.on_transition(callback)
            await poller.wait(first, timeout_s=5)
            await anyio.sleep(0.05)
            await poller.wait_all(later, timeout_s=5)
            await anyio.sleep(0.05)
            errors = poller.stats().callback_errors
    except BaseException as exc:  # the point is to see what escapes
        outcome = exc
    assert outcome is None, f"the engine died: {outcome!r}"
    assert errors == 1
    assert set(later) <= set(calls)
