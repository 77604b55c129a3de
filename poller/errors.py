"""The exceptions `poller` raises, all in one tree.

Every error a user can see derives from :class:`PollerError`. aiohttp, OS and
msgspec exceptions never escape: the transport maps them here in one place
(``poller._boundary``), chaining the original with ``raise ... from exc`` unless
the original's text would carry a secret::

    PollerError
    ├── ConfigError                  invalid configuration (also a ValueError)
    ├── InvalidJobIdError            a job ID that could address another resource (a ValueError)
    ├── PollerClosedError            the engine was closed while a call was waiting on it
    ├── UntrackedError               the job was untracked while a call was waiting for it
    ├── SubscriberOverflowError      a subscriber's bounded buffer overflowed; events were dropped
    ├── TrackingExpiredError         a job passed its ``expires_at`` without a terminal status
    ├── JobsFailedError              ``wait_all``: some jobs ended in an error (carries all results)
    └── RequestError                 one request failed; carries ``status`` and ``request_id``
        ├── DecodeError              the body was not a valid payload (carries an excerpt)
        ├── TransportError           no usable HTTP response
        │   ├── ConnectError         could not connect
        │   │   └── TLSError         the TLS handshake failed (certificate not verified, ...)
        │   ├── ConnectionLostError  connection reset or closed mid-request
        │   └── RequestTimeoutError  no complete response within the request timeout
        └── APIError                 the server answered with an error status
            ├── AuthenticationError  401
            ├── PermissionDeniedError 403
            ├── JobNotFoundError     404
            ├── RateLimitedError     429 (``retry_after_s``)
            ├── ServerError          5xx (``retry_after_s`` when given)
            └── UnexpectedStatusError any other non-2xx status

``retryable`` tells whether retrying the same request later can succeed.
"""

from __future__ import annotations

__all__ = [
    "APIError",
    "AuthenticationError",
    "ConfigError",
    "ConnectError",
    "ConnectionLostError",
    "DecodeError",
    "InvalidJobIdError",
    "JobNotFoundError",
    "JobsFailedError",
    "PermissionDeniedError",
    "PollerClosedError",
    "PollerError",
    "RateLimitedError",
    "RequestError",
    "RequestTimeoutError",
    "ServerError",
    "SubscriberOverflowError",
    "TLSError",
    "TrackingExpiredError",
    "TransportError",
    "UnexpectedStatusError",
    "UntrackedError",
]

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar, TypedDict, Unpack

if TYPE_CHECKING:
    from .models import JobStatus


class PollerError(Exception):
    """Base class of every error raised by `poller`."""

    retryable: bool = False


class ConfigError(PollerError, ValueError):
    """A setting is invalid. The message names the setting."""


class InvalidJobIdError(PollerError, ValueError):
    """A job ID was empty, too long, or held characters that could address another resource."""


class PollerClosedError(PollerError):
    """The engine was closed (or never started) while a call needed it."""


class UntrackedError(PollerError):
    """The job was untracked while a ``wait`` for it was pending."""


class SubscriberOverflowError(PollerError):
    """A subscriber did not keep up: its bounded buffer filled and later events were dropped.

    Raised by the subscription stream once the events buffered before the overflow have
    been received. ``dropped`` counts at least one dropped event.
    """

    def __init__(self, message: str, *, dropped: int) -> None:
        super().__init__(message)
        self.dropped = dropped


class TrackingExpiredError(PollerError):
    """The job was still not terminal after its ``expires_at``; tracking stopped."""

    def __init__(self, message: str, *, job_id: str) -> None:
        super().__init__(message)
        self.job_id = job_id


class JobsFailedError(PollerError):
    """``wait_all`` finished, but some jobs ended in an error instead of a terminal status.

    ``results`` holds the jobs that did reach a terminal status, ``errors`` the others.
    """

    def __init__(self, results: Mapping[str, JobStatus], errors: Mapping[str, PollerError]) -> None:
        first = next(iter(errors.items()), None)
        detail = f"; first: {first[0]}: {first[1]}" if first else ""
        super().__init__(f"{len(errors)} of {len(results) + len(errors)} jobs failed{detail}")
        self.results = dict(results)
        self.errors = dict(errors)


class _Context(TypedDict, total=False):
    """What every :class:`RequestError` carries besides its message (keyword arguments
    of each subclass's constructor, passed on as they are)."""

    job_id: str | None
    status: int | None
    request_id: str | None


class _APIContext(_Context, total=False):
    detail: str | None


class RequestError(PollerError):
    """A request for one job failed.

    Attributes:
        job_id: the job the request was for, when there was one.
        status: the HTTP status code, or None when no response was received.
        request_id: the server's ``x-request-id`` header, when present.
        api_fault: (class attribute) whether the failure tells that the API is failing
            (a 5xx, no usable answer, a garbled body), as the engine's health counts it;
            False for an answer the API meant (404, 429, ...) and for a request that
            says nothing of the API (a refused TLS certificate, a request not sent).
    """

    api_fault: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        job_id: str | None = None,
        status: int | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.status = status
        self.request_id = request_id

    def __str__(self) -> str:
        text = super().__str__()
        parts = []
        if self.job_id is not None:
            parts.append(f"job {self.job_id!r}")
        if self.status is not None:
            parts.append(f"HTTP {self.status}")
        if self.request_id is not None:
            parts.append(f"request id {self.request_id!r}")
        return f"{text} ({', '.join(parts)})" if parts else text


class DecodeError(RequestError):
    """The response body was not a valid payload (truncated, not JSON, wrong types, ...).

    ``excerpt`` holds the start of the body, escaped, for diagnosis.
    """

    retryable = True
    api_fault = True

    def __init__(self, message: str, *, excerpt: str, **context: Unpack[_Context]) -> None:
        super().__init__(message, **context)
        self.excerpt = excerpt


class TransportError(RequestError):
    """No usable HTTP response was received."""

    retryable = True
    api_fault = True


class ConnectError(TransportError):
    """The connection could not be established."""


class TLSError(ConnectError):
    """The TLS handshake failed: the server's certificate could not be verified, or the
    two sides share no TLS settings. Not an outage: retrying will not help until the
    certificate or the settings change."""

    retryable = False
    api_fault = False


class ConnectionLostError(TransportError):
    """The connection was reset or closed before the response was complete."""


class RequestTimeoutError(TransportError):
    """No complete response arrived within the per-request timeout."""


class APIError(RequestError):
    """The server answered with an error status; ``detail`` is its error text, if any."""

    def __init__(
        self, message: str, *, detail: str | None = None, **context: Unpack[_Context]
    ) -> None:
        super().__init__(message, **context)
        self.detail = detail


class AuthenticationError(APIError):
    """401: the API key or token was refused. Every job using that credential stops."""


class PermissionDeniedError(APIError):
    """403: the credential may not read this resource. Every job using it stops."""


class JobNotFoundError(APIError):
    """404: no such job, or it belongs to another organisation. Tracking of it ends."""


class _RetryAfterError(APIError):
    def __init__(
        self, message: str, *, retry_after_s: float | None = None, **context: Unpack[_APIContext]
    ) -> None:
        super().__init__(message, **context)
        self.retry_after_s = retry_after_s


class RateLimitedError(_RetryAfterError):
    """429: the organisation's rate limit was hit. ``retry_after_s`` when the server said."""

    retryable = True


class ServerError(_RetryAfterError):
    """5xx: the server failed. ``retry_after_s`` when the server said."""

    retryable = True
    api_fault = True


class UnexpectedStatusError(APIError):
    """Any other non-success status (400, 409, 422, ...)."""
