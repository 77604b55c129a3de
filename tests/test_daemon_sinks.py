"""The outbox writer and the file sink, in isolation."""

from __future__ import annotations

import errno
import os
import sqlite3
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from poller.daemon.outbox import Changes, Outbox
from poller.daemon.rows import Pending
from poller.daemon.sinks import AppendFile, JsonlSink

pytestmark = pytest.mark.anyio


class FlakyStore:
    """Fails the first ``failures`` commits, then records each batch."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.batches: list[list[Any]] = []

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)

    def commit(self, events: Sequence[Any]) -> int:
        if self.failures:
            self.failures -= 1
            raise sqlite3.OperationalError("disk I/O error")
        self.batches.append(list(events))
        return len(events)


async def test_outbox_keeps_order_through_failed_commits(caplog: pytest.LogCaptureFixture) -> None:
    store = FlakyStore(failures=1)
    changes = Changes()
    outbox = Outbox(store, changes)  # type: ignore[arg-type]
    for n in range(3):
        outbox.offer(n)  # type: ignore[arg-type]
    async with anyio.create_task_group() as group:
        group.start_soon(outbox.run)
        await anyio.lowlevel.checkpoint()
        outbox.offer(3)  # type: ignore[arg-type]
        outbox.close()
    assert [e for batch in store.batches for e in batch] == [0, 1, 2, 3]
    assert outbox.failures == 1 and outbox.committed == 4 and outbox.backlog == 0
    assert changes.version == len(store.batches)
    assert "cannot commit" in caplog.text


async def test_changes_wakes_waiters_and_never_misses_a_ring() -> None:
    changes = Changes()
    seen = changes.version
    changes.ring()
    with anyio.fail_after(1):
        await changes.wait(seen)  # rang before the wait began: returns at once
    woke: list[int] = []

    async def waiter() -> None:
        await changes.wait(changes.version)
        woke.append(changes.version)

    async with anyio.create_task_group() as group:
        group.start_soon(waiter)
        group.start_soon(waiter)
        await anyio.sleep(0.01)
        assert woke == []
        changes.ring()
    assert woke == [2, 2]


async def test_append_file_mends_a_line_cut_by_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"id":"a:1"}\n{"id":"a:')  # killed in the middle of a write
    file = AppendFile(str(path))
    file.open()
    try:
        await file.write(b'{"id":"a:2"}\n')
    finally:
        file.close()
    assert path.read_bytes().splitlines() == [b'{"id":"a:1"}', b'{"id":"a:', b'{"id":"a:2"}']
    fresh = AppendFile(str(tmp_path / "new.jsonl"))
    fresh.open()
    fresh.close()
    assert (tmp_path / "new.jsonl").stat().st_mode & 0o777 == 0o600


class PagesFeed:
    """A feed of fixed pages, recording what the sink acknowledged."""

    def __init__(self, pages: list[list[Pending]]) -> None:
        self.pages = pages
        self.acknowledged: list[int] = []

    async def next_page(self) -> list[Pending]:
        return self.pages.pop(0) if self.pages else []

    async def done(self, rowids: Sequence[int]) -> None:
        self.acknowledged += rowids


def pages_of_events(pages: int, per_page: int) -> list[list[Pending]]:
    rows = [
        Pending(
            n + 1, f"e_{n:04d}:1", f"e_{n:04d}", b'{"id":"e_%04d:1","pad":"%s"}' % (n, b"x" * 70), 0
        )
        for n in range(pages * per_page)
    ]
    return [rows[i : i + per_page] for i in range(0, len(rows), per_page)]


class FillingDisk:
    """``os.write`` as it behaves on a full disk, for one file: the file may hold at most
    ``quota`` bytes, a write gets what fits and the next one fails with ENOSPC. Space
    frees up slowly: each failure makes room for ``step`` more bytes; after ``give_up``
    failures there is room for everything."""

    def __init__(self, path: Path, *, quota: int, step: int, give_up: int) -> None:
        path.touch()
        self.inode = path.stat().st_ino
        self.quota, self.step, self.give_up = quota, step, give_up
        self.failures = 0
        self.real_write = os.write

    def write(self, fd: int, data: Any) -> int:
        status = os.fstat(fd)
        if status.st_ino != self.inode:
            return self.real_write(fd, data)
        room = self.quota - status.st_size
        if room <= 0:
            self.failures += 1
            self.quota += self.step if self.failures < self.give_up else 1 << 30
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.real_write(fd, bytes(data[:room]))


async def test_jsonl_mends_the_line_a_full_disk_cut_and_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "events.jsonl"
    pages = pages_of_events(3, 4)
    expected = [row.body for page in pages for row in page]
    page_bytes = sum(len(row.body) + 1 for row in pages[0])
    disk = FillingDisk(path, quota=page_bytes * 3 // 2, step=60, give_up=100)
    monkeypatch.setattr(os, "write", disk.write)
    feed = PagesFeed(pages)
    sink = JsonlSink(str(path), retry_min_s=0, retry_max_s=0)
    with anyio.fail_after(10):
        await sink.run(feed)  # type: ignore[arg-type]
    # A line reader sees every event on a valid line, once: the cut batch was cut off
    # before each retry, so no record was glued to a fragment and no retry grew the file.
    assert path.read_bytes().splitlines() == expected
    assert feed.acknowledged == list(range(1, len(expected) + 1))
    # It went through as soon as there was room for a whole page, not when the disk
    # emptied: retries did not eat the space as it freed up.
    assert 0 < disk.failures < disk.give_up
    assert sink.errors == disk.failures and "No space left on device" in caplog.text


async def test_a_pipe_gets_a_newline_after_a_cut_write(monkeypatch: pytest.MonkeyPatch) -> None:
    read_end, write_end = os.pipe()
    real_write = os.write
    calls = 0

    def cut_once(fd: int, data: Any) -> int:
        nonlocal calls
        if fd != write_end:
            return real_write(fd, data)
        calls += 1
        if calls == 1:
            return real_write(fd, bytes(data[:7]))
        if calls == 2:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_write(fd, data)

    class Stdout:
        def fileno(self) -> int:
            return write_end

    monkeypatch.setattr(sys, "stdout", Stdout())
    monkeypatch.setattr(os, "write", cut_once)
    lines = b'{"id":"a:1"}\n{"id":"a:2"}\n'
    out = AppendFile("-")
    out.open()
    with pytest.raises(OSError):
        await out.write(lines)
    await out.write(lines)
    out.close()
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        written = pipe.read().splitlines()
    assert written == [b'{"id":"', b'{"id":"a:1"}', b'{"id":"a:2"}']
