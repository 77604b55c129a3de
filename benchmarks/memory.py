"""Memory: bytes per tracked job, against one asyncio task per job.

Each size runs in a fresh process. The job IDs (25 characters, as long as real ones)
are created before the first reading, so both sides are charged only for tracking.

- engine: a :class:`poller.Poller` (default settings but long intervals and no intake
  pacing) over a transport that answers at once with a decoded ``in_progress``
  payload. Readings: right after ``track`` of every job ("just tracked"), and once
  every job has been polled once (the steady state: the goal's figure).
- baseline: one asyncio task per job, sleeping in a loop (the least a task-per-job
  waiter can hold: no client, no URL, no response).

RSS is read from ``/proc/self/statm`` after a ``gc.collect()``; a second run of each
under ``tracemalloc`` counts live Python allocations as a cross-check (RSS also holds
allocator slack), and lists where the engine's bytes go.

Goal: 600 bytes or less per tracked job.
"""

from __future__ import annotations

import asyncio
import gc
import os
import tracemalloc
from pathlib import Path
from typing import Any

from ._common import API_KEY, canned_payload, goal, job_ids, log, module_main, run_child

NAME = "memory"
GOAL_BYTES = 600
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def _available_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / (1 << 20)
    except OSError:
        pass
    return 0.0


