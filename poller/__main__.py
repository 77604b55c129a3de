"""``python -m poller``: the ``poller`` command."""

import sys

from .cli import main

sys.exit(main())
