"""Disk and database faults, injected: a full disk under the database or a sink is
reported by /healthz, answered with a JSON 503, survived, and loses nothing."""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import msgspec
import pytest
from aiohttp import web
from test_daemon_api import eventually, get_json, settings_for

from poller.daemon import run as run_module
from poller.daemon.config import load_settings
from poller.daemon.records import decode_record
from poller.daemon.run import running, serve
from poller.daemon.store import Store
from poller.testing import Change, Faults, SimServer

pytestmark = pytest.mark.anyio

DISK_FULL = "database or disk is full"
# Slow enough to be added before its first change, quick enough for a test.
SLOW = [Change("queued", 0.0), Change("in_progress", 0.4), Change("completed", 0.8)]


class FullDiskConnection:
    """A sqlite3 connection on a disk that fills up while ``full`` is set: a COMMIT (the
    WAL's frames are written then) and a checkpoint fail as SQLite fails on ENOSPC."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.full = False

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if self.full and (sql == "COMMIT" or sql.startswith("PRAGMA wal_checkpoint")):
            raise sqlite3.OperationalError(DISK_FULL)
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


class Disk:
    """Every store the daemon opens, on a disk the test fills and empties."""

    def __init__(self) -> None:
        self.connections: list[FullDiskConnection] = []
        self.full = False  # for the stores opened from now on

    def fill(self, full: bool = True) -> None:
        self.full = full
        for connection in self.connections:
            connection.full = full


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> Disk:
    disk = Disk()

    class FullDiskStore(Store):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            connection = FullDiskConnection(self._db)
            connection.full = disk.full
            self._db = connection  # type: ignore[assignment]
            disk.connections.append(connection)

    monkeypatch.setattr(run_module, "Store", FullDiskStore)
    return disk


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def backlog_grows(http: aiohttp.ClientSession, url: str) -> None:
    """Once the daemon's /healthz counts uncommitted events."""

    async def uncommitted() -> bool:
        _, health = await get_json(http, f"{url}/healthz")
        return bool(health["backlog"]["uncommitted"])

    await eventually(uncommitted)


def reasons(health: dict[str, Any], component: str) -> list[dict[str, Any]]:
    return [r for r in health["reasons"] if r["component"] == component]


def records(path: Path) -> list[Any]:
    return [decode_record(line) for line in path.read_bytes().splitlines()]


def test_a_failed_commit_is_rolled_back_and_the_next_write_works(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "poller.db"))
    connection = FullDiskConnection(store._db)
    store._db = connection  # type: ignore[assignment]
    try:
        connection.full = True
        with pytest.raises(sqlite3.OperationalError, match=DISK_FULL):
            store.add_jobs(["job_a"], credential=None, metadata=None)
        assert store.write_error == DISK_FULL
        connection.full = False
        # The open transaction was rolled back: a new one can begin, and job_a is new.
        assert [r.job_id for r in store.add_jobs(["job_a"], credential=None, metadata=None)[0]]
        assert store.write_error is None
    finally:
        store.close()


async def test_database_disk_full_is_degraded_and_post_jobs_gets_a_json_503(
    retab_sim: SimServer, tmp_path: Path, disk: Disk, http: aiohttp.ClientSession
) -> None:
    job = retab_sim.sim.add_job(org_id="org_test", script=SLOW)
    async with running(settings_for(retab_sim, tmp_path)) as url:
        status, health = await get_json(http, f"{url}/healthz")
        assert (status, health["status"], health["reasons"]) == (200, "ok", [])
        async with http.post(f"{url}/jobs", json={"job_id": job}) as response:
            assert response.status == 201
        disk.fill()
        await backlog_grows(http, url)
        status, health = await get_json(http, f"{url}/healthz")
        assert status == 200 and health["status"] == "degraded"
        (store,) = reasons(health, "store")
        assert store["reason"] == "write_failing" and DISK_FULL in store["message"]
        assert store["backlog"] == health["backlog"]["uncommitted"] >= 1
        async with http.post(f"{url}/jobs", json={"job_id": "job_other"}) as response:
            assert response.status == 503
            assert response.content_type == "application/json"
            error = (await response.json())["error"]
        assert error["code"] == "store_unavailable" and DISK_FULL in error["message"]
        disk.fill(False)

        async def recovered() -> bool:
            _, health = await get_json(http, f"{url}/healthz")
            _, row = await get_json(http, f"{url}/jobs/{job}")
            return health["status"] == "ok" and row["status"] == "completed"

        await eventually(recovered)
    assert records(tmp_path / "events.jsonl")[-1].current == "completed"


