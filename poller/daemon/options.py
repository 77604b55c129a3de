"""The settings ``poller run`` reads: for each, its parser, flag, variable and help.

A parser takes a TOML value or a string (flag, variable) and returns the typed value,
or raises ``ValueError`` with a message that never quotes a secret back.
:mod:`poller.daemon.config` merges the sources.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Final, NamedTuple
from urllib.parse import urlsplit

from yarl import URL

from .signature import signing_key

__all__ = ["BY_NAME", "OPTIONS", "Option", "Parser", "Secret", "text"]


class Secret:
    """A secret string: ``repr`` and ``str`` show ``'***'``; :meth:`reveal` gives it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself. Never log it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


# -- value parsers: each takes a TOML value or a string and returns the typed value -----


Parser = Callable[[object], object]


def text(value: object) -> str:
    """A non-empty printable string."""
    if not isinstance(value, str) or not value or not value.isprintable():
        raise ValueError("must be a non-empty string without control characters")
    return value


def _secret(value: object) -> Secret:
    return Secret(text(value))


MIN_SECRET_LENGTH: Final = 16


def _strong_secret(value: object) -> Secret:
    """A secret this daemon checks itself (a bearer token, an HMAC key): long enough not
    to be guessed, and not to turn up by chance in log lines (which are scrubbed of it)."""
    secret = text(value)
    if len(secret) < MIN_SECRET_LENGTH:
        raise ValueError(f"must be at least {MIN_SECRET_LENGTH} characters long")
    return Secret(secret)


def _webhook_secret(value: object) -> Secret:
    """A Standard Webhooks secret (``whsec_`` and base64), or 16+ characters of text."""
    secret = _strong_secret(value)
    try:
        signing_key(secret.reveal())
    except ValueError as exc:  # its message never quotes the secret
        raise ValueError(
            f"{exc}: give 'whsec_' and the base64 of a key of 16 bytes or more, or "
            f"{MIN_SECRET_LENGTH} characters or more of other text"
        ) from None
    return secret


def _integer(low: int, high: int) -> Parser:
    def parse(value: object) -> int:
        if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"must be an integer from {low} to {high}")
        return value

    return parse


def _number(low: float, high: float = math.inf, *, open_low: bool = True) -> Parser:
    def parse(value: object) -> float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ValueError("must be a number") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("must be a number")
        number = float(value)
        too_low = number <= low if open_low else number < low
        if not math.isfinite(number) or too_low or number > high:
            bound = f"> {low:g}" if open_low else f">= {low:g}"
            limit = f" and <= {high:g}" if high < math.inf else ""
            raise ValueError(f"must be a finite number {bound}{limit}")
        return number

    return parse


def _choice(*choices: str) -> Parser:
    def parse(value: object) -> str:
        if not isinstance(value, str) or value.lower() not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value.lower()

    return parse


def _urls(value: object) -> tuple[str, ...]:
    items = re.split(r"[,\s]+", value.strip()) if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise ValueError("must be a list of URLs")
    urls = tuple(i for i in items if i)
    for url in urls:
        # The URL itself is never quoted back: it may carry a token.
        try:
            parsed = URL(url)
        except (TypeError, ValueError):
            raise ValueError("each must be an absolute http:// or https:// URL") from None
        if parsed.scheme not in ("http", "https") or not parsed.host or " " in url:
            raise ValueError("each must be an absolute http:// or https:// URL")
    return urls


_REDIS_SCHEMES: Final = ("redis", "rediss", "unix")
_NAMESPACE: Final = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def _redis_url(value: object) -> Secret:
    """A ``redis://``, ``rediss://`` or ``unix://`` URL; held as a :class:`Secret`, as it
    may carry a password (never quoted back)."""
    url = text(value)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError("must be a URL such as redis://127.0.0.1:6379/0") from None
    if parts.scheme not in _REDIS_SCHEMES or " " in url:
        raise ValueError("must be a redis://, rediss:// or unix:// URL")
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError("must name a host, as in redis://127.0.0.1:6379/0")
    return Secret(url)


