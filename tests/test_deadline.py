"""Request timeouts enforced by one shared check (poller._deadline) instead of aiohttp's
timer per request: a slow request becomes a RequestTimeoutError, a caller's own
cancellation stays a cancellation, and nothing is left armed or cancelled afterwards."""

from __future__ import annotations

import asyncio
import time

import pytest

from poller._deadline import CHECKS_PER_TIMEOUT, Deadlines
from poller.auth import Credential
from poller.errors import PollerClosedError, RequestTimeoutError
from poller.testing import Change, Faults, JobsSimulator, SimServer
from poller.testing.pytest_plugin import TEST_API_KEY, TEST_ORG_ID
from poller.transport import AiohttpTransport

pytestmark = pytest.mark.anyio

TIMEOUT_S = 0.2


@pytest.fixture
def sim(retab_simulator: JobsSimulator) -> JobsSimulator:
    return retab_simulator


@pytest.fixture
def cred() -> Credential:
    return Credential(TEST_API_KEY)


def add_job(sim: JobsSimulator) -> str:
    return sim.add_job(org_id=TEST_ORG_ID, script=[Change("queued", 0.0)])


def add_stuck_job(sim: JobsSimulator) -> str:
    """A job whose every status request is answered only after 5 s."""
    sim.faults = Faults(slow=1.0, slow_delay_s=5.0)
    return add_job(sim)


async def test_a_request_past_the_timeout_is_cut_within_one_check(
    retab_sim: SimServer, sim: JobsSimulator, cred: Credential
) -> None:
    job_id = add_stuck_job(sim)
    async with AiohttpTransport(retab_sim.base_url, request_timeout_s=TIMEOUT_S) as transport:
        started = time.monotonic()
        with pytest.raises(RequestTimeoutError) as info:
            await transport.get_status(job_id, cred)
        elapsed = time.monotonic() - started
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0  # the cut was undone
        await asyncio.sleep(0)  # and no cancellation is left pending for the next await
    latest = TIMEOUT_S * (1 + 1 / CHECKS_PER_TIMEOUT)
    assert TIMEOUT_S <= elapsed < latest + 0.3  # slack for a loaded machine
    assert (info.value.job_id, info.value.retryable) == (job_id, True)
    assert "timed out" in str(info.value)


async def test_the_task_goes_on_after_a_timeout(
    retab_sim: SimServer, sim: JobsSimulator, cred: Credential
) -> None:
    job_id = add_job(sim)
    async with AiohttpTransport(retab_sim.base_url, request_timeout_s=TIMEOUT_S) as transport:
        sim.faults = Faults(slow=1.0, slow_delay_s=5.0)
        with pytest.raises(RequestTimeoutError):
            await transport.get_status(job_id, cred)
        sim.faults = Faults()
        payload = await transport.get_status(job_id, cred)  # same task, next request
    assert payload.id == job_id


async def test_a_callers_cancellation_stays_a_cancellation(
    retab_sim: SimServer, sim: JobsSimulator, cred: Credential
) -> None:
    job_id = add_stuck_job(sim)
    async with AiohttpTransport(retab_sim.base_url, request_timeout_s=5.0) as transport:
        request = asyncio.create_task(transport.get_status(job_id, cred))
        await asyncio.sleep(0.1)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        assert len(transport._deadlines) == 0


async def test_a_cancellation_racing_the_timeout_is_not_swallowed(
    retab_sim: SimServer, sim: JobsSimulator, cred: Credential
) -> None:
    job_id = add_stuck_job(sim)
    async with AiohttpTransport(retab_sim.base_url, request_timeout_s=TIMEOUT_S) as transport:
        request = asyncio.create_task(transport.get_status(job_id, cred))
        await asyncio.sleep(0.05)
        deadlines = transport._deadlines
        deadlines._started[request] = (-1e9, 0)  # past its deadline: the next check cuts it
        deadlines._check()  # the timeout cancels it ...
        request.cancel()  # ... and so does its caller, before it runs again
        with pytest.raises(asyncio.CancelledError):
            await request


