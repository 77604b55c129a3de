"""The daemon's settings, and where they come from.

Each setting is read from the first of these that has it: a command-line flag, an
environment variable (``POLLER_<NAME>``; ``RETAB_API_KEY`` and ``RETAB_API_BASE_URL``
for the API), the TOML file named by ``--config`` / ``POLLER_CONFIG``, the default.
Every error is a :class:`~poller.errors.ConfigError` whose message starts with the
setting's name and says where the bad value came from.

Secrets (API keys, the control token, the webhook secret) have no flag, so they never
show in a process list; they are held in :class:`Secret`, whose ``repr`` hides them.
Named credentials come from the file's ``[credentials]`` table or from
``POLLER_CREDENTIAL_<NAME>`` variables.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import msgspec

from .._redis_url import url_secrets
from ..auth import Credential, is_loopback, resolve_base_url
from ..coordination import Coordinator
from ..errors import ConfigError
from ..options import PollerOptions
from ..sched.backoff import Backoff
from ..sched.ratelimit import RateLimit
from .options import BY_NAME, OPTIONS, Secret, text

__all__ = [
    "OPTIONS",
    "Secret",
    "Settings",
    "backoff_for",
    "check_files",
    "coordinator_for",
    "engine_options",
    "is_loopback",
    "load_settings",
]

CONFIG_ENV: Final = "POLLER_CONFIG"
ENGINE_SETTINGS: Final = frozenset(
    {
        "api_key",
        "base_url",
        "auth_scheme",
        "max_connections",
        "request_timeout_s",
        "rate_limit_per_s",
        "redis_url",
        "poll_interval_s",
        "max_interval_s",
    }
)
"""The settings :func:`engine_options` uses: all that ``poller watch`` reads."""
CREDENTIAL_ENV_PREFIX: Final = "POLLER_CREDENTIAL_"
_NAME: Final = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything ``poller run`` is configured with (see ``poller run --help``)."""

    api_key: Secret | None = None
    base_url: str | None = None
    auth_scheme: str = "api-key"
    credentials: dict[str, Secret] = msgspec.field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 8787
    control_token: Secret | None = None
    db: str = "poller.db"
    store_sync: str = "full"
    redis_url: Secret | None = None
    redis_namespace: str = "poller"
    replica_id: str | None = None
    jobs_from: str | None = None
    jobs_credential: str | None = None
    jsonl: str | None = None
    webhooks: tuple[str, ...] = ()
    webhook_secret: Secret | None = None
    webhook_max_attempts: int = 10
    webhook_timeout_s: float = 10.0
    webhook_backoff_s: float = 1.0
    webhook_backoff_max_s: float = 60.0
    webhook_concurrency: int = 8
    dead_letter: str | None = None
    history_retention_s: float = 86400.0
    max_connections: int = 64
    request_timeout_s: float = 10.0
    rate_limit_per_s: float | None = None
    poll_interval_s: float | None = None
    max_interval_s: float = 30.0
    shutdown_timeout_s: float = 8.0
    log_format: str = "human"
    log_level: str = "info"

    def secrets(self) -> tuple[str, ...]:
        """Every secret value, for scrubbing log lines."""
        found = [self.api_key, self.control_token, self.webhook_secret]
        found += self.credentials.values()
        secrets = [s.reveal() for s in found if s is not None]
        if self.redis_url is not None:  # its password: the rest is worth seeing in logs
            secrets += url_secrets(self.redis_url.reveal())
        return tuple(secrets)

    @property
    def dead_letter_path(self) -> str:
        """Where the webhooks' dead letters go (default: next to the database)."""
        return self.dead_letter if self.dead_letter is not None else f"{self.db}.dead-letter.jsonl"


