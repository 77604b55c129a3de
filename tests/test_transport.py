"""AiohttpTransport over real loopback sockets: the simulator, and tiny local servers for
what the simulator does not produce (403, 418, redirects, oversized or foreign payloads,
malformed HTTP, TLS)."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import gzip
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import orjson
import pytest
from _helpers import Handler, LocalServer, exception_texts
from aiohttp import web

from poller.auth import AuthScheme, Credential
from poller.errors import (
    AuthenticationError,
    ConfigError,
    ConnectError,
    ConnectionLostError,
    DecodeError,
    InvalidJobIdError,
    JobNotFoundError,
    PermissionDeniedError,
    PollerClosedError,
    PollerError,
    RateLimitedError,
    RequestError,
    RequestTimeoutError,
    ServerError,
    TransportError,
    UnexpectedStatusError,
)
from poller.models import Endpoint, Job, JobResponse, JobStatus, Status
from poller.testing import UNKNOWN_ENDPOINTS, Change, Faults, JobsSimulator, SimServer
from poller.testing.pytest_plugin import TEST_API_KEY, TEST_ORG_ID
from poller.transport import MAX_STATUS_BODY_BYTES, AiohttpTransport

pytestmark = pytest.mark.anyio

T0 = 1_750_000_000.0  # a whole second, so Retry-After dates come out exact
SEVEN_DAYS_S = 604_800
JOB = "job_V1StGXR8_Z5jdHi6B-myT"
KEY = "rt_test_SECRET_abc123"
BAD_KEY = "rt_test_SECRET_bad456"
TOKEN = "tok_SECRET_xyz"
SECRETS = (KEY, BAD_KEY, TOKEN)
NO_ENV: dict[str, str] = {}


class Clock:
    """A settable clock for the simulator and the transport."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def status_payload(job_id: str, **overrides: Any) -> dict[str, Any]:
    return {
        "id": job_id,
        "object": "job",
        "status": "queued",
        "endpoint": "/v1/documents/extract",
        "created_at": int(T0),
        "expires_at": int(T0) + SEVEN_DAYS_S,
        "organization_id": "org_local",
        **overrides,
    }


def path_job_id(request: web.BaseRequest) -> str:
    return request.path.split("/")[3]


# -- local servers -----------------------------------------------------------------------


def answer(
    status: int, body: bytes | dict[str, Any] | list[Any], headers: dict[str, str] | None = None
) -> Handler:
    """A handler that always answers ``status`` with ``body`` (JSON unless bytes)."""
    raw = body if isinstance(body, bytes) else orjson.dumps(body)

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(status=status, body=raw, headers=headers)

    return handler


async def echo_status(request: web.BaseRequest) -> web.StreamResponse:
    """A valid status payload for whatever job the path names."""
    return web.json_response(status_payload(path_job_id(request)))


async def serve_chunked(request: web.BaseRequest, body: bytes) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    # The client hangs up once it has seen too much; that is the point of the test.
    with contextlib.suppress(ConnectionError):
        for start in range(0, len(body), 64 << 10):
            await response.write(body[start : start + (64 << 10)])
        await response.write_eof()
    return response


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound (so nobody else gets it), not listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture
def sim(retab_simulator: JobsSimulator) -> JobsSimulator:
    """The plugin's simulator on a frozen clock (org ``org_test``, key ``rt_test_key``)."""
    retab_simulator.clock = Clock(T0)
    return retab_simulator


@pytest.fixture
def clock(sim: JobsSimulator) -> Clock:
    assert isinstance(sim.clock, Clock)
    return sim.clock


@pytest.fixture
def cred() -> Credential:
    return Credential(TEST_API_KEY)


@pytest.fixture
async def transport(retab_sim: SimServer, sim: JobsSimulator) -> AsyncIterator[AiohttpTransport]:
    async with AiohttpTransport(retab_sim.base_url, request_timeout_s=5.0, clock=Clock(T0)) as t:
        yield t


def add_job(sim: JobsSimulator, *script: Change, org_id: str = TEST_ORG_ID, **kw: Any) -> str:
    return sim.add_job(org_id=org_id, script=list(script) or None, now=T0, **kw)


# -- success -----------------------------------------------------------------------------


