"""The store: one transaction per batch, stable IDs, resume points, deliveries, history."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import anyio
import msgspec
import pytest

from poller import JobNotFoundError, JobStatus, Status, TrackingFailure, Transition
from poller.daemon.records import decode_record, event_id
from poller.daemon.rows import Resume
from poller.daemon.store import Store


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def payload(job_id: str, status: str) -> JobStatus:
    return JobStatus(
        id=job_id,
        status=Status(status),
        endpoint="/v1/documents/extract",  # type: ignore[arg-type]
        created_at=1,
        expires_at=2,
        organization_id="org_a",
    )


def transition(job_id: str, seq: int, previous: str | None, current: str) -> Transition:
    return Transition(
        job_id=job_id,
        organization_id="org_a",
        previous=Status(previous) if previous else None,
        current=Status(current),
        job=payload(job_id, current),
        observed_at=500.0 + seq,
        seq=seq,
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[Store]:
    opened = Store(str(tmp_path / "s.db"), sinks=["jsonl", "webhook:x"], clock=clock)
    yield opened
    opened.close()


def test_wal_mode_and_reopen_keeps_everything(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    first = Store(path, sinks=["jsonl"])
    assert first._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    first.add_jobs(["job_a"], credential="acme", metadata=b'{"k":"v"}')
    first.commit([transition("job_a", 1, None, "queued")])
    first.close()
    second = Store(path, sinks=["jsonl"])
    assert second.resumable() == [Resume("job_a", "acme", "queued", 1)]
    assert [p.id for p in second.pending("jsonl", after=0, limit=10)] == ["job_a:1"]
    second.close()


def test_database_and_its_wal_and_shm_files_are_created_0600(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    umask = os.umask(0o022)  # the usual one: SQLite would make them 0644
    try:
        store = Store(str(path), sinks=["jsonl"])
    finally:
        os.umask(umask)
    try:
        store.add_jobs(["job_a"], credential=None, metadata=None)
        files = [path, tmp_path / "s.db-wal", tmp_path / "s.db-shm"]
        assert {f.name: f.stat().st_mode & 0o777 for f in files} == {f.name: 0o600 for f in files}
    finally:
        store.close()


def test_add_is_idempotent(store: Store) -> None:
    track, known = store.add_jobs(["job_a", "job_b", "job_a"], credential=None, metadata=None)
    assert [r.job_id for r in track] == ["job_a", "job_b"]
    assert known == []
    track, known = store.add_jobs(["job_a", "job_c"], credential=None, metadata=None)
    assert [r.job_id for r in track] == ["job_c"]
    assert known == ["job_a"]


def test_commit_moves_the_resume_point_and_records_one_delivery_per_sink(store: Store) -> None:
    store.add_jobs(["job_a"], credential="acme", metadata=b'{"batch":"7"}')
    added = store.commit(
        [transition("job_a", 1, None, "queued"), transition("job_a", 2, "queued", "in_progress")]
    )
    assert added == 2
    assert store.resumable() == [Resume("job_a", "acme", "in_progress", 2)]
    assert store.backlog() == {"jsonl": 2, "webhook:x": 2}
    pending = store.pending("webhook:x", after=0, limit=10)
    assert [p.id for p in pending] == ["job_a:1", "job_a:2"]
    record = decode_record(pending[1].body)
    assert (record.previous, record.current, record.seq) == ("queued", "in_progress", 2)
    assert record.credential == "acme"
    assert record.metadata == {"batch": "7"}
    assert record.job is not None and record.job.status == "in_progress"


def test_a_transition_seen_again_is_not_recorded_twice(store: Store) -> None:
    store.add_jobs(["job_a"], credential=None, metadata=None)
    assert store.commit([transition("job_a", 1, None, "queued")]) == 1
    assert store.commit([transition("job_a", 1, None, "queued")]) == 0
    assert store.backlog()["jsonl"] == 1


def test_an_event_of_a_removed_jobs_first_life_keeps_the_chain_whole(store: Store) -> None:
    store.add_jobs(["job_a"], credential=None, metadata=None)
    store.commit([transition("job_a", 1, None, "queued")])
    store.remove_job("job_a")
    track, _ = store.add_jobs(["job_a"], credential=None, metadata=None)
    assert track == [Resume("job_a", None, "queued", 1)]
    # The first life's last event lands after the revival read the row...
    store.commit([transition("job_a", 2, "queued", "in_progress")])
    # ...and the second life, resumed at seq 1, reports its own next change as seq 2.
    store.commit([transition("job_a", 2, "queued", "completed")])
    records = [decode_record(p.body) for p in store.pending("jsonl", after=0, limit=10)]
    chain = [(r.id, r.previous, r.current) for r in records]
    assert chain == [
        ("job_a:1", None, "queued"),
        ("job_a:2", "queued", "in_progress"),
        ("job_a:3", "in_progress", "completed"),
    ]
    assert store.resumable() == []


def test_terminal_jobs_are_not_resumed(store: Store) -> None:
    store.add_jobs(["job_a", "job_b"], credential=None, metadata=None)
    store.commit(
        [transition("job_a", 1, None, "completed"), transition("job_b", 1, None, "queued")]
    )
    assert [r.job_id for r in store.resumable()] == ["job_b"]
    assert store.counts() == {"completed": 1, "queued": 1}


def test_failure_takes_the_next_seq_and_ends_tracking(store: Store) -> None:
    store.add_jobs(["job_a"], credential=None, metadata=None)
    store.commit([transition("job_a", 1, None, "queued")])
    failure = TrackingFailure(
        job_id="job_a",
        organization_id="org_a",
        error=JobNotFoundError("gone", job_id="job_a", status=404),
        observed_at=600.0,
    )
    store.commit([failure])
    assert store.resumable() == []
    found = store.job("job_a")
    assert found is not None
    row, last = found
    assert (row.status, row.seq) == ("error", 2)
    assert row.error is not None and row.error.kind == "JobNotFoundError"
    assert row.error.status == 404
    assert last is not None and b'"queued"' in last  # the last payload is kept
    record = decode_record(store.pending("jsonl", after=0, limit=10)[-1].body)
    assert (record.id, record.type, record.final) == (event_id("job_a", 2), "failure", True)


def test_revived_job_carries_on_its_seq(store: Store) -> None:
    store.add_jobs(["job_a"], credential=None, metadata=None)
    store.commit([transition("job_a", 1, None, "queued")])
    assert store.remove_job("job_a")
    assert not store.remove_job("job_a")
    assert store.resumable() == []
    assert store.list_jobs(status=None, after="", limit=10) == []
    track, _ = store.add_jobs(["job_a"], credential=None, metadata=None)
    assert track == [Resume("job_a", None, "queued", 1)]


def test_a_revived_finished_job_is_listed_again_but_not_tracked(store: Store) -> None:
    store.add_jobs(["job_a"], credential=None, metadata=None)
    store.commit([transition("job_a", 1, None, "completed")])
    store.remove_job("job_a")
    assert store.add_jobs(["job_a"], credential=None, metadata=None) == ([], [])
    assert [r.status for r in store.list_jobs(status=None, after="", limit=10)] == ["completed"]
    assert store.has_status("completed") and not store.has_status("paused")


def test_list_pages_by_id_and_filters_by_status(store: Store) -> None:
    ids = [f"job_{n}" for n in range(5)]
    store.add_jobs(ids, credential=None, metadata=None)
    store.commit(
        [transition("job_1", 1, None, "completed"), transition("job_3", 1, None, "completed")]
    )
    page = store.list_jobs(status=None, after="", limit=2)
    assert [r.job_id for r in page] == ["job_0", "job_1"]
    page = store.list_jobs(status=None, after="job_1", limit=2)
    assert [r.job_id for r in page] == ["job_2", "job_3"]
    done = store.list_jobs(status="completed", after="", limit=10)
    assert [r.job_id for r in done] == ["job_1", "job_3"]
    assert [r.job_id for r in store.list_jobs(status="pending", after="", limit=10)] == [
        "job_0",
        "job_2",
        "job_4",
    ]


def test_deliveries_are_per_sink(store: Store) -> None:
    store.add_jobs(["job_a"], credential=None, metadata=None)
    store.commit(
        [transition("job_a", 1, None, "queued"), transition("job_a", 2, "queued", "failed")]
    )
    first, second = store.pending("jsonl", after=0, limit=10)
    store.delivered("jsonl", [first.rowid])
    assert [p.id for p in store.pending("jsonl", after=0, limit=10)] == ["job_a:2"]
    assert len(store.pending("webhook:x", after=0, limit=10)) == 2
    store.attempted("webhook:x", second.rowid, 3)
    assert store.pending("webhook:x", after=first.rowid, limit=10)[0].attempts == 3
    assert store.backlog() == {"jsonl": 1, "webhook:x": 2}


def test_history_positions_and_pruning(store: Store, clock: Clock) -> None:
    store.add_jobs(["job_a"], credential=None, metadata=None)
    store.commit([transition("job_a", 1, None, "queued")])
    clock.now += 100
    store.commit([transition("job_a", 2, "queued", "completed")])
    assert store.position(None) == store.position("job_a:2")
    first = store.position("job_a:1")
    assert first is not None
    assert [e.id for e in store.history(after=first, limit=10)] == ["job_a:2"]
    assert store.position("job_a:99") is None
    # Undelivered events are never pruned, however old.
    assert store.prune(older_than_s=50) == 0
    for sink in store.sinks:
        store.delivered(sink, [p.rowid for p in store.pending(sink, after=0, limit=10)])
    assert store.prune(older_than_s=50) == 1
    assert [e.id for e in store.history(after=0, limit=10)] == ["job_a:2"]


@pytest.mark.anyio
async def test_a_removed_sinks_backlog_moves_to_the_dead_letter_file(tmp_path: Path) -> None:
    from poller.daemon.run import _retire_orphans

    path = str(tmp_path / "s.db")
    before = Store(path, sinks=["jsonl", "webhook:gone"])
    before.add_jobs(["job_a"], credential=None, metadata=None)
    before.commit(
        [transition("job_a", 1, None, "queued"), transition("job_a", 2, "queued", "completed")]
    )
    before.close()

    after = Store(path, sinks=["jsonl"])  # the webhook was taken out of the settings
    assert after.orphans() == {"webhook:gone": 2}
    dead = tmp_path / "dead.jsonl"
    stopped = anyio.Event()
    stopped.set()
    await _retire_orphans(after, str(dead), stopped)  # told to stop: left for next time
    assert after.orphans() == {"webhook:gone": 2} and not dead.exists()
    await _retire_orphans(after, str(dead), anyio.Event())
    assert after.orphans() == {}
    assert after.backlog() == {"jsonl": 2}  # the configured sink keeps its own
    lines = [msgspec.json.decode(line) for line in dead.read_bytes().splitlines()]
    assert [(d["sink"], d["event_id"], d["reason"]) for d in lines] == [
        ("webhook:gone", "job_a:1", "sink no longer configured"),
        ("webhook:gone", "job_a:2", "sink no longer configured"),
    ]
    assert lines[1]["event"]["current"] == "completed"
    await _retire_orphans(after, str(dead), anyio.Event())  # nothing left: file untouched
    assert len(dead.read_bytes().splitlines()) == 2
    after.close()


def test_learned_durations_are_kept_one_at_a_time_across_reopens(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    first = Store(path)
    assert first.learned() is None
    first.save_learned(b'{"first": 1}')
    first.save_learned(b'{"second": 2}')
    first.close()
    second = Store(path)
    assert second.learned() == b'{"second": 2}'
    assert second._db.execute("SELECT count(*) FROM learned").fetchone()[0] == 1
    second.close()