def load_settings(
    flags: Mapping[str, object | None],
    environ: Mapping[str, str],
    config_path: str | None = None,
    *,
    daemon: bool = True,
) -> Settings:
    """Merge flags > environment > TOML file > defaults, and check the result.

    Args:
        flags: values given on the command line by setting name (None: not given).
        environ: the environment.
        config_path: the TOML file; None reads ``POLLER_CONFIG``, else no file.
        daemon: the settings of ``poller run``, all of them. False reads only the
            engine's (``ENGINE_SETTINGS``: key, base URL, auth scheme, connections,
            timeout, rate limit, intervals) and checks only their rules, for ``poller
            watch``, which may share a file with the daemon, and which checks itself
            whether it needs a key.

    Raises:
        ConfigError: a bad value, an unknown key in the file, or settings that do not fit
            together; the message names the setting.
    """
    path = config_path if config_path is not None else environ.get(CONFIG_ENV) or None
    file_values = _read_toml(path) if path is not None else {}
    values: dict[str, Any] = {}
    for option in OPTIONS:
        if not daemon and option.name not in ENGINE_SETTINGS:
            continue
        sources = (
            (option.flag or "", flags.get(option.name)),
            (option.env, environ.get(option.env) or None),
            (f"the config file {path}", file_values.get(option.name)),
        )
        for where, raw in sources:
            if raw is None:
                continue
            try:
                values[option.name] = option.parse(raw)
            except ValueError as exc:
                raise ConfigError(f"{option.name}: {exc} (from {where})") from None
            if where == option.flag and option.name == "redis_url" and url_secrets(str(raw)):
                # The one setting with a flag that may hold a secret: not from a flag.
                raise ConfigError(
                    f"redis_url: a password on the command line shows in the process list; "
                    f"set {option.env} or redis_url in the config file (from {where})"
                )
            break
    if daemon:
        values["credentials"] = _credentials(file_values.get("credentials"), environ, path)
    settings = Settings(**values)
    _check_engine(settings)
    if daemon:
        _check(settings)
    return settings


def _read_toml(path: str) -> dict[str, Any]:
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"config: cannot read {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config: {path} is not valid TOML: {exc}") from None
    for key in data:
        if key not in BY_NAME and key != "credentials":
            raise ConfigError(f"{key}: unknown setting in the config file {path}")
    return data


def _credentials(table: object, environ: Mapping[str, str], path: str | None) -> dict[str, Secret]:
    found: dict[str, tuple[object, str]] = {}
    if table is not None:
        if not isinstance(table, dict):
            raise ConfigError(f"credentials: must be a table of name = key (in {path})")
        found.update((name, (key, f"the config file {path}")) for name, key in table.items())
    for variable, value in environ.items():
        if variable.startswith(CREDENTIAL_ENV_PREFIX) and value:
            found[variable[len(CREDENTIAL_ENV_PREFIX) :].lower()] = (value, variable)
    credentials: dict[str, Secret] = {}
    for name, (key, where) in found.items():
        if not _NAME.fullmatch(name):
            raise ConfigError(
                f"credentials.{name}: a name is 1-64 letters, digits, '_', '-' or '.' "
                f"(from {where})"
            )
        try:
            Credential(text(key))  # same checks as the engine; no message shows the key
        except (ValueError, ConfigError):
            raise ConfigError(
                f"credentials.{name}: must be a non-empty key without spaces (from {where})"
            ) from None
        credentials[name] = Secret(str(key))
    return credentials


def _check_engine(settings: Settings) -> None:
    """Rules of the engine's settings."""
    if settings.api_key is not None:
        try:
            Credential(settings.api_key.reveal())
        except ConfigError:
            raise ConfigError("api_key: must be a non-empty key without spaces") from None
    resolve_base_url(settings.base_url, {})
    if settings.poll_interval_s is not None and settings.poll_interval_s > settings.max_interval_s:
        raise ConfigError("poll_interval_s: must not exceed max_interval_s")


