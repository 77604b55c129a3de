"""The outbox writer and the file sink, in isolation."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from poller.daemon.outbox import Changes, Outbox
from poller.daemon.sinks import AppendFile

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
