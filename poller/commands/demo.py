"""The demo (``make demo``, ``poller demo``): the engine at work, printed as it goes.

Without job IDs it starts the built-in simulator on 127.0.0.1 with a few
thousand jobs over several organisations (one of them under a rate limit the
engine is not told about, a sprinkle of server faults), submits them in waves,
tracks each with its organisation's own key, prints every transition, and ends
with a summary measured against the simulator's true change times.

With job IDs (and ``RETAB_API_KEY`` set) it tracks those real jobs instead.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import TextIO

import anyio

from .._ids import validate_job_id
from ..auth import API_KEY_ENV
from ..engine import Poller
from ..errors import ConfigError, JobsFailedError, PollerError
from ..events import Event, Stats, TrackingFailure, Transition
from ..subscription import Subscription
from ..testing import Faults, JobsSimulator, SimServer
from ..testing.lag import LagSummary, detection_lags, summarize_lags

__all__ = ["add_arguments", "run"]

_ORGS = ("org_acme", "org_globex", "org_initech", "org_umbrella", "org_hooli", "org_vandelay")
_HIDDEN_LIMIT_PER_S = 150
_ARROW = "->"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the demo's options on ``parser``."""
    parser.add_argument(
        "job_ids", nargs="*", help="real job IDs to track (needs RETAB_API_KEY); none: simulate"
    )
    parser.add_argument("--jobs", type=int, default=3000, help="simulated jobs (default 3000)")
    parser.add_argument("--orgs", type=int, default=4, choices=range(1, len(_ORGS) + 1))
    parser.add_argument("--duration", type=float, default=30.0, help="seconds to run, about")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quiet", action="store_true", help="print the summary only")


def run(args: argparse.Namespace) -> int:
    """Run the demo; returns the exit status."""
    if args.job_ids:
        # Checked here, before the engine starts: inside it these errors would surface
        # as an exception group from the task group, not as a usage error.
        try:
            job_ids = [validate_job_id(job_id) for job_id in args.job_ids]
            if not os.environ.get(API_KEY_ENV):
                raise ConfigError(
                    f"api_key: set {API_KEY_ENV} to track real jobs "
                    "(or give no job ID to run against the simulator)"
                )
        except PollerError as exc:
            return _usage_error(exc)
        return anyio.run(_track_real, job_ids, args.quiet, sys.stdout)
    if args.jobs < 1 or args.duration <= 0:
        return _usage_error("--jobs must be >= 1 and --duration > 0")
    return anyio.run(_simulate, args.jobs, args.orgs, args.duration, args.seed, args.quiet)


def _usage_error(message: object) -> int:
    print(f"poller demo: error: {message}", file=sys.stderr)
    return 2


def _line(event: Event, start: float) -> str:
    elapsed = event.observed_at - start
    if isinstance(event, TrackingFailure):
        org = event.organization_id or "?"
        return f"{elapsed:7.2f}s  {org:<13} {event.job_id}  ERROR {event.error}"
    previous = event.previous.value if event.previous is not None else "(new)"
    return (
        f"{elapsed:7.2f}s  {event.organization_id:<13} {event.job_id}  "
        f"{previous:>11} {_ARROW} {event.current.value}"
    )


async def _print_events(
    subscription: Subscription,
    start: float,
    quiet: bool,
    out: TextIO,
    seen: dict[str, list[tuple[str, float]]],
) -> None:
    async for event in subscription:
        if isinstance(event, Transition):
            seen[event.job_id].append((event.current.value, event.observed_at))
        if not quiet:
            out.write(_line(event, start) + "\n")