def _check(settings: Settings) -> None:
    """The daemon's rules that involve more than one setting."""
    if settings.api_key is None and not settings.credentials:
        raise ConfigError(
            "api_key: no API key: set RETAB_API_KEY, api_key in the config file, "
            "or named [credentials]"
        )
    if not is_loopback(settings.host) and settings.control_token is None:
        raise ConfigError(
            f"control_token: required when host is not a loopback address "
            f"(host is {settings.host!r}); set POLLER_CONTROL_TOKEN"
        )
    if settings.webhooks and settings.webhook_secret is None:
        raise ConfigError(
            "webhook_secret: required with webhooks (set POLLER_WEBHOOK_SECRET "
            "or webhook_secret in the config file)"
        )
    if settings.jobs_credential is not None and settings.jobs_credential not in (
        settings.credentials
    ):
        raise ConfigError(f"jobs_credential: no credential named {settings.jobs_credential!r}")
    if settings.jobs_from is None and settings.jobs_credential is not None:
        raise ConfigError("jobs_credential: only meaningful with jobs_from")
    if (
        settings.jobs_from is not None
        and settings.jobs_credential is None
        and settings.api_key is None
    ):
        raise ConfigError("jobs_from: needs a default API key or a jobs_credential")
    if settings.webhook_backoff_s > settings.webhook_backoff_max_s:
        raise ConfigError("webhook_backoff_s: must not exceed webhook_backoff_max_s")
    if settings.jsonl is not None and settings.jsonl != "-" and settings.jsonl == settings.db:
        raise ConfigError("jsonl: must not be the database file")


def engine_options(settings: Settings) -> PollerOptions:
    """The engine's settings these give (connections, timeout, auth scheme, budget and
    polling; ``poller run`` and ``poller watch`` alike). The key and the base URL are the
    engine's arguments: ``settings.api_key`` and ``settings.base_url``."""
    rate = settings.rate_limit_per_s
    return PollerOptions(
        auth_scheme=settings.auth_scheme,
        max_connections=settings.max_connections,
        request_timeout_s=settings.request_timeout_s,
        rate_limit=RateLimit(rate) if rate is not None else None,
        backoff=backoff_for(settings.poll_interval_s, settings.max_interval_s),
    )


def coordinator_for(settings: Settings) -> Coordinator | None:
    """The engine's coordinator for these settings: a ``RedisCoordinator`` for
    ``redis_url``, or None (the engine alone)."""
    url = settings.redis_url
    if url is None:
        return None
    try:
        from ..redis import RedisCoordinator
    except ImportError:
        raise ConfigError("redis_url: needs the redis extra: pip install 'poller[redis]'") from None
    return RedisCoordinator(url.reveal(), namespace=settings.redis_namespace)


def backoff_for(poll_interval_s: float | None, max_interval_s: float = 30.0) -> Backoff:
    """The engine's polling policy for these two settings: ``poll_interval_s`` (None:
    the engine's per-status defaults) is the first interval of every status."""
    backoff = Backoff(max_interval_s=max_interval_s)
    if poll_interval_s is None:
        return backoff
    return Backoff(
        initial_interval_s={s: poll_interval_s for s in ("validating", "queued", "in_progress")},
        default_interval_s=poll_interval_s,
        min_interval_s=min(poll_interval_s, backoff.min_interval_s),
        max_interval_s=max_interval_s,
    )


def check_files(settings: Settings) -> None:
    """Make sure the files the daemon writes can be written: the database's folder, the
    JSON-lines file and the dead-letter file (both created if missing, mode 0600).

    Raises:
        ConfigError: naming the setting and the reason.
    """
    folder = Path(settings.db).parent
    if not folder.is_dir():
        raise ConfigError(f"db: the folder {str(folder)!r} does not exist")
    files = [("jsonl", settings.jsonl)]
    if settings.webhooks:
        files.append(("dead_letter", settings.dead_letter_path))
    for name, path in files:
        if path is None or path == "-":
            continue
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))
        except OSError as exc:
            raise ConfigError(f"{name}: cannot write to {path!r}: {exc.strerror}") from None
