"""The cluster's Redis key layout, and which partition a job belongs to.

Every key starts with the namespace and a colon (``poller:`` by default), so that
clusters and tests can share one Redis. With ``<p>`` for that prefix:

==============================  ======  ===============================================
key                             type    what it holds
==============================  ======  ===============================================
``<p>meta``                     hash    ``slots``: the partition count, fixed at creation
``<p>fence``                    string  the fencing counter: ``INCR`` at each registration
``<p>replicas``                 zset    live replica IDs, scored by lease expiry (ms)
``<p>replica:<id>``             hash    a replica's lease (``token``, ``since``, ``version``),
                                        expiring with it (``PEXPIRE``)
``<p>slot:<n>``                 hash    partition ``n``'s ``owner``, its ``token`` when it
                                        claimed it, and ``at``: when it was claimed or
                                        released (ms; ``owner`` empty once released)
``<p>slot:<n>:jobs``            zset    the jobs of partition ``n`` still to poll (score 0)
``<p>sink:<name>``              hash    a push sink's holder, as a partition's
``<p>sink:<name>:attempts``     hash    stream entry ID -> failed delivery attempts so far
``<p>sinks``                    hash    sink name -> when a replica last said it has it (ms)
``<p>job:<id>``                 hash    a job: ``credential`` (a name, never a key),
                                        ``metadata``, ``status``, ``last_status``, ``seq``,
                                        ``gen``, ``org``, ``payload``, ``error``, ``removed``,
                                        ``slot``, ``added_at``, ``updated_at``, and
                                        ``e:<seq>``: the stream entry of its event ``seq``
``<p>jobs``                     zset    IDs of the jobs in the list (not removed), score 0
``<p>status:<status>``          zset    the same, by status (``pending``, ..., ``error``)
``<p>statuses``                 set     every status a job of the list has had
``<p>events``                   stream  committed events: ``id``, ``job``, ``type``, ``body``
==============================  ======  ===============================================

Channels: ``<p>intake`` (``+`` or ``-`` and job IDs, one per line: jobs to track or to
drop) and ``<p>members`` (``join``, ``leave``, ``release`` and a replica ID).

Sorted sets with every score 0 are ordered by member, so ``ZRANGEBYLEX`` pages them by
job ID, as the SQLite store's ``ORDER BY job_id``.

A job's partition is ``crc32(job_id) % slots``: stable across versions and machines.
Ownership moves partitions, never single jobs (see the package docstring).
"""

from __future__ import annotations

import zlib
from typing import Final

__all__ = ["SINK_UNIT", "SLOTS", "SLOT_UNIT", "Keys", "slot_of", "slot_unit", "unit_slot"]

SLOTS: Final = 256
"""Partitions of the job set: enough to spread over a few dozen replicas evenly, few
enough that a rebalance claims them all in one script call."""
SLOT_UNIT: Final = "slot:"
SINK_UNIT: Final = "sink:"


def slot_of(job_id: str, slots: int = SLOTS) -> int:
    """The partition of a job."""
    return zlib.crc32(job_id.encode()) % slots


def slot_unit(slot: int) -> str:
    """The unit name (and key suffix) of a partition."""
    return f"{SLOT_UNIT}{slot}"


def unit_slot(unit: str) -> int | None:
    """The partition a unit name stands for, or None for a sink."""
    return int(unit[len(SLOT_UNIT) :]) if unit.startswith(SLOT_UNIT) else None


class Keys:
    """Key names under one namespace (see the module docstring)."""

    def __init__(self, namespace: str) -> None:
        p = f"{namespace}:"
        self.prefix = p
        self.meta = f"{p}meta"
        self.replicas = f"{p}replicas"
        self.jobs = f"{p}jobs"
        self.statuses = f"{p}statuses"
        self.events = f"{p}events"
        self.sinks = f"{p}sinks"
        self.intake_channel = f"{p}intake"
        self.members_channel = f"{p}members"

    def replica(self, replica_id: str) -> str:
        """A replica's lease."""
        return f"{self.prefix}replica:{replica_id}"

    def unit(self, unit: str) -> str:
        """A partition's or a sink's holder."""
        return f"{self.prefix}{unit}"

    def slot_jobs(self, slot: int) -> str:
        """The jobs of a partition still to poll."""
        return f"{self.prefix}slot:{slot}:jobs"

    def job(self, job_id: str) -> str:
        """A job's hash."""
        return f"{self.prefix}job:{job_id}"

    def status(self, status: str) -> str:
        """The jobs of the list with ``status``."""
        return f"{self.prefix}status:{status}"

    def attempts(self, sink: str) -> str:
        """A sink's failed attempts by stream entry."""
        return f"{self.prefix}{SINK_UNIT}{sink}:attempts"
