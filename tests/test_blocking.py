"""BlockingPoller: the engine from synchronous code, the loop in a worker thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from poller import (
    Backoff,
    BlockingPoller,
    JobNotFoundError,
    PollerClosedError,
    Status,
    Transition,
)
from poller.testing import Change, JobsSimulator, SimServer
from poller.testing.pytest_plugin import TEST_API_KEY, TEST_ORG_ID

FAST = Backoff(learn=False, min_interval_s=0.01, max_interval_s=0.05, default_interval_s=0.02)


@pytest.fixture
def served() -> Iterator[tuple[JobsSimulator, str]]:
    """A simulator served from its own thread (the test itself stays synchronous)."""
    import anyio
    from anyio.from_thread import start_blocking_portal

    sim = JobsSimulator(seed=4)
    sim.add_org(TEST_ORG_ID, api_keys=[TEST_API_KEY])
    with start_blocking_portal() as portal:
        server = SimServer(sim)
        with portal.wrap_async_context_manager(server):
            yield sim, server.base_url
        portal.call(anyio.sleep, 0)


def scripted(sim: JobsSimulator, *steps: tuple[str, float]) -> str:
    return sim.add_job(org_id=TEST_ORG_ID, script=[Change(s, at) for s, at in steps])


def engine(base_url: str) -> BlockingPoller:
    return BlockingPoller(
        api_key=TEST_API_KEY, base_url=base_url, backoff=FAST, first_poll_rate_per_s=None
    )


def test_wait_and_wait_all_from_sync_code(served: tuple[JobsSimulator, str]) -> None:
    sim, base_url = served
    one = scripted(sim, ("queued", 0.0), ("completed", 0.05))
    two = scripted(sim, ("queued", 0.0), ("in_progress", 0.03), ("failed", 0.08))
    with engine(base_url) as poller:
        poller.track(one)
        assert poller.wait(one, timeout_s=10).status is Status.COMPLETED
        results = poller.wait_all([one, two], timeout_s=10)
        assert {k: v.status for k, v in results.items()} == {
            one: Status.COMPLETED,
            two: Status.FAILED,
        }
        assert poller.status(two) is Status.FAILED
        assert poller.stats().tracked == 2
        assert poller.learned_durations() is None  # FAST turns learning off
        full = poller.fetch(one, include_request=True)
        assert full.id == one and full.status is Status.COMPLETED


def test_errors_and_timeouts_surface_in_the_calling_thread(
    served: tuple[JobsSimulator, str],
) -> None:
    sim, base_url = served
    slow = scripted(sim, ("queued", 0.0), ("completed", 30.0))
    with engine(base_url) as poller:
        with pytest.raises(JobNotFoundError):
            poller.wait("job_missing", timeout_s=10)
        with pytest.raises(TimeoutError):
            poller.wait(slow, timeout_s=0.05)
        assert poller.untrack(slow)


def test_callbacks_run_in_the_engine_thread_and_subscriptions_iterate(
    served: tuple[JobsSimulator, str],
) -> None:
    sim, base_url = served
    job_id = scripted(sim, ("queued", 0.0), ("in_progress", 0.05), ("completed", 0.1))
    threads: set[int] = set()
    with engine(base_url) as poller:
        handle = poller.on_transition(lambda t: threads.add(threading.get_ident()))
        with poller.subscribe(job_ids=[job_id]) as events:
            poller.track(job_id)
            seen: list[Transition] = []
            for event in events:
                assert isinstance(event, Transition)
                seen.append(event)
                if event.current.is_terminal:
                    break
        handle.remove()
    assert seen[0].previous is None and seen[-1].current is Status.COMPLETED
    assert [t.seq for t in seen] == list(range(1, len(seen) + 1))
    assert threads and threading.get_ident() not in threads


def test_closed_blocking_poller_refuses_calls(served: tuple[JobsSimulator, str]) -> None:
    _, base_url = served
    poller = engine(base_url)
    with pytest.raises(PollerClosedError):
        poller.track("job_x")
    with poller:
        pass
    with pytest.raises(PollerClosedError):
        poller.stats()
    with pytest.raises(RuntimeError):
        poller.__enter__()