async def _simulate(jobs: int, orgs: int, duration_s: float, seed: int, quiet: bool) -> int:
    out = sys.stdout
    sim = JobsSimulator(seed=seed, time_scale=0.02, faults=Faults(server_error=0.01, reset=0.002))
    org_ids = _ORGS[:orgs]
    keys = {}
    for index, org_id in enumerate(org_ids):
        limit = _HIDDEN_LIMIT_PER_S if index == 0 else None
        keys[org_id] = sim.add_org(org_id, rate_limit_per_s=limit).api_keys[0]
    waves = 10
    submit_window_s = duration_s / 3
    seen: dict[str, list[tuple[str, float]]] = defaultdict(list)
    tracked: dict[str, str] = {}
    async with SimServer(sim) as server, Poller(base_url=server.base_url, seed=seed) as poller:
        start = time.time()
        print(
            f"simulator at {server.base_url}: {jobs} jobs in {orgs} organisations; "
            f"{org_ids[0]} has a {_HIDDEN_LIMIT_PER_S} req/s limit the engine is not told about; "
            "1% of answers are 500s",
            file=out,
        )
        async with (
            poller.subscribe(max_buffer=1_000_000) as subscription,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(_print_events, subscription, start, quiet, out, seen)
            for wave in range(waves):
                count = _share(jobs, waves, wave)
                for index, org_id in enumerate(org_ids):
                    for job_id in sim.add_jobs(
                        _share(count, len(org_ids), index), org_ids=[org_id]
                    ):
                        poller.track(job_id, api_key=keys[org_id])
                        tracked[job_id] = org_id
                await anyio.sleep(submit_window_s / waves)
            with (
                anyio.move_on_after(max(1.0, duration_s - (time.time() - start))),
                contextlib.suppress(JobsFailedError),
            ):
                await poller.wait_all(list(tracked))
            await anyio.sleep(0.1)  # let the printer catch up
            tg.cancel_scope.cancel()
        stats = poller.stats()
        elapsed = time.time() - start
    lags: list[float] = []
    missed = 0
    for job_id in tracked:
        job_lags, job_missed = detection_lags(
            sim.changes(job_id, now=start + elapsed), seen.get(job_id, []), since=0.0
        )
        lags.extend(job_lags)
        missed += job_missed
    requests = len(sim.log)
    rate_limited = sum(1 for record in sim.log if record.status == 429)
    _summary(
        out, stats, len(tracked), elapsed, requests, rate_limited, summarize_lags(lags, missed)
    )
    return 0


def _share(total: int, parts: int, index: int) -> int:
    """The ``index``-th of ``parts`` near-equal shares of ``total``."""
    return total // parts + (1 if index < total % parts else 0)


def _summary(
    out: TextIO,
    stats: Stats,
    jobs: int,
    elapsed: float,
    requests: int,
    rate_limited: int,
    lag: LagSummary,
) -> None:
    finals = Counter({k: v for k, v in stats.by_status.items()})
    print("\nsummary", file=out)
    print(f"  jobs tracked           {jobs} in {elapsed:.1f} s", file=out)
    print(
        "  final status           " + ", ".join(f"{k} {v}" for k, v in finals.most_common()),
        file=out,
    )
    print(f"  requests made          {requests} ({requests / jobs:.2f} per job)", file=out)
    print(
        f"  detection lag          mean {lag.mean_s:.3f} s, p95 {lag.p95_s:.3f} s "
        f"over {lag.count} status changes ({lag.missed} not seen before the end)",
        file=out,
    )
    print(f"  429 answers            {rate_limited}", file=out)
    errors = ", ".join(f"{k} {v}" for k, v in sorted(stats.errors_by_kind.items())) or "none"
    print(f"  errors                 {stats.errors} ({errors})", file=out)
    print(f"  transitions            {stats.transitions}", file=out)


async def _track_real(job_ids: Sequence[str], quiet: bool, out: TextIO) -> int:
    try:
        poller = Poller()
    except PollerError as exc:
        return _usage_error(exc)
    seen: dict[str, list[tuple[str, float]]] = defaultdict(list)
    async with poller:
        start = time.time()
        async with poller.subscribe() as subscription, anyio.create_task_group() as tg:
            tg.start_soon(_print_events, subscription, start, quiet, out, seen)
            try:
                await poller.wait_all(job_ids)
                failed = 0
            except JobsFailedError as exc:
                failed = len(exc.errors)
            await anyio.sleep(0.1)
            tg.cancel_scope.cancel()
        stats = poller.stats()
    print(
        f"\n{len(job_ids)} jobs: "
        + ", ".join(f"{k} {v}" for k, v in sorted(stats.by_status.items()))
        + f"; {stats.polls} requests, {stats.rate_limited} 429s, {stats.errors} errors",
        file=out,
    )
    return 1 if failed else 0
