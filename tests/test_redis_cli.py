"""``poller run --redis URL``, ``poller watch --redis URL`` and ``POLLER_REDIS_URL``."""

from __future__ import annotations

import json

import pytest
import redis

from poller.commands.cli import main
from poller.daemon.config import coordinator_for, load_settings
from poller.errors import ConfigError
from poller.redis import RedisCoordinator

URL = "redis://127.0.0.1:6379/0"


def test_the_flag_gives_the_engine_a_coordinator() -> None:
    settings = load_settings({"redis_url": URL}, {}, daemon=False)
    coordinator = coordinator_for(settings)
    assert isinstance(coordinator, RedisCoordinator) and coordinator.url == URL


def test_no_url_no_coordinator() -> None:
    assert coordinator_for(load_settings({}, {}, daemon=False)) is None


def test_the_variable_may_carry_a_password_the_flag_may_not() -> None:
    secret_url = "redis://:hunter2-pass@127.0.0.1:6379/0"
    settings = load_settings({}, {"POLLER_REDIS_URL": secret_url}, daemon=False)
    assert settings.secrets() == ("hunter2-pass",)  # scrubbed from logs; the rest stays
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in repr(coordinator_for(settings))
    with pytest.raises(ConfigError, match="password on the command line") as caught:
        load_settings({"redis_url": secret_url}, {}, daemon=False)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "forms"),
    [
        ("redis://127.0.0.1:6379/0?password=hunter2-pass", ["hunter2-pass"]),
        ("rediss://127.0.0.1:6379/0?db=1&password=hunter2-pass", ["hunter2-pass"]),
        ("unix:///run/redis.sock?password=hunter2-pass&db=0", ["hunter2-pass"]),
        ("redis://:hunter2%40pass@127.0.0.1:6379/0", ["hunter2%40pass", "hunter2@pass"]),
        ("redis://127.0.0.1/0?password=hunter2%2Bpass", ["hunter2%2Bpass", "hunter2+pass"]),
    ],
)
def test_a_password_in_any_form_is_scrubbed_hidden_and_refused_on_the_flag(
    url: str, forms: list[str]
) -> None:
    """redis-py takes a password from the query too, and percent-decodes it."""
    settings = load_settings({}, {"POLLER_REDIS_URL": url}, daemon=False)
    assert set(forms) <= set(settings.secrets())
    coordinator = coordinator_for(settings)
    assert coordinator is not None
    for shown in (repr(coordinator), coordinator.url):  # type: ignore[attr-defined]
        assert "hunter2" not in shown
    with pytest.raises(ConfigError, match="password on the command line") as caught:
        load_settings({"redis_url": url}, {}, daemon=False)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379", "redis://127.0.0.1:port/0", "x"])
def test_a_bad_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="redis_url"):
        load_settings({"redis_url": url}, {}, daemon=False)


def test_watch_with_redis(
    redis_url: str,
    redis_ns: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        "poller.commands.watch.coordinator_for",
        lambda settings: RedisCoordinator(settings.redis_url.reveal(), namespace=redis_ns),
    )
    argv = ["watch", "--sim", "--json", "--sim-jobs", "3", "--sim-time-scale", "0.002"]
    status = main([*argv, "--poll-interval", "0.05", "--timeout", "30", "--redis", redis_url])
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 3, err
    # The exit status says what the jobs did (the simulator fails some, by its seed).
    assert status == (0 if all(line["status"] == "completed" for line in lines) else 1), err
    (org,) = {line["organization_id"] for line in lines}
    client = redis.Redis.from_url(redis_url)
    try:
        # Its budget went through Redis, and so did what it learned.
        assert client.exists(f"{redis_ns}:{{{redis_ns}:{org}}}:budget")
        assert client.zcard(f"{redis_ns}:learn") > 0
        assert client.zcard(f"{redis_ns}:engines") == 0  # it left the fleet
    finally:
        client.close()
