"""``python -m poller.testing``: serve the jobs-API simulator (same options as ``poller sim``)."""

from __future__ import annotations

import argparse
import sys

from .cli import DESCRIPTION, add_arguments, run


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and serve until interrupted; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m poller.testing",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