async def test_get_status_decodes_a_200_payload(
    sim: JobsSimulator, clock: Clock, transport: AiohttpTransport, cred: Credential
) -> None:
    job_id = add_job(
        sim,
        Change("queued", 0.0),
        Change("in_progress", 5.0),
        job_id=JOB,
        endpoint="/v1/documents/parse",
        metadata={"batch_id": "batch_001"},
    )
    clock.t = T0 + 10.5

    status = await transport.get_status(job_id, cred)

    assert type(status) is JobStatus
    assert status.id == JOB
    assert status.status is Status.IN_PROGRESS
    assert status.endpoint is Endpoint.DOCUMENTS_PARSE
    assert status.organization_id == TEST_ORG_ID
    assert (status.created_at, status.started_at, status.completed_at) == (T0, T0 + 5, None)
    assert status.expires_at - status.created_at == SEVEN_DAYS_S
    assert status.metadata == {"batch_id": "batch_001"}
    assert status.attempt_count == 1
    assert status.cloud_task_name == f"jobs-{JOB}-1"
    [record] = list(sim.log)
    assert (record.method, record.path, record.status) == ("GET", f"/v1/jobs/{JOB}/status", 200)
    assert record.org_id == TEST_ORG_ID


@pytest.mark.parametrize("include_request", [True, False])
@pytest.mark.parametrize("include_response", [True, False])
async def test_get_job_returns_what_the_flags_ask_for(
    sim: JobsSimulator,
    transport: AiohttpTransport,
    cred: Credential,
    include_request: bool,
    include_response: bool,
) -> None:
    request = {"document": {"url": "https://files.invalid/a.pdf"}, "model": "retab-small"}
    job_id = add_job(sim, Change("queued", 0.0), Change("completed", 0.0), request=request)

    job = await transport.get_job(
        job_id, cred, include_request=include_request, include_response=include_response
    )

    assert type(job) is Job
    assert job.id == job_id and job.status is Status.COMPLETED
    assert job.completed_at == T0
    assert job.request == (request if include_request else None)
    expected_response = JobResponse(
        status_code=200, body={"object": "result", "job_id": job_id, "output": {"pages": 3}}
    )
    assert job.response == (expected_response if include_response else None)
    assert [r.path for r in sim.log] == [f"/v1/jobs/{job_id}"]


async def test_get_job_defaults_to_response_without_request(
    sim: JobsSimulator, transport: AiohttpTransport, cred: Credential
) -> None:
    job_id = add_job(sim, Change("completed", 0.0), request={"a": 1})
    job = await transport.get_job(job_id, cred)
    assert job.request is None
    assert job.response is not None and job.response.status_code == 200


async def test_get_job_sends_both_flags_and_the_access_token() -> None:
    async with (
        LocalServer(echo_status) as server,
        AiohttpTransport(server.base_url) as transport,
    ):
        await transport.get_job(JOB, Credential(KEY, access_token=TOKEN), include_request=True)
    [seen] = server.requests
    assert seen.raw_path.split("?")[0] == f"/v1/jobs/{JOB}"
    assert seen.query == {
        "include_request": "true",
        "include_response": "true",
        "access_token": TOKEN,
    }


# -- error statuses from the simulator ---------------------------------------------------


async def test_401_for_a_bad_key(sim: JobsSimulator, transport: AiohttpTransport) -> None:
    job_id = add_job(sim, Change("queued", 0.0))
    with pytest.raises(AuthenticationError) as info:
        await transport.get_status(job_id, Credential("rt_test_not_a_key"))
    error = info.value
    assert (error.status, error.request_id, error.job_id) == (401, "req_1", job_id)
    assert error.detail == "Invalid API key"
    assert error.retryable is False
    assert [r.status for r in sim.log] == [401]


@pytest.mark.parametrize("owner", ["nobody", "another_org"])
async def test_404_for_an_unknown_job_and_another_orgs_job(
    sim: JobsSimulator, transport: AiohttpTransport, cred: Credential, owner: str
) -> None:
    job_id = "job_does_not_exist"
    if owner == "another_org":
        sim.add_org("org_other", api_keys=["rt_test_other"])
        job_id = add_job(sim, Change("queued", 0.0), org_id="org_other")
    with pytest.raises(JobNotFoundError) as info:
        await transport.get_status(job_id, cred)
    error = info.value
    assert (error.status, error.request_id, error.job_id) == (404, "req_1", job_id)
    assert error.detail == "Job not found"
    assert error.retryable is False


@pytest.mark.parametrize(
    ("style", "expected_s"),
    [
        ("seconds", 1.0),
        # The date names T0 + 1; the transport's clock reads T0 + 0.25.
        ("http-date", 0.75),
        ("none", None),
    ],
)
async def test_429_carries_retry_after(
    retab_sim: SimServer,
    sim: JobsSimulator,
    cred: Credential,
    style: Any,
    expected_s: float | None,
) -> None:
    sim.retry_after = style
    sim.set_rate_limit(TEST_ORG_ID, 1)
    job_id = add_job(sim, Change("queued", 0.0))
    async with AiohttpTransport(retab_sim.base_url, clock=Clock(T0 + 0.25)) as transport:
        await transport.get_status(job_id, cred)
        with pytest.raises(RateLimitedError) as info:
            await transport.get_status(job_id, cred)
    error = info.value
    assert (error.status, error.request_id, error.job_id) == (429, "req_2", job_id)
    assert error.retry_after_s == expected_s
    assert error.detail == "rate_limited: Too many requests"
    assert error.retryable is True


