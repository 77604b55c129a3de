"""The simulator over real HTTP (aiohttp client to a loopback server), the plugin and the CLI."""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import orjson
import pytest
import yarl
from multidict import CIMultiDict

from poller.models import Job, JobStatus
from poller.testing import Change, Faults, JobsSimulator, SimServer
from poller.testing.cli import add_arguments, build_simulator

pytest_plugins = ["poller.testing.pytest_plugin"]

pytestmark = pytest.mark.anyio

KEY = {"Api-Key": "rt_test_a"}
# Tiny real-time durations: the whole lifecycle takes 0.15 s.
QUICK = [
    Change("validating", 0.0),
    Change("queued", 0.03),
    Change("in_progress", 0.06),
    Change("completed", 0.15),
]


@pytest.fixture
def sim() -> JobsSimulator:
    sim = JobsSimulator(seed=2)
    sim.add_org("org_a", api_keys=["rt_test_a"], access_tokens=["tok_a"])
    sim.add_org("org_b", api_keys=["rt_test_b"])
    return sim


@pytest.fixture
async def server(sim: JobsSimulator) -> AsyncIterator[SimServer]:
    async with SimServer(sim) as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def fetch(
    session: aiohttp.ClientSession, url: str | yarl.URL, headers: dict[str, str] | None = None
) -> tuple[int, CIMultiDict[str], bytes]:
    async with session.get(url, headers=KEY if headers is None else headers) as response:
        return response.status, response.headers.copy(), await response.read()


async def test_serves_on_an_ephemeral_loopback_port(server: SimServer) -> None:
    assert server.host == "127.0.0.1" and server.port > 0
    assert server.base_url == f"http://127.0.0.1:{server.port}"


async def test_port_is_unknown_before_start() -> None:
    with pytest.raises(RuntimeError):
        _ = SimServer().port


async def test_a_scripted_job_completes_on_time(
    server: SimServer, session: aiohttp.ClientSession
) -> None:
    job_id = server.sim.add_job(org_id="org_a", script=QUICK)
    seen: list[str] = []
    while not seen or seen[-1] != "completed":
        status, headers, body = await fetch(session, f"{server.base_url}/v1/jobs/{job_id}/status")
        assert status == 200 and re.fullmatch(r"req_\d+", headers["x-request-id"])
        decoded = msgspec.json.decode(body, type=JobStatus)
        if not seen or seen[-1] != decoded.status:
            seen.append(decoded.status)
        await asyncio.sleep(0.01)
    assert seen == ["validating", "queued", "in_progress", "completed"]
    changes = server.sim.changes(job_id)
    assert [c.status for c in changes] == seen
    assert changes[-1].at - changes[0].at == pytest.approx(0.15)


@pytest.mark.parametrize(
    ("headers", "query"),
    [(KEY, ""), ({"Authorization": "Bearer rt_test_a"}, ""), ({}, "?access_token=tok_a")],
)
async def test_auth_styles_over_http(
    server: SimServer, session: aiohttp.ClientSession, headers: dict[str, str], query: str
) -> None:
    job_id = server.sim.add_job(org_id="org_a")
    url = f"{server.base_url}/v1/jobs/{job_id}{query}"
    status, _, body = await fetch(session, url, headers)
    assert status == 200 and msgspec.json.decode(body, type=Job).id == job_id


async def test_401_and_404_over_http(server: SimServer, session: aiohttp.ClientSession) -> None:
    job_id = server.sim.add_job(org_id="org_a")
    url = f"{server.base_url}/v1/jobs/{job_id}/status"
    assert (await fetch(session, url, {}))[::2] == (401, b'{"detail":"Missing API key"}')
    not_found = (404, b'{"detail":"Job not found"}')
    assert (await fetch(session, url, {"Api-Key": "rt_test_b"}))[::2] == not_found


@pytest.mark.parametrize("segment", ["a%2Fb", "%2e%2e", "..", "job_%00", "%ZZ", "%FF"])
async def test_weird_job_ids_over_http_are_404(
    server: SimServer, session: aiohttp.ClientSession, segment: str
) -> None:
    # encoded=True sends the path as written: no client-side normalisation of dots.
    url = yarl.URL(f"{server.base_url}/v1/jobs/{segment}/status", encoded=True)
    assert (await fetch(session, url))[::2] == (404, b'{"detail":"Job not found"}')


