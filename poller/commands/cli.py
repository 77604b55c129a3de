"""The ``poller`` command line: ``run``, ``watch``, ``sim``, ``demo``, ``--version``.

``python -m poller`` is the same command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .._version import __version__
from ..daemon import command as run_command
from ..testing import cli as sim_cli
from . import demo
from . import watch as watch_command

__all__ = ["build_parser", "main"]


def _add_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help: str,
    doc: str | None,
) -> argparse.ArgumentParser:
    return commands.add_parser(
        name,
        help=help,
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``poller`` command."""
    parser = argparse.ArgumentParser(
        prog="poller",
        description="Track Retab jobs over one connection pool and report their transitions.",
        epilog="Run 'poller COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"poller {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run_parser = _add_command(
        commands, "run", "the daemon: track jobs as a service", run_command.__doc__
    )
    run_command.add_arguments(run_parser)
    run_parser.set_defaults(handler=run_command.run)
    watch_parser = _add_command(
        commands, "watch", "wait for jobs, with a live progress bar", watch_command.__doc__
    )
    watch_command.add_arguments(watch_parser)
    watch_parser.set_defaults(handler=watch_command.run)
    sim_parser = _add_command(
        commands, "sim", "serve the jobs-API simulator on 127.0.0.1", sim_cli.DESCRIPTION
    )
    sim_cli.add_arguments(sim_parser)
    sim_parser.set_defaults(handler=sim_cli.run)
    demo_parser = _add_command(
        commands,
        "demo",
        "run the engine against the built-in simulator (or track real jobs)",
        demo.__doc__,
    )
    demo.add_arguments(demo_parser)
    demo_parser.set_defaults(handler=demo.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``poller`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        status: int = args.handler(args)
    except KeyboardInterrupt:
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