async def test_500_is_a_server_error_without_retry_after(
    sim: JobsSimulator, transport: AiohttpTransport, cred: Credential
) -> None:
    sim.faults = Faults(server_error=1.0)
    job_id = add_job(sim, Change("queued", 0.0))
    with pytest.raises(ServerError) as info:
        await transport.get_status(job_id, cred)
    error = info.value
    assert (error.status, error.request_id, error.job_id) == (500, "req_1", job_id)
    assert error.retry_after_s is None
    assert error.detail == "Internal Server Error"
    assert error.retryable is True


async def test_503_carries_retry_after(
    sim: JobsSimulator, transport: AiohttpTransport, cred: Credential
) -> None:
    sim.faults = Faults(unavailable=1.0, unavailable_retry_after_s=7)
    job_id = add_job(sim, Change("queued", 0.0))
    with pytest.raises(ServerError) as info:
        await transport.get_job(job_id, cred)
    error = info.value
    assert (error.status, error.request_id, error.job_id) == (503, "req_1", job_id)
    assert error.retry_after_s == 7.0
    assert error.detail == "service_unavailable: Service temporarily unavailable"


# -- statuses the simulator does not produce ---------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "headers", "kind", "detail", "retry_after_s"),
    [
        (
            403,
            {"detail": {"code": "forbidden", "message": "key may not read jobs"}},
            {},
            PermissionDeniedError,
            "forbidden: key may not read jobs",
            None,
        ),
        (418, b"I'm a teapot", {}, UnexpectedStatusError, "I'm a teapot", None),
        (409, {"detail": "conflict"}, {}, UnexpectedStatusError, "conflict", None),
        (202, {"detail": "accepted"}, {}, UnexpectedStatusError, "accepted", None),
        (502, b"<html>bad gateway</html>", {"Retry-After": "120"}, ServerError, None, 120.0),
        (
            503,
            {"detail": "later"},
            {"Retry-After": email.utils.formatdate(T0 + 30, usegmt=True)},
            ServerError,
            "later",
            30.0,
        ),
        (429, {"detail": "slow down"}, {"Retry-After": "soon"}, RateLimitedError, None, None),
        (429, {"detail": "slow down"}, {"Retry-After": "864000"}, RateLimitedError, None, 86400.0),
    ],
)
async def test_other_statuses_map_to_their_error(
    status: int,
    body: bytes | dict[str, Any],
    headers: dict[str, str],
    kind: type[RequestError],
    detail: str | None,
    retry_after_s: float | None,
) -> None:
    handler = answer(status, body, {"x-request-id": "req_local_7", **headers})
    async with (
        LocalServer(handler) as server,
        AiohttpTransport(server.base_url, clock=Clock(T0)) as transport,
    ):
        with pytest.raises(kind) as info:
            await transport.get_status(JOB, Credential(KEY))
    error = info.value
    assert type(error) is kind
    assert (error.status, error.request_id, error.job_id) == (status, "req_local_7", JOB)
    if detail is not None:
        assert getattr(error, "detail", None) == detail
    if isinstance(error, RateLimitedError | ServerError):
        assert error.retry_after_s == retry_after_s
    assert len(server.requests) == 1


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_to_another_host_is_not_followed(status: int) -> None:
    async with LocalServer(echo_status) as elsewhere:
        target = f"{elsewhere.base_url}/v1/jobs/{JOB}/status"
        handler = answer(status, b"", {"Location": target, "x-request-id": "req_r"})
        async with (
            LocalServer(handler) as server,
            AiohttpTransport(server.base_url) as transport,
        ):
            with pytest.raises(UnexpectedStatusError) as info:
                await transport.get_status(JOB, Credential(KEY, access_token=TOKEN))
    assert (info.value.status, info.value.request_id) == (status, "req_r")
    assert len(server.requests) == 1
    # Neither the key nor the token ever reached the other host.
    assert elsewhere.requests == []


@pytest.mark.parametrize("method", ["get_status", "get_job"])
async def test_a_payload_for_another_job_is_refused(method: str) -> None:
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return web.json_response(status_payload("job_someone_else"), headers={"x-request-id": "r9"})

    async with LocalServer(handler) as server, AiohttpTransport(server.base_url) as transport:
        with pytest.raises(DecodeError) as info:
            await getattr(transport, method)(JOB, Credential(KEY))
    error = info.value
    assert (error.status, error.request_id, error.job_id) == (200, "r9", JOB)
    assert "job_someone_else" in str(error)
    assert "job_someone_else" in error.excerpt


