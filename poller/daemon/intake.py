"""Intake: jobs come in (control API, ``--jobs-from``), are committed, then tracked.

A job is written to the store *before* the engine tracks it and before the caller
hears back, so a job the caller was told about is tracked again after any crash.
Jobs keep the *name* of their credential, never its key: keys live only in the
configuration, and a job whose credential is gone from it is reported at start and
left untracked.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import sys
import threading
from collections.abc import Awaitable, Callable, Container, Iterable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any, Final

import anyio
import msgspec

from .._ids import validate_job_id
from ..engine import Poller
from ..errors import InvalidJobIdError, PollerClosedError
from .rows import Resume
from .store import Store

__all__ = [
    "MAX_JOBS_PER_REQUEST",
    "MAX_METADATA_BYTES",
    "STORE_UNAVAILABLE",
    "AddResult",
    "Intake",
    "IntakeError",
    "check_add",
    "check_credential",
    "read_job_lines",
]

log = logging.getLogger("poller.daemon.intake")

MAX_JOBS_PER_REQUEST: Final = 10_000
MAX_METADATA_BYTES: Final = 16_384
_FILE_BATCH: Final = 1000
STORE_UNAVAILABLE: Final = "store_unavailable"
_RETRY_MIN_S: Final = 0.5
_RETRY_MAX_S: Final = 10.0


class IntakeError(Exception):
    """A request the daemon refuses: ``status`` is the HTTP status, ``code`` a short
    machine-readable reason, ``field`` the offending input when there is one."""

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.field = field


class AddResult(msgspec.Struct, frozen=True, kw_only=True):
    """Jobs added to the list (``added``: new ones, and ones back after a ``DELETE`` or a
    failed tracking) and those in it already (``existing``)."""

    added: list[str]
    existing: list[str]


class Intake:
    """Adds and removes jobs, durably (see the module docstring).

    Args:
        store: the daemon's store.
        engine: the open engine.
        credentials: named API keys (secret).
        default_key: whether the engine has a default key for jobs without a name.
    """

    def __init__(
        self,
        store: Store,
        engine: Poller,
        *,
        credentials: Mapping[str, str],
        default_key: bool,
    ) -> None:
        self._store = store
        self._engine = engine
        self._credentials = dict(credentials)
        self._default_key = default_key
        self.accepting = True

    async def add(
        self,
        job_ids: Sequence[str],
        *,
        credential: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> AddResult:
        """Validate, commit, then track. All or nothing when the input is invalid.

        Raises:
            IntakeError: an invalid ID (400, naming its index), an unknown credential (400),
                too many IDs or too much metadata (413), the daemon is stopping or the
                database cannot be written, its disk full, say (503).
        """
        if not self.accepting:
            raise IntakeError(503, "shutting_down", "the daemon is shutting down")
        encoded = check_add(
            job_ids,
            credential,
            metadata,
            credentials=self._credentials,
            default_key=self._default_key,
        )
        try:
            to_track, existing = await self._store.call(
                self._store.add_jobs, job_ids, credential=credential, metadata=encoded
            )
        except sqlite3.Error as exc:
            raise _store_unavailable(exc) from None
        for job in to_track:
            # A revived job whose tracking failed is still in the engine's table for a
            # while (finished), and track() leaves a job it has alone: drop it first.
            self._engine.untrack(job.job_id)
        try:
            self.track(to_track)
        except PollerClosedError:
            # Committed: tracked by the next run.
            raise IntakeError(503, "shutting_down", "the daemon is shutting down") from None
        known = set(existing)
        added = [job_id for job_id in dict.fromkeys(job_ids) if job_id not in known]
        return AddResult(added=added, existing=existing)

    async def remove(self, job_id: str) -> bool:
        """Stop tracking a job and hide it from listings. False if it was not there.

        Raises:
            IntakeError: the database cannot be written (503).
        """
        try:
            removed = await self._store.call(self._store.remove_job, job_id)
        except sqlite3.Error as exc:
            raise _store_unavailable(exc) from None
        if removed:
            self._engine.untrack(job_id)
        return removed

    def track(self, jobs: Iterable[Resume]) -> int:
        """Hand jobs to the engine, resuming each where it stopped. Jobs whose credential
        is no longer configured are skipped and reported. Returns how many are tracked."""
        tracked = 0
        orphans: dict[str | None, int] = {}
        for job in jobs:
            if job.credential is None and not self._default_key:
                orphans[None] = orphans.get(None, 0) + 1
                continue
            if job.credential is not None and job.credential not in self._credentials:
                orphans[job.credential] = orphans.get(job.credential, 0) + 1
                continue
            key = self._credentials[job.credential] if job.credential is not None else None
            self._engine.track(
                job.job_id, api_key=key, last_status=job.last_status, last_seq=job.seq
            )
            tracked += 1
        for name, count in orphans.items():
            what = f"credential {name!r} is" if name is not None else "no default API key is"
            log.error("%d job(s) not tracked: %s configured", count, what)
        return tracked

    async def read_lines(self, path: str, *, credential: str | None) -> None:
        """Add the job IDs of the file ``path`` (see :func:`read_job_lines`)."""
        await read_job_lines(self.add, path, credential=credential)


def check_credential(name: str | None, credentials: Container[str], *, default_key: bool) -> None:
    """Refuse a credential name that is not configured (or no name without a default key).

    Raises:
        IntakeError: 400, naming the field ``credential``.
    """
    if name is None:
        if not default_key:
            raise IntakeError(
                400,
                "no_default_key",
                "no default API key: name a credential",
                field="credential",
            )
    elif name not in credentials:
        raise IntakeError(
            400, "unknown_credential", f"no credential named {name!r}", field="credential"
        )


def check_add(
    job_ids: Sequence[str],
    credential: str | None,
    metadata: dict[str, Any] | None,
    *,
    credentials: Container[str],
    default_key: bool,
) -> bytes | None:
    """Check an add request; returns the metadata as JSON (None without).

    Raises:
        IntakeError: an invalid ID (400, naming its index), an unknown credential (400),
            too many IDs or too much metadata (413).
    """
    if len(job_ids) > MAX_JOBS_PER_REQUEST:
        raise IntakeError(
            413, "too_many_jobs", f"at most {MAX_JOBS_PER_REQUEST} job IDs per request"
        )
    for index, job_id in enumerate(job_ids):
        try:
            validate_job_id(job_id)
        except InvalidJobIdError as exc:
            raise IntakeError(400, "invalid_job_id", str(exc), field=f"job_ids[{index}]") from None
    check_credential(credential, credentials, default_key=default_key)
    try:
        encoded = msgspec.json.encode(metadata) if metadata is not None else None
    except RecursionError:
        raise IntakeError(400, "invalid_metadata", "metadata is nested too deeply") from None
    if encoded is not None and len(encoded) > MAX_METADATA_BYTES:
        raise IntakeError(
            413, "metadata_too_large", f"metadata is over {MAX_METADATA_BYTES} bytes of JSON"
        )
    return encoded


Add = Callable[..., Awaitable[AddResult]]
"""An intake's ``add(job_ids, *, credential=..., metadata=...)``."""