async def test_full_job_with_include_flags_over_http(
    server: SimServer, session: aiohttp.ClientSession
) -> None:
    job_id = server.sim.add_job(org_id="org_a", script=[Change("completed", 0.0)])
    url = f"{server.base_url}/v1/jobs/{job_id}?include_request=true&include_response=true"
    job = msgspec.json.decode((await fetch(session, url))[2], type=Job)
    assert job.request is not None and job.response is not None
    assert job.response.status_code == 200


async def test_create_cancel_and_retry_over_http(
    server: SimServer, session: aiohttp.ClientSession
) -> None:
    base = f"{server.base_url}/v1/jobs"
    body = {"endpoint": "/v1/documents/extract", "request": {"document": "x"}}
    async with session.post(base, json=body, headers=KEY) as response:
        assert response.status == 200
        job_id = (await response.json())["id"]
    async with session.post(f"{base}/{job_id}/cancel", headers=KEY) as response:
        assert (response.status, (await response.json())["status"]) == (200, "cancelled")
    async with session.post(f"{base}/{job_id}/retry", headers=KEY) as response:
        assert (response.status, (await response.json())["status"]) == (200, "queued")


async def test_rate_limit_over_http(server: SimServer, session: aiohttp.ClientSession) -> None:
    server.sim.set_rate_limit("org_a", 3)
    url = f"{server.base_url}/v1/jobs/x/status"
    answers = await asyncio.gather(*(fetch(session, url) for _ in range(6)))
    assert sorted(status for status, _, _ in answers) == [404] * 3 + [429] * 3
    refused = next(headers for status, headers, _ in answers if status == 429)
    assert refused["Retry-After"] == "1"


@pytest.mark.parametrize(
    ("faults", "fault"),
    [
        (Faults(server_error=1), "server_error"),
        (Faults(unavailable=1, unavailable_retry_after_s=3), "unavailable"),
        (Faults(garbage=1), "garbage"),
        (Faults(truncated=1), "truncated"),
        (Faults(extra_fields=1), "extra_fields"),
    ],
)
async def test_answer_faults_over_http(
    server: SimServer, session: aiohttp.ClientSession, faults: Faults, fault: str
) -> None:
    job_id = server.sim.add_job(org_id="org_a")
    server.sim.faults = faults
    status, headers, body = await fetch(session, f"{server.base_url}/v1/jobs/{job_id}/status")
    if fault == "server_error":
        assert status == 500
    elif fault == "unavailable":
        assert (status, headers["Retry-After"]) == (503, "3")
    elif fault == "extra_fields":
        assert status == 200 and "usage" in orjson.loads(body)
        assert msgspec.json.decode(body, type=JobStatus).id == job_id  # unknown fields ignored
    else:
        assert status == 200
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(body)
    assert [r.fault for r in server.sim.log] == [fault]


async def test_reset_drops_the_connection(
    server: SimServer, session: aiohttp.ClientSession
) -> None:
    job_id = server.sim.add_job(org_id="org_a")
    server.sim.faults = Faults(reset=1)
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        await fetch(session, f"{server.base_url}/v1/jobs/{job_id}/status")
    assert {r.status for r in server.sim.log} == {0}


async def test_slow_answers_arrive_late(server: SimServer, session: aiohttp.ClientSession) -> None:
    job_id = server.sim.add_job(org_id="org_a")
    server.sim.faults = Faults(slow=1, slow_delay_s=0.2)
    url = f"{server.base_url}/v1/jobs/{job_id}/status"
    started = time.monotonic()
    assert (await fetch(session, url))[0] == 200
    assert time.monotonic() - started >= 0.2
    with pytest.raises(asyncio.TimeoutError):
        async with session.get(url, headers=KEY, timeout=aiohttp.ClientTimeout(total=0.05)):
            pass


async def test_closing_with_slow_answers_in_flight_leaves_nothing_behind(
    sim: JobsSimulator, session: aiohttp.ClientSession
) -> None:
    job_id = sim.add_job(org_id="org_a")
    sim.faults = Faults(slow=1, slow_delay_s=60)
    server = SimServer(sim)
    await server.start()
    url = f"{server.base_url}/v1/jobs/{job_id}/status"
    tasks_before = asyncio.all_tasks()
    requests = [asyncio.create_task(fetch(session, url)) for _ in range(3)]
    while len(sim.log) < 3:  # noqa: ASYNC110 (polls the log: every handler is now waiting)
        await asyncio.sleep(0.005)
    started = time.monotonic()
    await server.close()
    results = await asyncio.gather(*requests, return_exceptions=True)
    assert time.monotonic() - started < 2
    assert all(isinstance(r, aiohttp.ClientError) for r in results)
    assert asyncio.all_tasks() == tasks_before
    await server.close()  # idempotent


