"""The ``poller`` command line: ``poller demo``, ``poller sim``, ``poller --version``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import demo
from ._version import __version__
from .testing import cli as sim_cli

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``poller`` command."""
    parser = argparse.ArgumentParser(
        prog="poller",
        description="Track Retab jobs over one connection pool and report their transitions.",
    )
    parser.add_argument("--version", action="version", version=f"poller {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo_parser = commands.add_parser(
        "demo",
        help="run the engine against the built-in simulator (or track real jobs)",
        description=demo.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_arguments(demo_parser)
    demo_parser.set_defaults(handler=demo.run)
    sim_parser = commands.add_parser(
        "sim",
        help="serve the jobs-API simulator on 127.0.0.1",
        description=sim_cli.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sim_cli.add_arguments(sim_parser)
    sim_parser.set_defaults(handler=sim_cli.run)
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
