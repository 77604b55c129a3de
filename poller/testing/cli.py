"""The ``poller sim`` command: serve the jobs-API simulator until interrupted.

``add_arguments`` declares the options on a parser and ``run`` serves; the main
CLI wires them into a subcommand, and ``python -m poller.testing`` runs them alone.
:data:`DESCRIPTION` is their help text.
"""

from __future__ import annotations

__all__ = ["DESCRIPTION", "add_arguments", "build_simulator", "run"]

import argparse
import asyncio
import random
import shlex
import signal
import sys
from collections.abc import Callable
from typing import Final

from ._faults import Faults
from ._model import JobsSimulator
from ._ratelimit import RETRY_AFTER_STYLES
from ._server import SimServer

DESCRIPTION: Final = """\
Serve a simulated Retab jobs API, to try poller, curl or your own code offline.

It prints its URL, the organisations' API keys, how many jobs it made and how to
list them, then answers until Ctrl+C:

  GET  /v1/jobs/ID/status     the job's status (what poller polls)
  GET  /v1/jobs/ID            the full job (?include_request=, ?include_response=)
  GET  /v1/jobs               the caller's jobs, newest first: ?limit= (1-100,
                              default 10), ?after= / ?before= (the list_metadata
                              cursors of the previous answer), ?order=asc, ?status=
  POST /v1/jobs               create a job; POST /v1/jobs/ID/cancel and /retry too

Jobs go validating, queued, in_progress, then completed, failed or cancelled, with
durations drawn per endpoint: in progress for a median of 4 s (classify), 25 s
(extract, parse), 60 s (split) or 10 min (evals). --time-scale multiplies them
all: 0.01 runs 100x faster. Every random choice (job IDs, keys, lifecycles,
faults) follows the seed: a new one each run unless --seed is given, printed at
start so that a run can be repeated.
"""

_SHOWN_JOBS = 3
_SEED_RANGE = 1_000_000

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
    """Declare the simulator's options on ``parser`` (see :data:`DESCRIPTION`)."""
    parser.add_argument(
        "--host", default="127.0.0.1", help="interface to listen on (default %(default)s)"
    )
    parser.add_argument(
        "--port",
        type=_number(int, 0),
        default=8080,
        help="port to listen on; 0 picks a free one (default %(default)s)",
    )
    parser.add_argument(
        "--orgs",
        type=_number(int, 1),
        default=1,
        metavar="N",
        help="organisations, org_1 to org_N, one API key each (default %(default)s)",
    )
    parser.add_argument(
        "--jobs",
        type=_number(int, 0),
        default=100,
        metavar="N",
        help="jobs made at start, dealt over the organisations (default %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        help="seed of every random choice, to repeat a run (default: a new one, printed)",
    )
    parser.add_argument(
        "--time-scale",
        type=_number(float, 0.0, exclusive=True),
        default=1.0,
        metavar="SCALE",
        help="multiplies every job duration: 0.01 runs 100x faster, 10 runs 10x slower "
        "(default %(default)s: real time)",
    )
    parser.add_argument(
        "--rate-limit",
        type=_number(int, 1),
        metavar="PER_S",
        help="requests per second each organisation may make; more get 429 (default: no limit)",
    )
    parser.add_argument(
        "--disclose-rate-limit",
        action="store_true",
        help="send x-ratelimit-limit/-remaining headers and name the limit in 429s "
        "(default: the limit stays hidden, as Retab's)",
    )
    parser.add_argument(
        "--retry-after",
        choices=RETRY_AFTER_STYLES,
        default="seconds",
        help="the Retry-After header of 429s (default %(default)s)",
    )
    parser.add_argument(
        "--timestamps",
        choices=("unix", "iso"),
        default="unix",
        help="unix: integer seconds, as documented; iso: ISO-8601 strings, as some SDKs "
        "(default %(default)s)",
    )
    faults = parser.add_argument_group(
        "faults",
        "each RATE is a share from 0 to 1 (default 0: none): of job GETs that misbehave "
        "this way, or for the unknown-* ones, of jobs made",
    )
    for option, field, description in _FAULT_OPTIONS:
        faults.add_argument(
            option, dest=f"fault_{field}", type=_rate, default=0.0, metavar="RATE", help=description
        )
    faults.add_argument(
        "--slow-delay",
        type=_number(float, 0.0),
        default=2.0,
        metavar="SECONDS",
        help="delay of --fault-slow answers (default %(default)s)",
    )


def build_simulator(args: argparse.Namespace) -> JobsSimulator:
    """The simulator ``args`` describe, with its orgs and jobs; a random seed when
    ``args.seed`` is None. Raises ``ValueError`` for fault rates that sum above 1."""
    faults = Faults(
        slow_delay_s=args.slow_delay,
        **{field: getattr(args, f"fault_{field}") for _, field, _ in _FAULT_OPTIONS},
    )
    seed = args.seed if args.seed is not None else random.randrange(_SEED_RANGE)
    sim = JobsSimulator(
        seed=seed,
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
    """What a person needs to try the server: its URL (first line), seed, keys, jobs, curls."""
    sim, url = server.sim, server.base_url
    lines = [
        f"Retab jobs API simulator listening on {url}",
        f"Seed {sim.seed} (--seed {sim.seed} repeats this run); time scale {sim.time_scale:g}",
        "",
        "Organisations, API keys and jobs:",
    ]
    lines += [
        f"  {org.org_id}  {org.api_keys[0]}  {len(sim.job_ids(org.org_id))} jobs"
        for org in sim.orgs
    ]
    first = sim.orgs[0]
    key = shlex.quote(f"Api-Key: {first.api_keys[0]}")
    job_ids = sim.job_ids(first.org_id)[:_SHOWN_JOBS]
    lines += [
        "",
        f"List {first.org_id}'s jobs, newest first (then ?after=<list_metadata.after>):",
        f"  curl -H {key} '{url}/v1/jobs?limit=100'",
    ]
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
