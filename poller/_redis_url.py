"""The secrets of a Redis URL: where they hide, and the URL with them hidden.

redis-py takes a password (and a user name) from the URL's user info
(``redis://user:pass@host``) and from its query (``redis://host/0?password=pass``,
``unix:///run/redis.sock?password=pass``); either may be percent-encoded. Plain
standard library, so that the daemon's settings can check and scrub a URL without
the ``redis`` extra installed.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import quote, quote_plus, unquote, unquote_plus, urlsplit

__all__ = ["redact_url", "url_secrets"]

_HIDDEN: Final = "***"
_USER: Final = "username"


def _secret_name(name: str) -> bool:
    """A query parameter that carries a secret (``password``, ``ssl_password``...) or the
    user name (hidden in a shown URL, not scrubbed from logs)."""
    name = unquote_plus(name).lower()
    return "password" in name or name == _USER


def _raw_secrets(url: str) -> tuple[list[str], list[str]]:
    """The passwords and user names in ``url``, each as written (maybe percent-encoded)."""
    passwords: list[str] = []
    users: list[str] = []
    try:
        parts = urlsplit(url)
    except ValueError:
        return passwords, users
    userinfo, at, _ = parts.netloc.rpartition("@")
    if at:
        user, colon, password = userinfo.partition(":")
        users += [user] if user else []
        passwords += [password] if colon and password else []
    for pair in parts.query.split("&"):
        name, equals, value = pair.partition("=")
        if equals and value and _secret_name(name):
            (users if unquote_plus(name).lower() == _USER else passwords).append(value)
    return passwords, users


def _forms(raw: str) -> set[str]:
    """``raw`` as written, decoded (once, and twice as redis-py decodes a query value
    parse_qs decoded already), and encoded again both ways."""
    decoded = {raw, unquote(raw), unquote_plus(raw), unquote(unquote_plus(raw))}
    encoded = {form for value in decoded for form in (quote(value, safe=""), quote_plus(value))}
    return {form for form in decoded | encoded if form}


def url_secrets(url: str) -> tuple[str, ...]:
    """Every form of every password in ``url``, longest first (for scrubbing text that
    may quote it); empty when it has none."""
    passwords, _ = _raw_secrets(url)
    forms = {form for raw in passwords for form in _forms(raw)}
    return tuple(sorted(forms, key=lambda form: (-len(form), form)))


def redact_url(url: str) -> str:
    """``url`` with its user info and every secret query parameter replaced by ``***``,
    for logs and reprs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _HIDDEN
    _, at, hostinfo = parts.netloc.rpartition("@")
    netloc = f"{_HIDDEN}@{hostinfo}" if at else parts.netloc
    query = "&".join(
        f"{name}={_HIDDEN}" if equals and _secret_name(name) else f"{name}{equals}{value}"
        for pair in parts.query.split("&")
        for name, equals, value in [pair.partition("=")]
    )
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if parts.query else "")
