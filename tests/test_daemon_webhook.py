"""Webhooks against a receiver on loopback: signatures, retries, order per job, dead letters."""

from __future__ import annotations

import base64
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import msgspec
import pytest
from aiohttp import web

from poller import ConfigError
from poller.daemon import signature
from poller.daemon.config import load_settings
from poller.daemon.records import decode_record
from poller.daemon.run import running
from poller.daemon.signature import sign, signing_key, verify
from poller.daemon.webhook import retry_delay_s
from poller.testing import Change, SimServer

SECRET = "whsec_" + base64.b64encode(b"a 24-byte test key .....").decode()
KEY = "rt_test_key"

Policy = Callable[[str, int], tuple[int, dict[str, str]]]


class Receiver:
    """A webhook endpoint on loopback that checks every signature and records every call."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.calls: list[tuple[str, int, int]] = []  # (event id, attempt, answer)
        self.accepted: list[dict[str, Any]] = []
        self.bad_signatures = 0
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not verify(signing_key(SECRET), request.headers, body):
            self.bad_signatures += 1
            return web.Response(status=401)
        record = msgspec.json.decode(body)
        assert request.headers["webhook-id"] == record["id"]
        attempt = int(request.headers["X-Poller-Attempt"])
        await anyio.sleep(random.Random(record["id"]).uniform(0, 0.02))
        status, headers = self.policy(record["id"], attempt)
        self.calls.append((record["id"], attempt, status))
        if 200 <= status < 300:
            self.accepted.append(record)
        return web.Response(status=status, headers=headers)

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/hook?token=in-the-url"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


def always(status: int) -> Policy:
    return lambda event_id, attempt: (status, {})


def scripts(n: int, seed: int) -> list[list[Change]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        t1 = rng.uniform(0.05, 0.4)
        end = rng.choice(["completed", "failed", "cancelled"])
        out.append([Change("queued", 0.0), Change("in_progress", t1), Change(end, t1 + 0.3)])
    return out


@pytest.fixture
def dead_letter(tmp_path: Path) -> Path:
    return tmp_path / "dead.jsonl"


async def run_jobs(
    sim: SimServer,
    tmp_path: Path,
    receiver: Receiver,
    n_jobs: int,
    until: Callable[[list[str]], bool],
) -> list[str]:
    """Track ``n_jobs`` scripted jobs with a daemon posting to ``receiver`` until
    ``until(job_ids)``, then stop the daemon."""
    env = {
        "RETAB_API_KEY": KEY,
        "RETAB_API_BASE_URL": sim.base_url,
        "POLLER_WEBHOOK_SECRET": SECRET,
    }
    flags = {
        "db": str(tmp_path / "poller.db"),
        "port": "0",
        "webhooks": [receiver.url],
        "webhook_backoff_s": "0.01",
        "webhook_backoff_max_s": "0.05",
        "webhook_max_attempts": "3",
        "dead_letter": str(tmp_path / "dead.jsonl"),
        "poll_interval_s": "0.1",
        "max_interval_s": "0.3",
        "shutdown_timeout_s": "3",
    }
    job_ids = [sim.sim.add_job(org_id="org_test", script=s) for s in scripts(n_jobs, seed=7)]
    async with running(load_settings(flags, env)) as url, aiohttp.ClientSession() as http:
        async with http.post(f"{url}/jobs", json={"job_ids": job_ids}) as response:
            assert response.status == 201
        with anyio.fail_after(15):
            while not until(job_ids):  # noqa: ASYNC110 - polls files and the receiver
                await anyio.sleep(0.05)
    return job_ids


def dead_letters(tmp_path: Path) -> list[dict[str, Any]]:
    """The records in the dead-letter file so far."""
    path = tmp_path / "dead.jsonl"
    lines = path.read_bytes().splitlines() if path.exists() else []
    return [msgspec.json.decode(line)["event"] for line in lines]


def finals(records: list[dict[str, Any]]) -> set[str]:
    return {r["job_id"] for r in records if r.get("final")}


@pytest.mark.anyio
async def test_signed_posts_in_order_per_job(retab_sim: SimServer, tmp_path: Path) -> None:
    async with Receiver(always(204)) as receiver:
        job_ids = await run_jobs(
            retab_sim, tmp_path, receiver, 12, lambda ids: finals(receiver.accepted) == set(ids)
        )
    assert receiver.bad_signatures == 0
    for job_id in job_ids:
        seqs = [r["seq"] for r in receiver.accepted if r["job_id"] == job_id]
        assert seqs == list(range(1, len(seqs) + 1)), job_id
        last = [r for r in receiver.accepted if r["job_id"] == job_id][-1]
        assert last["current"] == retab_sim.sim.status(job_id)


@pytest.mark.anyio
async def test_retries_keep_order_and_honour_attempts(retab_sim: SimServer, tmp_path: Path) -> None:
    # Every event fails twice (503 with Retry-After, then 500) before it is accepted.
    def flaky(event_id: str, attempt: int) -> tuple[int, dict[str, str]]:
        return (
            (503, {"Retry-After": "0"})
            if attempt == 1
            else (500, {})
            if attempt == 2
            else (200, {})
        )

    async with Receiver(flaky) as receiver:
        job_ids = await run_jobs(
            retab_sim, tmp_path, receiver, 6, lambda ids: finals(receiver.accepted) == set(ids)
        )
    for job_id in job_ids:
        calls = [(e, a) for e, a, _ in receiver.calls if e.startswith(job_id + ":")]
        # A job's next event is only sent once the previous one was accepted.
        expected = [
            (f"{job_id}:{seq}", attempt)
            for seq in range(1, len(calls) // 3 + 1)
            for attempt in (1, 2, 3)
        ]
        assert calls == expected
    assert not (tmp_path / "dead.jsonl").exists()


@pytest.mark.anyio
async def test_dead_letter_after_max_attempts(retab_sim: SimServer, tmp_path: Path) -> None:
    async with Receiver(always(500)) as receiver:

        def all_dead(job_ids: list[str]) -> bool:
            return finals(dead_letters(tmp_path)) == set(job_ids)

        await run_jobs(retab_sim, tmp_path, receiver, 3, all_dead)
    lines = [
        msgspec.json.decode(line) for line in (tmp_path / "dead.jsonl").read_bytes().splitlines()
    ]
    assert all(entry["attempts"] == 3 and entry["reason"] == "HTTP 500" for entry in lines)
    assert all(decode_record(msgspec.json.encode(e["event"])).id == e["event_id"] for e in lines)
    # Dead letters are not logged with the URL's token, and every call was a real attempt.
    assert len(receiver.calls) == 3 * len(lines)
    assert {a for _, a, _ in receiver.calls} == {1, 2, 3}


@pytest.mark.anyio
async def test_permanent_error_is_dead_lettered_at_once(
    retab_sim: SimServer, tmp_path: Path
) -> None:
    async with Receiver(always(410)) as receiver:
        dead = tmp_path / "dead.jsonl"

        def some_final(job_ids: list[str]) -> bool:
            return bool(finals(dead_letters(tmp_path)))

        await run_jobs(retab_sim, tmp_path, receiver, 1, some_final)
    assert {a for _, a, _ in receiver.calls} == {1}
    assert all(
        msgspec.json.decode(line)["attempts"] == 1 for line in dead.read_bytes().splitlines()
    )


def test_signature_matches_the_standard_webhooks_reference_vector() -> None:
    # The test vector of the Standard Webhooks reference libraries.
    key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    signed = sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert signed == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_verify_checks_body_key_id_and_timestamp() -> None:
    key = signing_key("a plain secret of 16+ characters")
    assert key == b"a plain secret of 16+ characters"
    body = b'{"id":"job_a:1"}'
    sent = signature.headers(key, "job_a:1", body, now=1_700_000_000)
    assert sent["webhook-timestamp"] == "1700000000"
    assert verify(key, sent, body, now=1_700_000_000 + 299)
    assert not verify(key, sent, body, now=1_700_000_000 + 301)  # a replay, later
    assert not verify(key, sent, body + b" ", now=1_700_000_000)
    assert not verify(signing_key("another secret of 16+ chars"), sent, body, now=1_700_000_000)
    assert not verify(key, {**sent, "webhook-id": "job_a:2"}, body, now=1_700_000_000)
    two = {**sent, "webhook-signature": "v1,bm90IGl0 " + sent["webhook-signature"]}
    assert verify(key, two, body, now=1_700_000_000)  # one good signature of several
    for missing in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        partial = {k: v for k, v in sent.items() if k != missing}
        assert not verify(key, partial, body, now=1_700_000_000)
    assert not verify(key, {**sent, "webhook-timestamp": "soon"}, body, now=1_700_000_000)


@pytest.mark.parametrize(
    ("secret", "error"),
    [
        ("whsec_not base64 at all!", "after 'whsec_' must come base64"),
        (
            "whsec_" + base64.b64encode(b"15 bytes only..").decode(),
            "must give a key of at least 16",
        ),
    ],
)
def test_a_webhook_secret_that_gives_no_good_key_is_refused(secret: str, error: str) -> None:
    env = {"RETAB_API_KEY": KEY, "POLLER_WEBHOOK_SECRET": secret}
    with pytest.raises(ConfigError, match=rf"^webhook_secret: {error}") as caught:
        load_settings({"webhooks": ["http://127.0.0.1:1/h"]}, env)
    assert secret not in str(caught.value)


def test_retry_delay_grows_is_capped_and_respects_retry_after() -> None:
    rng = random.Random(1)
    delays = [retry_delay_s(n, base_s=1.0, max_s=30.0, rng=rng) for n in range(1, 10)]
    for n, delay in enumerate(delays, start=1):
        assert min(30.0, 2.0 ** (n - 1)) * 0.5 <= delay <= min(30.0, 2.0 ** (n - 1))
    assert retry_delay_s(1, base_s=1.0, max_s=30.0, rng=rng, retry_after_s=12.0) >= 12.0
    assert retry_delay_s(1, base_s=1.0, max_s=30.0, rng=rng, retry_after_s=999.0) <= 30.0
    assert retry_delay_s(500, base_s=1.0, max_s=30.0, rng=rng) <= 30.0


@pytest.mark.anyio
async def test_a_disk_error_in_a_sink_restarts_it_and_loses_nothing(
    retab_sim: SimServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "dead.jsonl").mkdir()  # dead-lettering fails: EISDIR, inside the sink's tasks
    async with Receiver(always(410)) as receiver:

        def posted_again(job_ids: list[str]) -> bool:  # the sink restarted from its backlog
            ids = [event_id for event_id, _, _ in receiver.calls]
            return len(ids) > len(set(ids))

        await run_jobs(retab_sim, tmp_path, receiver, 1, posted_again)  # and stops cleanly
    assert "failed (" in caplog.text and "restarting" in caplog.text
