"""The README's webhook verification snippet runs as written and accepts what the daemon
really sends (and nothing else)."""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import msgspec
import pytest
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from poller.daemon import signature
from poller.daemon.config import load_settings
from poller.daemon.run import running
from poller.testing import Change, SimServer
from poller.testing.pytest_plugin import TEST_API_KEY, TEST_ORG_ID

README = Path(__file__).resolve().parent.parent / "README.md"
QUICK = [Change("queued", 0.0), Change("completed", 0.1)]
SECRETS = {
    "standard": "whsec_" + base64.b64encode(bytes(range(24))).decode(),
    "plain": "a plain webhook secret, 16+ characters",
}

Verifier = Callable[[str, Any, bytes], bool]


def snippet() -> Verifier:
    """``verify_webhook`` from the first Python block under ``### Webhooks``."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### Webhooks") :]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found is not None, "the README's Webhooks section has no Python block"
    namespace: dict[str, Any] = {}
    exec(compile(found.group(1), "README.md", "exec"), namespace)
    verify: Verifier = namespace["verify_webhook"]
    return verify


async def posts_of_the_daemon(
    sim: SimServer, tmp_path: Path, secret: str
) -> list[tuple[CIMultiDictProxy[str], bytes]]:
    """The requests a daemon sends to its webhook while a job runs to its end."""
    received: list[tuple[CIMultiDictProxy[str], bytes]] = []

    async def handle(request: web.Request) -> web.Response:
        received.append((request.headers, await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    env = {
        "RETAB_API_KEY": TEST_API_KEY,
        "RETAB_API_BASE_URL": sim.base_url,
        "POLLER_WEBHOOK_SECRET": secret,
    }
    flags = {
        "db": str(tmp_path / "poller.db"),
        "port": "0",
        "webhooks": [f"http://127.0.0.1:{runner.addresses[0][1]}/hook"],
        "poll_interval_s": "0.05",
        "shutdown_timeout_s": "3",
    }
    job = sim.sim.add_job(org_id=TEST_ORG_ID, script=QUICK)
    try:
        async with running(load_settings(flags, env)) as url, aiohttp.ClientSession() as http:
            async with http.post(f"{url}/jobs", json={"job_id": job}) as response:
                assert response.status == 201
            with anyio.fail_after(10):
                while not any(msgspec.json.decode(b).get("final") for _, b in received):  # noqa: ASYNC110
                    await anyio.sleep(0.02)
    finally:
        await runner.cleanup()
    return received


@pytest.mark.anyio
@pytest.mark.parametrize("kind", sorted(SECRETS))
async def test_the_readme_snippet_verifies_the_daemons_webhooks(
    retab_sim: SimServer, tmp_path: Path, kind: str
) -> None:
    verify_webhook = snippet()
    secret = SECRETS[kind]
    received = await posts_of_the_daemon(retab_sim, tmp_path, secret)
    for headers, body in received:
        assert verify_webhook(secret, headers, body)
        assert headers["webhook-id"] == msgspec.json.decode(body)["id"]
        assert not verify_webhook(secret, headers, body + b" ")
        other = SECRETS["plain" if kind == "standard" else "standard"]
        assert not verify_webhook(other, headers, body)
        # A replay: the same request, signed correctly, but six minutes ago.
        stale = CIMultiDict(headers)
        key = signature.signing_key(secret)
        stale.update(signature.headers(key, headers["webhook-id"], body, now=time.time() - 360))
        assert not verify_webhook(secret, stale, body)
        assert signature.verify(key, headers, body)  # and the daemon's own check agrees


def test_the_readme_snippet_refuses_malformed_headers() -> None:
    verify_webhook = snippet()
    secret = SECRETS["standard"]
    body = b'{"id":"job_a:1"}'
    good = signature.headers(signature.signing_key(secret), "job_a:1", body)
    assert verify_webhook(secret, good, body)
    for name, value in [
        ("webhook-timestamp", "²"),
        ("webhook-timestamp", "soon"),
        ("webhook-signature", "v1,é"),
        ("webhook-id", ""),
    ]:
        assert not verify_webhook(secret, {**good, name: value}, body)
    assert not verify_webhook(secret, {}, body)
