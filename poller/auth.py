"""Credentials: how requests authenticate, kept out of every repr, log and message.

A :class:`Credential` holds an API key (and optionally an ``access_token``) and
the way it is sent. Its ``repr`` shows only a short fingerprint (a hash prefix),
never the key, so credentials can be logged, compared and used as dict keys.
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
import json
import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final
from urllib.parse import quote, quote_plus, urlencode

from .errors import ConfigError

__all__ = ["DEFAULT_BASE_URL", "AuthScheme", "Credential", "is_loopback", "resolve_base_url"]

DEFAULT_BASE_URL: Final = "https://api.retab.com"
API_KEY_ENV: Final = "RETAB_API_KEY"
BASE_URL_ENV: Final = "RETAB_API_BASE_URL"


class AuthScheme(enum.StrEnum):
    """How the API key is sent."""

    API_KEY = "api-key"
    """``Api-Key: <key>`` (the documented default)."""
    BEARER = "bearer"
    """``Authorization: Bearer <key>`` (SDK releases from mid-2026)."""


class Credential:
    """An API key, and optionally an ``access_token`` query parameter, that never leak.

    Args:
        api_key: the key; ``None`` reads ``RETAB_API_KEY``. May be None only when
            ``access_token`` is given.
        scheme: how the key is sent (``Api-Key`` header by default).
        access_token: sent as the ``access_token`` query parameter when given.

    What a transport sends for it (secret, all of them: never log them):
    :attr:`auth_headers`, the headers as one dict, and :attr:`auth_query`, the encoded
    query part; read-only, both (:attr:`headers` and :attr:`params` are the same as
    read-only mappings).

    Raises:
        ConfigError: no key and no token, or a key with whitespace or control characters.
    """

    __slots__ = (
        "__weakref__",
        "_access_token",
        "_api_key",
        "_fingerprint",
        "_hash",
        "_headers",
        "_params",
        "_secrets",
        "auth_headers",
        "auth_query",
        "scheme",
    )

    def __init__(
        self,
        api_key: str | None = None,
        *,
        scheme: AuthScheme | str = AuthScheme.API_KEY,
        access_token: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        key = api_key if api_key is not None else env.get(API_KEY_ENV) or None
        if key is None and access_token is None:
            raise ConfigError(
                f"api_key: no API key given and {API_KEY_ENV} is not set "
                "(pass api_key=... or an access_token)"
            )
        try:
            self.scheme = AuthScheme(scheme)
        except ValueError:
            choices = ", ".join(s.value for s in AuthScheme)
            raise ConfigError(f"auth_scheme: must be one of {choices}") from None
        for name, value in (("api_key", key), ("access_token", access_token)):
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{name}: must be a str, not {type(value).__name__}")
            if value is not None and (
                not value or not value.isprintable() or value != value.strip() or " " in value
            ):
                raise ConfigError(
                    f"{name}: must be a non-empty string without spaces or control characters"
                )
        self._api_key = key
        self._access_token = access_token
        digest = hashlib.sha256(f"{key}\x00{access_token}".encode()).hexdigest()
        self._fingerprint = digest[:10]
        self._secrets: tuple[str, ...] | None = None
        self._hash = hash((self._fingerprint, self.scheme))  # looked up on every track
        headers: dict[str, str] = {}
        if key is not None:
            if self.scheme is AuthScheme.BEARER:
                headers["Authorization"] = f"Bearer {key}"
            else:
                headers["Api-Key"] = key
        # Read-only views: no caller can change what an "equal" credential sends.
        self._headers: Mapping[str, str] = MappingProxyType(headers)
        self._params: Mapping[str, str] = MappingProxyType(
            {"access_token": access_token} if access_token is not None else {}
        )
        # What a transport sends on every request, ready-made: read on every poll, so
        # plain attributes (no property call); documented as read-only. Secret.
        self.auth_headers: dict[str, str] = dict(headers)
        """The headers this credential adds to a request (``Api-Key``, or
        ``Authorization``), as the one dict a transport passes on every request: read it,
        never change it (:attr:`headers` is the same, as a read-only view). Secret: never
        log it."""
        self.auth_query: str = urlencode(dict(self._params))
        """The query part this credential adds to a request URL, encoded
        (``access_token=...``; empty without a token), to join to a URL's own query
        with ``&``. Secret: never log it."""

    @property
    def fingerprint(self) -> str:
        """A short, non-reversible identifier: safe for logs and metrics."""
        return self._fingerprint

    @property
    def headers(self) -> Mapping[str, str]:
        """The authentication headers to send. Secret: never log."""
        return self._headers

    @property
    def params(self) -> Mapping[str, str]:
        """The authentication query parameters to send. Secret: never log."""
        return self._params

    def secrets(self) -> tuple[str, ...]:
        """The secret strings, for scrubbing text before it reaches a message or a log:
        each as it is, and as it looks percent-encoded (the access token travels in the
        URL, and an error page may echo it) or escaped in JSON."""
        found = self._secrets
        if found is None:
            forms: dict[str, None] = {}
            for secret in (self._api_key, self._access_token):
                if secret:
                    encoded = (quote(secret, safe=""), quote_plus(secret))
                    for form in (secret, *encoded, json.dumps(secret)[1:-1]):
                        forms[form] = None
            # Longest first, so that no form is cut short by a shorter one inside it.
            found = self._secrets = tuple(sorted(forms, key=len, reverse=True))
        return found

    def __repr__(self) -> str:
        return f"Credential(scheme={self.scheme.value!r}, fingerprint={self._fingerprint!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Credential):
            return NotImplemented
        return (self._api_key, self._access_token, self.scheme) == (
            other._api_key,
            other._access_token,
            other.scheme,
        )

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self) -> str | tuple[object, ...]:
        # Pickling would write the key to wherever the pickle goes; refuse.
        raise TypeError("Credential cannot be pickled")


def resolve_base_url(base_url: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The base URL: the argument, else ``RETAB_API_BASE_URL``, else ``https://api.retab.com``.

    Raises:
        ConfigError: the URL is not absolute http(s), or carries a query or fragment.
    """
    from yarl import URL

    env = os.environ if environ is None else environ
    raw = base_url if base_url is not None else env.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    if not isinstance(raw, str) or not raw.isprintable() or raw != raw.strip() or " " in raw:
        raise ConfigError("base_url: must be a URL without spaces or control characters")
    try:
        url = URL(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"base_url: not a valid URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError("base_url: must be an absolute http:// or https:// URL")
    if url.query_string or url.fragment or url.user or url.password:
        raise ConfigError("base_url: must not carry a query, a fragment or credentials")
    return str(url).rstrip("/")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