async def test_the_plugin_fixture_serves_org_test(retab_sim: SimServer) -> None:
    job_id = retab_sim.sim.add_job(org_id="org_test")
    url = f"{retab_sim.base_url}/v1/jobs/{job_id}/status"
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers={"Api-Key": "rt_test_key"}) as response,
    ):
        assert response.status == 200
        assert (await response.json())["organization_id"] == "org_test"


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_defaults_and_options(monkeypatch: pytest.MonkeyPatch) -> None:
    args = _parse()
    assert (args.host, args.port, args.orgs, args.timestamps) == ("127.0.0.1", 8080, 1, "unix")
    monkeypatch.setattr(random, "randrange", lambda stop: 123_456)
    assert args.seed is None and build_simulator(args).seed == 123_456  # a new seed a run
    args = _parse(
        "--orgs=3", "--jobs=9", "--seed=4", "--rate-limit=20", "--time-scale=0.01",
        "--fault-5xx=0.1", "--fault-503=0.05", "--fault-reset=0.01", "--fault-slow=0.02",
        "--slow-delay=1.5", "--fault-garbage=0.01", "--fault-truncated=0.01",
        "--fault-unknown-status=0.2", "--timestamps=iso", "--retry-after=http-date",
    )  # fmt: skip
    sim = build_simulator(args)
    assert [o.org_id for o in sim.orgs] == ["org_1", "org_2", "org_3"]
    assert {o.rate_limit_per_s for o in sim.orgs} == {20}
    assert len(sim.job_ids()) == 9 and sim.job_ids() == build_simulator(args).job_ids()
    assert sim.faults == Faults(
        server_error=0.1, unavailable=0.05, reset=0.01, slow=0.02, slow_delay_s=1.5,
        garbage=0.01, truncated=0.01, unknown_status=0.2,
    )  # fmt: skip
    assert (sim.timestamp_format, sim.retry_after, sim.time_scale) == ("iso", "http-date", 0.01)


@pytest.mark.parametrize(
    "argv", [["--fault-5xx=1.5"], ["--orgs=0"], ["--time-scale=0"], ["--timestamps=rfc"]]
)
def test_cli_refuses_bad_options(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parse(*argv)
    assert "error" in capsys.readouterr().err


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_cli_serves_until_a_signal(signum: signal.Signals) -> None:
    command = [sys.executable, "-m", "poller.testing", "--port=0", "--jobs=3", "--seed=1"]
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) as process:
        assert process.stdout is not None
        banner = [process.stdout.readline()]
        while not banner[-1].startswith("Press Ctrl+C"):
            banner.append(process.stdout.readline())
        base_url = re.search(r"http://127\.0\.0\.1:\d+", banner[0])
        assert banner[1].startswith("Seed 1 (--seed 1 repeats this run)")
        assert any(re.fullmatch(r"  org_1  rt_test_\w+  3 jobs\n", line) for line in banner)
        # The banner's curl lines work as printed: first the list, then a job's status.
        curls = [line.split() for line in banner if "curl -H" in line]
        key = re.search(r"rt_test_\w+", curls[0][3])
        assert base_url and key and curls[0][-1] == f"'{base_url[0]}/v1/jobs?limit=100'"
        listed = _get(f"{base_url[0]}/v1/jobs?limit=100", key[0])
        assert len(listed["data"]) == 3 and listed["list_metadata"]["after"] is None
        job_id = listed["data"][-1]["id"]  # the oldest: the banner's first job
        assert curls[1][-1] == f"{base_url[0]}/v1/jobs/{job_id}/status"
        assert _get(curls[1][-1], key[0])["id"] == job_id
        process.send_signal(signum)
        assert process.wait(timeout=10) == 0


def _get(url: str, key: str) -> Any:
    request = urllib.request.Request(url, headers={"Api-Key": key})
    with urllib.request.urlopen(request, timeout=5) as response:
        return orjson.loads(response.read())
