"""The pure scheduling core: when each job is polled, and what an answer means.

No I/O, no clock, no event loop (as h11's state machine): time arrives as ``now``,
randomness as an injected generator, and the async shell around it (``poller.engine``,
``poller._driver``) only fetches, sleeps and feeds it. Its tests and the virtual-time
benchmarks drive it directly. It imports nothing of the package but the plain data it
reads and emits (``poller.errors``, ``poller.models``, ``poller.events``);
``tests/test_layers.py`` holds it to that.

- ``core``: :class:`~poller.sched.core.Scheduler`, the table of tracked jobs.
- ``queue``: a tracked job, the buckets that hold them, and the fair queue between
  buckets.
- ``learn``: learned durations, and the step they give.
- ``backoff``: :class:`~poller.Backoff`, the geometric intervals.
- ``ratelimit``: :class:`~poller.RateLimit` and the budgets.
- ``health``: the health of the API: breaker, fault or rate signal.
"""
