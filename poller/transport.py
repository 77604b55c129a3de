"""The transport seam: how the engine fetches one job, and the aiohttp implementation.

The engine talks only to the :class:`Transport` protocol, so tests and benchmarks
can put the simulator or a canned server behind it. A job ID crosses the seam as a
:data:`~poller.JobId`: checked once, when the job was tracked, and trusted by every
transport from then on. :class:`AiohttpTransport` owns exactly one
``aiohttp.ClientSession`` over one ``TCPConnector`` shared by every request, and maps
every failure through ``poller._boundary``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
import warnings
from asyncio import current_task
from collections.abc import Awaitable, Callable
from typing import Final, NoReturn, Protocol, TypeVar
from urllib.parse import urlencode

import aiohttp
from yarl import URL

from ._boundary import client_error, error_for_status, raise_mapped, scrub
from ._checks import check_bool, check_int, check_number
from ._deadline import Deadlines
from ._decode import Decode, decode_job, decode_status, invalid_body
from ._ids import validate_job_id
from ._version import __version__
from .auth import Credential, is_loopback, resolve_base_url
from .errors import ConfigError, DecodeError, InvalidJobIdError, PollerClosedError, RequestError
from .models import Job, JobId, JobStatus

__all__ = ["AiohttpTransport", "Transport"]

log = logging.getLogger("poller.transport")

# Status payloads are a few hundred bytes; a full job may carry a large response body.
MAX_STATUS_BODY_BYTES: Final = 1 << 20
MAX_JOB_BODY_BYTES: Final = 256 << 20
MAX_ERROR_BODY_BYTES: Final = 64 << 10
_ENCODING: Final = "Content-Encoding"

S = TypeVar("S", JobStatus, Job)


class Transport(Protocol):
    """Fetches jobs. Implementations raise only :class:`poller.errors.RequestError` subclasses.

    Every ``job_id`` the engine passes is a :data:`~poller.JobId`: checked by
    :func:`poller.validate_job_id` when the job was tracked, so an implementation may
    put it in a URL path as it is, and need not check it on every poll.
    """

    def get_status(self, job_id: JobId, credential: Credential) -> Awaitable[JobStatus]:
        """``GET /v1/jobs/{job_id}/status``. An ``async def`` implements this (it is
        declared as returning an awaitable so that an implementation may hand back the
        coroutine that does the work instead of wrapping it in one more)."""
        ...

    async def get_job(
        self,
        job_id: JobId,
        credential: Credential,
        *,
        include_request: bool = False,
        include_response: bool = True,
    ) -> Job:
        """``GET /v1/jobs/{job_id}``."""
        ...

    async def aclose(self) -> None:
        """Release every connection."""
        ...


class AiohttpTransport:
    """The production transport: one session, one bounded connection pool.

    Create it inside a running event loop, and close it with :meth:`aclose` (or use it
    as an async context manager).

    Args:
        base_url: API root; None reads ``RETAB_API_BASE_URL``, else ``https://api.retab.com``.
        max_connections: connections open at once, across all hosts.
        request_timeout_s: limit on one whole request, connect to last byte. One shared
            check every eighth of it enforces it (not a timer per request), so a
            request is cut between 1x and 1.125x this long after it started.
        insecure_skip_tls_verify: turn TLS certificate verification off. Never do this
            against the real API; it logs a warning and emits a ``RuntimeWarning``.
        ssl_context: a custom TLS context (custom CA, client certificate).
        clock: wall-clock source, for ``Retry-After`` dates.
        user_agent: the ``User-Agent`` header; None: ``poller/<version>``. A cluster
            replica names itself in it (``poller/<version> replica/<id>``).

    Raises:
        ConfigError: an invalid setting (the message names it).
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        max_connections: int = 64,
        request_timeout_s: float = 10.0,
        insecure_skip_tls_verify: bool = False,
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.time,
        user_agent: str | None = None,
    ) -> None:
        self.base_url = self.check_settings(
            base_url, max_connections, request_timeout_s, insecure_skip_tls_verify
        )
        self._jobs_prefix = f"{self.base_url}/v1/jobs/"
        self._deadlines = Deadlines(request_timeout_s)
        # aiohttp's timeouts, by whether the request is awaited in a task: then no timer
        # per request, self._deadlines times it (see poller._deadline); outside any task
        # the shared check cannot cancel it, so aiohttp's own timer does.
        self._timeouts = {
            True: aiohttp.ClientTimeout(total=None, sock_connect=request_timeout_s),
            False: aiohttp.ClientTimeout(total=request_timeout_s),
        }
        self._clock = clock
        tls: ssl.SSLContext | bool = True
        if insecure_skip_tls_verify:
            _warn("TLS certificate verification is OFF (insecure_skip_tls_verify=True)")
            if self.base_url.startswith("http:") and not _is_loopback(self.base_url):
                _warn("API keys go in clear text over plain http:// to a remote host")
            tls = False
        elif ssl_context is not None:
            if ssl_context.verify_mode == ssl.CERT_NONE or not ssl_context.check_hostname:
                _warn("TLS certificate verification is OFF (the ssl_context does not verify)")
            tls = ssl_context
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=max_connections,
                limit_per_host=0,
                ttl_dns_cache=300,
                ssl=tls,
                keepalive_timeout=30,
            ),
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=self._timeouts[True],
            headers={
                "User-Agent": user_agent or f"poller/{__version__}",
                "Accept": "application/json",
            },
            raise_for_status=False,
            trust_env=False,
        )

    @staticmethod
    def check_settings(
        base_url: str | None,
        max_connections: int,
        request_timeout_s: float,
        insecure_skip_tls_verify: bool = False,
    ) -> str:
        """Validate settings without opening anything; returns the resolved base URL.

        Plain ``http://`` is accepted for loopback hosts (a local simulator) only: to any
        other host it would send the API key in clear text, so it takes
        ``insecure_skip_tls_verify=True``.

        Raises:
            ConfigError: a setting is invalid (the message names it).
        """
        check_bool("insecure_skip_tls_verify", insecure_skip_tls_verify)
        check_int("max_connections", max_connections)
        check_number("request_timeout_s", request_timeout_s, above=0)
        resolved = resolve_base_url(base_url)
        remote_plain = resolved.startswith("http:") and not _is_loopback(resolved)
        if remote_plain and not insecure_skip_tls_verify:
            raise ConfigError(
                "base_url: plain http:// to a remote host would send the API key in clear "
                "text; use an https:// URL (http:// is for loopback hosts only, such as a "
                "local simulator on 127.0.0.1)"
            )
        return resolved

    async def __aenter__(self) -> AiohttpTransport:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"AiohttpTransport(base_url={self.base_url!r})"

    async def _fetch(
        self, url: URL, job_id: str, credential: Credential, limit: int, decode: Decode[S]
    ) -> S:
        """GET ``url`` and decode the body of its 200 response; raises for anything else."""
        task = current_task()
        deadlines = self._deadlines
        if task is not None:
            deadlines.start(task)
        try:
            # Awaited, not entered with ``async with``: the context manager's __aenter__
            # is one more coroutine frame that every resumption of this request passes
            # through. ``release()`` in ``finally`` is what its __aexit__ does (returning a
            # connection whose body was not read to the end closes it).
            resp = await self._session.get(
                url,
                headers=credential.auth_headers,
                allow_redirects=False,
                timeout=self._timeouts[task is not None],
            )
            try:
                headers = resp.headers
                request_id = headers.get("x-request-id")
                length = resp.content_length
                if resp.status == 200 and length is not None and length <= limit:
                    if _ENCODING not in headers:  # the length is the body's: read at once
                        body = await resp.read()
                    else:
                        body = await _read_limited(resp, limit, job_id, request_id)
                else:
                    body = await self._other_body(resp, job_id, credential, limit, request_id)
            finally:
                resp.release()
        except DecodeError as exc:  # a body over the limit: its excerpt may echo secrets
            raise _scrubbed(exc, credential) from exc.__cause__
        except RequestError:
            raise
        except asyncio.CancelledError:
            if task is None or not deadlines.absorb(task):
                raise  # cancelled by its caller: stays cancelled
            error = client_error(TimeoutError(), job_id)
            assert error is not None
        except Exception as exc:  # the one place aiohttp and OS errors are translated
            if self._session.closed:  # checked here, not before: it costs on every poll
                raise PollerClosedError("the transport is closed") from None
            error = client_error(exc, job_id, credential.secrets())
            if error is None:
                raise
        else:
            try:
                decoded = decode(body, job_id, request_id)
                if decoded.id != job_id:  # the hot path: checked inline
                    _check_id(decoded, job_id, body, request_id)
            except DecodeError as exc:
                raise _scrubbed(exc, credential) from exc.__cause__
            return decoded
        finally:
            if task is not None:
                deadlines.finish(task)
        raise_mapped(error)  # outside the handler, so the original is no implicit context

    async def _other_body(
        self,
        resp: aiohttp.ClientResponse,
        job_id: str,
        credential: Credential,
        limit: int,
        request_id: str | None,
    ) -> bytes:
        """The body of a 200 response of unknown length; raises for any other status."""
        if resp.status == 200:
            return await _read_limited(resp, limit, job_id, request_id)
        # An error page only feeds a message: read its start, whatever its size, so that
        # a large 429 page still yields its Retry-After.
        body = await resp.content.read(MAX_ERROR_BODY_BYTES)
        raise error_for_status(
            resp.status,
            resp.headers,
            body,
            job_id=job_id,
            now=self._clock(),
            secrets=credential.secrets(),
        )

    def get_status(self, job_id: str, credential: Credential) -> Awaitable[JobStatus]:
        """Fetch a job's lifecycle payload, for any ``job_id``: it is checked first
        (:func:`poller.validate_job_id`; the error is raised when the result is
        awaited). Raises :class:`poller.errors.RequestError`."""
        try:
            checked = validate_job_id(job_id)
        except InvalidJobIdError as exc:
            return _raise(exc)
        return self.get_checked_status(checked, credential)

    def get_checked_status(self, job_id: JobId, credential: Credential) -> Awaitable[JobStatus]:
        """:meth:`get_status` for a :data:`~poller.JobId`, which is not checked again: what
        the engine calls on every poll of its own transport (it checks each ID once, when
        the job is tracked). Raises :class:`poller.errors.RequestError`.

        A plain method returning the request's coroutine, so that awaiting it costs no
        coroutine frame of its own: every resumption of an ``await`` passes through each
        frame of the chain, and this one runs on every poll. Errors are raised when the
        result is awaited, as from a coroutine function."""
        # A JobId holds unreserved URL characters and ':' only, so escaping ':' makes it
        # fully percent-encoded and no byte of it can act as a separator (this is what
        # quote(job_id, safe="") gives, without its cost on every poll); encoded=True
        # stops yarl from re-parsing it.
        segment = job_id.replace(":", "%3A") if ":" in job_id else job_id
        query = credential.auth_query
        path = f"{self._jobs_prefix}{segment}/status"
        url = URL(f"{path}?{query}" if query else path, encoded=True)
        return self._fetch(url, job_id, credential, MAX_STATUS_BODY_BYTES, decode_status)

    async def get_job(
        self,
        job_id: str,
        credential: Credential,
        *,
        include_request: bool = False,
        include_response: bool = True,
    ) -> Job:
        """Fetch the full job, for any ``job_id`` (it is checked first, as by
        :meth:`get_status`). Raises :class:`poller.errors.RequestError`."""
        checked = validate_job_id(job_id)
        segment = checked.replace(":", "%3A")  # percent-encoded, as in get_checked_status
        flags = urlencode(
            {
                "include_request": "true" if include_request else "false",
                "include_response": "true" if include_response else "false",
            }
        )
        query = f"{flags}&{credential.auth_query}" if credential.auth_query else flags
        url = URL(f"{self._jobs_prefix}{segment}?{query}", encoded=True)
        return await self._fetch(url, checked, credential, MAX_JOB_BODY_BYTES, decode_job)

    async def aclose(self) -> None:
        """Close the session and every pooled connection. Idempotent."""
        self._deadlines.close()
        if not self._session.closed:
            await self._session.close()