async def read_job_lines(add: Add, path: str, *, credential: str | None) -> None:
    """Add the job IDs read from the file ``path`` (``-``: standard input) with ``add``,
    one per line (blank lines and ``#`` comments skipped; invalid IDs reported and
    skipped), until its end. While the store cannot be written, a batch is retried."""
    source = "stdin" if path == "-" else path
    lines = _lines_in_background(path)
    number = added = known = 0
    batch: list[str] = []
    while True:
        line = await lines.get()
        if line is not None:
            number += 1
            text = line.strip()
            if text and not text.startswith("#"):
                try:
                    batch.append(validate_job_id(text))
                except InvalidJobIdError as exc:
                    log.warning("%s line %d skipped: %s", source, number, exc)
        # Commit when the reader paused or the batch is full: a pipe fed slowly
        # gets its jobs tracked as they come, a big file in large transactions.
        if batch and (line is None or lines.empty() or len(batch) >= _FILE_BATCH):
            result = await _add_until_committed(add, batch, credential, source)
            added += len(result.added)
            known += len(result.existing)
            batch = []
        if line is None:
            log.info("%s read: %d job(s) added, %d known already", source, added, known)
            return


async def _add_until_committed(
    add: Add, batch: list[str], credential: str | None, source: str
) -> AddResult:
    """``add``, retried while the store cannot be written (a full disk, Redis away)."""
    delay_s = _RETRY_MIN_S
    while True:
        try:
            return await add(batch, credential=credential)
        except IntakeError as exc:
            if exc.code != STORE_UNAVAILABLE:
                raise
        log.warning("%s: %d job(s) not added yet; retrying in %.1f s", source, len(batch), delay_s)
        await anyio.sleep(delay_s)
        delay_s = min(_RETRY_MAX_S, delay_s * 2)


def _store_unavailable(exc: sqlite3.Error) -> IntakeError:
    log.error("cannot commit a change of the jobs: %s", exc)
    return IntakeError(
        503, STORE_UNAVAILABLE, f"the database cannot be written ({exc}); try again later"
    )


def _lines_in_background(path: str) -> asyncio.Queue[str | None]:
    """Lines of the file ``path`` (``-``: standard input) read by a daemon thread; None
    after the last (or when the file cannot be read, which is logged).

    A daemon thread, not a worker thread: a read from a terminal or an idle pipe cannot
    be interrupted, and must not keep the process alive at exit.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=10 * _FILE_BATCH)

    def put(item: str | None) -> bool:
        try:
            asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()
        except BaseException:  # the loop stopped or closed: nobody is listening any more
            return False
        return True

    def read() -> None:
        try:
            with open(path, encoding="utf-8") if path != "-" else nullcontext(sys.stdin) as stream:
                for line in stream:
                    if not put(line):
                        return
        except (OSError, UnicodeDecodeError) as exc:
            log.error("cannot read job IDs from %s: %s", path, exc)
        put(None)

    threading.Thread(target=read, name="poller-jobs-from", daemon=True).start()
    return queue