async def test_a_full_disk_under_the_jsonl_file_is_degraded_until_space_frees(
    retab_sim: SimServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    http: aiohttp.ClientSession,
) -> None:
    out = tmp_path / "events.jsonl"
    out.touch()
    inode = out.stat().st_ino
    real_write = os.write
    full = True

    def write(fd: int, data: Any) -> int:
        if full and os.fstat(fd).st_ino == inode:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    async with running(settings_for(retab_sim, tmp_path)) as url:
        # Made once the daemon listens, and queued long enough for its first poll to see
        # it queued however slowly the daemon started.
        job = retab_sim.sim.add_job(
            org_id="org_test", script=[Change("queued", 0.0), Change("completed", 1.0)]
        )
        async with http.post(f"{url}/jobs", json={"job_id": job}) as response:
            assert response.status == 201

        async def stuck() -> bool:
            _, health = await get_json(http, f"{url}/healthz")
            return bool(reasons(health, "sink:jsonl"))

        await eventually(stuck)
        status, health = await get_json(http, f"{url}/healthz")
        assert status == 200 and health["status"] == "degraded"
        (sink,) = reasons(health, "sink:jsonl")
        assert sink["reason"] == "delivery_failing"
        assert sink["message"] == "write failed: No space left on device"
        assert sink["backlog"] == health["backlog"]["undelivered"]["jsonl"] >= 1
        assert str(tmp_path) not in msgspec.json.encode(health).decode()  # no path shown
        full = False

        async def recovered() -> bool:
            _, health = await get_json(http, f"{url}/healthz")
            written = [r.current for r in records(out)]
            healthy = health["status"] == "ok" and health["backlog"]["undelivered"] == {"jsonl": 0}
            return healthy and written[-1:] == ["completed"]

        await eventually(recovered)
    assert [r.current for r in records(out)] == ["queued", "completed"]


@pytest.fixture
def daemon_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.INFO, logger="poller"):
        yield caplog


async def test_disk_full_at_the_stop_ends_with_one_line_and_loses_nothing(
    retab_sim: SimServer,
    tmp_path: Path,
    disk: Disk,
    http: aiohttp.ClientSession,
    daemon_log: pytest.LogCaptureFixture,
) -> None:
    job = retab_sim.sim.add_job(org_id="org_test", script=SLOW)
    settings = settings_for(retab_sim, tmp_path, shutdown_timeout_s="0.5")
    stop = anyio.Event()
    urls: list[str] = []
    statuses: list[int] = []

    async def daemon() -> None:
        statuses.append(await serve(settings, stop, on_ready=urls.append))

    async with anyio.create_task_group() as group:
        group.start_soon(daemon)
        with anyio.fail_after(10):
            while not urls:  # noqa: ASYNC110 - waits for on_ready
                await anyio.sleep(0.01)
        async with http.post(f"{urls[0]}/jobs", json={"job_id": job}) as response:
            assert response.status == 201
        disk.fill()
        await backlog_grows(http, urls[0])
        stop.set()
    assert statuses == [1]
    failed = [r for r in daemon_log.records if "cannot checkpoint" in r.getMessage()]
    assert len(failed) == 1 and DISK_FULL in failed[0].getMessage()
    assert [r for r in daemon_log.records if r.exc_info] == []  # no traceback anywhere
    assert "stopped" not in [r.getMessage() for r in daemon_log.records]
    # The next start observes again what could not be committed: nothing is lost.
    disk.fill(False)
    async with running(settings) as url:

        async def completed() -> bool:
            _, row = await get_json(http, f"{url}/jobs/{job}")
            return bool(row["status"] == "completed")

        await eventually(completed)
    mine = [r for r in records(tmp_path / "events.jsonl") if r.job_id == job]
    assert mine[-1].current == "completed" and mine[-1].final
    assert [r.seq for r in mine] == list(range(1, len(mine) + 1))


