"""poller run: track jobs as a long-lived service, with a control API and sinks.

Jobs come in through the control API (POST /jobs) or --jobs-from; every status
transition is committed to a SQLite database, then delivered at least once to each
configured sink (--jsonl, --webhook) and to GET /events. Each event has a stable
"id" ("<job_id>:<seq>"): drop repeats by it. After a restart (even kill -9), polling
resumes where it stopped and undelivered events are sent.

Settings come from flags, then the environment (POLLER_<SETTING>, RETAB_API_KEY,
RETAB_API_BASE_URL), then the TOML file of --config, then the defaults. Secrets have
no flag: RETAB_API_KEY, POLLER_CONTROL_TOKEN, POLLER_WEBHOOK_SECRET, named
credentials as POLLER_CREDENTIAL_<NAME> (or api_key, control_token, webhook_secret
and a [credentials] table in the file). The control token must be 16 characters or
more; the webhook secret too, or whsec_ and base64 (a Standard Webhooks secret).

Webhooks are signed as Standard Webhooks: webhook-id (the event id), webhook-timestamp
and webhook-signature ("v1," and the base64 HMAC-SHA256 of "{id}.{timestamp}.{body}").

Control API (127.0.0.1:8787 by default; a bearer token is required elsewhere):
  POST /jobs {"job_ids": [...], "metadata": {...}, "credential": "name"}
  GET /jobs?status=completed   GET /jobs/ID   DELETE /jobs/ID
  GET /events (server-sent events, Last-Event-ID)   GET /healthz   GET /metrics

GET /healthz: {"status": "ok"}, or "degraded" (HTTP 200) with "reasons" and the
"backlog" when the database cannot be written or a sink fails; 503 while stopping.

SIGTERM or SIGINT: stop intake, finish requests, flush the sinks, exit 0 (1 if the
database cannot be checkpointed, a full disk: nothing committed is lost).

Cluster mode (--redis URL, or POLLER_REDIS_URL): several replicas share the jobs and
the events through Redis instead of the SQLite database; each job is polled by one
live replica, and a replica's jobs are taken over within seconds when it dies. Give
each replica its own --jsonl file; --redis-namespace separates clusters.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Final

import anyio

from ..errors import ConfigError
from .config import OPTIONS, Settings, check_files, load_settings
from .logs import configure_logging
from .run import serve_until_signalled

__all__ = ["add_arguments", "run"]

_REPEATABLE: Final = frozenset({"webhooks"})
_METAVARS: Final = {
    "host": "ADDRESS",
    "db": "FILE",
    "jobs_from": "FILE",
    "jobs_credential": "NAME",
    "jsonl": "FILE",
    "webhooks": "URL",
    "dead_letter": "FILE",
    "base_url": "URL",
    "auth_scheme": "SCHEME",
    "store_sync": "MODE",
    "log_format": "FORMAT",
    "log_level": "LEVEL",
    "rate_limit_per_s": "RATE",
    "redis_url": "URL",
    "redis_namespace": "NAME",
    "replica_id": "NAME",
}


def _metavar(name: str) -> str:
    if name in _METAVARS:
        return _METAVARS[name]
    return "SECONDS" if name.endswith("_s") else "N"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``poller run``'s options (one per setting that may be given as a flag)."""
    parser.add_argument(
        "--config", metavar="FILE", help="TOML file of settings (env POLLER_CONFIG)"
    )
    defaults = Settings()
    for option in OPTIONS:
        if option.flag is None:
            continue
        default = getattr(defaults, option.name, None)
        shown = f"; default {default}" if default not in (None, ()) else ""
        parser.add_argument(
            option.flag,
            dest=option.name,
            metavar=_metavar(option.name),
            action="append" if option.name in _REPEATABLE else "store",
            help=f"{option.help} (env {option.env}{shown})",
        )


def run(args: argparse.Namespace) -> int:
    """Load the settings, set up logging and serve until signalled; the exit status
    (0 after a graceful stop, 1 if the daemon could not start, 2 for bad settings)."""
    flags = {option.name: getattr(args, option.name, None) for option in OPTIONS}
    try:
        settings = load_settings(flags, os.environ, args.config)
        check_files(settings)
    except ConfigError as exc:
        print(f"poller run: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(fmt=settings.log_format, level=settings.log_level, secrets=settings.secrets())
    status: int = anyio.run(serve_until_signalled, settings)
    return status
