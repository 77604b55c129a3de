"""A faithful, offline stand-in for Retab's jobs API, to test code that polls it.

The simulator is a pure model (:class:`JobsSimulator`: no I/O, the time is given
or read from an injectable clock) wrapped by a thin aiohttp server
(:class:`SimServer`). Jobs follow drawn lifecycles (see :data:`STANDARD_MIX`) or
exact scripts; organisations have keys and optional rate limits; faults are
opt-in and deterministic under a seed::

    from poller.testing import Change, Faults, JobsSimulator, SimServer

    sim = JobsSimulator(seed=1, time_scale=0.01, faults=Faults(server_error=0.05))
    sim.add_org("org_a", api_keys=["rt_test_a"], rate_limit_per_s=50)
    job_ids = sim.add_jobs(1_000)
    scripted = sim.add_job(
        org_id="org_a",
        script=[Change("queued", 0.0), Change("in_progress", 0.1), Change("completed", 0.3)],
    )
    async with SimServer(sim) as server:
        ...  # GET f"{server.base_url}/v1/jobs/{scripted}/status" with Api-Key: rt_test_a
    sim.changes(scripted)  # the true time of each status change, to measure detection lag

pytest users get ready-made fixtures from ``poller.testing.pytest_plugin``; people
get a server to curl from ``python -m poller.testing`` (``poller sim``).
"""

from ._faults import UNKNOWN_ENDPOINTS, Faults
from ._http import SimResponse
from ._lifecycle import (
    DEFAULT_OUTCOMES,
    ENDPOINTS,
    STANDARD_MIX,
    TERMINAL_STATUSES,
    Change,
    EndpointClass,
    Outcomes,
    draw_endpoint,
    draw_error,
    draw_lifecycle,
    endpoint_class,
)
from ._log import RequestLog, RequestRecord
from ._model import JobsSimulator
from ._server import SimServer
from ._store import JobStateError, JobStore, Org

__all__ = [
    "DEFAULT_OUTCOMES",
    "ENDPOINTS",
    "STANDARD_MIX",
    "TERMINAL_STATUSES",
    "UNKNOWN_ENDPOINTS",
    "Change",
    "EndpointClass",
    "Faults",
    "JobStateError",
    "JobStore",
    "JobsSimulator",
    "Org",
    "Outcomes",
    "RequestLog",
    "RequestRecord",
    "SimResponse",
    "SimServer",
    "draw_endpoint",
    "draw_error",
    "draw_lifecycle",
    "endpoint_class",
]
