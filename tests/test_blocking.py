"""BlockingPoller: the engine from synchronous code, the loop in a worker thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from poller import (
    Backoff,
    BlockingPoller,
    ConfigError,
    JobNotFoundError,
    PollerClosedError,
    PollerOptions,
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


@pytest.fixture
def manual() -> Iterator[tuple[JobsSimulator, str, Callable[[float], None]]]:
    """A served simulator whose jobs change only when the test moves its clock on (the
    third item: seconds to add), so what the engine sees is not a matter of timing."""
    import anyio
    from anyio.from_thread import start_blocking_portal

    now = [time.time()]
    sim = JobsSimulator(seed=4, clock=lambda: now[0])
    sim.add_org(TEST_ORG_ID, api_keys=[TEST_API_KEY])

    def advance(seconds: float) -> None:
        now[0] += seconds

    with start_blocking_portal() as portal:
        server = SimServer(sim)
        with portal.wrap_async_context_manager(server):
            yield sim, server.base_url, advance
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


def test_a_callback_added_after_track_misses_nothing(
    manual: tuple[JobsSimulator, str, Callable[[float], None]],
) -> None:
    """The order of the report (track, then on_transition), the engine in another thread:
    the first sighting is delivered before the callback exists. It reaches the callback
    anyway, replayed at registration, then the later transitions live, each once."""
    sim, base_url, advance = manual
    job_id = scripted(sim, ("validating", 0.0), ("queued", 10.0), ("completed", 20.0))
    seen: list[Transition] = []
    with engine(base_url) as poller, poller.subscribe(job_ids=[job_id]) as events:
        poller.track(job_id)
        first = next(events)  # delivered: callbacks registered now come too late for it
        assert isinstance(first, Transition) and first.current is Status.VALIDATING
        poller.on_transition(seen.append)
        for _ in range(2):
            advance(10.0)
            next(events)
    assert [(t.seq, t.previous, t.current) for t in seen] == [
        (1, None, Status.VALIDATING),
        (2, Status.VALIDATING, Status.QUEUED),
        (3, Status.QUEUED, Status.COMPLETED),
    ]


def test_late_callbacks_replay_as_asked(
    manual: tuple[JobsSimulator, str, Callable[[float], None]],
) -> None:
    """Replay honours the status filter, reaches async callbacks first on their lane, and
    is skipped with ``replay=False``; jobs untracked meanwhile are not replayed."""
    sim, base_url, advance = manual
    job_id = scripted(sim, ("validating", 0.0), ("queued", 10.0), ("completed", 20.0))
    gone = scripted(sim, ("queued", 0.0), ("completed", 30.0))
    async_seen: list[int] = []
    done = threading.Event()

    async def slow(t: Transition) -> None:
        async_seen.append(t.seq)
        if t.current.is_terminal:
            done.set()

    with engine(base_url) as poller, poller.subscribe(job_ids=[job_id, gone]) as events:
        poller.track(gone)
        assert next(events).job_id == gone
        poller.track(job_id)
        next(events)
        advance(10.0)
        next(events)  # queued: two transitions before any callback but the engine's
        poller.untrack(gone)
        queued_only: list[Transition] = []
        fresh: list[Transition] = []
        poller.on_transition(queued_only.append, statuses=["queued"])
        poller.on_transition(fresh.append, replay=False)
        poller.on_transition(slow)
        advance(10.0)
        next(events)
        assert done.wait(10)
    assert [(t.job_id, t.seq) for t in queued_only] == [(job_id, 2)]
    assert [t.seq for t in fresh] == [3]
    assert async_seen == [2, 3]  # the latest transition, then the live one


def test_track_resumes_a_job_as_the_async_engine_does(served: tuple[JobsSimulator, str]) -> None:
    """``last_status`` and ``last_seq``: seeing that status again is no transition, and
    ``seq`` goes on from there."""
    sim, base_url = served
    job = scripted(sim, ("in_progress", 0.0), ("completed", 0.05))
    seen: list[Transition] = []
    with engine(base_url) as poller:
        poller.on_transition(seen.append)
        poller.track(job, last_status="in_progress", last_seq=4)
        assert poller.wait(job, timeout_s=10).status is Status.COMPLETED
    assert [(t.previous, t.current, t.seq) for t in seen] == [
        (Status.IN_PROGRESS, Status.COMPLETED, 5)
    ]


def test_settings_are_checked_and_options_are_shared() -> None:
    with (
        pytest.raises(ConfigError, match=r"^max_connections:"),
        BlockingPoller(api_key=TEST_API_KEY, max_connections=0),
    ):
        pass
    options = PollerOptions(max_connections=3, backoff=FAST)
    with BlockingPoller(api_key=TEST_API_KEY, options=options, seed=7) as poller:
        assert poller.stats().tracked == 0
