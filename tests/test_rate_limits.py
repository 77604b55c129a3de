"""Rate budgets measured where they matter: at the server (the simulator's request log)."""

from __future__ import annotations

import anyio
import pytest

from benchmarks.rate_discovery import run_discovery
from poller import Backoff, Poller, RateLimit
from poller.testing import Change, JobsSimulator, SimServer


@pytest.mark.parametrize("per_s", [20.0, 50.0, 100.0])
def test_a_configured_limit_holds_at_the_server(per_s: float) -> None:
    result = run_discovery(
        server_limit_per_s=10_000, configured=RateLimit(per_s=per_s), duration_s=30.0
    )
    assert result.max_in_any_second <= per_s * 1.05, result
    assert result.accepted_per_s >= per_s * 0.95, "and it is used"
    assert result.throttled_share == 0.0


@pytest.mark.parametrize("configured", [None, RateLimit(per_s=100.0)], ids=["unset", "above"])
def test_an_undisclosed_limit_is_found_and_used(configured: RateLimit | None) -> None:
    # The exact figures are in the discovery benchmark; here, loose bounds.
    result = run_discovery(server_limit_per_s=50, configured=configured, duration_s=90.0)
    assert result.utilization >= 0.85, result
    assert result.throttled_share <= 0.02, result


def test_a_lower_configured_limit_is_never_exceeded_even_when_the_server_allows_more() -> None:
    result = run_discovery(server_limit_per_s=50, configured=RateLimit(per_s=30.0))
    assert result.throttled_share == 0.0
    assert result.max_in_any_second <= 30 * 1.05


@pytest.mark.anyio
async def test_the_engine_holds_a_configured_limit_over_http() -> None:
    sim = JobsSimulator(seed=3)
    key = sim.add_org("org_http", rate_limit_per_s=None).api_keys[0]
    forever = [Change("queued", 0.0), Change("in_progress", 0.1)]
    job_ids = [sim.add_job(org_id="org_http", script=forever) for _ in range(200)]
    fast = Backoff(learn=False, min_interval_s=0.05, max_interval_s=0.05, default_interval_s=0.05)
    async with (
        SimServer(sim) as server,
        Poller(
            api_key=key,
            base_url=server.base_url,
            rate_limit=RateLimit(per_s=40.0),
            backoff=fast,
            first_poll_rate_per_s=None,
        ) as poller,
    ):
        for job_id in job_ids:
            poller.track(job_id)
        await anyio.sleep(3.0)
    most = sim.log.max_requests_in_window("org_http", 1.0)
    assert 30 <= most <= 40 * 1.05, most
