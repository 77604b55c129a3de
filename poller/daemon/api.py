"""The control API of ``poller run`` (aiohttp.web), on 127.0.0.1 by default.

=======  ===================  ================================================
method   path                 what it does
=======  ===================  ================================================
POST     /jobs                add jobs: ``{"job_ids": [...]}`` or ``{"job_id": ...}``,
                              optional ``metadata`` (object), ``credential`` (name)
GET      /jobs                list: ``?status=&after=&limit=`` (paged by job ID;
                              ``status``: pending, an API status, or error)
GET      /jobs/{id}           one job: last status, seq, payload, error
DELETE   /jobs/{id}           stop tracking it
GET      /events              server-sent events (see ``poller.daemon.sse``)
GET      /healthz             ``{"status": "ok"|"degraded"|"stopping", ...}`` (see
                              ``poller.daemon.health``); 503 while shutting down
GET      /metrics             Prometheus text format
=======  ===================  ================================================

Security. With a ``control_token``, every path but ``/healthz`` needs
``Authorization: Bearer <token>``; the daemon refuses to listen on a non-loopback
address without one. Without a token it listens on loopback only, and two checks keep
a web page in a local browser out: bodies must be ``application/json`` (so a
cross-site form cannot post one without a CORS preflight, which is never granted)
and the ``Host`` header must name a loopback host (no DNS rebinding). Bodies must
be UTF-8 (``charset=utf-8`` or none), and the ``Host`` header is read strictly:
``host[:port]``, the port numeric, an IPv6 address in brackets.

Every error, whoever makes it (a handler, the router, aiohttp's body limit or its
HTTP parser), is ``{"error": {"code", "message", "field"?}}`` with a 4xx/5xx status:
``bad_request`` (400: not HTTP, the request line or a header too long), ``invalid_*``
(400), ``unauthorized`` (401), ``forbidden_host`` (403), ``not_found`` (404),
``method_not_allowed`` (405, with ``Allow``), ``request_too_large`` (413, or a
request's own limit), ``unsupported_media_type`` (415), ``internal_error`` (500),
``shutting_down`` and ``store_unavailable`` (503: the database cannot be written).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, Protocol

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_request import BaseRequest

from .config import is_loopback
from .health import Health, http_status
from .intake import AddResult, IntakeError
from .metrics import CONTENT_TYPE
from .rows import JobRow
from .store import STATUSES, Store

__all__ = ["ControlServer", "EventSource", "JobIntake", "JobsView", "StoreJobs", "build_app"]

log = logging.getLogger("poller.daemon.api")

_MAX_BODY: Final = 8 * 1024 * 1024
_LIST_DEFAULT: Final = 1000
_LIST_MAX: Final = 10_000
_SHUTDOWN_S: Final = 2.0
_OPEN_PATHS: Final = frozenset({"/healthz"})
_UTF8: Final = frozenset({"utf-8", "utf8"})
# host[:port]: a name or IPv4 address, or an IPv6 address (with a zone) in brackets.
_HOST: Final = re.compile(
    r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+(?:%[0-9A-Za-z._~-]+)?)\]|(?P<name>[0-9A-Za-z.-]+))"
    r"(?::(?P<port>[0-9]{1,5}))?"
)
_CODES: Final = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
    431: "bad_request",
}
_CONNECTION_OPTIONS: Final[dict[str, Any]] = {"access_log": None}


class JobIntake(Protocol):
    """Adds and removes jobs (:class:`~.intake.Intake`; its Redis twin in cluster mode).
    Both raise :class:`~.intake.IntakeError` for what the caller should hear."""

    async def add(
        self,
        job_ids: Sequence[str],
        *,
        credential: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> AddResult:
        """Validate, commit, then track."""

    async def remove(self, job_id: str) -> bool:
        """Stop tracking a job and hide it from listings; False if it was not there."""


class JobsView(Protocol):
    """What the listing routes read (the SQLite store, or the job set in Redis)."""

    async def job(self, job_id: str) -> tuple[JobRow, bytes | None] | None:
        """A job and its last payload (JSON), or None if it was never added."""

    async def list_jobs(self, *, status: str | None, after: str, limit: int) -> list[JobRow]:
        """Jobs not removed, by ID, after ``after``, of ``status`` if given."""

    async def has_status(self, status: str) -> bool:
        """Whether a job in the list has ``status``."""


class EventSource(Protocol):
    """The ``GET /events`` handler."""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Serve one client until it leaves or the daemon stops."""


