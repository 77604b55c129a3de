"""Discovering a rate limit nobody told us, and holding a configured one.

The real scheduling core talks to the simulator's pure request handler
(``JobsSimulator.handle``) in virtual time: every request is answered at once,
429s carry ``Retry-After`` as the simulator sends it, and the simulator's request
log says what reached the server. The engine always wants more than the limit:
many jobs in progress, polled as often as the floor allows.

Reported, after a warm-up: the share of the server's limit that was used, the
share of requests answered 429, and the most requests the server saw from the
organisation in any 1-second window.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from poller._boundary import error_for_status
from poller._decode import decode_status
from poller.auth import Credential
from poller.errors import RequestError
from poller.sched.backoff import Backoff
from poller.sched.core import Scheduler
from poller.sched.ratelimit import AdaptiveBudget, RateLimit
from poller.testing import Change, Faults, JobsSimulator

ORG = "org_limited"
KEY = "rt_test_limited"
T0 = 1_800_000_000.0


@dataclass(frozen=True)
class DiscoveryResult:
    """What the server saw, after the warm-up."""

    server_limit_per_s: int
    configured_per_s: float | None
    duration_s: float
    warmup_s: float
    requests: int
    accepted_per_s: float
    utilization: float
    throttled_share: float
    max_in_any_second: int

    def as_dict(self) -> dict[str, float | int | None]:
        return dict(self.__dict__)


def run_discovery(
    *,
    server_limit_per_s: int = 50,
    configured: RateLimit | None = None,
    duration_s: float = 60.0,
    warmup_s: float = 10.0,
    jobs: int = 400,
    seed: int = 1,
    faults: Faults | None = None,
) -> DiscoveryResult:
    """Run the core against a simulator that enforces ``server_limit_per_s`` undisclosed
    (with ``faults`` answered as error statuses: 5xx, not resets or stalls)."""
    sim = JobsSimulator(seed=seed, retry_after="seconds", clock=lambda: T0, faults=faults)
    sim.add_org(ORG, api_keys=[KEY], rate_limit_per_s=server_limit_per_s)
    forever = [Change("queued", 0.0), Change("in_progress", 0.5)]
    job_ids = [sim.add_job(org_id=ORG, script=forever, now=T0) for _ in range(jobs)]
    backoff = Backoff(
        learn=False,
        initial_interval_s={"queued": 0.2, "in_progress": 0.2},
        default_interval_s=0.2,
        multiplier=1.0,
        min_interval_s=0.2,
        max_interval_s=0.2,
    )
    core = Scheduler(
        backoff=backoff,
        budget_for=lambda org: AdaptiveBudget(configured),
        rng=random.Random(seed),
        first_poll_rate_per_s=None,
    )
    credential = Credential(KEY, environ={})
    headers = {"Api-Key": KEY}
    for job_id in job_ids:
        core.track(job_id, credential, T0)
    now = T0
    end = T0 + duration_s
    while now < end:
        job = core.next_due(now)
        if job is None:
            wake = core.next_wakeup(now)
            if wake is None:
                break
            now = max(now, wake)
            continue
        answer = sim.handle("GET", f"/v1/jobs/{job.job_id}/status", headers=headers, now=now)
        if answer.status == 200:
            core.on_success(job, decode_status(answer.body, job.job_id), now)
        else:
            error: RequestError = error_for_status(
                answer.status, answer.headers, answer.body, job_id=job.job_id, now=now
            )
            core.on_failure(job, error, now)
        core.take_events()
        core.take_finished()
    after = [r for r in sim.log if r.at >= T0 + warmup_s]
    accepted = sum(1 for r in after if r.status == 200)
    throttled = sum(1 for r in after if r.status == 429)
    measured_s = duration_s - warmup_s
    accepted_per_s = accepted / measured_s
    return DiscoveryResult(
        server_limit_per_s=server_limit_per_s,
        configured_per_s=configured.per_s if configured is not None else None,
        duration_s=duration_s,
        warmup_s=warmup_s,
        requests=len(after),
        accepted_per_s=accepted_per_s,
        utilization=accepted_per_s / server_limit_per_s,
        throttled_share=throttled / len(after) if after else 0.0,
        max_in_any_second=sim.log.max_requests_in_window(ORG, 1.0),
    )