async def test_an_empty_200_body_is_a_decode_error() -> None:
    async with (
        LocalServer(answer(200, b"")) as server,
        AiohttpTransport(server.base_url) as transport,
    ):
        with pytest.raises(DecodeError) as info:
            await transport.get_status(JOB, Credential(KEY))
    assert info.value.status == 200 and info.value.excerpt == ""


# -- body size limit ---------------------------------------------------------------------


def padded_status(size: int) -> bytes:
    body = orjson.dumps(status_payload(JOB))
    return body + b" " * (size - len(body))


@pytest.mark.parametrize("chunked", [True, False])
@pytest.mark.parametrize(
    ("size", "accepted"),
    [(MAX_STATUS_BODY_BYTES, True), (MAX_STATUS_BODY_BYTES + 1, False)],
)
async def test_a_status_body_larger_than_the_limit_is_refused(
    chunked: bool, size: int, accepted: bool
) -> None:
    body = padded_status(size)

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        if chunked:
            return await serve_chunked(request, body)
        return web.Response(body=body, content_type="application/json")

    async with LocalServer(handler) as server, AiohttpTransport(server.base_url) as transport:
        if accepted:
            assert (await transport.get_status(JOB, Credential(KEY))).id == JOB
        else:
            with pytest.raises(DecodeError, match=f"exceeds {MAX_STATUS_BODY_BYTES} bytes") as info:
                await transport.get_status(JOB, Credential(KEY))
            assert info.value.status == 200 and info.value.job_id == JOB
            assert info.value.excerpt.startswith('{"id":"job_')


async def test_a_gzip_body_inflating_past_the_limit_is_refused() -> None:
    compressed = gzip.compress(padded_status(3 * MAX_STATUS_BODY_BYTES))
    assert len(compressed) < MAX_STATUS_BODY_BYTES // 100
    handler = answer(
        200, compressed, {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    )
    async with LocalServer(handler) as server, AiohttpTransport(server.base_url) as transport:
        with pytest.raises(DecodeError, match="exceeds"):
            await transport.get_status(JOB, Credential(KEY))


# -- authentication ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("credential", "headers", "query"),
    [
        (Credential(KEY), {"Api-Key": KEY}, {}),
        (Credential(KEY, scheme=AuthScheme.BEARER), {"Authorization": f"Bearer {KEY}"}, {}),
        (Credential(access_token=TOKEN, environ=NO_ENV), {}, {"access_token": TOKEN}),
        (Credential(KEY, access_token=TOKEN), {"Api-Key": KEY}, {"access_token": TOKEN}),
        (
            Credential(KEY, scheme="bearer", access_token=TOKEN),
            {"Authorization": f"Bearer {KEY}"},
            {"access_token": TOKEN},
        ),
    ],
    ids=["api-key", "bearer", "token-only", "api-key+token", "bearer+token"],
)
async def test_each_auth_style_sends_exactly_its_credential(
    credential: Credential, headers: dict[str, str], query: dict[str, str]
) -> None:
    async with (
        LocalServer(echo_status) as server,
        AiohttpTransport(server.base_url) as transport,
    ):
        assert (await transport.get_status(JOB, credential)).id == JOB
    [seen] = server.requests
    sent_auth = {
        name: value for name, value in seen.headers.items() if name in ("Api-Key", "Authorization")
    }
    assert sent_auth == headers
    assert seen.query == query
    assert seen.raw_path.split("?")[0] == f"/v1/jobs/{JOB}/status"
    assert seen.headers["User-Agent"].startswith("poller/")
    assert seen.headers["Accept"] == "application/json"


@pytest.mark.parametrize(
    ("credential", "org_id"),
    [
        (Credential(TEST_API_KEY), TEST_ORG_ID),
        (Credential(TEST_API_KEY, scheme=AuthScheme.BEARER), TEST_ORG_ID),
        (Credential(access_token="tok_org_b", environ=NO_ENV), "org_b"),
        # Reserved characters must travel encoded and arrive intact.
        (Credential(access_token="tok_&x=1?#/%+;", environ=NO_ENV), "org_c"),
    ],
    ids=["api-key", "bearer", "access-token", "token-with-reserved-characters"],
)
async def test_the_simulator_authenticates_each_style(
    sim: JobsSimulator, transport: AiohttpTransport, credential: Credential, org_id: str
) -> None:
    sim.add_org("org_b", access_tokens=["tok_org_b"])
    sim.add_org("org_c", access_tokens=["tok_&x=1?#/%+;"])
    job_id = add_job(sim, Change("queued", 0.0), org_id=org_id)

    status = await transport.get_status(job_id, credential)

    assert status.organization_id == org_id
    [record] = list(sim.log)
    assert (record.org_id, record.status, record.path) == (org_id, 200, f"/v1/jobs/{job_id}/status")


