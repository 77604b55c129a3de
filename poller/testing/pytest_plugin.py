"""pytest fixtures serving the simulated Retab jobs API.

Enable them in a ``conftest.py`` (the plugin is not registered automatically)::

    pytest_plugins = ["poller.testing.pytest_plugin"]

Fixtures (function scope; the async one needs anyio's pytest plugin, installed
with anyio, and a test marked ``@pytest.mark.anyio`` on the asyncio backend):

``retab_simulator``
    A :class:`~poller.testing.JobsSimulator` (seed 0, ``time_scale`` 0.01) with one
    organisation, ``org_test``, whose API key is ``rt_test_key``.
``retab_sim``
    A running :class:`~poller.testing.SimServer` serving ``retab_simulator`` on a free
    loopback port; ``retab_sim.base_url`` is the URL to give a client.

More organisations or jobs: add them in the test (``retab_sim.sim.add_org("org_b",
api_keys=["rt_test_b"])``, ``retab_sim.sim.add_jobs(100)``); the server answers for
them at once. To change the options, override ``retab_simulator`` in a conftest::

    @pytest.fixture
    def retab_simulator() -> JobsSimulator:
        sim = JobsSimulator(seed=7, faults=Faults(server_error=0.05))
        sim.add_org("org_test", api_keys=["rt_test_key"], rate_limit_per_s=20)
        return sim
"""

from __future__ import annotations

__all__ = ["TEST_API_KEY", "TEST_ORG_ID", "retab_sim", "retab_simulator"]

from collections.abc import AsyncIterator
from typing import Final

import pytest

from ._model import JobsSimulator
from ._server import SimServer

TEST_ORG_ID: Final = "org_test"
TEST_API_KEY: Final = "rt_test_key"


@pytest.fixture
def retab_simulator() -> JobsSimulator:
    """A simulator with the organisation ``org_test`` (key ``rt_test_key``) and no jobs."""
    sim = JobsSimulator(seed=0, time_scale=0.01)
    sim.add_org(TEST_ORG_ID, api_keys=[TEST_API_KEY])
    return sim


@pytest.fixture
async def retab_sim(retab_simulator: JobsSimulator) -> AsyncIterator[SimServer]:
    """A running server for ``retab_simulator`` on a free loopback port."""
    async with SimServer(retab_simulator) as server:
        yield server
