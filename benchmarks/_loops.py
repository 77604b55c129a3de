"""The three clients the throughput benchmark compares, each run in its own process.

(a) ``bare``: a hand-written aiohttp loop, the practical ceiling: ``concurrency`` tasks
    over one session, each GETting the next job's status and decoding it with the
    engine's decoder, back to back. No scheduling at all. aiohttp's default timeout
    applies (a timer armed for every request), as in any loop written by hand.
    ``bare_untimed`` is the same with no timeout at all: unsafe (a stuck request holds
    its task forever), measured only to show what the timer costs.
(b) ``engine``: :class:`poller.Poller` tracking ``jobs`` jobs that stay ``in_progress``,
    with intervals short enough that more polls are due than the pool can send.
(c) ``sdk``: the SDK-style waiter: httpx, one asyncio task per job, a fixed interval,
    ``response.json()``. An ``asyncio.Semaphore`` holds it to the same concurrency; it
    keeps waiting requests out of httpx's pool, whose pool timeout and per-request scan
    of waiting requests would otherwise make the baseline far slower than it need be.

Each measures a window after a warm-up: polls answered, wall seconds, and this
process's CPU seconds (``time.process_time``), so polls per CPU-second count the
client alone. Two clients run side by side on one core (the paired measurement of
``benchmarks.throughput``) start their windows at the same instant, ``spec["start_at"]``
(Unix time), instead of after a warm-up of their own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from yarl import URL

from poller import Backoff, Poller
from poller._decode import decode_status

from ._common import API_KEY, job_ids, pin_to_core

_TERMINAL = frozenset({"completed", "failed", "cancelled", "expired"})
_HEADERS = {"User-Agent": "poller-bench", "Accept": "application/json"}


def probe_work() -> None:
    """A fixed pure-Python workload (about 2 ms): its duration tells how fast the core
    runs right now. On a shared machine that varies (load on a hyperthread sibling,
    the host), and a run on a slow core is no measure of the client."""
    table: dict[int, int] = {}
    for i in range(20_000):
        table[i & 1023] = table.get(i & 1023, 0) + i


async def _probe(samples: list[float], period_s: float = 0.25) -> None:
    while True:
        started = time.perf_counter()
        probe_work()
        samples.append(time.perf_counter() - started)
        await asyncio.sleep(period_s)


def time_to_window(spec: dict[str, Any]) -> float:
    """Seconds from now until the window opens: the warm-up, or until ``start_at``."""
    start_at = spec.get("start_at")
    return float(spec["warmup_s"] if start_at is None else start_at - time.time())


async def measure(
    polls: Callable[[], int], errors: Callable[[], int], warmup_s: float, duration_s: float
) -> dict[str, Any]:
    """Count polls over ``duration_s`` after ``warmup_s``, probing the core's speed
    throughout (about 1% of the time, the same for every client). A negative
    ``warmup_s`` is how late the window opens (start-up took longer than planned)."""
    await asyncio.sleep(max(0.0, warmup_s))
    samples: list[float] = []
    prober = asyncio.create_task(_probe(samples))
    p0, e0 = polls(), errors()
    t0, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.sleep(duration_s)
    p1, e1 = polls(), errors()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    prober.cancel()
    samples.sort()
    return {
        "polls": p1 - p0,
        "errors": e1 - e0,
        "wall_s": round(wall, 4),
        "cpu_s": round(cpu, 4),
        "polls_per_s": (p1 - p0) / wall,
        "polls_per_cpu_s": (p1 - p0) / cpu if cpu > 0 else None,
        "cpu_utilisation": cpu / wall,
        "probe_ms": round(samples[len(samples) // 2] * 1e3, 3) if samples else None,
        "late_s": round(max(0.0, -warmup_s), 3),
    }


def engine_backoff(interval_s: float) -> Backoff:
    """Every poll ``interval_s`` (+-20% jitter) apart, whatever the status; no learning."""
    return Backoff(
        initial_interval_s={"in_progress": interval_s, "queued": interval_s},
        default_interval_s=interval_s,
        multiplier=1.0,
        min_interval_s=interval_s / 2,
        max_interval_s=interval_s * 2,
        learn=False,
    )


async def _cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def bare(
    spec: dict[str, Any], *, client_timeout: aiohttp.ClientTimeout | None = None
) -> dict[str, Any]:
    """(a) the hand-written aiohttp loop (aiohttp's default timeout, unless ``client_timeout``)."""
    concurrency = spec["concurrency"]
    ids = job_ids(spec["jobs"])
    prefix = f"{spec['base_url']}/v1/jobs/"
    headers = {"Api-Key": API_KEY}
    count = [0, 0]  # polls, errors
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0, keepalive_timeout=30)
    async with aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        headers=_HEADERS,
        timeout=client_timeout or aiohttp.client.DEFAULT_TIMEOUT,
    ) as session:

        async def worker(index: int) -> None:
            n = len(ids)
            while True:
                job_id = ids[index % n]
                index += concurrency
                try:
                    url = URL(f"{prefix}{job_id}/status", encoded=True)
                    async with session.get(url, headers=headers) as resp:
                        body = await resp.read()
                        if resp.status == 200:
                            decode_status(body, job_id)
                            count[0] += 1
                            continue
                except aiohttp.ClientError:
                    pass
                count[1] += 1

        tasks = [asyncio.create_task(worker(k)) for k in range(concurrency)]
        try:
            return await measure(
                lambda: count[0], lambda: count[1], time_to_window(spec), spec["duration_s"]
            )
        finally:
            await _cancel_all(tasks)