@pytest.mark.parametrize(
    "credential",
    [
        Credential("rt_test_wrong", scheme=AuthScheme.BEARER),
        Credential(access_token="tok_wrong", environ=NO_ENV),
    ],
    ids=["bearer", "access-token"],
)
async def test_the_simulator_refuses_a_wrong_credential_in_each_style(
    sim: JobsSimulator, transport: AiohttpTransport, credential: Credential
) -> None:
    job_id = add_job(sim, Change("queued", 0.0))
    with pytest.raises(AuthenticationError) as info:
        await transport.get_status(job_id, credential)
    assert info.value.status == 401 and info.value.detail == "Invalid API key"


# -- transport faults --------------------------------------------------------------------


async def test_a_reset_is_connection_lost(
    sim: JobsSimulator, transport: AiohttpTransport, cred: Credential
) -> None:
    # Every request resets: aiohttp retries an idempotent request once on a reused
    # connection, and that retry must fail too.
    sim.faults = Faults(reset=1.0)
    job_id = add_job(sim, Change("queued", 0.0))
    with pytest.raises(ConnectionLostError) as info:
        await transport.get_status(job_id, cred)
    error = info.value
    assert (error.status, error.job_id, error.retryable) == (None, job_id, True)
    assert sim.log.fault_counts["reset"] >= 1


@pytest.mark.parametrize(
    ("fault", "excerpt_start"),
    [("garbage", "<!DOCTYPE html>"), ("truncated", '{"id":"job_')],
)
async def test_garbage_and_truncated_bodies_are_decode_errors(
    sim: JobsSimulator,
    transport: AiohttpTransport,
    cred: Credential,
    fault: str,
    excerpt_start: str,
) -> None:
    sim.faults = Faults(**{fault: 1.0})
    job_id = add_job(sim, Change("queued", 0.0))
    with pytest.raises(DecodeError) as info:
        await transport.get_status(job_id, cred)
    error = info.value
    assert (error.status, error.request_id, error.job_id) == (200, "req_1", job_id)
    assert error.excerpt.startswith(excerpt_start)
    assert error.retryable is True
    assert sim.log.fault_counts[fault] == 1


async def test_a_slow_response_times_out(
    retab_sim: SimServer, sim: JobsSimulator, cred: Credential
) -> None:
    sim.faults = Faults(slow=1.0, slow_delay_s=2.0)
    job_id = add_job(sim, Change("queued", 0.0))
    async with AiohttpTransport(retab_sim.base_url, request_timeout_s=0.1) as transport:
        started = time.monotonic()
        with pytest.raises(RequestTimeoutError) as info:
            await transport.get_status(job_id, cred)
        elapsed = time.monotonic() - started
    assert 0.09 <= elapsed < 1.0
    assert (info.value.status, info.value.job_id, info.value.retryable) == (None, job_id, True)


async def test_a_refused_connection_is_a_connect_error() -> None:
    with closed_port() as port:
        async with AiohttpTransport(f"http://127.0.0.1:{port}") as transport:
            with pytest.raises(ConnectError) as info:
                await transport.get_status(JOB, Credential(KEY))
    assert (info.value.status, info.value.job_id, info.value.retryable) == (None, JOB, True)


