"""``GET /healthz``: whether the daemon can do its work and, if not, why.

The body (JSON)::

    {
      "status": "degraded",
      "uptime_s": 812.4,
      "tracked": 2950,
      "backlog": {"uncommitted": 1144, "undelivered": {"jsonl": 1090, "webhook:3f2a9c1b7d4e": 0}},
      "reasons": [
        {"component": "store", "reason": "write_failing",
         "message": "the database cannot be written: database or disk is full", "backlog": 1144},
        {"component": "sink:jsonl", "reason": "delivery_failing",
         "message": "write failed: No space left on device", "backlog": 1090}
      ]
    }

``status`` is ``ok`` (no reason), ``degraded`` (one reason or more: the daemon runs,
but something it observes cannot be committed or delivered right now) or ``stopping``
(shutting down). The HTTP status is 200 for ``ok`` and ``degraded``, 503 for
``stopping``. ``backlog.uncommitted`` counts events observed but not committed yet;
``backlog.undelivered`` the committed events each push sink has not delivered (None if
the database did not answer in time).

In cluster mode (``--redis``) the body also has ``cluster``: the replica's ID, whether
Redis answers, its lease, the live replicas, and the partitions, jobs and sinks it
holds (:class:`ClusterHealth`).

Each entry of ``reasons`` names a ``component`` (``store``, ``sink:<name>``, ``api``,
``org:<id>``, ``redis``, ``lease``), a
machine-readable ``reason``, a ``message`` for people (no path, URL or secret: the
endpoint is open without the control token) and, when the component knows it, the
``backlog`` it holds up. Components report through *health checks*, plain callables
that return their current reasons; :func:`collect` gathers them, so a new reason is a
new check. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Final, Literal

import msgspec

from .._health_log import describe_errors
from ..events import HealthStats, Stats

__all__ = [
    "DEGRADED",
    "OK",
    "STOPPING",
    "Backlog",
    "ClusterHealth",
    "Health",
    "HealthCheck",
    "Reason",
    "api_reasons",
    "collect",
    "http_status",
    "report",
    "sink_reasons",
    "store_reasons",
]

OK: Final = "ok"
DEGRADED: Final = "degraded"
STOPPING: Final = "stopping"

Status = Literal["ok", "degraded", "stopping"]


class Reason(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One reason the daemon is degraded.

    Attributes:
        component: what is affected: ``store``, ``sink:<name>``, ...
        reason: machine-readable: ``write_failing``, ``delivery_failing``, ...
        message: for people; never a path, a URL or a secret.
        backlog: events this holds up, when the component knows.
    """

    component: str
    reason: str
    message: str
    backlog: int | None = None


class Backlog(msgspec.Struct, frozen=True, kw_only=True):
    """Events observed, not committed; committed events not delivered, by sink."""

    uncommitted: int
    undelivered: dict[str, int] | None


class ClusterHealth(msgspec.Struct, frozen=True, kw_only=True):
    """A cluster replica's part in ``/healthz`` (cluster mode only).

    Attributes:
        replica: this replica's ID.
        redis: ``ok``, or ``unreachable`` when its last call to Redis failed.
        lease: ``ok`` (registered, renewed), ``fenced`` (it could not renew in time and
            polls nothing until it registers again) or ``registering``.
        replicas: the live replicas it sees, itself included.
        slots: the partitions of the job set it owns.
        jobs: the jobs it polls.
        sinks: the push sinks it delivers for the whole cluster.
    """

    replica: str
    redis: str
    lease: str
    replicas: int
    slots: int
    jobs: int
    sinks: list[str]


class Health(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The ``/healthz`` body (see the module docstring)."""

    status: Status
    uptime_s: float
    tracked: int
    backlog: Backlog
    reasons: list[Reason]
    cluster: ClusterHealth | None = None


HealthCheck = Callable[[], Iterable[Reason]]
"""A component's report: its reasons to be degraded right now (none when healthy)."""


def collect(checks: Iterable[HealthCheck]) -> list[Reason]:
    """Every reason the ``checks`` report, in their order."""
    return [reason for check in checks for reason in check()]


def report(
    *,
    stopping: bool,
    uptime_s: float,
    tracked: int,
    backlog: Backlog,
    reasons: list[Reason],
    cluster: ClusterHealth | None = None,
) -> Health:
    """The body: ``stopping`` wins, then ``degraded`` if there is any reason."""
    status: Status = STOPPING if stopping else DEGRADED if reasons else OK
    return Health(
        status=status,
        uptime_s=round(uptime_s, 3),
        tracked=tracked,
        backlog=backlog,
        reasons=reasons,
        cluster=cluster,
    )


def http_status(health: Health) -> int:
    """200 while the daemon runs (degraded or not), 503 while it stops."""
    return 503 if health.status == STOPPING else 200


def store_reasons(write_error: str | None, *, uncommitted: int) -> list[Reason]:
    """The store's reason: its last write failed (``write_error``), holding up the
    ``uncommitted`` events."""
    if write_error is None:
        return []
    return [
        Reason(
            component="store",
            reason="write_failing",
            message=f"the database cannot be written: {write_error}",
            backlog=uncommitted,
        )
    ]


def sink_reasons(
    name: str, failing: str | None, *, undelivered: Mapping[str, int] | None
) -> list[Reason]:
    """A push sink's reason: its last delivery failed (``failing``) and events wait.

    A sink whose last attempt failed but that has nothing left to deliver holds nothing
    up, and is not a reason (when the backlog is unknown, the failure alone counts).
    """
    backlog = undelivered.get(name) if undelivered is not None else None
    if failing is None or backlog == 0:
        return []
    return [
        Reason(
            component=f"sink:{name}",
            reason="delivery_failing",
            message=failing,
            backlog=backlog,
        )
    ]


def _kinds(health: HealthStats) -> str:
    # Error kinds and counts only: a last error's text may name the API's host.
    return describe_errors(health.recent_errors, health.since)


def api_reasons(stats: Stats) -> list[Reason]:
    """The engine's reasons: the API is unreachable (every request fails), or an
    organisation is down or degraded (its jobs wait, or their requests often fail)."""
    if stats.api.state == "down":
        return [
            Reason(
                component="api",
                reason="unreachable",
                message=f"API unreachable: {_kinds(stats.api)}",
                backlog=stats.tracked,
            )
        ]
    reasons = []
    for org_id, org in sorted(stats.by_org.items()):
        health = org.health
        if health.state == "down":
            message = f"organisation {org_id} is down: {_kinds(health)}"
            reason = "down"
        elif health.state == "degraded":
            message = (
                f"{health.error_share:.0%} of organisation {org_id}'s requests failed in "
                f"the last 10 s: {_kinds(health)}"
            )
            reason = "degraded"
        else:
            continue
        reasons.append(Reason(component=f"org:{org_id}", reason=reason, message=message))
    return reasons