def _warn(message: str) -> None:
    log.warning(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def _is_loopback(url: str) -> bool:
    return is_loopback(URL(url).host or "")


async def _read_limited(
    resp: aiohttp.ClientResponse, limit: int, job_id: str, request_id: str | None
) -> bytes:
    """The whole body, refusing (without buffering it all) one larger than ``limit`` bytes
    once decompressed."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > limit:
            message = f"response body exceeds {limit} bytes"
            raise invalid_body(message, b"".join(chunks), job_id, request_id, resp.status)
        chunks.append(chunk)
    return b"".join(chunks)


def _scrubbed(exc: DecodeError, credential: Credential) -> DecodeError:
    """``exc`` with the credential's secrets scrubbed from its excerpt and message: a body
    that echoes the request (a proxy's error page) must not carry the key into a log."""
    secrets = credential.secrets()
    exc.excerpt = scrub(exc.excerpt, secrets)
    exc.args = tuple(scrub(a, secrets) if isinstance(a, str) else a for a in exc.args)
    return exc


async def _raise(exc: BaseException) -> NoReturn:
    raise exc


def _check_id(decoded: S, job_id: str, body: bytes, request_id: str | None) -> S:
    # A payload for another job would be attributed to the wrong job: refuse it.
    if decoded.id != job_id:
        message = f"payload is for job {decoded.id[:80]!r}, not the job requested"
        raise invalid_body(message, body, job_id, request_id)
    return decoded
