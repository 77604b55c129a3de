"""poller watch: wait for the given jobs, showing their progress.

Tracks the jobs (the real API with RETAB_API_KEY, or --sim for the built-in
simulator), shows a live progress bar with counts by status, and prints one line
per finished job with its own duration (completed_at - created_at). --json prints
one JSON object per finished job instead, for scripts. The engine's settings (key,
base URL, auth scheme, connections, rate limit, intervals) come from flags, the
environment and the --config file, as for ``poller run``.

A job ends with its terminal status (completed, failed, cancelled, expired), or
with "error" when it could not be tracked, as ``poller run`` reports it: the error's
code tells why (not_found for a 404, authentication_failed, tracking_expired, ...);
or with "timed_out" at --timeout.

--sim serves a simulator on 127.0.0.1 that knows only the jobs it made: with no
job ID it makes --sim-jobs jobs (default 20) and watches them; job IDs given are
unknown to it (they end as error, not_found) unless --sim-create makes them first;
--sim-jobs N with job IDs adds N made jobs to those.

Exit status: 0 when every job completed; 1 when any failed, was cancelled, expired,
ended in error, or was still running at --timeout; 2 for bad arguments or
settings; 130 when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Sequence
from typing import Final

import anyio
import msgspec

from .._health_log import describe_errors
from .._ids import validate_job_id
from ..daemon.config import Settings, coordinator_for, engine_options, load_settings
from ..daemon.logs import configure_logging
from ..engine import Poller
from ..errors import ConfigError, InvalidJobIdError
from ..events import Stats
from ..testing import JobsSimulator, SimServer
from .tally import Tally
from .watch_view import View, make_view

__all__ = ["add_arguments", "run", "trouble_line", "watch"]

_SIM_ORG: Final = "org_sim"
_SIM_KEY: Final = "rt_test_watch"
_SIM_JOBS: Final = 20


async def watch(
    job_ids: Sequence[str],
    view: View,
    *,
    settings: Settings,
    timeout_s: float | None = None,
    sim: JobsSimulator | None = None,
) -> int:
    """Track ``job_ids`` until all end (or ``timeout_s``), reporting to ``view``; returns
    the exit status. The engine is set up from ``settings`` (key, base URL, auth scheme,
    connections, rate limit, polling intervals). With ``sim``, serve it on loopback and
    track its jobs instead."""
    tally = Tally(job_ids, time.time())
    options = engine_options(settings)
    key = settings.api_key.reveal() if settings.api_key is not None else None
    base_url = settings.base_url
    async with contextlib.AsyncExitStack() as stack:
        if sim is not None:
            server = await stack.enter_async_context(SimServer(sim))
            key, base_url = _SIM_KEY, server.base_url
            options = msgspec.structs.replace(options, auth_scheme="api-key")
        engine = await stack.enter_async_context(
            Poller(key, base_url, options=options, coordinator=coordinator_for(settings))
        )
        stream = await stack.enter_async_context(
            engine.subscribe(job_ids=tally.status, max_buffer=max(10_000, 8 * tally.total))
        )
        for job_id in tally.status:
            engine.track(job_id)
        view.start(tally)
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(_report_trouble, engine, view)
                with anyio.move_on_after(timeout_s):
                    async for event in stream:
                        outcome = tally.observe(event)
                        view.update(tally, outcome)
                        if tally.done:
                            break
                tasks.cancel_scope.cancel()
            if not tally.done:  # a watch cut short says what was going wrong, if anything
                line = trouble_line(engine.stats())
                if line is not None:
                    view.trouble(line)
            for outcome in tally.time_out(time.time()):
                view.update(tally, outcome)
        finally:
            view.stop(tally)
    return tally.exit_status


def trouble_line(stats: Stats) -> str | None:
    """What goes wrong with the API, in one line, or None when nothing does: the API
    unreachable (or not answering yet: the last requests failed, none answered since),
    an organisation down, or degraded (its requests often fail)."""
    api = stats.api
    if api.state == "down":
        return f"API unreachable: {describe_errors(api.recent_errors, api.since)}"
    if api.streak >= 2:
        return (
            f"API not answering: the last {api.streak} requests failed "
            f"({describe_errors(api.recent_errors, api.since)})"
        )
    for state, words in (("down", "is down"), ("degraded", "is degraded")):
        for org_id, org in sorted(stats.by_org.items()):
            health = org.health
            if health.state == state:
                errors = describe_errors(health.recent_errors, health.since)
                share = f"{health.error_share:.0%} of requests failing: " if state != "down" else ""
                return f"organisation {org_id} {words}: {share}{errors}"
    return None


async def _report_trouble(engine: Poller, view: View, every_s: float = 1.0) -> None:
    shown: str | None = None
    while True:
        await anyio.sleep(every_s)
        line = trouble_line(engine.stats())
        # A line's counts grow while the trouble lasts: show it again on a new state only.
        if (line is None) != (shown is None) or (
            line is not None and shown is not None and line.split(":")[0] != shown.split(":")[0]
        ):
            view.trouble(line)
            shown = line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``poller watch``'s options on ``parser``."""
    parser.add_argument("job_ids", nargs="*", metavar="JOB_ID", help="jobs to watch")
    parser.add_argument(
        "--from", dest="from_file", metavar="FILE", help="also the job IDs in FILE ('-': stdin)"
    )
    parser.add_argument("--json", action="store_true", help="JSON lines for scripts, no bar")
    parser.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="stop waiting after this (exit 1)"
    )
    parser.add_argument("--base-url", metavar="URL", help="API root (env RETAB_API_BASE_URL)")
    parser.add_argument(
        "--redis",
        metavar="URL",
        help="share budgets and learned durations with other engines through Redis "
        "(env POLLER_REDIS_URL; a password only from there or --config)",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML file of settings, as for 'poller run' (env POLLER_CONFIG); its key, "
        "auth scheme, base URL, connections, rate limit and intervals apply",
    )
    parser.add_argument(
        "--poll-interval-s",
        "--poll-interval",
        dest="poll_interval",
        metavar="SECONDS",
        help="first polling interval of every status (default: the engine's)",
    )
    sim = parser.add_argument_group("simulation")
    sim.add_argument(
        "--sim",
        action="store_true",
        help="watch jobs of a built-in simulator on 127.0.0.1; it knows only the jobs it made",
    )
    sim.add_argument(
        "--sim-jobs",
        type=int,
        metavar="N",
        help=f"jobs the simulator makes and watches (default {_SIM_JOBS} with no job ID, else 0)",
    )
    sim.add_argument(
        "--sim-create",
        action="store_true",
        help="make the job IDs given in the simulator (drawn lifecycles), so they exist",
    )
    sim.add_argument(
        "--sim-time-scale",
        type=float,
        default=0.02,
        metavar="SCALE",
        help="multiplies simulated durations (default %(default)s: 50x faster)",
    )
    sim.add_argument(
        "--seed", type=int, default=0, help="seed of the simulator (default %(default)s)"
    )
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="warning",
        help="log lines on standard error (default %(default)s)",
    )


