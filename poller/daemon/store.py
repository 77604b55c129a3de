"""The durable state of the daemon: SQLite in WAL mode (stdlib ``sqlite3``).

Tables:

``jobs``
    One row per job ever added: its credential *name* (never a key), metadata, the
    status sinks were last told (``pending`` before the first sighting, ``error``
    after a tracking failure), the engine status to resume from, the ``seq`` of its
    last event, and the last payload.
``events``
    The outbox and the history: every committed record, in commit order (``rowid``),
    with its stable ``id``. ``GET /events`` replays it; old rows are pruned once
    every sink has them.
``deliveries``
    One row per (push sink, event) not yet delivered, with the attempts so far.
``learned``
    At most one row: the engine's learned job durations (JSON of
    :class:`poller.LearnedDurations`), so a restarted daemon polls well at once.

The invariant that makes ``kill -9`` harmless: an event row, its delivery rows and
the job's new status and ``seq`` are written in **one transaction**
(:meth:`Store.commit`), and no sink sees an event before that transaction commits.
A crash before the commit leaves the job at its previous status and ``seq``, so after
the restart the engine observes the change again, with the same ``seq`` and hence
the same ID; a crash after it leaves delivery rows that are sent on restart.

Every method is synchronous and short. The async shell runs them one at a time in a
worker thread with :meth:`Store.call`, so the event loop never waits on the disk.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, Final, ParamSpec, TypeVar

import anyio
import msgspec

from ..events import Event, Transition
from ..models import Status
from .records import (
    ErrorInfo,
    encode_record,
    error_info,
    failure_record,
    transition_record,
)
from .rows import JobRow, Pending, Resume, StoredEvent

__all__ = ["ERROR", "PENDING", "STATUSES", "TERMINAL", "Store"]

PENDING: Final = "pending"
ERROR: Final = "error"
TERMINAL: Final = frozenset({"completed", "failed", "cancelled", "expired"})
STATUSES: Final = (PENDING, *(s.value for s in Status if s is not Status.UNKNOWN), ERROR)
"""A job's ``status`` in the store: before its first sighting, the API's, after a failure."""
_DONE: Final = (*sorted(TERMINAL), ERROR)
_SCHEMA_VERSION: Final = 1
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    credential TEXT,
    metadata TEXT,
    status TEXT NOT NULL DEFAULT 'pending',
    last_status TEXT,
    seq INTEGER NOT NULL DEFAULT 0,
    organization_id TEXT,
    payload TEXT,
    error TEXT,
    removed INTEGER NOT NULL DEFAULT 0,
    added_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, job_id);
CREATE TABLE IF NOT EXISTS events (
    rowid INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    job_id TEXT NOT NULL,
    type TEXT NOT NULL,
    body BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    sink TEXT NOT NULL,
    event INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (sink, event)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_by_event ON deliveries (event);
CREATE INDEX IF NOT EXISTS events_by_time ON events (created_at);
CREATE TABLE IF NOT EXISTS learned (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    body BLOB NOT NULL,
    saved_at REAL NOT NULL
);
"""
_JOB_COLUMNS: Final = (
    "job_id, credential, metadata, status, seq, organization_id, error, removed, "
    "added_at, updated_at"
)
_ERROR_DECODER: Final = msgspec.json.Decoder(ErrorInfo)

P = ParamSpec("P")
T = TypeVar("T")


