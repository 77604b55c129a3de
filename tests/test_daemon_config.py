"""Settings: flags > environment > TOML file > defaults; every error names its setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from poller import ConfigError
from poller.daemon.config import Secret, Settings, check_files, is_loopback, load_settings

KEY = "rt_test_config_key"
ENV = {"RETAB_API_KEY": KEY}
HOOK = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3"  # Standard Webhooks: base64 of 24 bytes


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "poller.toml"
    path.write_text(text)
    return str(path)


def test_defaults_need_only_a_key() -> None:
    settings = load_settings({}, ENV)
    assert settings.host == "127.0.0.1"
    assert settings.port == 8787
    assert settings.db == "poller.db"
    assert settings.api_key == Secret(KEY)
    assert settings.dead_letter_path == "poller.db.dead-letter.jsonl"


def test_flags_beat_environment_beat_file_beat_defaults(tmp_path: Path) -> None:
    config = write(
        tmp_path, 'port = 1001\nhost = "localhost"\ndb = "file.db"\nlog_format = "json"\n'
    )
    env = {**ENV, "POLLER_PORT": "1002", "POLLER_DB": "env.db"}
    settings = load_settings({"port": "1003"}, env, config)
    assert settings.port == 1003  # flag
    assert settings.db == "env.db"  # environment over file
    assert settings.host == "localhost"  # file over default
    assert settings.log_format == "json"
    assert settings.webhook_max_attempts == Settings().webhook_max_attempts  # default


def test_config_file_from_environment(tmp_path: Path) -> None:
    config = write(tmp_path, "port = 1234\n")
    assert load_settings({}, {**ENV, "POLLER_CONFIG": config}).port == 1234


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        ({"port": "70000"}, {}, r"^port: must be an integer from 0 to 65535 \(from --port\)"),
        ({}, {"POLLER_PORT": "http"}, r"^port: .*\(from POLLER_PORT\)"),
        ({"log_format": "xml"}, {}, r"^log_format: must be one of human, json"),
        ({"webhook_timeout_s": "-1"}, {}, r"^webhook_timeout_s: must be a finite number > 0"),
        ({"shutdown_timeout_s": "600"}, {}, r"^shutdown_timeout_s: .*<= 60"),
        ({"webhooks": ["ftp://x"]}, {"POLLER_WEBHOOK_SECRET": HOOK}, r"^webhooks: each must be"),
        ({"base_url": "not a url"}, {}, r"^base_url: "),
    ],
)
def test_bad_values_name_the_setting_and_source(
    flags: dict[str, object], env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(flags, {**ENV, **env})


def test_no_key_at_all() -> None:
    with pytest.raises(ConfigError, match=r"^api_key: no API key"):
        load_settings({}, {})


def test_named_credentials_alone_are_enough(tmp_path: Path) -> None:
    config = write(tmp_path, '[credentials]\nacme = "rt_live_acme"\n')
    env = {"POLLER_CREDENTIAL_GLOBEX": "rt_live_globex"}
    settings = load_settings({}, env, config)
    assert settings.api_key is None
    assert {name: key.reveal() for name, key in settings.credentials.items()} == {
        "acme": "rt_live_acme",
        "globex": "rt_live_globex",
    }


def test_bad_credential_never_shows_the_key(tmp_path: Path) -> None:
    config = write(tmp_path, '[credentials]\nacme = "rt live with spaces"\n')
    with pytest.raises(ConfigError, match=r"^credentials\.acme: ") as caught:
        load_settings({}, {}, config)
    assert "rt live" not in str(caught.value)


def test_non_loopback_host_needs_a_token() -> None:
    with pytest.raises(ConfigError, match=r"^control_token: required"):
        load_settings({"host": "0.0.0.0"}, ENV)
    token = "t0ken_0123456789abcdef"
    settings = load_settings({"host": "0.0.0.0"}, {**ENV, "POLLER_CONTROL_TOKEN": token})
    assert settings.control_token == Secret("t0ken_0123456789abcdef")


def test_webhooks_need_a_secret() -> None:
    with pytest.raises(ConfigError, match=r"^webhook_secret: required"):
        load_settings({"webhooks": ["http://127.0.0.1:9/hook"]}, ENV)


def test_webhooks_from_environment_are_a_list() -> None:
    env = {
        **ENV,
        "POLLER_WEBHOOKS": "http://a.test/x, http://b.test/y",
        "POLLER_WEBHOOK_SECRET": HOOK,
    }
    assert load_settings({}, env).webhooks == ("http://a.test/x", "http://b.test/y")


def test_unknown_key_in_file(tmp_path: Path) -> None:
    config = write(tmp_path, "prot = 80\n")
    with pytest.raises(ConfigError, match=r"^prot: unknown setting in the config file"):
        load_settings({}, ENV, config)


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^config: .* is not valid TOML"):
        load_settings({}, ENV, write(tmp_path, "port = = 1\n"))
    with pytest.raises(ConfigError, match=r"^config: cannot read"):
        load_settings({}, ENV, str(tmp_path / "missing.toml"))


def test_jobs_credential_must_exist() -> None:
    with pytest.raises(ConfigError, match=r"^jobs_credential: no credential named 'x'"):
        load_settings({"jobs_from": "-", "jobs_credential": "x"}, ENV)


def test_secrets_hidden_from_repr() -> None:
    token = "tok_secret_0123456789"
    env = {**ENV, "POLLER_CONTROL_TOKEN": token, "POLLER_CREDENTIAL_A": "rt_live_a"}
    settings = load_settings({}, env)
    text = repr(settings)
    for secret in (KEY, "tok_secret_0123456789", "rt_live_a"):
        assert secret not in text
        assert secret in settings.secrets()


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("localhost", True),
     ("0.0.0.0", False), ("10.0.0.1", False), ("example.com", False), ("[::1]", True)],
)  # fmt: skip
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_files_are_checked_at_start(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(ConfigError, match=r"^db: the folder .* does not exist"):
        check_files(load_settings({"db": str(missing / "p.db")}, ENV))
    with pytest.raises(ConfigError, match=r"^jsonl: cannot write to .*No such file"):
        check_files(load_settings({"jsonl": str(missing / "out.jsonl")}, ENV))
    env = {**ENV, "POLLER_WEBHOOK_SECRET": HOOK}
    flags = {"webhooks": ["http://127.0.0.1:1/h"], "dead_letter": str(tmp_path)}
    with pytest.raises(ConfigError, match=r"^dead_letter: cannot write to"):
        check_files(load_settings(flags, env))
    good = load_settings({"db": str(tmp_path / "p.db"), "jsonl": str(tmp_path / "o.jsonl")}, ENV)
    check_files(good)
    assert (tmp_path / "o.jsonl").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("name", ["POLLER_CONTROL_TOKEN", "POLLER_WEBHOOK_SECRET"])
def test_short_daemon_secrets_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match=r"must be at least 16 characters") as caught:
        load_settings({}, {**ENV, name: "short"})
    assert "short" not in str(caught.value)
