"""The ``poller sim`` command: serve the jobs-API simulator until interrupted.

``add_arguments`` declares the options on a parser and ``run`` serves; the main
CLI wires them into a subcommand, and ``python -m poller.testing`` runs them alone.
"""

from __future__ import annotations

__all__ = ["add_arguments", "build_simulator", "run"]

import argparse
import asyncio
import shlex
import signal
import sys
from collections.abc import Callable

from ._faults import Faults
from ._model import JobsSimulator
from ._ratelimit import RETRY_AFTER_STYLES
from ._server import SimServer

_SHOWN_JOBS = 3

# (option, Faults field, help)
_FAULT_OPTIONS = (
    ("--fault-5xx", "server_error", "500 Internal Server Error"),
    ("--fault-503", "unavailable", "503 with Retry-After"),
    ("--fault-reset", "reset", "connection aborted without a response"),
    ("--fault-slow", "slow", "response delayed by --slow-delay seconds"),
    ("--fault-garbage", "garbage", "200 with a non-JSON body"),
    ("--fault-truncated", "truncated", "200 with JSON cut in the middle"),
    ("--fault-extra-fields", "extra_fields", "unknown fields in the JSON"),
    ("--fault-unknown-status", "unknown_status", "share of jobs with an unknown status phase"),
    ("--fault-unknown-endpoint", "unknown_endpoint", "share of jobs with an unknown endpoint"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the simulator's options on ``parser``."""
    parser.add_argument("--host", default="127.0.0.1", help="interface (default: %(default)s)")
    parser.add_argument("--port", type=_number(int, 0), default=8080, help="0 picks a free port")
    parser.add_argument("--orgs", type=_number(int, 1), default=1, help="organisations")
    parser.add_argument("--jobs", type=_number(int, 0), default=100, help="jobs made at start")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    parser.add_argument(
        "--time-scale",
        type=_number(float, 0.0, exclusive=True),
        default=1.0,
        help="multiplies job durations (0.01 is 100x faster; default: real time)",
    )
    parser.add_argument(
        "--rate-limit", type=_number(int, 1), metavar="PER_S", help="per-org requests/s"
    )
    parser.add_argument(
        "--disclose-rate-limit", action="store_true", help="send x-ratelimit-* headers"
    )
    parser.add_argument("--retry-after", choices=RETRY_AFTER_STYLES, default="seconds")
    parser.add_argument("--timestamps", choices=("unix", "iso"), default="unix")
    faults = parser.add_argument_group("faults (rates between 0 and 1)")
    for option, field, description in _FAULT_OPTIONS:
        faults.add_argument(
            option, dest=f"fault_{field}", type=_rate, default=0.0, metavar="RATE", help=description
        )
    faults.add_argument("--slow-delay", type=_number(float, 0.0), default=2.0, metavar="SECONDS")


def build_simulator(args: argparse.Namespace) -> JobsSimulator:
    """The simulator ``args`` describe, with its orgs and jobs.
    Raises ``ValueError`` for fault rates that sum above 1."""
    faults = Faults(
        slow_delay_s=args.slow_delay,
        **{field: getattr(args, f"fault_{field}") for _, field, _ in _FAULT_OPTIONS},
    )
    sim = JobsSimulator(
        seed=args.seed,
        time_scale=args.time_scale,
        faults=faults,
        timestamp_format=args.timestamps,
        retry_after=args.retry_after,
        disclose_rate_limit=args.disclose_rate_limit,
    )
    for n in range(1, args.orgs + 1):
        sim.add_org(f"org_{n}", rate_limit_per_s=args.rate_limit)
    sim.add_jobs(args.jobs)
    return sim


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; return the exit status (0, or 1/2 on errors)."""
    try:
        sim = build_simulator(args)
    except ValueError as exc:
        print(f"poller sim: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(SimServer(sim, host=args.host, port=args.port)))
    except OSError as exc:
        print(f"poller sim: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


async def _serve(server: SimServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    try:
        async with server:
            print(_banner(server), flush=True)
            await stop.wait()
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


def _banner(server: SimServer) -> str:
    """What a person needs to try the server: its URL (first line), keys, jobs, curls."""
    sim, url = server.sim, server.base_url
    lines = [f"Retab jobs API simulator listening on {url}", "", "Organisations and API keys:"]
    lines += [f"  {org.org_id}  {org.api_keys[0]}" for org in sim.orgs]
    first = sim.orgs[0]
    key = shlex.quote(f"Api-Key: {first.api_keys[0]}")
    job_ids = sim.job_ids(first.org_id)[:_SHOWN_JOBS]
    if job_ids:
        lines += ["", f"Some jobs of {first.org_id}:", *(f"  {j}" for j in job_ids)]
        lines += ["", "Try:", f"  curl -H {key} {url}/v1/jobs/{job_ids[0]}/status"]
    body = shlex.quote('{"endpoint": "/v1/documents/extract", "request": {}}')
    lines += [
        "",
        "Create a job:",
        f"  curl -X POST -H {key} -H 'Content-Type: application/json' -d {body} {url}/v1/jobs",
        "",
        "Press Ctrl+C to stop.",
    ]
    return "\n".join(lines)


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def _number(
    kind: Callable[[str], float], minimum: float, *, exclusive: bool = False
) -> Callable[[str], float]:
    """An argparse type: ``kind`` parsed from text, at least (or above) ``minimum``."""

    def parse(text: str) -> float:
        value = kind(text)
        if value < minimum or (exclusive and value == minimum):
            bound = "above" if exclusive else "at least"
            raise argparse.ArgumentTypeError(f"{text} must be {bound} {minimum:g}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in "invalid int value" errors
    return parse
