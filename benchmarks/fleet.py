"""A fleet of engines sharing one organisation's budget through Redis (``poller.redis``).

Four engine processes, each tracking 2,500 of one organisation's 10,000 jobs (all
``in_progress``, polled every 0.2 s at most: far more demand than the limit), against
one simulator (``SimServer``) in a process of its own, coordinated through a private
``redis-server`` (no persistence) on a free port. The simulator's request log is the
judge: what reached the server, when.

- (a) configured 100 req/s (the simulator enforces nothing): no 1-second window at
  the server holds over 105 requests, and the fleet uses at least 90% of the limit
  (accepted requests after a 5 s warm-up); and what it costs in Redis at this pace
  (each engine polls ~25/s): Redis commands per poll at the server (every command,
  those inside scripts included; target 0.05, as in (c)), script calls per poll (the
  round trips: LEASE, HEARTBEAT...) and LEASE calls per poll;
- (b) undisclosed 100 req/s (the simulator's sliding window, unannounced): after
  10 s, at least 90% of it used and at most 1% of requests answered 429, fleet-wide;
- (c) cost: one engine with a coordinator against the same engine without, side by
  side on one core (as ``benchmarks.throughput`` pairs its clients), polling the
  canned nginx server under a configured limit far above what they can send, so
  leases are taken all the time: at least 0.9x the polls per second; and Redis
  commands per poll at most 0.05 (``total_commands_processed`` at the server over
  the window, every command the engine caused, those inside scripts included).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from ._common import core_plan, goal, job_ids, log, median, module_main, run_children
from ._loops import engine_backoff, measure, time_to_window
from ._server import canned_server, free_port

NAME = "fleet"
ORG = "org_fleet"
KEY = "rt_test_fleet"
LIMIT = 100
ENGINES = 4
JOBS = 10_000
CONFIGURED_WARMUP_S = 5.0
DISCOVERY_WARMUP_S = 10.0
COST_LIMIT_PER_S = 1_000_000.0
STARTUP_S = 6.0  # launch to start: every process imports and connects
_NO_DISK = ("--appendonly", "no", "--dir")
_SCRIPTS = ("evalsha", "eval")


def _plan(quick: bool) -> dict[str, Any]:
    if quick:
        return {"seconds": 20.0, "cost_rounds": 2, "cost_s": 3.0, "cost_jobs": 20_000}
    return {"seconds": 60.0, "cost_rounds": 6, "cost_s": 5.0, "cost_jobs": 100_000}


@contextlib.contextmanager
def redis_server(core: int | None = None) -> Iterator[str]:
    """A private redis-server on a free port (no persistence); its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not on PATH (Debian: apt-get install redis-server)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="poller-bench-redis-") as tmp:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", *_NO_DISK, tmp],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=(lambda: os.sched_setaffinity(0, {core})) if core is not None else None,
        )
        try:
            url = f"redis://127.0.0.1:{port}/0"
            _wait_for_redis(url)
            yield url
        finally:
            proc.kill()
            proc.wait()