def _read_ids(args: argparse.Namespace) -> list[str]:
    job_ids = list(args.job_ids)
    if args.from_file is not None:
        if args.from_file == "-":
            lines = sys.stdin.read().splitlines()
        else:
            with open(args.from_file, encoding="utf-8") as file:
                lines = file.read().splitlines()
        job_ids += [s for line in lines if (s := line.strip()) and not s.startswith("#")]
    return [validate_job_id(job_id) for job_id in dict.fromkeys(job_ids)]


def _simulator(args: argparse.Namespace, job_ids: list[str]) -> tuple[JobsSimulator, list[str]]:
    """The simulator ``--sim`` asks for, and the jobs to watch (see the module docstring)."""
    made = args.sim_jobs if args.sim_jobs is not None else (0 if job_ids else _SIM_JOBS)
    if not args.sim_time_scale > 0 or made < 0 or (made == 0 and not job_ids):
        raise ConfigError("sim: --sim-time-scale must be > 0 and --sim-jobs >= 1")
    sim = JobsSimulator(seed=args.seed, time_scale=args.sim_time_scale)
    sim.add_org(_SIM_ORG, api_keys=[_SIM_KEY])
    if args.sim_create:
        for job_id in job_ids:
            sim.add_job(org_id=_SIM_ORG, job_id=job_id)
    return sim, [*job_ids, *sim.add_jobs(made)]


def run(args: argparse.Namespace) -> int:
    """``poller watch``; returns the exit status (see the module docstring)."""
    try:
        flags = {
            "base_url": args.base_url,
            "poll_interval_s": args.poll_interval,
            "redis_url": args.redis,
        }
        settings = load_settings(flags, os.environ, args.config, daemon=False)
        job_ids = _read_ids(args)
        sim: JobsSimulator | None = None
        if args.sim:
            sim, job_ids = _simulator(args, job_ids)
        elif args.sim_create or args.sim_jobs is not None:
            raise ConfigError("sim: --sim-create and --sim-jobs need --sim")
        elif not job_ids:
            raise ConfigError("job_ids: give job IDs, --from FILE, or --sim")
        elif settings.api_key is None:
            raise ConfigError(
                "api_key: set RETAB_API_KEY (or api_key in the --config file, or use --sim)"
            )
        if args.timeout is not None and not args.timeout > 0:
            raise ConfigError("timeout: must be > 0")
    except (ConfigError, InvalidJobIdError, OSError) as exc:
        return _usage_error(exc)
    configure_logging(level=args.log_level, secrets=settings.secrets())
    view = make_view(json_lines=args.json)
    try:
        status: int = anyio.run(
            lambda: watch(job_ids, view, settings=settings, timeout_s=args.timeout, sim=sim)
        )
    except ConfigError as exc:
        return _usage_error(exc)
    return status


def _usage_error(exc: Exception) -> int:
    message = str(exc)
    if message.startswith("base_url:"):
        # The engine's message serves library users too; say where the CLI takes it.
        message += "; here: --base-url https://... (or RETAB_API_BASE_URL, or --config)"
    print(f"poller watch: error: {message}", file=sys.stderr)
    return 2
