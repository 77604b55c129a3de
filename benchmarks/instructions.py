"""CPU cost per poll, counted: instructions per poll under callgrind, engine against bare.

Wall-clock throughput on a shared machine swings by a third from one run to the next
(see the throughput benchmark's per-round ratios); instruction counts do not. Both
clients of the throughput benchmark, (a) the bare aiohttp loop and (b) the engine
tracking 20,000 jobs, run the same loops against the same nginx, each under
``valgrind --tool=callgrind`` and each twice, for N1 and N2 polls after a warm-up, so
start-up and shut-down cancel out: cost = (I(N2) - I(N1)) / (N2 - N1). Both clients
are CPU-bound at 64 connections, so polls per second go as polls per instruction.

Goal (the throughput goal, measured without the noise): the engine at least 0.9x the
bare loop in polls per instruction.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import time
from typing import Any

from ._common import CODE_ROOT, goal, log, module_main
from ._server import canned_server

NAME = "instructions"
GOAL = 0.9
_CONCURRENCY = 64
_WARMUP_POLLS = 1_000


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one client until ``polls`` polls past the warm-up, then stop (run under
    callgrind by the parent; the count is the parent's business)."""
    from . import _loops

    target = spec["polls"]

    async def measure(
        polls: Any, errors: Any, warmup_s: float, duration_s: float
    ) -> dict[str, Any]:
        while True:  # counted in polls, not seconds: the same work under any slowdown
            if polls() >= _WARMUP_POLLS + target:
                return {"polls": polls(), "errors": errors()}
            await asyncio.sleep(0.005)

    _loops.measure = measure
    loop_spec = {
        "concurrency": _CONCURRENCY,
        "jobs": 20_000,
        "base_url": spec["base_url"],
        "warmup_s": 0.0,
        "duration_s": 0.0,
        "interval_s": 0.002,  # jobs fall due far faster than they can be polled
    }
    client = getattr(_loops, spec["client"])
    result: dict[str, Any] = asyncio.run(client(loop_spec))
    return result


def _instructions(client: str, base_url: str, polls: int) -> tuple[int, int]:
    """(instructions counted, polls the child actually made) for one run."""
    spec = f'{{"client": "{client}", "base_url": "{base_url}", "polls": {polls}}}'
    proc = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            "-m",
            "benchmarks.instructions",
            "--child",
            spec,
        ],
        cwd=CODE_ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    found = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode != 0 or found is None:
        raise RuntimeError(f"callgrind run of {client} failed:\n{proc.stderr[-3000:]}")
    # It stops at its first check past the target: count what it did, not what was asked.
    result = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    return int(found.group(1)), int(result["polls"])


def run(quick: bool = False) -> dict[str, Any]:
    """Count both clients' instructions per poll."""
    started = time.perf_counter()
    if shutil.which("valgrind") is None:
        log("instructions: valgrind is not installed; skipped")
        return {
            "name": NAME,
            "title": "CPU cost per poll (instructions)",
            "skipped": "valgrind is not installed",
            "goals": [],
        }
    low, high = (1_000, 3_000) if quick else (2_000, 8_000)
    table: list[dict[str, Any]] = []
    costs: dict[str, float] = {}
    with canned_server("steady") as server:
        for client in ("bare", "engine"):
            (i1, p1), (i2, p2) = (_instructions(client, server.base_url, n) for n in (low, high))
            costs[client] = (i2 - i1) / (p2 - p1)
            log(f"instructions: {client}: {costs[client]:,.0f} instructions per poll")
            table.append(
                {
                    "client": "(a) bare aiohttp loop" if client == "bare" else "(b) poller engine",
                    "instructions_per_poll": round(costs[client]),
                    "polls_counted": p2 - p1,
                }
            )
    ratio = costs["bare"] / costs["engine"]
    table[1]["vs_bare"] = round(ratio, 3)
    return {
        "name": NAME,
        "title": "CPU cost per poll (instructions, callgrind)",
        "description": __doc__,
        "quick": quick,
        "table": table,
        "goals": [
            goal(
                "engine >= 0.9x the bare aiohttp loop in polls per instruction",
                f">= {GOAL}x",
                f"{ratio:.3f}x",
                ratio >= GOAL,
            )
        ],
        "seconds": round(time.perf_counter() - started, 1),
    }


if __name__ == "__main__":
    module_main(NAME, child)
