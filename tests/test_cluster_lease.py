"""The pure part of membership: when a lease is trusted, and rendezvous hashing."""

from __future__ import annotations

from collections import Counter

import pytest

from poller.daemon.cluster.keys import SLOTS, slot_of, slot_unit, unit_slot
from poller.daemon.cluster.lease import Lease, assign, owner_of

UNITS = [slot_unit(slot) for slot in range(SLOTS)]


def test_a_lease_is_trusted_until_the_margin_before_its_earliest_expiry() -> None:
    lease = Lease(ttl_s=5.0, margin_s=1.5)
    assert not lease.valid(0.0)
    lease.registered(7, sent_at=100.0)
    assert lease.token == 7
    assert lease.valid(103.49) and not lease.valid(103.5)
    lease.renewed(sent_at=101.0)
    assert lease.valid(104.49) and not lease.valid(104.5)
    # A late reply to an older renewal never shortens it.
    lease.renewed(sent_at=100.5)
    assert lease.valid(104.49)
    lease.lost()
    assert lease.token is None and not lease.valid(101.0)


def test_the_margin_must_fit_in_the_ttl() -> None:
    with pytest.raises(ValueError):
        Lease(ttl_s=1.0, margin_s=1.0)
    with pytest.raises(ValueError):
        Lease(ttl_s=1.0, margin_s=0.0)


def test_rendezvous_gives_every_unit_one_owner_and_spreads_them() -> None:
    replicas = ("a", "b", "c")
    shares = [assign(UNITS, replicas, me) for me in replicas]
    assert set.union(*shares) == set(UNITS)
    assert sum(len(share) for share in shares) == len(UNITS)
    assert all(len(share) > SLOTS / 3 * 0.7 for share in shares)
    # The same answer whatever order the live set is given in.
    assert assign(UNITS, ("c", "a", "b"), "a") == shares[0]
    assert owner_of("slot:1", ()) is None


def test_a_join_moves_units_only_to_the_newcomer_and_a_leave_only_from_the_leaver() -> None:
    before = {unit: owner_of(unit, ("a", "b", "c")) for unit in UNITS}
    joined = {unit: owner_of(unit, ("a", "b", "c", "d")) for unit in UNITS}
    moved = [unit for unit in UNITS if before[unit] != joined[unit]]
    assert moved and all(joined[unit] == "d" for unit in moved)
    assert len(moved) < SLOTS / 4 * 1.4
    left = {unit: owner_of(unit, ("a", "c")) for unit in UNITS}
    assert all(left[u] == before[u] for u in UNITS if before[u] != "b")


def test_partitions_of_jobs_are_stable_and_even() -> None:
    assert slot_of("job_abc") == slot_of("job_abc") < SLOTS
    counts = Counter(slot_of(f"job_{i:08d}") for i in range(25_600))
    assert len(counts) == SLOTS and max(counts.values()) < 150
    assert unit_slot(slot_unit(17)) == 17 and unit_slot("sink:jsonl") is None
