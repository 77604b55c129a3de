"""Internal latency: from a response's bytes arriving to the transition callback, at full load.

The engine tracks 100,000 jobs against nginx (as in the throughput benchmark, pool
always busy), and nginx answers ``queued`` or ``in_progress`` at random, so about
half of all polls are transitions. Three instants per transition:

1. *bytes received*: aiohttp's ``ResponseHandler.data_received`` is wrapped to stamp
   the time the chunk holding the body arrived from the socket (keyed by the job ID
   found in it);
2. *transport returned*: a wrapper around the transport stamps when ``get_status``
   hands the decoded payload to the engine;
3. *callback invoked*: a synchronous ``on_transition`` callback stamps on entry.

Reported: percentiles of 1->3 (the internal latency), and its two parts 1->2 (aiohttp
reading the response, the event loop's queue at full load, the decode) and 2->3 (the
engine's own bookkeeping and delivery).
"""

from __future__ import annotations

import asyncio
import re
import time
from array import array
from typing import Any

from ._common import (
    API_KEY,
    core_plan,
    job_ids,
    log,
    module_main,
    package_version,
    percentile,
    pin_to_core,
    run_child,
)
from ._loops import engine_backoff, run_on_loop
from ._server import canned_server

NAME = "latency"
CONCURRENCY = 64
INTERVAL_S = 2.0  # 100,000 jobs every 2 s: far more due than any pool here can send
_ID = re.compile(rb'"id":"([^"]+)"')
SEGMENTS = {
    "total": "bytes received -> callback",
    "network": "bytes received -> transport returned",
    "engine": "transport returned -> callback",
}


class _Stamping:
    """Wraps a transport; stamps when each status payload is handed over."""

    def __init__(self, inner: Any, stamps: dict[str, float]) -> None:
        self._inner = inner
        self._stamps = stamps

    async def get_status(self, job_id: str, credential: Any) -> Any:
        payload = await self._inner.get_status(job_id, credential)
        self._stamps[job_id] = time.perf_counter()
        return payload

    async def get_job(self, job_id: str, credential: Any, **kwargs: Any) -> Any:
        return await self._inner.get_job(job_id, credential, **kwargs)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _stamp_arrivals(received: dict[str, float]) -> None:
    from aiohttp.client_proto import ResponseHandler

    original = ResponseHandler.data_received

    def data_received(self: ResponseHandler, data: bytes) -> None:
        now = time.perf_counter()
        match = _ID.search(data)
        if match is not None:
            received[match.group(1).decode()] = now
        original(self, data)

    ResponseHandler.data_received = data_received  # type: ignore[method-assign]


async def _measure(spec: dict[str, Any]) -> dict[str, Any]:
    from poller import Poller
    from poller.transport import AiohttpTransport

    received: dict[str, float] = {}
    returned: dict[str, float] = {}
    _stamp_arrivals(received)
    samples = {key: array("d") for key in SEGMENTS}
    recording = [False]
    limit = spec["max_samples"]

    def on_transition(transition: Any) -> None:
        now = time.perf_counter()
        if not recording[0] or len(samples["total"]) >= limit:
            return
        arrived = received.get(transition.job_id)
        handed = returned.get(transition.job_id)
        if arrived is None or handed is None:
            return
        samples["total"].append(now - arrived)
        samples["network"].append(handed - arrived)
        samples["engine"].append(now - handed)

    transport = _Stamping(
        AiohttpTransport(spec["base_url"], max_connections=spec["concurrency"]), returned
    )
    async with Poller(
        api_key=API_KEY,
        transport=transport,
        backoff=engine_backoff(spec["interval_s"]),
        first_poll_rate_per_s=None,
        max_connections=spec["concurrency"],
    ) as poller:
        poller.on_transition(on_transition)
        for job_id in job_ids(spec["jobs"]):
            poller.track(job_id, last_status="in_progress", last_seq=1)
        await asyncio.sleep(spec["warmup_s"])
        polls0, t0 = poller.stats().polls, time.perf_counter()
        recording[0] = True
        await asyncio.sleep(spec["duration_s"])
        recording[0] = False
        stats = poller.stats()
        wall = time.perf_counter() - t0
    result: dict[str, Any] = {
        "polls_per_s": (stats.polls - polls0) / wall,
        "errors": stats.errors,
        "samples": len(samples["total"]),
    }
    for key, values in samples.items():
        ordered = sorted(values)
        result[key] = {
            q: percentile(ordered, p) * 1e6
            for q, p in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999), ("max", 1.0))
        }
    return result


def child(spec: dict[str, Any]) -> dict[str, Any]:
    pinned = pin_to_core(spec.get("core"))
    result = run_on_loop(lambda: _measure(spec), spec["loop"])
    result["pinned"] = pinned
    return result


def run(quick: bool) -> dict[str, Any]:
    """Measure on asyncio (and uvloop when installed); see the module docstring."""
    client_core, server_core = core_plan()
    loops = ["asyncio", "uvloop"] if package_version("uvloop") else ["asyncio"]
    jobs = 20_000 if quick else 100_000
    table = []
    by_loop: dict[str, Any] = {}
    with canned_server("alternating", core=server_core) as server:
        for loop in loops:
            spec = {
                "loop": loop,
                "base_url": server.base_url,
                "concurrency": CONCURRENCY,
                "jobs": jobs,
                "interval_s": INTERVAL_S * jobs / 100_000,
                "warmup_s": 1.0 if quick else 2.0,
                "duration_s": 1.5 if quick else 5.0,
                "max_samples": 1_000_000,
                "core": client_core,
            }
            out = run_child(f"benchmarks.{NAME}", spec, timeout_s=120)
            by_loop[loop] = out
            log(
                f"  {loop}: {out['polls_per_s']:.0f} polls/s, {out['samples']:,} transitions, "
                f"total p50 {out['total']['p50']:.0f} us, p99 {out['total']['p99']:.0f} us"
            )
            for key, label in SEGMENTS.items():
                row = {"loop": loop, "from -> to": label}
                row.update({f"{q} (µs)": round(v, 1) for q, v in out[key].items()})
                row["transitions"] = out["samples"]
                table.append(row)
        kind = server.kind
    main = by_loop["asyncio"]
    return {
        "title": "Internal latency",
        "summary": (
            f"From a status response's bytes arriving to the transition callback, with "
            f"{jobs:,} jobs tracked and the pool of {CONCURRENCY} always busy "
            f"({main['polls_per_s']:,.0f} polls/s on asyncio): p50 "
            f"**{main['total']['p50']:,.0f} µs**, p99 **{main['total']['p99']:,.0f} µs**; "
            f"of which the engine's own part (transport returned -> callback): p50 "
            f"{main['engine']['p50']:,.1f} µs, p99 {main['engine']['p99']:,.1f} µs."
        ),
        "baseline": "none: an absolute figure",
        "p50_us": round(main["total"]["p50"], 1),
        "p99_us": round(main["total"]["p99"], 1),
        "by_loop": by_loop,
        "server": kind,
        "table": table,
        "notes": [
            "Stamps: aiohttp's `ResponseHandler.data_received` (the chunk holding the body), "
            "a wrapper around the transport, and a sync `on_transition` callback; "
            "`perf_counter` throughout.",
            "Most of the total is the wait in the event loop's ready queue: at full load "
            "every connection's response arrives in the same loop turns, and each waits "
            "for those ahead of it.",
        ],
    }


if __name__ == "__main__":
    module_main(NAME, child)
