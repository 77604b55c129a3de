"""The ``poller`` command line: the top layer, which only wires the others together.

- ``cli``: ``poller run | watch | sim | demo``, and ``python -m poller``.
- ``watch``, ``watch_view``, ``tally``: ``poller watch`` (the engine, its settings as
  ``poller run`` reads them, and the simulator with ``--sim``).
- ``demo``: ``poller demo``, the engine against the simulator.

Nothing below imports from here.
"""