class StoreJobs:
    """:class:`JobsView` over the SQLite store (each read in its worker thread)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def job(self, job_id: str) -> tuple[JobRow, bytes | None] | None:
        """See :meth:`.store.Store.job`."""
        return await self._store.call(self._store.job, job_id)

    async def list_jobs(self, *, status: str | None, after: str, limit: int) -> list[JobRow]:
        """See :meth:`.store.Store.list_jobs`."""
        return await self._store.call(
            self._store.list_jobs, status=status, after=after, limit=limit
        )

    async def has_status(self, status: str) -> bool:
        """See :meth:`.store.Store.has_status`."""
        return await self._store.call(self._store.has_status, status)


class _AddBody(msgspec.Struct, forbid_unknown_fields=True):
    job_ids: list[str] | None = None
    job_id: str | None = None
    metadata: dict[str, Any] | None = None
    credential: str | None = None


_ADD_DECODER: Final = msgspec.json.Decoder(_AddBody)


def _error(status: int, code: str, message: str, field: str | None = None) -> web.Response:
    detail: dict[str, str] = {"code": code, "message": message}
    if field is not None:
        detail["field"] = field
    return _json({"error": detail}, status=status)


def _json(payload: object, *, status: int = 200) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(payload), status=status, content_type="application/json"
    )


class _Handlers:
    def __init__(
        self,
        intake: JobIntake,
        jobs: JobsView,
        metrics: Callable[[], Awaitable[str]],
        health: Callable[[], Awaitable[Health]],
    ) -> None:
        self.intake, self.jobs, self.metrics, self.health = intake, jobs, metrics, health

    async def add(self, request: web.Request) -> web.Response:
        charset = request.charset
        if request.content_type != "application/json" or (
            charset is not None and charset.lower() not in _UTF8
        ):
            return _error(
                415,
                "unsupported_media_type",
                "send Content-Type: application/json (UTF-8: charset=utf-8 or none)",
            )
        try:
            body = _ADD_DECODER.decode(await request.read())
        except msgspec.ValidationError as exc:
            return _error(400, "invalid_body", str(exc))
        except msgspec.DecodeError:
            return _error(400, "invalid_json", "the body is not valid JSON")
        except RecursionError:
            return _error(400, "invalid_json", "the body is nested too deeply")
        if (body.job_ids is None) == (body.job_id is None):
            return _error(400, "invalid_body", "give either job_ids or job_id", "job_ids")
        job_ids = body.job_ids if body.job_ids is not None else [body.job_id or ""]
        try:
            result = await self.intake.add(
                job_ids, credential=body.credential, metadata=body.metadata
            )
        except IntakeError as exc:
            return _error(exc.status, exc.code, str(exc), exc.field)
        return _json(result, status=201 if result.added else 200)

    async def remove(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        if not await self.intake.remove(job_id):
            return _error(404, "not_found", f"job {job_id!r} is not tracked")
        return _json({"removed": job_id})

    async def get(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        found = await self.jobs.job(job_id)
        if found is None:
            return _error(404, "not_found", f"job {job_id!r} was never added")
        row, payload = found
        entry = msgspec.to_builtins(row)
        entry["job"] = msgspec.Raw(payload) if payload is not None else None
        return _json(entry)

    async def list(self, request: web.Request) -> web.Response:
        query = request.query
        try:
            limit = int(query.get("limit", _LIST_DEFAULT))
        except ValueError:
            limit = -1
        if not 1 <= limit <= _LIST_MAX:
            return _error(400, "invalid_limit", f"limit must be 1 to {_LIST_MAX}", "limit")
        status = query.get("status") or None
        # A status this version does not know is accepted if a job has it (a newer API's).
        if status is not None and status not in STATUSES and not await self.jobs.has_status(status):
            allowed = ", ".join(STATUSES)
            return _error(400, "invalid_status", f"status must be one of {allowed}", "status")
        rows = await self.jobs.list_jobs(status=status, after=query.get("after", ""), limit=limit)
        following = rows[-1].job_id if len(rows) == limit else None
        return _json({"jobs": rows, "next": following})

    async def healthz(self, request: web.Request) -> web.Response:
        health = await self.health()
        return _json(health, status=http_status(health))

    async def metrics_text(self, request: web.Request) -> web.Response:
        text = await self.metrics()
        return web.Response(text=text, headers={"Content-Type": CONTENT_TYPE})


@web.middleware
async def _errors(
    request: web.Request,
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> web.StreamResponse:
    """What a handler did not answer itself, answered in the JSON error format."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _error(exc.status, *_http_error(request, exc))
        if isinstance(exc, web.HTTPMethodNotAllowed):
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except sqlite3.Error as exc:  # a full disk, say
        log.error("%s %s: the database failed: %s", request.method, request.path, exc)
        return _error(503, "store_unavailable", f"the database cannot be used ({exc})")
    except IntakeError as exc:  # a read the store could not answer (Redis unreachable)
        return _error(exc.status, exc.code, str(exc), exc.field)
    except ConnectionError:
        raise  # the client left: nobody to answer
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return _error(500, "internal_error", "the daemon failed on this request: see its log")


