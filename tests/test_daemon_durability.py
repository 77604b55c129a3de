"""A real ``poller run`` process: kill -9 at random points loses no transition; SIGTERM
drains within its deadline and exits 0."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import msgspec
import pytest
from aiohttp import web
from anyio.abc import Process

from poller.daemon.records import EventRecord, decode_record
from poller.daemon.store import Store
from poller.testing import Change, JobsSimulator, SimServer

pytestmark = pytest.mark.anyio

KEY = "rt_test_durability"
TERMINAL = {"completed", "failed", "cancelled"}


def make_jobs(sim: JobsSimulator, rng: random.Random, n: int, spread_s: float) -> list[str]:
    """Jobs whose changes are spread over the next ``spread_s`` seconds."""
    job_ids = []
    for _ in range(n):
        started = rng.uniform(0.1, spread_s / 2)
        ended = started + rng.uniform(0.1, spread_s / 2)
        script = [
            Change("queued", 0.0),
            Change("in_progress", started),
            Change(rng.choice(sorted(TERMINAL)), ended),
        ]
        job_ids.append(sim.add_job(org_id="org_k", script=script))
    return job_ids


def environment(base_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RETAB_", "POLLER_"))}
    return {**env, "RETAB_API_KEY": KEY, "RETAB_API_BASE_URL": base_url, **extra}


def command(tmp_path: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "poller",
        "run",
        "--db",
        str(tmp_path / "poller.db"),
        "--jsonl",
        str(tmp_path / "events.jsonl"),
        "--jobs-from",
        str(tmp_path / "ids.txt"),
        "--port",
        "0",
        "--poll-interval-s",
        "0.2",
        "--max-interval-s",
        "0.4",
        "--log-format",
        "json",
        *extra,
    ]


async def start(cmd: list[str], env: dict[str, str], log: Path) -> Process:
    with log.open("ab") as stderr:
        return await anyio.open_process(
            cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr
        )


def read_records(path: Path) -> tuple[list[EventRecord], int]:
    """The records of a JSON-lines file, and how many lines were not records (lines
    cut by a kill, closed with a newline at the next start)."""
    if not path.exists():
        return [], 0
    records, broken = [], 0
    for line in path.read_bytes().splitlines():
        try:
            records.append(decode_record(line))
        except msgspec.DecodeError:
            broken += 1
    return records, broken


def listening(log: Path) -> int:
    """How many daemon runs logged to ``log`` got as far as serving (signals handled)."""
    return log.read_bytes().count(b"control API listening") if log.exists() else 0


def finals(records: list[EventRecord]) -> set[str]:
    return {r.job_id for r in records if r.final}


@pytest.mark.timeout(90)
async def test_sigkill_at_random_points_loses_no_transition(tmp_path: Path) -> None:
    rng = random.Random(20240611)
    sim = JobsSimulator(seed=5)
    sim.add_org("org_k", api_keys=[KEY])
    job_ids = make_jobs(sim, rng, 30, spread_s=6.0)
    (tmp_path / "ids.txt").write_text("\n".join(job_ids) + "\n")
    out = tmp_path / "events.jsonl"
    log = tmp_path / "daemon.log"
    written_while_killed = []
    async with SimServer(sim) as server:
        env = environment(server.base_url)
        cmd = command(tmp_path)
        for _ in range(5):
            before = len(read_records(out)[0])
            process = await start(cmd, env, log)
            await anyio.sleep(rng.uniform(0.7, 1.8))
            process.send_signal(signal.SIGKILL)
            assert await process.wait() == -signal.SIGKILL
            written_while_killed.append(len(read_records(out)[0]) - before)
        started = listening(log)
        process = await start(cmd, env, log)
        with anyio.fail_after(30):
            # The killed runs may have written every final already: wait for this run to
            # be up too, or SIGTERM could land before its handler is installed.
            while (  # noqa: ASYNC110 - another process
                finals(read_records(out)[0]) != set(job_ids) or listening(log) == started
            ):
                await anyio.sleep(0.1)
        process.terminate()
        with anyio.fail_after(10):
            assert await process.wait() == 0

    assert sum(1 for n in written_while_killed if n) >= 1, "no run was killed while working"
    records, broken = read_records(out)
    assert broken <= 5
    by_id: dict[str, set[tuple[str | None, str | None, int]]] = defaultdict(set)
    by_job: dict[str, dict[int, EventRecord]] = defaultdict(dict)
    for record in records:
        by_id[record.id].add((record.previous, record.current, record.seq))
        by_job[record.job_id][record.seq] = record
    # Stable IDs: an ID always stands for the same transition, across every restart.
    assert all(len(variants) == 1 for variants in by_id.values())
    for job_id in job_ids:
        chain = by_job[job_id]
        # Every transition of the chain was delivered: no seq missing, each one following
        # from the one before, and the last one the job's true final status.
        assert sorted(chain) == list(range(1, len(chain) + 1)), job_id
        for seq in range(2, len(chain) + 1):
            assert chain[seq].previous == chain[seq - 1].current, job_id
        assert chain[len(chain)].final
        assert chain[len(chain)].current == sim.status(job_id)
    # Nothing left to do or to deliver.
    store = Store(str(tmp_path / "poller.db"), sinks=["jsonl"])
    try:
        assert store.resumable() == []
        assert store.backlog() == {"jsonl": 0}
    finally:
        store.close()


@pytest.fixture
async def hanging_webhook() -> AsyncIterator[str]:
    """A webhook receiver that never answers."""
    never = anyio.Event()

    async def handle(request: web.Request) -> web.Response:
        await never.wait()
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    await runner.cleanup()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_drains_within_the_deadline_and_exits_0(
    tmp_path: Path, hanging_webhook: str, signum: signal.Signals
) -> None:
    sim = JobsSimulator(seed=6)
    sim.add_org("org_k", api_keys=[KEY])
    job_ids = make_jobs(sim, random.Random(3), 10, spread_s=1.0)
    (tmp_path / "ids.txt").write_text("\n".join(job_ids) + "\n")
    out = tmp_path / "events.jsonl"
    async with SimServer(sim) as server:
        env = environment(server.base_url, POLLER_WEBHOOK_SECRET="s3cret_0123456789abcdef")
        cmd = command(
            tmp_path,
            "--webhook",
            hanging_webhook,
            "--webhook-timeout-s",
            "30",
            "--shutdown-timeout-s",
            "1",
        )
        process = await start(cmd, env, tmp_path / "daemon.log")
        with anyio.fail_after(20):
            while finals(read_records(out)[0]) != set(job_ids):  # noqa: ASYNC110 - another process
                await anyio.sleep(0.1)
        signalled = time.monotonic()
        process.send_signal(signum)
        with anyio.fail_after(10):
            assert await process.wait() == 0
        assert time.monotonic() - signalled < 1 + 4  # the deadline, and the interpreter's exit

    log = (tmp_path / "daemon.log").read_text()
    lines = [msgspec.json.decode(line) for line in log.splitlines() if line.startswith("{")]
    messages = [line["message"] for line in lines]
    assert f"received {signum.name}" in messages
    assert any(m.startswith("stopping") for m in messages)
    assert messages[-1] == "stopped"
    assert "s3cret" not in log and KEY not in log
    # The JSON-lines sink was flushed; the webhook's backlog waits in the outbox.
    db = sqlite3.connect(tmp_path / "poller.db")
    try:
        backlog = dict(db.execute("SELECT sink, count(*) FROM deliveries GROUP BY sink"))
        committed = {row[0] for row in db.execute("SELECT id FROM events")}
    finally:
        db.close()
    assert "jsonl" not in backlog
    assert sum(backlog.values()) == len(committed) > 0
    assert {r.id for r in read_records(out)[0]} == committed