async def test_a_malformed_http_response_is_a_transport_error() -> None:
    server = await asyncio.start_server(malformed_http, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with AiohttpTransport(f"http://127.0.0.1:{port}") as transport:
            with pytest.raises(TransportError) as info:
                await transport.get_status(JOB, Credential(KEY, access_token=TOKEN))
    finally:
        server.close()
        await server.wait_closed()
    assert info.value.job_id == JOB
    for text in (str(info.value), repr(info.value), repr(info.value.args)):
        assert not any(secret in text for secret in SECRETS)


async def malformed_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer any request with an HTTP response aiohttp's parser refuses."""
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n{}")
        await writer.drain()
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def test_cancelling_a_request_propagates_and_leaves_the_transport_usable(
    sim: JobsSimulator, transport: AiohttpTransport, cred: Credential
) -> None:
    sim.faults = Faults(slow=1.0, slow_delay_s=2.0)
    slow_job = add_job(sim, Change("queued", 0.0))
    with anyio.move_on_after(0.1) as scope:
        await transport.get_status(slow_job, cred)
    assert scope.cancelled_caught
    sim.faults = Faults()
    fresh_job = add_job(sim, Change("queued", 0.0))
    assert (await transport.get_status(fresh_job, cred)).status is Status.QUEUED


# -- payload variants --------------------------------------------------------------------


async def test_iso_timestamps_decode_to_unix_seconds(
    sim: JobsSimulator, clock: Clock, transport: AiohttpTransport, cred: Credential
) -> None:
    sim.timestamp_format = "iso"
    job_id = sim.add_job(
        org_id=TEST_ORG_ID,
        script=[Change("queued", 0.0), Change("in_progress", 2.25), Change("completed", 4.75)],
        now=T0 + 0.5,
    )
    clock.t = T0 + 10

    status = await transport.get_status(job_id, cred)
    job = await transport.get_job(job_id, cred)

    for payload in (status, job):
        assert payload.created_at == T0 and type(payload.created_at) is int
        assert payload.started_at == T0 + 2 and type(payload.started_at) is int
        assert payload.completed_at == T0 + 5 and type(payload.completed_at) is int
        assert payload.expires_at == T0 + SEVEN_DAYS_S
    # The simulator really did send strings.
    raw = sim.handle("GET", f"/v1/jobs/{job_id}/status", headers={"Api-Key": TEST_API_KEY})
    assert isinstance(raw.json()["created_at"], str)


async def test_an_unknown_endpoint_decodes_to_unknown(
    sim: JobsSimulator, transport: AiohttpTransport, cred: Credential
) -> None:
    sim.faults = Faults(unknown_endpoint=1.0)
    job_id = add_job(sim, Change("queued", 0.0))
    status = await transport.get_status(job_id, cred)
    assert status.endpoint.name == "UNKNOWN"
    assert not status.endpoint.is_known
    assert status.endpoint.value in UNKNOWN_ENDPOINTS
    assert status.endpoint == status.endpoint.value


async def test_an_unknown_status_decodes_to_unknown(
    sim: JobsSimulator, clock: Clock, transport: AiohttpTransport, cred: Credential
) -> None:
    sim.faults = Faults(unknown_status=1.0, unknown_status_value="postprocessing")
    job_id = add_job(sim)
    changes = sim.planned_changes(job_id)
    [i] = [i for i, c in enumerate(changes) if c.status == "postprocessing"]
    clock.t = (changes[i].at + changes[i + 1].at) / 2
    status = await transport.get_status(job_id, cred)
    assert status.status.name == "UNKNOWN"
    assert status.status.value == "postprocessing"
    assert not status.status.is_known and not status.status.is_terminal


# -- job IDs -----------------------------------------------------------------------------

HOSTILE_IDS = [
    "../x",
    "..",
    ".",
    "a/b",
    "a?b=c",
    "a#b",
    "%2e%2e",
    "a%2Fb",
    "",
    " x",
    "x ",
    "x\n",
    "x\r\nApi-Key: other",
    "\x00",
    "a\\b",
    "jöb",
    "x" * 300,
    "x" * 257,
]


@pytest.mark.parametrize("job_id", HOSTILE_IDS)
@pytest.mark.parametrize("method", ["get_status", "get_job"])
async def test_a_hostile_job_id_is_refused_before_any_request(
    sim: JobsSimulator, transport: AiohttpTransport, cred: Credential, job_id: str, method: str
) -> None:
    with pytest.raises(InvalidJobIdError):
        await getattr(transport, method)(job_id, cred)
    assert len(sim.log) == 0


@pytest.mark.parametrize("job_id", ["a.b", "...", "~x", "a:b", "-_-", "x" * 256])
async def test_an_unusual_valid_id_addresses_exactly_its_own_path(
    sim: JobsSimulator, transport: AiohttpTransport, cred: Credential, job_id: str
) -> None:
    with pytest.raises(JobNotFoundError) as info:
        await transport.get_status(job_id, cred)
    assert info.value.job_id == job_id
    [record] = list(sim.log)
    # One path segment (":" travels percent-encoded), decoding back to the very ID.
    assert record.path == f"/v1/jobs/{quote(job_id, safe='')}/status"
    assert record.path.count("/") == 4
    assert record.job_id == job_id


# -- secrets -----------------------------------------------------------------------------


def leaked(texts: Iterator[str] | list[str]) -> list[str]:
    return [text for text in texts if any(secret in text for secret in SECRETS)]


async def test_secrets_never_reach_logs_exceptions_or_reprs(
    retab_sim: SimServer, sim: JobsSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sim.add_org("org_secret", api_keys=[KEY], access_tokens=[TOKEN])
    job_id = add_job(sim, Change("queued", 0.0), org_id="org_secret")
    credential = Credential(KEY, access_token=TOKEN)
    bad = Credential(BAD_KEY, access_token=TOKEN)
    errors: list[PollerError] = []

    async def attempt(call: Awaitable[object]) -> None:
        try:
            await call
        except PollerError as exc:
            errors.append(exc)

    async with AiohttpTransport(retab_sim.base_url, request_timeout_s=0.2) as transport:
        await transport.get_status(job_id, credential)
        await transport.get_job(job_id, credential, include_request=True)
        await attempt(transport.get_status(job_id, bad))
        await attempt(transport.get_status("job_missing", credential))
        for faults in (
            Faults(server_error=1.0),
            Faults(unavailable=1.0),
            Faults(reset=1.0),
            Faults(slow=1.0, slow_delay_s=2.0),
            Faults(garbage=1.0),
            Faults(truncated=1.0),
        ):
            sim.faults = faults
            await attempt(transport.get_status(job_id, credential))
        sim.faults = Faults()
        sim.set_rate_limit("org_secret", 1)
        await transport.get_status(job_id, credential)
        await attempt(transport.get_status(job_id, credential))
        await attempt(transport.get_status("../x", credential))
        transport_repr = repr(transport)

    assert [type(e) for e in errors] == [
        AuthenticationError,
        JobNotFoundError,
        ServerError,
        ServerError,
        ConnectionLostError,
        RequestTimeoutError,
        DecodeError,
        DecodeError,
        RateLimitedError,
        InvalidJobIdError,
    ]
    for error in errors:
        assert leaked(exception_texts(error)) == [], type(error)
    formatter = logging.Formatter()
    log_texts = [record.getMessage() for record in caplog.records] + [
        formatter.formatException(record.exc_info) for record in caplog.records if record.exc_info
    ]
    assert leaked(log_texts) == []
    assert leaked([transport_repr, repr(credential), str(credential), repr(bad)]) == []


@pytest.mark.parametrize("status", [401, 403, 404, 418, 429, 500])
async def test_secrets_echoed_in_an_error_body_are_scrubbed(status: int) -> None:
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        echo = f"key {request.headers.get('Api-Key')} token {request.query.get('access_token')}"
        return web.json_response({"detail": {"code": "echo", "message": echo}}, status=status)

    async with LocalServer(handler) as server, AiohttpTransport(server.base_url) as transport:
        with pytest.raises(RequestError) as info:
            await transport.get_status(JOB, Credential(KEY, access_token=TOKEN))
    error = info.value
    assert error.status == status
    assert getattr(error, "detail", None) == "echo: key [REDACTED] token [REDACTED]"
    assert leaked(exception_texts(error)) == []


async def test_secrets_never_reach_the_exception_chain_of_a_malformed_response() -> None:
    server = await asyncio.start_server(malformed_http, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with AiohttpTransport(f"http://127.0.0.1:{port}") as transport:
            with pytest.raises(TransportError) as info:
                await transport.get_status(JOB, Credential(KEY, access_token=TOKEN))
    finally:
        server.close()
        await server.wait_closed()
    assert leaked(exception_texts(info.value)) == []


async def test_secrets_echoed_in_a_200_body_do_not_reach_the_excerpt() -> None:
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        page = f"<html>proxy error for {request.path_qs} ({request.headers.get('Api-Key')})</html>"
        return web.Response(text=page, content_type="text/html")

    async with LocalServer(handler) as server, AiohttpTransport(server.base_url) as transport:
        with pytest.raises(DecodeError) as info:
            await transport.get_status(JOB, Credential(KEY, access_token=TOKEN))
    assert leaked([info.value.excerpt]) == []


# -- TLS ---------------------------------------------------------------------------------


@pytest.fixture
async def tls_server(tls_files: tuple[Path, Path]) -> AsyncIterator[LocalServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*tls_files)
    async with LocalServer(echo_status, ssl_context=context) as server:
        yield server


async def test_tls_verification_is_on_by_default(tls_server: LocalServer) -> None:
    async with AiohttpTransport(tls_server.base_url) as transport:
        with pytest.raises(ConnectError) as info:
            await transport.get_status(JOB, Credential(KEY))
    assert "certificate" in str(info.value).lower()
    assert tls_server.requests == []


async def test_a_custom_ssl_context_is_used(
    tls_server: LocalServer, tls_files: tuple[Path, Path]
) -> None:
    context = ssl.create_default_context(cafile=str(tls_files[0]))
    async with AiohttpTransport(tls_server.base_url, ssl_context=context) as transport:
        assert (await transport.get_status(JOB, Credential(KEY))).id == JOB
    assert len(tls_server.requests) == 1


async def test_skipping_tls_verification_warns_twice_and_works(
    tls_server: LocalServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="poller.transport")
    with pytest.warns(RuntimeWarning, match="TLS certificate verification is OFF"):
        transport = AiohttpTransport(tls_server.base_url, insecure_skip_tls_verify=True)
    async with transport:
        assert (await transport.get_status(JOB, Credential(KEY))).id == JOB
    assert [
        (r.name, r.levelno)
        for r in caplog.records
        if "TLS certificate verification is OFF" in r.getMessage()
    ] == [("poller.transport", logging.WARNING)]


# -- configuration and lifecycle ---------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"base_url": "ftp://api.retab.com"}, "base_url"),
        ({"base_url": "api.retab.com"}, "base_url"),
        ({"base_url": "http://"}, "base_url"),
        ({"base_url": ""}, "base_url"),
        ({"base_url": "https://api.retab.com/?x=1"}, "base_url"),
        ({"base_url": "https://api.retab.com/#frag"}, "base_url"),
        ({"base_url": "https://user:pw@api.retab.com"}, "base_url"),
        ({"max_connections": 0}, "max_connections"),
        ({"max_connections": -1}, "max_connections"),
        ({"max_connections": 1.5}, "max_connections"),
        ({"max_connections": "4"}, "max_connections"),
        ({"max_connections": None}, "max_connections"),
        ({"request_timeout_s": 0}, "request_timeout_s"),
        ({"request_timeout_s": -0.5}, "request_timeout_s"),
        ({"request_timeout_s": float("nan")}, "request_timeout_s"),
        ({"request_timeout_s": "1"}, "request_timeout_s"),
        ({"request_timeout_s": None}, "request_timeout_s"),
    ],
)
def test_invalid_settings_raise_config_error(kwargs: dict[str, Any], setting: str) -> None:
    kwargs = {"base_url": "http://127.0.0.1:1", **kwargs}
    with pytest.raises(ConfigError, match=f"^{setting}:"):
        AiohttpTransport(**kwargs)


async def test_the_base_url_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETAB_API_BASE_URL", "http://127.0.0.1:8080/")
    async with AiohttpTransport() as transport:
        assert transport.base_url == "http://127.0.0.1:8080"
        assert repr(transport) == "AiohttpTransport(base_url='http://127.0.0.1:8080')"
    monkeypatch.delenv("RETAB_API_BASE_URL")
    async with AiohttpTransport() as transport:
        assert transport.base_url == "https://api.retab.com"


async def test_aclose_is_idempotent_and_a_closed_transport_refuses_requests(
    retab_sim: SimServer, sim: JobsSimulator, cred: Credential
) -> None:
    job_id = add_job(sim, Change("queued", 0.0))
    transport = AiohttpTransport(retab_sim.base_url)
    assert (await transport.get_status(job_id, cred)).id == job_id
    await transport.aclose()
    await transport.aclose()
    with pytest.raises(PollerClosedError):
        await transport.get_status(job_id, cred)
    with pytest.raises(PollerClosedError):
        await transport.get_job(job_id, cred)
    assert len(sim.log) == 1


async def test_the_context_manager_closes_the_transport(
    retab_sim: SimServer, sim: JobsSimulator, cred: Credential
) -> None:
    async with AiohttpTransport(retab_sim.base_url) as transport:
        pass
    with pytest.raises(PollerClosedError):
        await transport.get_status(add_job(sim, Change("queued", 0.0)), cred)
    assert len(sim.log) == 0


async def test_200_concurrent_requests_share_the_pool(
    retab_sim: SimServer, sim: JobsSimulator, cred: Credential
) -> None:
    job_ids = sim.add_jobs(200, now=T0)
    async with AiohttpTransport(retab_sim.base_url, max_connections=4) as transport:
        statuses = await asyncio.gather(*(transport.get_status(j, cred) for j in job_ids))
    assert [s.id for s in statuses] == job_ids
    assert sim.log.status_counts == {200: 200}


async def test_at_most_max_connections_sockets_are_opened() -> None:
    in_flight = peak = 0

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.002)
        in_flight -= 1
        return await echo_status(request)

    job_ids = [f"job_{i}" for i in range(200)]
    async with LocalServer(handler) as server:
        async with AiohttpTransport(server.base_url, max_connections=4) as transport:
            statuses = await asyncio.gather(
                *(transport.get_status(j, Credential(KEY)) for j in job_ids)
            )
        assert [s.id for s in statuses] == job_ids
    ports = {seen.port for seen in server.requests}
    assert len(server.requests) == 200
    assert 1 < len(ports) <= 4
    assert 1 < peak <= 4