def _http_error(request: web.Request, exc: web.HTTPException) -> tuple[str, str]:
    """The code and message for an error aiohttp raised (router, body limit)."""
    if isinstance(exc, web.HTTPNotFound):
        return "not_found", f"nothing at {request.path}"
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return "method_not_allowed", f"{exc.method} is not allowed here; allowed: {allowed}"
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return "request_too_large", f"the body is over {_MAX_BODY} bytes"
    return _CODES.get(exc.status, "error"), exc.reason


def _hostname(header: str | None) -> str | None:
    """The host of a ``Host`` header (``a:80`` -> ``a``, ``[::1]:80`` -> ``::1``), or
    None if the header is missing or not exactly ``host[:port]``."""
    found = _HOST.fullmatch(header) if header is not None else None
    if found is None or (found["port"] is not None and int(found["port"]) > 65535):
        return None
    return found["ipv6"] or found["name"]


def _guard(token: str | None) -> Callable[..., Awaitable[web.StreamResponse]]:
    expected = f"Bearer {token}".encode() if token is not None else None

    @web.middleware
    async def guard(
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        if expected is not None:
            if request.path not in _OPEN_PATHS:
                # Header bytes that are not UTF-8 arrive as surrogates: compare them as
                # the bytes they were, never fail on them.
                given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
                if not hmac.compare_digest(given, expected):
                    response = _error(401, "unauthorized", "a valid bearer token is required")
                    response.headers["WWW-Authenticate"] = 'Bearer realm="poller"'
                    return response
        else:
            host = _hostname(request.headers.get("Host"))
            if host is None or not is_loopback(host):
                return _error(403, "forbidden_host", "the Host header must name a loopback address")
        return await handler(request)

    return guard


def build_app(
    *,
    intake: JobIntake,
    jobs: JobsView,
    events: EventSource,
    metrics: Callable[[], Awaitable[str]],
    health: Callable[[], Awaitable[Health]],
    token: str | None,
) -> web.Application:
    """The aiohttp application (see the module docstring for the routes)."""
    handlers = _Handlers(intake, jobs, metrics, health)
    app = web.Application(client_max_size=_MAX_BODY, middlewares=[_errors, _guard(token)])
    app.router.add_post("/jobs", handlers.add)
    app.router.add_get("/jobs", handlers.list)
    app.router.add_get("/jobs/{job_id}", handlers.get)
    app.router.add_delete("/jobs/{job_id}", handlers.remove)
    app.router.add_get("/events", events.handle)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/metrics", handlers.metrics_text)
    return app


class _Connection(web.RequestHandler):
    """aiohttp's connection handler, answering a request it cannot parse (not HTTP, a
    request line or header too long) in the JSON error format too."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            log.error("error handling a request from %s", request.remote, exc_info=exc)
            code, text = "internal_error", "the daemon failed on this request: see its log"
        else:  # the client's fault: not worth more than a debug line
            log.debug("bad request from %s: %s", request.remote, exc)
            code = _CODES.get(status, "error")
            text = (
                "the request line or a header is too long"
                if isinstance(exc, LineTooLong)
                else "the request is not valid HTTP"
            )
        if request.writer.output_size > 0:  # as aiohttp: too late for another response
            raise ConnectionError("a response was sent already")
        response = _error(status, code, text)
        response.force_close()
        return response


class _Server(web.Server):
    def __call__(self) -> web.RequestHandler:
        return _Connection(self, loop=asyncio.get_running_loop(), **_CONNECTION_OPTIONS)


class _Runner(web.AppRunner):
    """An AppRunner whose connections are :class:`_Connection`: aiohttp has no public
    hook for the answers of its HTTP parser (aio-libs/aiohttp#3287)."""

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()  # starts and freezes the application
        return _Server(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
        )


class ControlServer:
    """Serves an application on ``host:port`` (0: a free port) until :meth:`stop`."""

    def __init__(self, app: web.Application, *, host: str, port: int) -> None:
        self._runner = _Runner(app, shutdown_timeout=_SHUTDOWN_S)
        self._host = host
        self._port = port
        self.url = ""

    async def start(self) -> str:
        """Listen; returns the base URL. Raises ``OSError`` if the address is taken."""
        await self._runner.setup()
        try:
            site = web.TCPSite(self._runner, self._host, self._port)
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            raise
        host, port = self._runner.addresses[0][:2]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{port}"
        return self.url

    async def stop(self) -> None:
        """Stop listening and finish the requests in flight (a few seconds at most)."""
        await self._runner.cleanup()
