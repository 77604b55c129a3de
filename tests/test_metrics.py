"""poller.metrics: an engine's collector, registered in a user's own prometheus registry."""

from __future__ import annotations

import prometheus_client
import pytest
from _helpers import FAST

import poller.metrics
from poller import BlockingPoller, Poller, Status
from poller.testing import Change, SimServer
from poller.testing.pytest_plugin import TEST_API_KEY, TEST_ORG_ID


@pytest.mark.anyio
async def test_a_collector_in_your_own_registry(retab_sim: SimServer) -> None:
    job = retab_sim.sim.add_job(org_id=TEST_ORG_ID, script=[Change("completed", 0.0)])
    registry = prometheus_client.CollectorRegistry()
    async with Poller(
        TEST_API_KEY, retab_sim.base_url, backoff=FAST, first_poll_rate_per_s=None
    ) as p:
        registry.register(poller.metrics.collector(p))
        assert (await p.wait(job, timeout_s=10)).status is Status.COMPLETED
        lines = prometheus_client.generate_latest(registry).decode().splitlines()
    assert 'poller_tracked_jobs{status="completed"} 1.0' in lines
    assert "poller_transitions_total 1.0" in lines
    assert 'poller_request_latency_seconds_bucket{le="+Inf"} 1.0' in lines
    assert all(TEST_API_KEY not in line for line in lines)
    # Read by metric, as users' code does (the first answer of a key is counted before
    # its organisation is known): the library's own reader agrees.
    polls = [
        sample.value
        for family in registry.collect()
        if family.name == "poller_polls"
        for sample in family.samples
        if sample.labels["outcome"] == "ok"
    ]
    assert sum(polls) == 1.0


def test_a_blocking_engine_is_collected_from_any_thread() -> None:
    registry = prometheus_client.CollectorRegistry()
    with BlockingPoller(TEST_API_KEY, "http://127.0.0.1:9") as p:
        registry.register(poller.metrics.collector(p))
        assert registry.get_sample_value("poller_requests_in_flight") == 0.0
