"""The ``poller`` daemon: ``poller run``.

Modules, in the order data flows through them:

- ``options``, ``config``: settings from flags > environment > TOML file > defaults.
- ``intake``: jobs in (control API, ``--jobs-from``), committed, then tracked.
- ``outbox``: engine events committed in order; a bell rung after each commit.
- ``store``, ``rows``: SQLite (WAL): jobs, the outbox/history, per-sink deliveries.
- ``records``: the JSON record of an event, with its stable ID.
- ``sinks``, ``webhook``, ``signature``, ``sse``: JSON lines, signed webhooks (their
  Standard Webhooks signature), ``GET /events``.
- ``api``, ``health``, ``metrics``: the control API, ``/healthz`` and ``/metrics``.
- ``run``, ``wiring``, ``command``: the daemon wired together (``wiring``: what both
  modes build alike), and its command line.
- ``cluster``: cluster mode (``--redis URL``): the job set, leases, commits and sinks
  in Redis, shared by replicas (imported only in that mode: redis-py is an extra).
- ``logs``: human or JSON log lines, secrets masked.
"""

from .config import Secret, Settings, load_settings
from .records import EventRecord, decode_record
from .run import serve

__all__ = ["EventRecord", "Secret", "Settings", "decode_record", "load_settings", "serve"]
