"""The one error boundary: HTTP statuses, aiohttp and OS errors become `poller` errors.

Everything the transport can see go wrong is translated here, so the rest of
the package deals only with the tree in :mod:`poller.errors`. Text that comes
from outside (error bodies, exception messages) is scrubbed of the request's
secrets before it is put in a message, and an original exception whose text
holds a secret is not chained.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import math
from collections.abc import Mapping, Sequence
from typing import Final, NoReturn

import aiohttp
import orjson

from .errors import (
    APIError,
    AuthenticationError,
    ConnectError,
    ConnectionLostError,
    JobNotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    RequestError,
    RequestTimeoutError,
    ServerError,
    TLSError,
    TransportError,
    UnexpectedStatusError,
)

__all__ = [
    "client_error",
    "detached",
    "error_for_status",
    "parse_retry_after",
    "raise_mapped",
    "scrub",
]

# A server asking for more than a day is treated as asking for a day: the engine keeps
# its promise to look again, and a typo on the server side cannot park a job for years.
MAX_RETRY_AFTER_S: Final = 86_400.0
_DETAIL_CHARS: Final = 300
_REDACTED: Final = "[REDACTED]"


def scrub(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every secret replaced by a placeholder."""
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, _REDACTED)
    return text


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delay-seconds or an HTTP date.

    Returns None when absent or unreadable; clamps to [0, one day].
    """
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # RFC 9110: the obsolete asctime form has no zone; it is GMT
            when = when.replace(tzinfo=datetime.UTC)
        seconds = when.timestamp() - now
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def _detail(body: bytes, secrets: Sequence[str]) -> str | None:
    """The error text of a ``{"detail": ...}`` body, else the body's start; scrubbed of
    secrets (before it is cut, so no part of one survives) and of control characters."""
    if not body:
        return None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    detail = parsed.get("detail") if isinstance(parsed, dict) else None
    if isinstance(detail, dict):
        code, message = detail.get("code"), detail.get("message")
        text = f"{code}: {message}" if code and message else str(message or code or detail)
    elif detail is not None:
        text = str(detail)
    else:
        text = body.decode("utf-8", "replace")
    text = scrub(text, secrets)[:_DETAIL_CHARS]
    # Escape what could forge log lines or drive a terminal, as excerpts are.
    return text if text.isprintable() else repr(text)[1:-1]


def error_for_status(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    job_id: str | None,
    now: float,
    secrets: Sequence[str] = (),
) -> APIError:
    """The error for a non-success response."""
    request_id = headers.get("x-request-id")
    detail = _detail(body, secrets)
    suffix = f": {detail}" if detail else ""
    if status == 429 or status >= 500:
        kind: type[RateLimitedError | ServerError] = (
            RateLimitedError if status == 429 else ServerError
        )
        return kind(
            f"{_STATUS_MESSAGES[kind]}{suffix}",
            retry_after_s=parse_retry_after(headers.get("retry-after"), now),
            job_id=job_id,
            status=status,
            request_id=request_id,
            detail=detail,
        )
    simple = _SIMPLE_STATUSES.get(status, UnexpectedStatusError)
    return simple(
        f"{_STATUS_MESSAGES[simple]}{suffix}",
        job_id=job_id,
        status=status,
        request_id=request_id,
        detail=detail,
    )


_SIMPLE_STATUSES: Final[Mapping[int, type[APIError]]] = {
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: JobNotFoundError,
}
_STATUS_MESSAGES: Final[Mapping[type[APIError], str]] = {
    AuthenticationError: "authentication failed",
    PermissionDeniedError: "permission denied",
    JobNotFoundError: "job not found",
    RateLimitedError: "rate limited",
    ServerError: "server error",
    UnexpectedStatusError: "unexpected HTTP status",
}


_MESSAGES: Final[Mapping[type[TransportError], str]] = {
    ConnectError: "could not connect",
    TLSError: "TLS handshake failed",
    RequestTimeoutError: "request timed out",
    ConnectionLostError: "connection lost",
    TransportError: "transport error",
}


def _classify(exc: BaseException) -> type[TransportError] | None:
    # Order matters: aiohttp's connector errors are also OSErrors, and its
    # ServerTimeoutError is also a TimeoutError.
    if isinstance(exc, aiohttp.ClientSSLError):
        return TLSError
    if isinstance(exc, aiohttp.ClientConnectorError | ConnectionRefusedError):
        return ConnectError
    if isinstance(exc, aiohttp.ServerTimeoutError | asyncio.TimeoutError):
        return RequestTimeoutError
    if isinstance(
        exc,
        aiohttp.ServerDisconnectedError
        | aiohttp.ClientPayloadError
        | aiohttp.ClientOSError
        | ConnectionError,
    ):
        return ConnectionLostError
    if isinstance(exc, aiohttp.ClientError | OSError):
        return TransportError
    return None


def client_error(
    exc: Exception, job_id: str | None, secrets: Sequence[str] = ()
) -> TransportError | None:
    """The :class:`TransportError` for an aiohttp or OS error, or None for anything else.

    The result's ``__cause__`` is the original unless the original's text (or anything
    chained to it) holds a secret; raise it with :func:`raise_mapped` so that the
    original is not even reachable as ``__context__`` in that case.
    """
    kind = _classify(exc)
    if kind is None:
        return None
    original = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    error = kind(f"{_MESSAGES[kind]} ({scrub(original, secrets)})", job_id=job_id)
    error.__cause__ = None if _mentions(exc, secrets) else exc
    error.__suppress_context__ = True
    return error


def raise_mapped(error: TransportError) -> NoReturn:
    """Raise a :func:`client_error` result with no implicit ``__context__``: "from None"
    would only hide the original from tracebacks, not from code that walks the chain."""
    try:
        raise error
    finally:
        error.__context__ = None


def detached(error: RequestError) -> RequestError:
    """``error`` and everything chained to it, without tracebacks.

    The frames of a failed request hold the secrets in their locals (the headers, a URL
    with ``access_token``), and error reporters capture frame locals; the message, the
    status and the request ID say what happened without them.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.__traceback__ = None
        current = current.__cause__ or current.__context__
    return error


def _mentions(exc: BaseException, secrets: Sequence[str]) -> bool:
    """Whether a secret appears in ``exc`` or anything chained to it."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts = (str(current), repr(current), repr(current.args))
        if any(secret and secret in text for secret in secrets for text in texts):
            return True
        current = current.__cause__ or current.__context__
    return False
