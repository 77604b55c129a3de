"""``python -m poller``: the ``poller`` command."""

import sys

from .commands.cli import main

sys.exit(main())
