"""Helpers shared by the bug-hunting tests (faults, cancellation, security, endurance)."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from poller.auth import Credential
from poller.errors import JobNotFoundError, PollerClosedError, RequestError
from poller.models import Endpoint, Job, JobStatus, Status
from poller.sched.backoff import Backoff
from poller.transport import Transport

# Fast polling for simulated jobs that last tens of milliseconds.
FAST = Backoff(
    initial_interval_s={"validating": 0.02, "queued": 0.02, "in_progress": 0.02},
    default_interval_s=0.02,
    min_interval_s=0.01,
    max_interval_s=0.2,
    error_base_s=0.02,
    error_max_s=0.2,
)


# -- a transport wrapper that sees everything the engine sees ----------------------------


@dataclass
class Call:
    """One ``get_status`` call as the engine made it."""

    job_id: str
    fingerprint: str
    sent_at: float
    done_at: float = 0.0
    outcome: str = ""  # "ok" or the error class name
    error: RequestError | None = None


@dataclass
class CountingTransport:
    """Wraps a transport and records every call, its timing and its outcome.

    The engine owns what it is given: ``aclose`` is forwarded.
    """

    inner: Transport
    clock: Callable[[], float] = time.time
    calls: list[Call] = field(default_factory=list)
    per_job: Counter[str] = field(default_factory=Counter)
    in_flight: Counter[str] = field(default_factory=Counter)
    max_in_flight_per_job: int = 0
    closed: bool = False

    async def get_status(self, job_id: str, credential: Credential) -> JobStatus:
        call = Call(job_id, credential.fingerprint, self.clock())
        self.calls.append(call)
        self.per_job[job_id] += 1
        self.in_flight[job_id] += 1
        self.max_in_flight_per_job = max(self.max_in_flight_per_job, self.in_flight[job_id])
        try:
            result = await self.inner.get_status(job_id, credential)
        except RequestError as exc:
            call.outcome, call.error = type(exc).__name__, exc
            raise
        else:
            call.outcome = "ok"
            return result
        finally:
            call.done_at = self.clock()
            self.in_flight[job_id] -= 1

    async def get_job(
        self,
        job_id: str,
        credential: Credential,
        *,
        include_request: bool = False,
        include_response: bool = True,
    ) -> Job:
        return await self.inner.get_job(
            job_id,
            credential,
            include_request=include_request,
            include_response=include_response,
        )

    async def aclose(self) -> None:
        self.closed = True
        await self.inner.aclose()

    def outcomes(self) -> Counter[str]:
        return Counter(call.outcome for call in self.calls if call.outcome)


# -- an in-memory transport: jobs whose status is a function of time ---------------------


_TERMINAL_VALUES = frozenset({"completed", "failed", "cancelled", "expired"})


@dataclass
class TimedJob:
    """A job that passes through ``statuses`` at the offsets ``at`` from ``created_at``."""

    created_at: float
    statuses: tuple[str, ...]
    at: tuple[float, ...]

    def status(self, now: float) -> str:
        current = self.statuses[0]
        for status, offset in zip(self.statuses, self.at, strict=True):
            if now >= self.created_at + offset:
                current = status
        return current


class MemoryTransport:
    """Answers ``get_status`` from a table of :class:`TimedJob` without any I/O.

    Unknown jobs raise ``JobNotFoundError``; ``delay_s`` makes each answer take that long
    (a real sleep, so it is a cancellation point).
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        *,
        org_id: str = "org_mem",
        delay_s: float = 0.0,
    ) -> None:
        self.jobs: dict[str, TimedJob] = {}
        self.clock = clock
        self.org_id = org_id
        self.delay_s = delay_s
        self.requests = 0
        self.closed = False

    def add(self, job_id: str, statuses: Iterable[str], at: Iterable[float]) -> None:
        self.jobs[job_id] = TimedJob(self.clock(), tuple(statuses), tuple(at))

    async def get_status(self, job_id: str, credential: Credential) -> JobStatus:
        if self.closed:
            raise PollerClosedError("closed")
        self.requests += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        else:
            await asyncio.sleep(0)
        job = self.jobs.get(job_id)
        if job is None:
            raise JobNotFoundError("job not found", job_id=job_id, status=404)
        now = self.clock()
        status = job.status(now)
        created = int(job.created_at)
        return JobStatus(
            id=job_id,
            status=Status(status),
            endpoint=Endpoint.DOCUMENTS_CLASSIFY,
            created_at=created,
            expires_at=created + 604_800,
            organization_id=self.org_id,
            completed_at=int(now) if status in _TERMINAL_VALUES else None,
        )

    async def get_job(self, job_id: str, credential: Credential, **_: Any) -> Job:
        payload = await self.get_status(job_id, credential)
        return Job(**{f: getattr(payload, f) for f in payload.__struct_fields__})

    async def aclose(self) -> None:
        self.closed = True