async def test_the_check_is_armed_only_while_requests_are_under_way(
    retab_sim: SimServer, sim: JobsSimulator, cred: Credential
) -> None:
    job_id = add_job(sim)
    async with AiohttpTransport(retab_sim.base_url, request_timeout_s=TIMEOUT_S) as transport:
        deadlines = transport._deadlines
        assert deadlines._timer is None
        await transport.get_status(job_id, cred)
        assert len(deadlines) == 0 and deadlines._timer is not None
        await asyncio.sleep(TIMEOUT_S / CHECKS_PER_TIMEOUT * 3)
        assert deadlines._timer is None  # the check found nothing to watch and stopped


async def test_a_request_outside_a_task_falls_back_to_aiohttps_timeout(
    retab_sim: SimServer,
    sim: JobsSimulator,
    cred: Credential,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job_id = add_stuck_job(sim)
    async with AiohttpTransport(retab_sim.base_url, request_timeout_s=TIMEOUT_S) as transport:
        monkeypatch.setattr("poller.transport.current_task", lambda: None)
        with pytest.raises(RequestTimeoutError):
            await transport.get_status(job_id, cred)
        monkeypatch.undo()
        assert transport._deadlines._timer is None  # the shared check was not used


async def test_the_check_cuts_only_what_is_overdue() -> None:
    deadlines = Deadlines(10.0)

    async def hold() -> None:
        await asyncio.sleep(60)

    old, young = asyncio.create_task(hold()), asyncio.create_task(hold())
    await asyncio.sleep(0)
    deadlines.start(old)
    deadlines.start(young)
    deadlines._started[old] = (deadlines._started[old][0] - 10.0, 0)
    deadlines._check()
    await asyncio.sleep(0)
    assert old.cancelled() and not young.done()
    assert len(deadlines) == 1 and deadlines._timer is not None  # still watching young
    deadlines.finish(young)
    young.cancel()
    deadlines.close()
    assert deadlines._timer is None


async def test_a_timeout_in_a_task_being_cancelled_is_still_a_timeout(
    retab_sim: SimServer, sim: JobsSimulator, cred: Credential
) -> None:
    """Clean-up code that makes a request after its task was cancelled gets the
    timeout, as it would from asyncio.timeout or aiohttp's own timer."""
    job_id = add_stuck_job(sim)
    seen: list[str] = []
    async with AiohttpTransport(retab_sim.base_url, request_timeout_s=TIMEOUT_S) as transport:

        async def worker() -> None:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                try:
                    await transport.get_status(job_id, cred)
                except RequestTimeoutError:
                    seen.append("timeout")
                except asyncio.CancelledError:
                    seen.append("cancelled")
                task = asyncio.current_task()
                assert task is not None
                seen.append(f"cancelling={task.cancelling()}")
                raise

        task = asyncio.create_task(worker())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert seen == ["timeout", "cancelling=1"]  # its own cancellation still pending


async def test_the_check_runs_every_eighth_of_the_timeout() -> None:
    deadlines = Deadlines(0.8)

    async def hold() -> None:
        await asyncio.sleep(60)

    task = asyncio.create_task(hold())
    loop = asyncio.get_running_loop()
    deadlines.start(task)
    timer = deadlines._timer
    assert timer is not None
    assert timer.when() - loop.time() == pytest.approx(0.8 / CHECKS_PER_TIMEOUT, abs=0.02)
    deadlines._started[task] = (deadlines._started[task][0] - 0.79, 0)
    deadlines._check()
    assert not task.cancelled() and len(deadlines) == 1  # 0.79 s old: not yet
    deadlines._started[task] = (deadlines._started[task][0] - 0.02, 0)
    deadlines._check()
    await asyncio.sleep(0)
    assert task.cancelled() and len(deadlines) == 0  # 0.81 s old: cut


async def test_a_request_after_close_does_not_arm_the_check(
    retab_sim: SimServer, cred: Credential
) -> None:
    transport = AiohttpTransport(retab_sim.base_url, request_timeout_s=TIMEOUT_S)
    await transport.aclose()
    with pytest.raises(PollerClosedError):
        await transport.get_status("job_after_close", cred)
    assert transport._deadlines._timer is None and len(transport._deadlines) == 0