async def test_jobs_from_a_file_wait_for_the_database_to_take_them(
    retab_sim: SimServer,
    tmp_path: Path,
    disk: Disk,
    http: aiohttp.ClientSession,
    daemon_log: pytest.LogCaptureFixture,
) -> None:
    jobs = [retab_sim.sim.add_job(org_id="org_test", script=SLOW) for _ in range(3)]
    (tmp_path / "ids.txt").write_text("\n".join(jobs) + "\n")
    disk.fill()  # from the start
    async with running(
        settings_for(retab_sim, tmp_path, jobs_from=str(tmp_path / "ids.txt"))
    ) as url:
        with anyio.fail_after(10):
            while "not added yet; retrying" not in daemon_log.text:  # noqa: ASYNC110
                await anyio.sleep(0.02)
        disk.fill(False)

        async def all_completed() -> bool:
            _, listing = await get_json(http, f"{url}/jobs?status=completed")
            return len(listing["jobs"]) == len(jobs)

        await eventually(all_completed)


async def test_a_failing_webhook_is_degraded_without_showing_its_url(
    retab_sim: SimServer, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=503)

    app = web.Application()
    app.router.add_post("/hook", refuse)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    hook = f"http://127.0.0.1:{runner.addresses[0][1]}/hook?token=hook-token-in-url"
    secret = "a webhook secret of 16+ characters"
    env = {
        "RETAB_API_KEY": "rt_test_key",
        "RETAB_API_BASE_URL": retab_sim.base_url,
        "POLLER_WEBHOOK_SECRET": secret,
    }
    flags = {
        "db": str(tmp_path / "poller.db"),
        "port": "0",
        "webhooks": [hook],
        "webhook_backoff_s": "0.01",
        "webhook_backoff_max_s": "0.05",
        "webhook_max_attempts": "1000",
        "poll_interval_s": "0.1",
        "shutdown_timeout_s": "0.5",
    }
    settings = load_settings(flags, env)
    job = retab_sim.sim.add_job(org_id="org_test", script=[Change("queued", 0.0)])
    try:
        async with running(settings) as url:
            async with http.post(f"{url}/jobs", json={"job_id": job}) as response:
                assert response.status == 201

            async def failing() -> bool:
                _, health = await get_json(http, f"{url}/healthz")
                return any(r["component"].startswith("sink:webhook:") for r in health["reasons"])

            await eventually(failing)
            async with http.get(f"{url}/healthz") as response:
                text = await response.text()
    finally:
        await runner.cleanup()
    health = msgspec.json.decode(text)
    (reason,) = [r for r in health["reasons"] if r["component"].startswith("sink:webhook:")]
    assert reason["message"] == "delivery failed: HTTP 503" and reason["backlog"] >= 1
    assert "hook-token-in-url" not in text and "127.0.0.1" not in text and secret not in text


async def test_an_api_that_stops_answering_makes_healthz_degraded_and_shows_in_metrics(
    retab_sim: SimServer, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    jobs = [retab_sim.sim.add_job(org_id="org_test", script=[Change("queued", 0.0)])]
    jobs += [retab_sim.sim.add_job(org_id="org_test", script=SLOW) for _ in range(3)]
    async with running(settings_for(retab_sim, tmp_path)) as url:
        async with http.post(f"{url}/jobs", json={"job_ids": jobs}) as response:
            assert response.status == 201

        async def seen() -> bool:
            _, row = await get_json(http, f"{url}/jobs/{jobs[0]}")
            return row["status"] == "queued"

        await eventually(seen)  # its organisation is known
        retab_sim.sim.faults = Faults(server_error=1.0)

        async def api_down() -> bool:
            _, health = await get_json(http, f"{url}/healthz")
            return any(r["component"] == "api" for r in health["reasons"])

        await eventually(api_down)
        status, health = await get_json(http, f"{url}/healthz")
        assert status == 200 and health["status"] == "degraded"
        (api,) = reasons(health, "api")
        assert api["reason"] == "unreachable" and "ServerError x" in api["message"]
        async with http.get(f"{url}/metrics") as response:
            text = await response.text()
        assert 'poller_api_health{state="down"} 1.0' in text
        assert 'poller_org_health{org="org_test",state="down"} 1.0' in text
        retab_sim.sim.faults = Faults()

        async def recovered() -> bool:
            _, health = await get_json(http, f"{url}/healthz")
            return health["status"] == "ok"

        await eventually(recovered, timeout_s=15.0)
        for job in jobs[1:]:
            _, row = await get_json(http, f"{url}/jobs/{job}")
            assert row["status"] != "error", "the outage ended no job"
