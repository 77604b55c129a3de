"""A flaky API: what sporadic faults, outages and 503s next to a real limit cost.

The whole engine (``Poller``, default settings) against the simulator over HTTP on
loopback. Every run has the same workload: 1,500 jobs in 3 organisations, submitted
over 10 s, endpoints of the fast, standard and heavy classes with durations scaled
to a fifth (in progress: medians 0.8 s, 5 s and 12 s), no rate limit configured and
none enforced. Only the faults differ:

- ``none``: the baseline, run first and again last (the method's own spread);
- ``503 0.5%`` and ``503 3%``: that share of answers is 503 with ``Retry-After: 1``;
- ``mixed 3%``: 1% 500, 0.5% 503 with ``Retry-After``, 0.5% connection resets,
  0.5% garbage (HTML) bodies, 0.5% stalls past the request timeout (15 s against 10 s);
- ``harsh 17%``: 5% 500, 5% 503, 5% resets, 2% stalls (no lag goal: nothing lost);
- ``outage``: 60 s in the middle with the server down (connection refused), or
  answering 503 to everything.

Reported per run: requests per job (every request the server saw, and those it
answered 200), mean and p95 detection lag of each job's terminal status (from the
simulator's true change time to the transition), jobs lost (tracking ended in an
error, or finished 35 s before the end and never seen terminal) and jobs still
running at the end (60 s after the last submission, or after the outage). For the
outages: requests made while the API was down, and from the first success after it
returned: requests in that first second against the steady rate before the outage,
when the pace was back, and when every job that had changed meanwhile was seen.

A second table: the discovery runs (an undisclosed 50 req/s limit, demand far above
it) with random 503s on top, in virtual time (the core) and over HTTP.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import anyio

from poller import Poller, TrackingFailure, Transition
from poller.testing import STANDARD_MIX, Faults, JobsSimulator, SimServer
from poller.testing.lag import detection_lags

from ._common import log, percentile
from .discovery import over_http as discovery_over_http
from .rate_discovery import run_discovery

NAME = "faults"

_ORGS = ("org_a", "org_b", "org_c")
_TIME_SCALE = 0.2
_SUBMIT_S = 10.0
_SETTLE_S = 60.0  # after the last submission, how long every job has to be seen terminal
_LAG_GOAL = 1.25
_REQUEST_GOAL = 1.1
_RECOVERY_GOAL_S = 2.0
_STALL_S = 15.0  # longer than the engine's default request timeout (10 s)
_SEEN_WITHIN_S = 35.0  # a finished job not seen terminal this long after is lost


@dataclass(frozen=True)
class Scenario:
    name: str
    faults: Faults | None = None
    outage: str | None = None  # "refused" or "503"
    lag_goal: bool = False  # held to the sporadic-fault goal (lag and requests)


def _scenarios() -> list[Scenario]:
    return [
        Scenario("none"),
        Scenario("503 0.5%", Faults(unavailable=0.005), lag_goal=True),
        Scenario("503 3%", Faults(unavailable=0.03), lag_goal=True),
        Scenario(
            "mixed 3%",
            Faults(
                server_error=0.01,
                unavailable=0.005,
                reset=0.005,
                garbage=0.005,
                slow=0.005,
                slow_delay_s=_STALL_S,
            ),
            lag_goal=True,
        ),
        Scenario(
            "harsh 17%",
            Faults(
                server_error=0.05, unavailable=0.05, reset=0.05, slow=0.02, slow_delay_s=_STALL_S
            ),
        ),
        Scenario("outage 60 s, refused", outage="refused"),
        Scenario("outage 60 s, all 503", outage="503"),
        Scenario("none (again)"),
    ]


def _endpoints() -> list[str]:
    return [e for cls in STANDARD_MIX if cls.name != "batch" for e in cls.endpoints]


async def _run(scenario: Scenario, jobs: int, outage_s: float, seed: int) -> dict[str, Any]:
    sim = JobsSimulator(seed=seed, time_scale=_TIME_SCALE, faults=scenario.faults)
    keys = {org: sim.add_org(org).api_keys[0] for org in _ORGS}
    rng = random.Random(seed)
    endpoints = _endpoints()
    seen: dict[str, list[tuple[str, float]]] = defaultdict(list)
    failed: dict[str, str] = {}
    outage: dict[str, float] = {}
    server = SimServer(sim)
    await server.start()
    port = server.port
    try:
        async with Poller(base_url=server.base_url, seed=seed) as poller:

            def record(event: Transition | TrackingFailure) -> None:
                if isinstance(event, Transition):
                    seen[event.job_id].append((event.current.value, event.observed_at))
                else:
                    failed[event.job_id] = type(event.error).__name__

            poller.on_transition(record, include_failures=True)
            start = time.time()
            waves = 20
            tracked: list[str] = []
            for _wave in range(waves):
                for index in range(jobs // waves):
                    org = _ORGS[index % len(_ORGS)]
                    job_id = sim.add_job(org_id=org, endpoint=rng.choice(endpoints))
                    poller.track(job_id, api_key=keys[org])
                    tracked.append(job_id)
                await anyio.sleep(_SUBMIT_S / waves)
            if scenario.outage is not None:
                await anyio.sleep(5.0)
                outage["start"] = time.time()
                errors_before = poller.stats().errors
                if scenario.outage == "refused":
                    await server.close()
                else:
                    sim.faults = Faults(unavailable=1.0)
                await anyio.sleep(outage_s)
                outage["requests"] = poller.stats().errors - errors_before
                if scenario.outage == "refused":
                    server = SimServer(sim, port=port)
                    await server.start()
                else:
                    sim.faults = Faults()
                outage["end"] = time.time()
            deadline = time.time() + _SETTLE_S
            while time.time() < deadline:
                if all(
                    job_id in failed or (seen[job_id] and _terminal(seen[job_id][-1][0]))
                    for job_id in tracked
                ):
                    break
                await anyio.sleep(0.5)
            end = time.time()
            stats = poller.stats()
    finally:
        await server.close()
    lags: list[float] = []
    lost = unfinished = 0
    for job_id in tracked:
        observed = seen.get(job_id, [])
        changes = sim.changes(job_id, now=end)
        if job_id in failed:
            lost += 1
            continue
        if not observed or not _terminal(observed[-1][0]):
            # Lost: the job finished long enough before the end to have been seen (the
            # longest interval between polls is 30 s); else it is still running.
            if _terminal(changes[-1].status) and changes[-1].at < end - _SEEN_WITHIN_S:
                lost += 1
            else:
                unfinished += 1
            continue
        job_lags, missed = detection_lags(changes, observed, since=0.0)
        if not missed and job_lags:
            lags.append(job_lags[-1])
    lags.sort()
    records = list(sim.log)
    answered = sum(1 for r in records if r.status == 200)
    row: dict[str, Any] = {
        "faults": scenario.name,
        "jobs": len(tracked),
        "requests_per_job": round(len(records) / len(tracked), 2),
        "answered_per_job": round(answered / len(tracked), 2),
        "mean_lag_s": round(sum(lags) / len(lags), 3) if lags else math.nan,
        "p95_lag_s": round(percentile(lags, 0.95), 3) if lags else math.nan,
        "lost": lost,
        "unfinished": unfinished,
        "errors": stats.errors,
        "seconds": round(end - start, 1),
    }
    if outage:
        row.update(_recovery(records, outage, seen, sim, tracked))
    return row


def _terminal(status: str) -> bool:
    return status in ("completed", "failed", "cancelled", "expired")


def _recovery(
    records: list[Any],
    outage: dict[str, float],
    seen: dict[str, list[tuple[str, float]]],
    sim: JobsSimulator,
    tracked: list[str],
) -> dict[str, Any]:
    """How the engine came back: see the module docstring."""
    down_at, back_at = outage["start"], outage["end"]
    steady = sum(1 for r in records if down_at - 5.0 <= r.at < down_at) / 5.0
    first_ok = min((r.at for r in records if r.status == 200 and r.at >= back_at), default=None)
    if first_ok is None:
        return {"down_requests_per_s": round(outage["requests"] / (back_at - down_at), 2)}
    after = sorted(r.at for r in records if r.at >= first_ok)
    first_second = sum(1 for at in after if at < first_ok + 1.0)
    # The pace is back when a 1-second window from the first success on holds the steady
    # rate (or the engine had nothing more to send).
    paced_s = math.nan
    for index, at in enumerate(after):
        window = sum(1 for t in after[index:] if t < at + 1.0)
        if window >= 0.9 * steady:
            paced_s = at - first_ok
            break
    # Every job whose status changed before the first success, seen in that status.
    caught_up = first_ok
    for job_id in tracked:
        changes = [c for c in sim.changes(job_id, now=first_ok) if c.at < first_ok]
        if not changes:
            continue
        wanted = changes[-1].status
        observed = [at for status, at in seen.get(job_id, []) if status == wanted]
        if observed:
            caught_up = max(caught_up, observed[0])
    return {
        "down_requests_per_s": round(outage["requests"] / (back_at - down_at), 2),
        "steady_per_s": round(steady, 1),
        "first_second_requests": first_second,
        "paced_after_s": round(paced_s, 2),
        "caught_up_after_s": round(caught_up - first_ok, 2),
    }


def _discovery_rows(quick: bool) -> list[dict[str, Any]]:
    rows = []
    for share in (0.01, 0.03):
        faults = Faults(unavailable=share)
        virtual = run_discovery(duration_s=60.0 if quick else 120.0, faults=faults)
        rows.append(
            {
                "run": f"virtual time, core, {share:.0%} 503",
                "accepted_per_s": round(virtual.accepted_per_s, 2),
                "utilization": round(virtual.utilization, 3),
                "throttled_share": round(virtual.throttled_share, 4),
                "max_in_any_second": virtual.max_in_any_second,
            }
        )
        http = anyio.run(discovery_over_http, 20.0 if quick else 60.0, None, faults)
        rows.append(
            {
                "run": f"HTTP, whole engine, {share:.0%} 503",
                "accepted_per_s": http["accepted_per_s"],
                "utilization": http["utilization"],
                "throttled_share": http["throttled_share"],
                "max_in_any_second": http["max_in_any_second"],
            }
        )
    return rows


def run(quick: bool = False) -> dict[str, Any]:
    """Every scenario once, the baseline first and last."""
    jobs = 300 if quick else 1500
    outage_s = 20.0 if quick else 60.0
    table = []
    scenarios = {scenario.name: scenario for scenario in _scenarios()}
    for scenario in _scenarios():
        if quick and scenario.name == "none (again)":
            continue
        row = anyio.run(_run, scenario, jobs, outage_s, 7)
        log(f"{NAME}: {row}")
        table.append(row)
    # The baseline: the fault-free runs, first and last (their spread is the method's).
    clean = [
        row
        for row in table
        if scenarios[row["faults"]].faults is None and not scenarios[row["faults"]].outage
    ]
    base_lag = sum(row["mean_lag_s"] for row in clean) / len(clean)
    base_answered = sum(row["answered_per_job"] for row in clean) / len(clean)
    for row in table:
        row["lag_vs_none"] = round(row["mean_lag_s"] / base_lag, 2)
        row["answered_vs_none"] = round(row["answered_per_job"] / base_answered, 2)
    goals = []
    for row in table:
        scenario = scenarios[row["faults"]]
        if scenario.lag_goal:
            goals.append(
                {
                    "goal": f"{row['faults']}: mean lag and answered requests against the "
                    "fault-free run's, no job lost",
                    "target": f"<= {_LAG_GOAL}x, <= {_REQUEST_GOAL}x, 0",
                    "measured": f"{row['lag_vs_none']}x lag, {row['answered_vs_none']}x "
                    f"requests, {row['lost']} lost",
                    "met": row["lag_vs_none"] <= _LAG_GOAL
                    and row["answered_vs_none"] <= _REQUEST_GOAL
                    and row["lost"] == 0,
                }
            )
        elif scenario.outage is not None:
            first = row.get("first_second_requests")
            goals.append(
                {
                    "goal": f"{row['faults']}: normal pace within {_RECOVERY_GOAL_S:g} s of the "
                    "first success, no more than the steady rate in the first second, no job lost",
                    "target": f"<= {_RECOVERY_GOAL_S:g} s, <= steady, 0",
                    "measured": f"pace back after {row.get('paced_after_s')} s, {first} requests "
                    f"in the first second (steady {row.get('steady_per_s')}/s), {row['lost']} lost",
                    "met": first is not None
                    and row["paced_after_s"] <= _RECOVERY_GOAL_S
                    and first <= row["steady_per_s"]
                    and row["lost"] == 0,
                }
            )
        elif scenario.faults is not None:
            goals.append(
                {
                    "goal": f"{row['faults']}: no job lost",
                    "target": "0",
                    "measured": f"{row['lost']} lost",
                    "met": row["lost"] == 0,
                }
            )
    discovery = _discovery_rows(quick)
    for row in discovery:
        if "1%" not in row["run"]:
            continue  # the 3% runs are shown, not held to the goal (3% of the limit is 503s)
        goals.append(
            {
                "goal": f"discovery, {row['run']}: share of the limit used (200s), 429s",
                "target": ">= 90%, <= 1%",
                "measured": f"{row['utilization']:.1%} used, {row['throttled_share']:.2%} 429s",
                "met": row["utilization"] >= 0.9 and row["throttled_share"] <= 0.01,
            }
        )
    return {
        "name": NAME,
        "title": "A flaky API",
        "description": __doc__,
        "quick": quick,
        "table": table,
        "discovery": discovery,
        "goals": goals,
    }


if __name__ == "__main__":
    import json
    import sys

    names = sys.argv[1:]
    with contextlib.suppress(KeyboardInterrupt):
        for scenario in _scenarios():
            if names and scenario.name not in names:
                continue
            print(json.dumps(anyio.run(_run, scenario, 1500, 60.0, 7)), flush=True)