def _name(value: object) -> str:
    """A name for keys and labels: 1-64 letters, digits, ``_``, ``.`` or ``-``."""
    if not isinstance(value, str) or not _NAMESPACE.fullmatch(value):
        raise ValueError("must be 1-64 letters, digits, '_', '.' or '-'")
    return value


class Option(NamedTuple):
    """A setting: its parser, flag (None: not settable by flag), variable and help."""

    name: str
    parse: Parser
    flag: str | None
    env: str
    help: str
    metavar: str | None = None


def _o(
    name: str, parse: Parser, help: str, *, flag: str | bool = True, env: str | None = None
) -> Option:
    dashed = flag if isinstance(flag, str) else "--" + name.replace("_", "-") if flag else None
    return Option(name, parse, dashed, env or f"POLLER_{name.upper()}", help)


OPTIONS: Final[tuple[Option, ...]] = (
    _o("api_key", _secret, "default Retab API key", flag=False, env="RETAB_API_KEY"),
    _o(
        "base_url",
        text,
        "Retab API root (https://api.retab.com if unset)",
        env="RETAB_API_BASE_URL",
    ),
    _o("auth_scheme", _choice("api-key", "bearer"), "send keys as Api-Key or Bearer"),
    _o("host", text, "control API address (a token is required unless loopback)"),
    _o("port", _integer(0, 65535), "control API port; 0 picks a free one"),
    _o(
        "control_token",
        _strong_secret,
        "bearer token of the control API (16+ characters)",
        flag=False,
    ),
    _o("db", text, "SQLite database file (jobs, last statuses, outbox)"),
    _o("store_sync", _choice("full", "normal"), "'full': fsync every commit (power-safe)"),
    _o(
        "redis_url",
        _redis_url,
        "cluster mode: share the jobs, the events, each organisation's rate budget and "
        "the learned durations with other replicas through the Redis at URL (a password: "
        "only from the environment or the config file)",
        flag="--redis",
    ),
    _o("redis_namespace", _name, "cluster mode: the prefix of every Redis key"),
    _o("replica_id", _name, "cluster mode: this replica's name (default: host and a random tag)"),
    _o("jobs_from", text, "also track the job IDs in FILE, one per line ('-': stdin)"),
    _o("jobs_credential", text, "named credential of the --jobs-from jobs"),
    _o("jsonl", text, "write every event as a JSON line to FILE ('-': stdout)"),
    _o("webhooks", _urls, "POST every event to URL (repeatable)", flag="--webhook"),
    _o(
        "webhook_secret",
        _webhook_secret,
        "webhook signing secret: whsec_<base64> (Standard Webhooks) or 16+ characters",
        flag=False,
    ),
    _o("webhook_max_attempts", _integer(1, 1000), "attempts before an event is dead-lettered"),
    _o("webhook_timeout_s", _number(0.0), "limit on one webhook request"),
    _o("webhook_backoff_s", _number(0.0), "first retry delay; doubles per attempt"),
    _o("webhook_backoff_max_s", _number(0.0), "cap of the retry delay"),
    _o("webhook_concurrency", _integer(1, 256), "webhook requests in flight at most"),
    _o("dead_letter", text, "dead-letter JSONL file (if unset: DB + .dead-letter.jsonl)"),
    _o("history_retention_s", _number(0.0, open_low=False), "how long /events can replay"),
    _o("max_connections", _integer(1, 10_000), "Retab API requests in flight at most"),
    _o("request_timeout_s", _number(0.0), "limit on one Retab API request"),
    _o("rate_limit_per_s", _number(0.0), "requests per second per organisation at most"),
    _o("poll_interval_s", _number(0.0), "first polling interval of every status"),
    _o("max_interval_s", _number(0.0), "longest wait between two polls of a job"),
    _o("shutdown_timeout_s", _number(0.0, 60.0), "SIGTERM drain deadline"),
    _o("log_format", _choice("human", "json"), "log lines: human or JSON"),
    _o("log_level", _choice("debug", "info", "warning", "error"), "log level"),
)
BY_NAME: Final = {option.name: option for option in OPTIONS}