def _wait_for_redis(url: str) -> None:
    import redis

    deadline = time.monotonic() + 10.0
    while True:
        client = redis.Redis.from_url(url, socket_timeout=0.5)
        try:
            client.ping()
            return
        except (redis.RedisError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        finally:
            client.close()


def _commands(url: str) -> int:
    return _redis_counts(url)[0]


def _redis_counts(url: str) -> tuple[int, int]:
    """Commands the server processed (those inside scripts included), and script calls
    (EVALSHA, EVAL), so far."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        commands = int(client.info("stats")["total_commands_processed"])
        stats = client.info("commandstats")
        calls = sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in _SCRIPTS)
        return commands, calls
    finally:
        client.close()


# -- children ---------------------------------------------------------------------------


async def _serve(spec: dict[str, Any]) -> dict[str, Any]:
    """The simulator: serve until the end, then judge from its request log."""
    from poller.testing import Change, JobsSimulator, SimServer

    sim = JobsSimulator(seed=7, log_maxlen=5_000_000)
    sim.add_org(ORG, api_keys=[KEY], rate_limit_per_s=spec["hidden_per_s"])
    forever = [Change("queued", 0.0), Change("in_progress", 0.1)]
    for job_id in job_ids(JOBS):
        sim.add_job(org_id=ORG, script=forever, job_id=job_id)
    start = spec["start_at"] + spec["warmup_s"]
    end = spec["start_at"] + spec["seconds"]
    async with SimServer(sim, port=spec["port"]):
        # Redis's counters over the window, as the server log is judged over it (the
        # INFO calls run in a thread: the simulator keeps answering meanwhile).
        await asyncio.sleep(max(0.0, start - time.time()))
        before = await asyncio.to_thread(_redis_counts, spec["redis_url"])
        await asyncio.sleep(max(0.0, end - time.time()))
        after = await asyncio.to_thread(_redis_counts, spec["redis_url"])
    window = [r for r in sim.log if start <= r.at < end]
    accepted = sum(r.status == 200 for r in window)
    throttled = sum(r.status == 429 for r in window)
    return {
        "requests": len(window),
        # Less the first INFO's two commands (the second's are not counted yet).
        "redis_commands": after[0] - before[0] - 2,
        "script_calls": after[1] - before[1],
        "accepted_per_s": accepted / (end - start),
        "throttled_share": throttled / len(window) if window else 0.0,
        "max_in_any_second": sim.log.max_requests_in_window(ORG, 1.0),
        "max_accepted_in_any_second": sim.log.max_requests_in_window(
            ORG, 1.0, include_rejected=False
        ),
    }


async def _poll(spec: dict[str, Any]) -> dict[str, Any]:
    """One engine of the fleet: its share of the jobs, until the end."""
    from poller import Backoff, Poller, RateLimit
    from poller.redis import RedisCoordinator

    mine = job_ids(JOBS)[spec["index"] :: ENGINES]
    eager = Backoff(learn=False, min_interval_s=0.2, max_interval_s=0.2, default_interval_s=0.2)
    configured = RateLimit(per_s=spec["configured_per_s"]) if spec["configured_per_s"] else None
    coord = RedisCoordinator(spec["redis_url"], namespace=spec["namespace"])
    await asyncio.sleep(max(0.0, spec["start_at"] - time.time()))
    async with Poller(
        api_key=KEY,
        base_url=spec["base_url"],
        backoff=eager,
        rate_limit=configured,
        first_poll_rate_per_s=None,
        coordinator=coord,
    ) as poller:
        for job_id in mine:
            poller.track(job_id)
        await asyncio.sleep(max(0.0, spec["end_at"] - time.time()))
        stats = poller.stats()
    return {
        "polls": stats.polls,
        "rate_limited": stats.rate_limited,
        "lease_calls": coord.lease_calls,
        "throttle_calls": coord.throttle_calls,
    }


async def _cost(spec: dict[str, Any]) -> dict[str, Any]:
    """One side of the cost pair: the throughput engine, with a coordinator or not."""
    from poller import Poller, RateLimit
    from poller.redis import RedisCoordinator

    from ._common import API_KEY, pin_to_core

    pin_to_core(spec.get("core"))
    coord = None
    if spec["coordinated"]:
        coord = RedisCoordinator(spec["redis_url"], namespace=spec["namespace"])
    async with Poller(
        api_key=API_KEY,
        base_url=spec["base_url"],
        backoff=engine_backoff(spec["interval_s"]),
        first_poll_rate_per_s=None,
        rate_limit=RateLimit(per_s=COST_LIMIT_PER_S),
        coordinator=coord,
    ) as poller:
        for job_id in job_ids(spec["jobs"]):
            poller.track(job_id, last_status="in_progress", last_seq=1)
        before: list[int] = []

        def polls() -> int:
            stats = poller.stats()
            answered: int = stats.polls - stats.errors - stats.rate_limited
            if spec["coordinated"]:
                before.append(_commands(spec["redis_url"]))
            return answered

        result = await measure(
            polls, lambda: poller.stats().errors, time_to_window(spec), spec["duration_s"]
        )
    if spec["coordinated"]:
        # Commands in the window, less this child's own two INFO calls.
        result["redis_commands"] = before[-1] - before[0] - 1
        result["commands_per_poll"] = result["redis_commands"] / max(1, result["polls"])
        result["lease_calls"] = coord.lease_calls if coord is not None else 0
    return result


def child(spec: dict[str, Any]) -> dict[str, Any]:
    role = {"sim": _serve, "engine": _poll, "cost": _cost}[spec["role"]]
    return asyncio.run(role(spec))


# -- the parent -----------------------------------------------------------------------------


def _scenario(redis_url: str, configured: float | None, hidden: int | None, seconds: float) -> Any:
    start_at = time.time() + STARTUP_S
    common = {"start_at": start_at, "end_at": start_at + seconds}
    port = free_port()
    sim = {
        **common,
        "role": "sim",
        "port": port,
        "hidden_per_s": hidden,
        "seconds": seconds,
        "redis_url": redis_url,
        "warmup_s": CONFIGURED_WARMUP_S if configured else DISCOVERY_WARMUP_S,
    }
    engines = [
        {
            **common,
            "role": "engine",
            "index": index,
            "base_url": f"http://127.0.0.1:{port}",
            "redis_url": redis_url,
            "namespace": f"bench-{int(start_at)}",
            "configured_per_s": configured,
        }
        for index in range(ENGINES)
    ]
    results = run_children(f"benchmarks.{NAME}", [sim, *engines], timeout_s=seconds + 120)
    return results[0], results[1:]


def _cost_rounds(plan: dict[str, Any]) -> list[dict[str, Any]]:
    client_core, server_core = core_plan()
    rounds = []
    with (
        canned_server("steady", core=server_core) as server,
        redis_server(server_core) as redis_url,
    ):
        for index in range(plan["cost_rounds"]):
            start_at = time.time() + STARTUP_S
            order = [True, False] if index % 2 == 0 else [False, True]
            specs = [
                {
                    "role": "cost",
                    "coordinated": coordinated,
                    "redis_url": redis_url,
                    "namespace": f"cost-{index}",
                    "base_url": server.base_url,
                    "jobs": plan["cost_jobs"],
                    "interval_s": 1.0,
                    "warmup_s": 0.0,
                    "start_at": start_at,
                    "duration_s": plan["cost_s"],
                    "core": client_core,
                }
                for coordinated in order
            ]
            results = run_children(f"benchmarks.{NAME}", specs, timeout_s=180)
            by = {spec["coordinated"]: r for spec, r in zip(specs, results, strict=True)}
            record = {
                "round": index,
                "polls_per_s": {
                    "with": round(by[True]["polls_per_s"]),
                    "without": round(by[False]["polls_per_s"]),
                },
                "ratio": round(by[True]["polls_per_s"] / by[False]["polls_per_s"], 3),
                "commands_per_poll": round(by[True]["commands_per_poll"], 4),
                "lease_calls": by[True]["lease_calls"],
                "cpu_utilisation": [by[True]["cpu_utilisation"], by[False]["cpu_utilisation"]],
            }
            log(f"  cost round {index}: {record}")
            rounds.append(record)
    return rounds


def _row(
    name: str, seconds: float, sim: dict[str, Any], engines: list[dict[str, Any]]
) -> dict[str, Any]:
    polls = max(1, sim["requests"])  # in the window, at the server
    return {
        "run": name,
        "seconds": seconds,
        "accepted_per_s": round(sim["accepted_per_s"], 1),
        "utilization": round(sim["accepted_per_s"] / LIMIT, 3),
        "throttled_share": round(sim["throttled_share"], 4),
        "max_in_any_second": sim["max_in_any_second"],
        "engine_polls": [e["polls"] for e in engines],
        "redis_commands_per_poll": round(sim["redis_commands"] / polls, 4),
        "script_calls_per_poll": round(sim["script_calls"] / polls, 4),
        # Over the whole run (the engines count them from the start).
        "lease_calls_per_poll": round(
            sum(e["lease_calls"] for e in engines) / max(1, sum(e["polls"] for e in engines)), 4
        ),
    }


def run(quick: bool = False) -> dict[str, Any]:
    """The three measurements of the module docstring."""
    plan = _plan(quick)
    seconds = plan["seconds"]
    _, server_core = core_plan()
    with redis_server(server_core) as redis_url:
        configured_sim, configured_engines = _scenario(redis_url, LIMIT, None, seconds)
        log(f"  configured: {configured_sim}")
        hidden_sim, hidden_engines = _scenario(redis_url, None, LIMIT, seconds)
        log(f"  undisclosed: {hidden_sim}")
    rounds = _cost_rounds(plan)
    ratio = median([r["ratio"] for r in rounds])
    per_poll = max(r["commands_per_poll"] for r in rounds)
    table = [
        _row("(a) configured 100/s", seconds, configured_sim, configured_engines),
        _row("(b) undisclosed 100/s", seconds, hidden_sim, hidden_engines),
    ]
    a, b = table
    goals = [
        goal(
            "(a) configured 100 req/s, 4 engines: no 1-s window over 105 at the server",
            "<= 105",
            str(a["max_in_any_second"]),
            a["max_in_any_second"] <= 105,
        ),
        goal(
            "(a) configured 100 req/s, 4 engines: share of the limit used (after 5 s)",
            ">= 90%",
            f"{a['utilization']:.1%}",
            a["utilization"] >= 0.9,
        ),
        goal(
            "(b) undisclosed 100 req/s, 4 engines: used and 429s, after 10 s",
            ">= 90%, <= 1%",
            f"{b['utilization']:.1%} used, {b['throttled_share']:.2%} 429s",
            b["utilization"] >= 0.9 and b["throttled_share"] <= 0.01,
        ),
        goal(
            "(c) one engine with the coordinator vs without, side by side: polls/s",
            ">= 0.9x",
            f"{ratio:.2f}x (median of {len(rounds)} rounds)",
            ratio >= 0.9,
        ),
        goal(
            "(c) Redis commands per poll (worst round)",
            "<= 0.05",
            f"{per_poll:.4f}",
            per_poll <= 0.05,
        ),
    ]
    return {
        "name": NAME,
        "title": "A fleet of 4 engines sharing one organisation's budget through Redis",
        "description": __doc__,
        "quick": quick,
        "table": table,
        "cost_rounds": rounds,
        "goals": goals,
        "notes": [
            "Redis commands per poll are held to 0.05 where polls are many (c); in (a) each "
            f"engine polls only ~25 times a second, and its fixed cost (a heartbeat and a "
            f"lease call or so a second, each a few commands inside a script) comes to "
            f"{a['redis_commands_per_poll']:.3f} commands per poll "
            f"({a['script_calls_per_poll']:.3f} script calls, "
            f"{a['lease_calls_per_poll']:.3f} lease calls).",
        ],
    }


if __name__ == "__main__":
    module_main(NAME, child)
