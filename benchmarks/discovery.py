"""Discovering an undisclosed rate limit: virtual time and over real HTTP.

The simulator enforces 50 requests/s on one organisation and never says so; the
engine wants far more (400 jobs in progress, polled every 0.2 s). After the first
10 seconds, the goal is at least 90% of the limit used and at most 1% of requests
answered 429. Both runs use the real scheduling core; the HTTP run is the whole
engine (``Poller``) against ``SimServer`` on loopback, 64 connections.
"""

from __future__ import annotations

import time
from typing import Any

import anyio

from poller import Backoff, Poller, RateLimit
from poller.testing import Change, Faults, JobsSimulator, SimServer

from .rate_discovery import run_discovery

NAME = "discovery"
_LIMIT = 50
_WARMUP_S = 10.0


async def over_http(
    duration_s: float, configured: RateLimit | None, faults: Faults | None = None
) -> dict[str, Any]:
    """The whole engine against an undisclosed limit over HTTP (``faults`` on top)."""
    sim = JobsSimulator(seed=2, faults=faults)
    key = sim.add_org("org_hidden", rate_limit_per_s=_LIMIT).api_keys[0]
    forever = [Change("queued", 0.0), Change("in_progress", 0.1)]
    job_ids = [sim.add_job(org_id="org_hidden", script=forever) for _ in range(400)]
    eager = Backoff(learn=False, min_interval_s=0.2, max_interval_s=0.2, default_interval_s=0.2)
    async with (
        SimServer(sim) as server,
        Poller(
            api_key=key,
            base_url=server.base_url,
            backoff=eager,
            rate_limit=configured,
            first_poll_rate_per_s=None,
        ) as poller,
    ):
        start = time.time()
        for job_id in job_ids:
            poller.track(job_id)
        await anyio.sleep(duration_s)
    after = [r for r in sim.log if r.at >= start + _WARMUP_S]
    accepted = sum(1 for r in after if r.status == 200)
    throttled = sum(1 for r in after if r.status == 429)
    measured_s = duration_s - _WARMUP_S
    return {
        "run": "HTTP, whole engine",
        "configured_per_s": configured.per_s if configured else None,
        "seconds": duration_s,
        "requests": len(after),
        "accepted_per_s": round(accepted / measured_s, 2),
        "utilization": round(accepted / measured_s / _LIMIT, 3),
        "throttled_share": round(throttled / len(after), 4) if after else 0.0,
        "max_in_any_second": sim.log.max_requests_in_window("org_hidden", 1.0),
    }


def _virtual(duration_s: float, configured: RateLimit | None) -> dict[str, Any]:
    result = run_discovery(
        server_limit_per_s=_LIMIT,
        configured=configured,
        duration_s=duration_s,
        warmup_s=_WARMUP_S,
    )
    return {
        "run": "virtual time, core",
        "configured_per_s": result.configured_per_s,
        "seconds": duration_s,
        "requests": result.requests,
        "accepted_per_s": round(result.accepted_per_s, 2),
        "utilization": round(result.utilization, 3),
        "throttled_share": round(result.throttled_share, 4),
        "max_in_any_second": result.max_in_any_second,
    }


def run(quick: bool = False) -> dict[str, Any]:
    """Both runs, unconfigured and configured above the hidden limit."""
    table = []
    for configured in (None, RateLimit(per_s=200.0)):
        table.append(_virtual(60.0 if quick else 300.0, configured))
        table.append(anyio.run(over_http, 20.0 if quick else 60.0, configured))
    goals = [
        {
            "goal": f"{row['run']}, configured {row['configured_per_s']}: >= 90% of the "
            "limit used and <= 1% 429s after 10 s",
            "measured": f"{row['utilization']:.1%} used, {row['throttled_share']:.2%} 429s",
            "met": row["utilization"] >= 0.9 and row["throttled_share"] <= 0.01,
        }
        for row in table
    ]
    return {
        "name": NAME,
        "title": f"Discovering an undisclosed {_LIMIT} req/s limit",
        "description": __doc__,
        "quick": quick,
        "table": table,
        "goals": goals,
    }