async def engine(spec: dict[str, Any]) -> dict[str, Any]:
    """(b) the engine, tracking ``jobs`` jobs already seen ``in_progress``."""
    ids = job_ids(spec["jobs"])
    async with Poller(
        api_key=API_KEY,
        base_url=spec["base_url"],
        backoff=engine_backoff(spec["interval_s"]),
        first_poll_rate_per_s=None,
        max_connections=spec["concurrency"],
    ) as poller:
        # Resumed as already seen in_progress: the window measures the steady state of
        # re-polls, not a first sighting of every job.
        for job_id in ids:
            poller.track(job_id, last_status="in_progress", last_seq=1)
        result = await measure(
            # Answered polls only, as the bare loop counts them: a failed request is no poll.
            lambda: _answered(poller.stats()),
            lambda: poller.stats().errors + poller.stats().rate_limited,
            time_to_window(spec),
            spec["duration_s"],
        )
        stats = poller.stats()
        result["tracked"] = stats.tracked
        result["errors_by_kind"] = stats.errors_by_kind
        return result


def _answered(stats: Any) -> int:
    answered: int = stats.polls - stats.errors - stats.rate_limited
    return answered


async def sdk(spec: dict[str, Any]) -> dict[str, Any]:
    """(c) the SDK-style waiter: httpx, one task per job, fixed interval, json."""
    import httpx

    concurrency = spec["concurrency"]
    interval_s = spec["interval_s"]
    count = [0, 0]
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(
        base_url=spec["base_url"],
        headers={**_HEADERS, "Api-Key": API_KEY},
        limits=limits,
        timeout=httpx.Timeout(30.0),
    ) as client:

        async def wait_for(job_id: str) -> dict[str, Any]:
            while True:
                try:
                    async with gate:
                        response = await client.get(f"/v1/jobs/{job_id}/status")
                    response.raise_for_status()
                    job: dict[str, Any] = response.json()
                except httpx.HTTPError:
                    count[1] += 1
                else:
                    count[0] += 1
                    if job["status"] in _TERMINAL:
                        return job
                await asyncio.sleep(interval_s)

        tasks = [asyncio.create_task(wait_for(job_id)) for job_id in job_ids(spec["jobs"])]
        try:
            return await measure(
                lambda: count[0], lambda: count[1], time_to_window(spec), spec["duration_s"]
            )
        finally:
            await _cancel_all(tasks)


async def bare_untimed(spec: dict[str, Any]) -> dict[str, Any]:
    """(a) without any request timeout: no timer armed per request."""
    return await bare(spec, client_timeout=aiohttp.ClientTimeout(total=None))


VARIANTS: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
    "bare": bare,
    "bare_untimed": bare_untimed,
    "engine": engine,
    "sdk": sdk,
}


def run_on_loop(main: Callable[[], Awaitable[dict[str, Any]]], loop: str) -> dict[str, Any]:
    """Run ``main`` on the named event loop: ``asyncio`` or ``uvloop``."""
    if loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main())  # type: ignore[arg-type]
    return asyncio.run(main())  # type: ignore[arg-type]


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement in this (fresh) process, pinned to ``spec["core"]``."""
    pinned = pin_to_core(spec.get("core"))
    variant = VARIANTS[spec["variant"]]
    result = run_on_loop(lambda: variant(spec), spec.get("loop", "asyncio"))
    result["pinned"] = pinned
    return result
