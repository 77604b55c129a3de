"""Cluster mode's settings, and its secrets: the Redis password is never on the command
line, in a repr or in a log line, and the daemon says plainly when Redis is away."""

from __future__ import annotations

import logging
import random
import socket
from pathlib import Path

import anyio
import pytest
from _redis_fixtures import RedisServer

from poller.auth import Credential
from poller.daemon.cluster.client import RedisLink, check_server
from poller.daemon.cluster.serve import replica_engine_options
from poller.daemon.config import load_settings
from poller.daemon.run import serve
from poller.errors import ConfigError
from poller.models import Status
from poller.sched.core import Scheduler
from poller.sched.ratelimit import AdaptiveBudget

PASSWORD = "hunter2-cluster-pass"
ENV = {"RETAB_API_KEY": "rt_test_key"}


def test_the_redis_settings_and_their_sources() -> None:
    settings = load_settings(
        {"redis_url": "redis://127.0.0.1:6379/2", "replica_id": "a-1"},
        {**ENV, "POLLER_REDIS_NAMESPACE": "prod.eu"},
    )
    assert settings.redis_url is not None
    assert settings.redis_url.reveal() == "redis://127.0.0.1:6379/2"
    assert (settings.redis_namespace, settings.replica_id) == ("prod.eu", "a-1")
    assert load_settings({}, ENV).redis_url is None


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:6379", "redis:///0", "redis://host:99999/0", "redis://h o/0"]
)
def test_a_bad_redis_url_is_refused_without_quoting_it(url: str) -> None:
    with pytest.raises(ConfigError, match=r"^redis_url: ") as caught:
        load_settings({"redis_url": url}, ENV)
    assert url not in str(caught.value)


def test_a_password_is_refused_on_the_command_line_and_kept_secret_elsewhere() -> None:
    url = f"redis://:{PASSWORD}@127.0.0.1:6379/0"
    with pytest.raises(ConfigError, match="process list") as caught:
        load_settings({"redis_url": url}, ENV)
    assert PASSWORD not in str(caught.value)
    settings = load_settings({}, {**ENV, "POLLER_REDIS_URL": url})
    assert PASSWORD not in repr(settings)
    assert PASSWORD in settings.secrets()


@pytest.mark.parametrize("name", ["", "a b", "x" * 65, "a/b", "a:b"])
def test_names_are_checked(name: str) -> None:
    for setting in ("redis_namespace", "replica_id"):
        with pytest.raises(ConfigError, match=rf"^{setting}: "):
            load_settings({setting: name}, ENV)


@pytest.mark.anyio
async def test_an_unreachable_redis_stops_the_start_with_a_line_that_hides_the_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    env = {**ENV, "POLLER_REDIS_URL": f"redis://user:{PASSWORD}@127.0.0.1:{port}/0"}
    settings = load_settings({"port": "0", "db": str(tmp_path / "p.db")}, env)
    caplog.set_level(logging.DEBUG)
    with anyio.fail_after(10):
        assert await serve(settings, anyio.Event()) == 1
    assert "cannot use Redis redis://***@127.0.0.1" in caplog.text
    assert PASSWORD not in caplog.text


def test_a_takeover_of_30000_jobs_polls_them_all_within_3_s() -> None:
    settings = load_settings({"redis_url": "redis://127.0.0.1:6379/0"}, ENV)
    options = replica_engine_options(settings)
    key = Credential("rt_test_key", environ={})
    core: Scheduler[Credential] = Scheduler(
        backoff=options.backoff,
        budget_for=lambda org: AdaptiveBudget(),
        rng=random.Random(7),
        first_poll_rate_per_s=options.first_poll_rate_per_s,
    )
    dues = [
        core.track(f"job_{n}", key, 100.0, last_status=Status.IN_PROGRESS, last_seq=2).polled_at
        for n in range(30_000)
    ]
    assert max(dues) - 100.0 <= 3.0


@pytest.mark.anyio
async def test_a_redis_that_may_evict_keys_is_warned_about(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    link = RedisLink(private_redis.url, "poller")
    try:
        await check_server(link)
        assert "maxmemory-policy" not in caplog.text  # no limit: nothing is evicted
        await link.redis.config_set("maxmemory", 100 * 2**20)
        await check_server(link)
        assert "maxmemory-policy" not in caplog.text  # noeviction, the default
        await link.redis.config_set("maxmemory-policy", "allkeys-lru")
        await check_server(link)
        assert "has maxmemory-policy allkeys-lru: when full it evicts keys" in caplog.text
    finally:
        await link.aclose()