# -- tiny local HTTP servers -------------------------------------------------------------

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Seen:
    """One request a local server received."""

    raw_path: str
    query: dict[str, str]
    headers: CIMultiDict[str]
    port: int


class LocalServer:
    """A tiny aiohttp server on 127.0.0.1 (port 0) recording every request it gets."""

    def __init__(self, handler: Handler, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self._handler = handler
        self._ssl = ssl_context
        self._runner: web.ServerRunner | None = None
        self.requests: list[Seen] = []

    @property
    def paths(self) -> list[str]:
        """The raw path of every request, in order."""
        return [seen.raw_path for seen in self.requests]

    async def __aenter__(self) -> LocalServer:
        runner = web.ServerRunner(web.Server(self._handle, access_log=None), shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self._ssl).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def base_url(self) -> str:
        assert self._runner is not None
        scheme = "https" if self._ssl is not None else "http"
        return f"{scheme}://127.0.0.1:{self._runner.addresses[0][1]}"

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.requests.append(
            Seen(
                raw_path=request.raw_path,
                query=dict(request.query),
                headers=CIMultiDict(request.headers),
                port=peer[1] if peer else -1,
            )
        )
        return await self._handler(request)


def status_body(job_id: str, **overrides: Any) -> dict[str, Any]:
    """A valid ``/status`` payload for ``job_id``."""
    now = int(time.time())
    return {
        "id": job_id,
        "object": "job",
        "status": "completed",
        "endpoint": "/v1/documents/extract",
        "created_at": now - 10,
        "started_at": now - 5,
        "completed_at": now - 1,
        "expires_at": now + 604_800,
        "organization_id": "org_local",
        **overrides,
    }


def self_signed_cert(folder: Path) -> tuple[Path, Path] | None:
    """A self-signed certificate for 127.0.0.1 and its key, or None without openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


# -- what leaks --------------------------------------------------------------------------


def exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and everything reachable through ``__cause__``, ``__context__`` and groups."""
    seen: list[BaseException] = []
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        stack += [current.__cause__, current.__context__]
        stack += list(getattr(current, "exceptions", ()))
        for value in getattr(current, "__dict__", {}).values():
            if isinstance(value, BaseException):
                stack.append(value)
            elif isinstance(value, dict):
                stack += [v for v in value.values() if isinstance(v, BaseException)]
    return seen


def exception_texts(exc: BaseException) -> Iterator[str]:
    """Every text an exception (and its chain) shows: str, repr, args, attributes."""
    import traceback

    for current in exception_chain(exc):
        yield str(current)
        yield repr(current)
        yield repr(current.args)
        yield from (str(arg) for arg in current.args)
        yield repr(getattr(current, "__dict__", {}))
        yield "".join(traceback.format_exception(current))


def poller_tasks() -> list[asyncio.Task[Any]]:
    """Tasks of an engine still alive (the engine names all of its tasks ``poller-*``)."""
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("poller-") and not t.done()]