class Store:
    """The daemon's SQLite database (see the module docstring).

    Args:
        path: the database file (created if missing, with mode 0600, as its ``-wal``
            and ``-shm`` files).
        sinks: names of the push sinks; each committed event gets a delivery row for each.
        sync: ``"full"`` (fsync at every commit: safe against power loss) or ``"normal"``
            (safe against a process crash; faster).
        clock: Unix time.

    Raises ``sqlite3.Error`` if the file cannot be opened as a database.
    """

    def __init__(
        self,
        path: str,
        *,
        sinks: Sequence[str] = (),
        sync: str = "full",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.sinks = tuple(sinks)
        self._clock = clock
        self._limiter = anyio.CapacityLimiter(1)
        self.write_error: str | None = None
        """Why the last write transaction failed (``database or disk is full``, ...);
        None once one succeeds."""
        if path != ":memory:":
            # Created 0600 before SQLite opens it: SQLite would make it 0644 (less the
            # umask), and its -wal and -shm files take the database file's mode.
            with suppress(OSError):  # it exists, or SQLite says why it cannot be opened
                os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
        # One connection, used by one thread at a time (the limiter).
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
            self._db.execute("PRAGMA busy_timeout=5000")
            (version,) = self._db.execute("PRAGMA user_version").fetchone()
            if version > _SCHEMA_VERSION:
                raise sqlite3.DatabaseError(
                    f"{path} was written by a newer poller (schema {version})"
                )
            self._db.executescript(_SCHEMA)  # idempotent: CREATE ... IF NOT EXISTS
            self._db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        except BaseException:
            self._db.close()
            raise

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args)`` (a method of this store) in a worker thread, one at a time."""
        return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs), limiter=self._limiter)

    def close(self) -> None:
        """Checkpoint the WAL into the database file and close."""
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; ``write_error`` says whether the last one failed."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                # A COMMIT that fails (a full disk cannot take the WAL's frames) may leave
                # the transaction open: roll it back, or every later BEGIN would fail.
                if self._db.in_transaction:
                    with suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            self.write_error = str(exc)
            raise
        self.write_error = None

    # -- jobs ----------------------------------------------------------------------

    def add_jobs(
        self, job_ids: Iterable[str], *, credential: str | None, metadata: bytes | None
    ) -> tuple[list[Resume], list[str]]:
        """Add jobs, or revive removed or failed ones. Returns the jobs to track (new and
        revived, with where to resume) and the IDs that were in the list already (not
        removed, not failed). A removed job that had finished comes back to the list
        but is not tracked: it is in neither."""
        now = self._clock()
        track: list[Resume] = []
        known: list[str] = []
        meta = metadata.decode() if metadata is not None else None
        with self._transaction() as db:
            for job_id in dict.fromkeys(job_ids):
                row = db.execute(
                    "SELECT status, last_status, seq, removed, credential FROM jobs "
                    "WHERE job_id = ?",
                    (job_id,),
                ).fetchone()
                if row is None:
                    db.execute(
                        "INSERT INTO jobs (job_id, credential, metadata, added_at, updated_at) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (job_id, credential, meta, now, now),
                    )
                    track.append(Resume(job_id, credential, None, 0))
                elif row[3] or row[0] == ERROR:
                    # Revived: a removed job, or one whose tracking failed (a 404 for a job
                    # added before it existed, say). Its seq carries on, so IDs stay unique.
                    status = row[1] if row[1] is not None else PENDING
                    db.execute(
                        "UPDATE jobs SET removed = 0, status = ?, error = NULL, credential = ?, "
                        "metadata = coalesce(?, metadata), updated_at = ? WHERE job_id = ?",
                        (status, credential, meta, now, job_id),
                    )
                    if status not in TERMINAL:
                        track.append(Resume(job_id, credential, row[1], row[2]))
                else:
                    known.append(job_id)
        return track, known

    def remove_job(self, job_id: str) -> bool:
        """Mark a job removed (kept, so its ``seq`` carries on if it is added again).
        False if it is unknown or removed already."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE jobs SET removed = 1, updated_at = ? WHERE job_id = ? AND removed = 0",
                (self._clock(), job_id),
            )
            return cursor.rowcount > 0

    def job(self, job_id: str) -> tuple[JobRow, bytes | None] | None:
        """A job and its last payload (JSON), or None if it was never added."""
        row = self._db.execute(
            f"SELECT {_JOB_COLUMNS}, payload FROM jobs WHERE job_id = ?", (job_id,)
        ).fetchone()
        if row is None:
            return None
        return _job_row(row), row[-1].encode() if row[-1] is not None else None

    def list_jobs(self, *, status: str | None, after: str, limit: int) -> list[JobRow]:
        """Jobs not removed, by ID, after the ID ``after`` (paging), of ``status`` if given."""
        where = "removed = 0 AND job_id > ?" + (" AND status = ?" if status else "")
        params: tuple[object, ...] = (after, status, limit) if status else (after, limit)
        rows = self._db.execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE {where} ORDER BY job_id LIMIT ?", params
        ).fetchall()
        return [_job_row(row) for row in rows]

    def has_status(self, status: str) -> bool:
        """Whether a job in the list has ``status`` (one a newer API may have added)."""
        row = self._db.execute(
            "SELECT 1 FROM jobs WHERE status = ? AND removed = 0 LIMIT 1", (status,)
        ).fetchone()
        return row is not None

    def counts(self) -> dict[str, int]:
        """Jobs not removed, by status."""
        rows = self._db.execute(
            "SELECT status, count(*) FROM jobs WHERE removed = 0 GROUP BY status"
        ).fetchall()
        return {status: n for status, n in rows}

    def resumable(self) -> list[Resume]:
        """Every job still to track: not removed, not terminal, not failed."""
        marks = ", ".join("?" * len(_DONE))
        rows = self._db.execute(
            f"SELECT job_id, credential, last_status, seq FROM jobs "
            f"WHERE removed = 0 AND status NOT IN ({marks}) ORDER BY job_id",
            _DONE,
        ).fetchall()
        return [Resume(*row) for row in rows]

    # -- the outbox ----------------------------------------------------------------

    def commit(self, events: Sequence[Event]) -> int:
        """Record engine events in order, in one transaction: the event rows, a delivery row
        per sink, and each job's new status and ``seq``. Returns how many were new."""
        now = self._clock()
        added = 0
        with self._transaction() as db:
            for event in events:
                row = db.execute(
                    "SELECT credential, metadata, seq, last_status FROM jobs WHERE job_id = ?",
                    (event.job_id,),
                ).fetchone()
                if row is None:
                    continue  # not a job of ours
                credential, metadata, seq, last_status = row[0], _loads(row[1]), row[2], row[3]
                if isinstance(event, Transition):
                    if event.current.value == last_status:
                        continue  # committed already
                    # The seq and previous status come from the committed chain. They are
                    # the engine's own (it resumed from this row), except in one race: a job
                    # removed and added again while an event of its first life was still
                    # on its way here. The chain stays whole and its IDs unique either way.
                    seq += 1
                    record = transition_record(
                        event,
                        seq=seq,
                        previous=last_status,
                        credential=credential,
                        metadata=metadata,
                    )
                    db.execute(
                        "UPDATE jobs SET status = ?, last_status = ?, seq = ?, "
                        "organization_id = ?, payload = ?, error = NULL, updated_at = ? "
                        "WHERE job_id = ?",
                        (
                            event.current.value,
                            event.current.value,
                            seq,
                            event.organization_id,
                            msgspec.json.encode(event.job).decode(),
                            now,
                            event.job_id,
                        ),
                    )
                else:
                    record = failure_record(
                        event, seq=seq + 1, credential=credential, metadata=metadata
                    )
                    db.execute(
                        "UPDATE jobs SET status = ?, seq = ?, error = ?, "
                        "organization_id = coalesce(?, organization_id), updated_at = ? "
                        "WHERE job_id = ?",
                        (
                            ERROR,
                            seq + 1,
                            msgspec.json.encode(error_info(event.error)).decode(),
                            event.organization_id,
                            now,
                            event.job_id,
                        ),
                    )
                cursor = db.execute(
                    "INSERT OR IGNORE INTO events (id, job_id, type, body, created_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (record.id, record.job_id, record.type, encode_record(record), now),
                )
                if cursor.rowcount:
                    added += 1
                    db.executemany(
                        "INSERT OR IGNORE INTO deliveries (sink, event) VALUES (?, ?)",
                        [(sink, cursor.lastrowid) for sink in self.sinks],
                    )
        return added

    def pending(self, sink: str, *, after: int, limit: int) -> list[Pending]:
        """The next events ``sink`` has to deliver, in commit order, after rowid ``after``."""
        rows = self._db.execute(
            "SELECT e.rowid, e.id, e.job_id, e.body, d.attempts FROM deliveries d "
            "JOIN events e ON e.rowid = d.event WHERE d.sink = ? AND d.event > ? "
            "ORDER BY d.event LIMIT ?",
            (sink, after, limit),
        ).fetchall()
        return [Pending(*row) for row in rows]

    def delivered(self, sink: str, rowids: Sequence[int]) -> None:
        """``sink`` delivered (or dead-lettered) these events."""
        with self._transaction() as db:
            db.executemany(
                "DELETE FROM deliveries WHERE sink = ? AND event = ?",
                [(sink, rowid) for rowid in rowids],
            )

    def attempted(self, sink: str, rowid: int, attempts: int) -> None:
        """Record how many delivery attempts of an event failed so far."""
        with self._transaction() as db:
            db.execute(
                "UPDATE deliveries SET attempts = ? WHERE sink = ? AND event = ?",
                (attempts, sink, rowid),
            )

    def orphans(self) -> dict[str, int]:
        """Undelivered events of sinks that are no longer configured, by sink."""
        rows = self._db.execute("SELECT sink, count(*) FROM deliveries GROUP BY sink")
        return {sink: n for sink, n in rows if sink not in self.sinks}

    def backlog(self) -> dict[str, int]:
        """Undelivered events by sink (configured sinks included at zero)."""
        backlog = dict.fromkeys(self.sinks, 0)
        rows = self._db.execute("SELECT sink, count(*) FROM deliveries GROUP BY sink")
        backlog.update({sink: n for sink, n in rows})
        return backlog

    def history(self, *, after: int, limit: int) -> list[StoredEvent]:
        """Committed events after rowid ``after``, in commit order."""
        rows = self._db.execute(
            "SELECT rowid, id, type, body FROM events WHERE rowid > ? ORDER BY rowid LIMIT ?",
            (after, limit),
        ).fetchall()
        return [StoredEvent(*row) for row in rows]

    def position(self, event_id: str | None) -> int | None:
        """The rowid of an event (None: unknown or pruned); with None, the last rowid."""
        if event_id is None:
            row = self._db.execute("SELECT coalesce(max(rowid), 0) FROM events").fetchone()
        else:
            row = self._db.execute("SELECT rowid FROM events WHERE id = ?", (event_id,)).fetchone()
        return row[0] if row is not None else None

    def save_learned(self, body: bytes) -> None:
        """Keep ``body`` (the engine's learned durations, encoded) in place of the last."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO learned (id, body, saved_at) VALUES (1, ?, ?)",
                (body, self._clock()),
            )

    def learned(self) -> bytes | None:
        """What :meth:`save_learned` kept last, or None."""
        row = self._db.execute("SELECT body FROM learned WHERE id = 1").fetchone()
        return bytes(row[0]) if row is not None else None

    def prune(self, *, older_than_s: float) -> int:
        """Forget events older than ``older_than_s`` that no sink still has to deliver."""
        with self._transaction() as db:
            cursor = db.execute(
                "DELETE FROM events WHERE created_at < ? "
                "AND NOT EXISTS (SELECT 1 FROM deliveries WHERE event = events.rowid)",
                (self._clock() - older_than_s,),
            )
            return cursor.rowcount


def _loads(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    value: dict[str, Any] = msgspec.json.decode(text)
    return value


def _job_row(row: Sequence[Any]) -> JobRow:
    return JobRow(
        job_id=row[0],
        credential=row[1],
        metadata=_loads(row[2]),
        status=row[3],
        seq=row[4],
        organization_id=row[5],
        error=_ERROR_DECODER.decode(row[6]) if row[6] is not None else None,
        removed=bool(row[7]),
        added_at=row[8],
        updated_at=row[9],
    )
