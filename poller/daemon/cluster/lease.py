"""The pure decisions of membership: when this replica's lease is to be trusted, and
which replica each unit (partition or sink) belongs to. No I/O, no event loop.

**Self-fencing.** Redis expires a replica's lease ``ttl_s`` after the renewal it last
processed. The replica cannot see that clock, but it knows when it *sent* each
renewal that succeeded: Redis processed it later, so the lease runs at least until
``sent_at + ttl_s`` on any clock that runs at the rate of the replica's monotonic
clock. The replica trusts its lease until ``sent_at + ttl_s - margin_s`` only: past
that, it stops polling every job and stops delivering every sink *before* Redis can
expire the lease and another replica can claim them. ``margin_s`` covers clock-rate
drift and guarantees a pause between the last request of the old holder and the
first of the new one.

**Rendezvous hashing.** Unit ``u`` belongs to the live replica ``r`` with the highest
``hash(r, u)``. Every replica computes the same answer from the same live set, with
no coordination; when a replica joins, it takes about ``1/n`` of the units, each
from one other replica, and when one leaves, its units spread over the others. The
answer is only a wish: a unit is used only once claimed in Redis, from a holder
that released it or whose lease is gone (see :mod:`.scripts`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

__all__ = ["Lease", "assign", "owner_of"]


class Lease:
    """This replica's lease as it can trust it, on its own monotonic clock.

    Args:
        ttl_s: the lease's time to live in Redis.
        margin_s: how long before the earliest possible expiry it stops trusting it.
    """

    def __init__(self, *, ttl_s: float, margin_s: float) -> None:
        if not 0 < margin_s < ttl_s:
            raise ValueError("margin_s must be > 0 and < ttl_s")
        self.ttl_s = ttl_s
        self.margin_s = margin_s
        self.token: int | None = None
        self.valid_until = float("-inf")

    def registered(self, token: int, sent_at: float) -> None:
        """A registration sent at ``sent_at`` succeeded with ``token``."""
        self.token = token
        self.valid_until = sent_at + self.ttl_s - self.margin_s

    def renewed(self, sent_at: float) -> None:
        """A renewal sent at ``sent_at`` succeeded (replies may arrive out of order)."""
        self.valid_until = max(self.valid_until, sent_at + self.ttl_s - self.margin_s)

    def lost(self) -> None:
        """The lease is gone (Redis said so, or it was not renewed in time)."""
        self.token = None
        self.valid_until = float("-inf")

    def valid(self, now: float) -> bool:
        """Whether the replica may act as the holder of its units at ``now``."""
        return self.token is not None and now < self.valid_until

    def remaining_s(self, now: float) -> float:
        """Seconds the lease is still trusted (negative: not)."""
        return self.valid_until - now


def _weight(replica: str, unit: str) -> int:
    digest = hashlib.blake2b(f"{replica}\0{unit}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner_of(unit: str, replicas: Sequence[str]) -> str | None:
    """The replica ``unit`` belongs to among ``replicas`` (None if there is none)."""
    if not replicas:
        return None
    return max(replicas, key=lambda replica: (_weight(replica, unit), replica))


def assign(units: Iterable[str], replicas: Sequence[str], me: str) -> set[str]:
    """The units that belong to ``me`` among ``replicas``."""
    return {unit for unit in units if owner_of(unit, replicas) == me}