class _InstantTransport:
    """Answers every status request at once (after one loop turn, like real I/O) with an
    ``in_progress`` payload decoded from bytes, as the real transport would."""

    async def get_status(self, job_id: str, credential: Any) -> Any:
        from poller._decode import decode_status

        await asyncio.sleep(0)
        return decode_status(canned_payload(job_id), job_id)

    async def get_job(self, job_id: str, credential: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


class _Reading:
    def __init__(self, trace: bool) -> None:
        self.trace = trace

    def take(self) -> int:
        gc.collect()
        return tracemalloc.get_traced_memory()[0] if self.trace else rss_bytes()


async def _engine(n: int, trace: bool) -> dict[str, Any]:
    from poller import Backoff, Poller

    ids = job_ids(n)
    reading = _Reading(trace)
    # Long intervals: every job is polled once, then waits; memory does not depend on them.
    backoff = Backoff(
        initial_interval_s={"in_progress": 3600.0, "queued": 3600.0},
        default_interval_s=3600.0,
        max_interval_s=7200.0,
    )
    async with Poller(
        api_key=API_KEY,
        transport=_InstantTransport(),
        backoff=backoff,
        first_poll_rate_per_s=None,
    ) as poller:
        await asyncio.sleep(0.01)
        before = reading.take()
        snapshot0 = tracemalloc.take_snapshot() if trace else None
        for job_id in ids:
            poller.track(job_id)
        tracked = reading.take() - before  # no await since: nothing polled yet
        while poller.stats().polls < n:  # noqa: ASYNC110 - a counter, not an event
            await asyncio.sleep(0.05)
        polled = reading.take() - before
        sites = _top_sites(tracemalloc.take_snapshot(), snapshot0, n) if snapshot0 else []
        return {"tracked_bytes": tracked, "polled_bytes": polled, "sites": sites}


def _top_sites(
    after: tracemalloc.Snapshot, before: tracemalloc.Snapshot, n: int
) -> list[dict[str, Any]]:
    """The allocation sites that grew most, in bytes per job."""
    sites = []
    diff = after.compare_to(before, "lineno")
    for stat in sorted(diff, key=lambda s: -s.size_diff)[:8]:
        frame = stat.traceback[0]
        where = os.path.relpath(frame.filename, os.getcwd())
        if where.startswith(".."):
            where = Path(frame.filename).name
        sites.append(
            {
                "allocation site": f"{where}:{frame.lineno}",
                "bytes per job": round(stat.size_diff / n, 1),
                "objects per job": round(stat.count_diff / n, 2),
            }
        )
    return sites


async def _tasks(n: int, trace: bool) -> dict[str, Any]:
    ids = job_ids(n)
    reading = _Reading(trace)

    async def wait_for(job_id: str) -> None:
        while True:  # noqa: ASYNC110 - the baseline is exactly this: a task sleeping in a loop
            await asyncio.sleep(3600.0)

    before = reading.take()
    tasks = [asyncio.create_task(wait_for(job_id)) for job_id in ids]
    await asyncio.sleep(0)  # every task runs to its first sleep
    await asyncio.sleep(0)
    after = reading.take() - before
    for task in tasks:
        task.cancel()
    return {"tracked_bytes": after, "polled_bytes": after, "sites": []}


def child(spec: dict[str, Any]) -> dict[str, Any]:
    if spec["trace"]:
        tracemalloc.start()
    main = _engine if spec["kind"] == "engine" else _tasks
    result = asyncio.run(main(spec["n"], spec["trace"]))
    result["peak_rss_bytes"] = rss_bytes()
    return result


def run(quick: bool) -> dict[str, Any]:
    """Measure each size in fresh processes; see the module docstring."""
    sizes = [10_000, 100_000] if quick else [10_000, 100_000, 1_000_000]
    traced = {10_000} if quick else {10_000, 100_000}
    notes = []
    if 1_000_000 in sizes and _available_gib() < 6.0:
        sizes.remove(1_000_000)
        notes.append("1,000,000 jobs skipped: less than 6 GiB of memory available.")
    table = []
    sites: list[dict[str, Any]] = []
    sites_jobs = 0
    for n in sizes:
        per: dict[str, dict[str, Any]] = {}
        for kind in ("engine", "tasks"):
            for trace in (False, True) if n in traced else (False,):
                log(f"  {kind} {n:,} jobs{' (tracemalloc)' if trace else ''}")
                out = run_child(
                    f"benchmarks.{NAME}", {"kind": kind, "n": n, "trace": trace}, timeout_s=300
                )
                per[f"{kind}{'_trace' if trace else ''}"] = out
                if trace and kind == "engine" and n >= sites_jobs:
                    sites, sites_jobs = out["sites"], n
        engine = per["engine"]["polled_bytes"] / n
        tasks = per["tasks"]["polled_bytes"] / n
        row: dict[str, Any] = {
            "jobs": n,
            "engine B/job (RSS)": round(engine, 1),
            "engine B/job (tracemalloc)": (
                round(per["engine_trace"]["polled_bytes"] / n, 1) if "engine_trace" in per else None
            ),
            "engine B/job just tracked (RSS)": round(per["engine"]["tracked_bytes"] / n, 1),
            "task-per-job B/job (RSS)": round(tasks, 1),
            "task-per-job B/job (tracemalloc)": (
                round(per["tasks_trace"]["polled_bytes"] / n, 1) if "tasks_trace" in per else None
            ),
            "task-per-job / engine": round(tasks / engine, 2) if engine > 0 else None,
            "engine peak RSS (MiB)": round(per["engine"]["peak_rss_bytes"] / (1 << 20), 1),
        }
        table.append(row)
        log(f"  {n:,} jobs: engine {engine:.0f} B/job, task-per-job {tasks:.0f} B/job")
    worst = max(row["engine B/job (RSS)"] for row in table)
    largest = table[-1]
    notes += [
        "Bytes per job = (reading with N jobs tracked - reading before) / N, each size in "
        "a fresh process; the job ID strings exist before the first reading.",
        "The goal's figure is the engine after every job was polled once (RSS), the "
        "largest over the sizes measured.",
        "The task-per-job baseline holds nothing but its sleeping loop: a real waiter holds more.",
    ]
    return {
        "title": "Memory per tracked job",
        "summary": "Bytes of memory per tracked job, the engine against one asyncio task per job.",
        "baseline": "one asyncio task per job sleeping in a loop",
        "sizes": sizes,
        "goals": [
            goal(
                f"<= {GOAL_BYTES} bytes per tracked job (RSS, worst size up to "
                f"{largest['jobs']:,} jobs)",
                f"<= {GOAL_BYTES} B",
                f"{worst:.0f} B",
                worst <= GOAL_BYTES,
            )
        ],
        "table": table,
        "top_allocations": sites,
        "top_allocations_jobs": sites_jobs,
        "notes": notes,
    }


if __name__ == "__main__":
    module_main(NAME, child)
