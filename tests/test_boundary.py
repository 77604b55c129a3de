"""The error boundary: statuses, Retry-After, and aiohttp/OS errors become poller errors."""

from __future__ import annotations

import asyncio
import email.utils
import errno
import json
import traceback
from collections.abc import Awaitable, Callable, Iterator

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from poller._boundary import (
    MAX_RETRY_AFTER_S,
    client_error,
    error_for_status,
    parse_retry_after,
    scrub,
)
from poller.auth import Credential
from poller.errors import (
    APIError,
    AuthenticationError,
    ConfigError,
    ConnectError,
    ConnectionLostError,
    DecodeError,
    InvalidJobIdError,
    JobNotFoundError,
    PermissionDeniedError,
    PollerError,
    RateLimitedError,
    RequestTimeoutError,
    ServerError,
    TLSError,
    TransportError,
    UnexpectedStatusError,
)
from poller.transport import AiohttpTransport

# Wed, 21 Oct 2015 07:28:00 GMT
NOW = 1445412480.0
JOB_ID = "job_V1StGXR8_Z5jdHi6B-myT"
KEY = "rt_live_9fK2mQx7LpZ4vN8sR1tYw3Ue"
TOKEN = "tok_Q8zX4cV6bN2mA1sD3fG5hJ7k"
SECRETS = (KEY, TOKEN)


def http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


# -- Retry-After ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        ("0", 0.0),
        ("1", 1.0),
        ("1.5", 1.5),
        ("0.25", 0.25),
        (" 7 ", 7.0),
        ("-3", 0.0),  # a negative delay means "now"
    ],
)
def test_retry_after_seconds(value: str, expected: float) -> None:
    assert parse_retry_after(value, NOW) == expected


def test_retry_after_http_date_in_the_future() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:30:00 GMT", NOW) == 120.0
    assert parse_retry_after(http_date(NOW + 3600), NOW) == 3600.0


def test_retry_after_http_date_is_relative_to_now() -> None:
    value = http_date(NOW + 60)
    assert parse_retry_after(value, NOW) == 60.0
    assert parse_retry_after(value, NOW + 45) == 15.0


def test_retry_after_obsolete_rfc_850_date() -> None:
    assert parse_retry_after("Wednesday, 21-Oct-15 07:30:00 GMT", NOW) == 120.0


def test_retry_after_obsolete_asctime_date() -> None:
    assert parse_retry_after("Wed Oct 21 07:30:00 2015", NOW) == 120.0


@pytest.mark.parametrize(
    "value",
    [
        http_date(NOW),
        http_date(NOW - 1),
        http_date(NOW - 86_400 * 365),
        "Thu, 01 Jan 1970 00:00:00 GMT",
    ],
)
def test_retry_after_date_now_or_past_means_zero(value: str) -> None:
    assert parse_retry_after(value, NOW) == 0.0


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "soon",
        "12abc",
        "0x10",
        "nan",
        "NaN",
        "1,5",
        "Wed, 99 Foo 2015 07:28:00 GMT",
        "\x00",
    ],
)
def test_retry_after_garbage_is_none(value: str) -> None:
    assert parse_retry_after(value, NOW) is None


def test_retry_after_absent_is_none() -> None:
    assert parse_retry_after(None, NOW) is None


@pytest.mark.parametrize(
    "value",
    ["86401", "99999999999", "1e30", "inf", "Infinity", "Fri, 31 Dec 9999 23:59:59 GMT"],
)
def test_retry_after_huge_is_clamped_to_a_day(value: str) -> None:
    assert parse_retry_after(value, NOW) == MAX_RETRY_AFTER_S == 86_400.0


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(
    value=st.text(max_size=40)
    | st.from_regex(r"\A[A-Za-z]{3}, \d{1,2} [A-Za-z]{3} \d{2,5} \d\d:\d\d:\d\d [A-Z+\-0-9]{1,5}\Z")
)
def test_retry_after_never_raises_and_stays_in_range(value: str) -> None:
    result = parse_retry_after(value, NOW)
    assert result is None or 0.0 <= result <= MAX_RETRY_AFTER_S


# -- statuses -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "cls", "retryable"),
    [
        (401, AuthenticationError, False),
        (403, PermissionDeniedError, False),
        (404, JobNotFoundError, False),
        (429, RateLimitedError, True),
        (500, ServerError, True),
        (502, ServerError, True),
        (503, ServerError, True),
        (504, ServerError, True),
        (400, UnexpectedStatusError, False),
        (409, UnexpectedStatusError, False),
        (418, UnexpectedStatusError, False),
        (422, UnexpectedStatusError, False),
    ],
)
def test_status_maps_to_its_error_class(status: int, cls: type[APIError], retryable: bool) -> None:
    headers = CIMultiDictProxy(CIMultiDict({"X-Request-ID": "req_abc"}))
    error = error_for_status(status, headers, b'{"detail": "nope"}', job_id=JOB_ID, now=NOW)

    assert type(error) is cls
    assert isinstance(error, APIError)
    assert error.status == status
    assert error.job_id == JOB_ID
    assert error.request_id == "req_abc"
    assert error.detail == "nope"
    assert error.retryable is retryable
    text = str(error)
    assert "nope" in text
    assert f"HTTP {status}" in text
    assert "req_abc" in text
    assert JOB_ID in text


def test_request_id_from_a_plain_lowercase_mapping() -> None:
    error = error_for_status(404, {"x-request-id": "r1"}, b"", job_id=None, now=NOW)
    assert error.request_id == "r1"


def test_no_request_id_header() -> None:
    error = error_for_status(404, {}, b"", job_id=JOB_ID, now=NOW)
    assert error.request_id is None
    assert "request id" not in str(error)


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b'{"detail": "Job not found"}', "Job not found"),
        (
            b'{"detail": {"code": "job_not_found", "message": "No job with this id"}}',
            "job_not_found: No job with this id",
        ),
        (
            b'{"detail": {"code": "c", "message": "m", "details": {"field": "x"}}}',
            "c: m",
        ),
        (b'{"detail": {"message": "only a message"}}', "only a message"),
        (b'{"detail": {"code": "only_a_code"}}', "only_a_code"),
        (b"<html>Bad Gateway</html>", "<html>Bad Gateway</html>"),
        (b"plain text\nsecond line", "plain text\\nsecond line"),
    ],
)
def test_detail_from_both_error_body_shapes_and_plain_text(body: bytes, detail: str) -> None:
    error = error_for_status(404, {}, body, job_id=JOB_ID, now=NOW)
    assert error.detail == detail
    assert detail in str(error)


def test_empty_body_has_no_detail() -> None:
    error = error_for_status(500, {}, b"", job_id=JOB_ID, now=NOW)
    assert error.detail is None
    assert str(error).startswith("server error (")


@pytest.mark.parametrize(
    "body", [b'{"error": "upstream timeout"}', b'{"message": "upstream timeout"}', b"null"]
)
def test_json_body_without_detail_keeps_the_body(body: bytes) -> None:
    error = error_for_status(502, {}, body, job_id=JOB_ID, now=NOW)
    assert error.detail != "None"
    assert "None" not in str(error)


def test_a_long_detail_is_bounded() -> None:
    body = json.dumps({"detail": "x" * 100_000}).encode()
    error = error_for_status(500, {}, body, job_id=JOB_ID, now=NOW)
    assert error.detail is not None
    assert len(error.detail) <= 300
    assert len(str(error)) < 500

    error = error_for_status(500, {}, b"y" * 100_000, job_id=JOB_ID, now=NOW)
    assert error.detail is not None
    assert len(error.detail) <= 4 * 300 + 3


@pytest.mark.parametrize("status", [429, 500, 503])
@pytest.mark.parametrize(
    ("header", "expected"),
    [("7", 7.0), ("0.5", 0.5), (http_date(NOW + 90), 90.0), ("garbage", None), (None, None)],
)
def test_retry_after_on_429_and_5xx(
    status: int, header: str | None, expected: float | None
) -> None:
    headers = CIMultiDict() if header is None else CIMultiDict({"Retry-After": header})
    error = error_for_status(status, CIMultiDictProxy(headers), b"", job_id=JOB_ID, now=NOW)
    assert isinstance(error, RateLimitedError | ServerError)
    assert error.retry_after_s == expected


@pytest.mark.parametrize("status", [401, 403, 404, 418])
def test_other_statuses_carry_no_retry_after(status: int) -> None:
    error = error_for_status(status, {"retry-after": "5"}, b"", job_id=JOB_ID, now=NOW)
    assert not hasattr(error, "retry_after_s")


# -- secrets in error bodies ------------------------------------------------------------

ECHOING_BODIES = {
    "detail text": json.dumps({"detail": f"invalid API key {KEY}"}).encode(),
    "detail message": json.dumps(
        {"detail": {"code": "auth", "message": f"bad key: {KEY}"}}
    ).encode(),
    "detail code": json.dumps({"detail": {"code": KEY, "message": "m"}}).encode(),
    "detail details only": json.dumps({"detail": {"details": {"key": KEY, "t": TOKEN}}}).encode(),
    "token in query echo": json.dumps(
        {"detail": f"GET /v1/jobs/x/status?access_token={TOKEN} refused"}
    ).encode(),
    "both, repeated": json.dumps({"detail": f"{KEY} {TOKEN} {KEY}"}).encode(),
    # The raw body never holds the key: JSON escapes spell its first character.
    "escaped JSON": b'{"detail": "bad key \\u0072' + KEY[1:].encode() + b'"}',
    "plain text": f"Unauthorized: Api-Key {KEY} is revoked".encode(),
    "html": f"<html><p>token={TOKEN}</p></html>".encode(),
    "JSON list": json.dumps([KEY, TOKEN]).encode(),
}


@pytest.mark.parametrize("status", [401, 403, 404, 429, 500, 418])
@pytest.mark.parametrize("body", ECHOING_BODIES.values(), ids=list(ECHOING_BODIES))
def test_secrets_echoed_by_the_server_never_reach_the_error(status: int, body: bytes) -> None:
    error = error_for_status(status, {}, body, job_id=JOB_ID, now=NOW, secrets=SECRETS)

    texts = [str(error), repr(error), *map(str, error.args), str(error.detail)]
    for text in texts:
        assert KEY not in text
        assert TOKEN not in text
    assert "[REDACTED]" in str(error)


def _long_substrings(secret: str, size: int = 16) -> Iterator[str]:
    return (secret[i : i + size] for i in range(len(secret) - size + 1))


@pytest.mark.parametrize("shape", ["json", "text"])
def test_a_secret_straddling_the_detail_limit_does_not_leak_in_part(shape: str) -> None:
    # The secret starts 30 characters before the 300-character cut.
    text = "x" * 270 + KEY + " and more"
    body = json.dumps({"detail": text}).encode() if shape == "json" else text.encode()
    error = error_for_status(401, {}, body, job_id=JOB_ID, now=NOW, secrets=SECRETS)
    for part in _long_substrings(KEY):
        assert part not in str(error)


def test_scrub_replaces_every_occurrence_of_every_secret() -> None:
    assert scrub(f"a {KEY} b {TOKEN} c {KEY}", SECRETS) == "a [REDACTED] b [REDACTED] c [REDACTED]"
    assert scrub("nothing here", SECRETS) == "nothing here"
    assert scrub("empty secrets are ignored", ("", KEY)) == "empty secrets are ignored"


# -- aiohttp and OS errors --------------------------------------------------------------


def connection_key(**changes: object) -> ConnectionKey:
    """A ConnectionKey as aiohttp's own tests build one, whatever its fields this release."""
    fields: dict[str, object] = dict.fromkeys(ConnectionKey._fields)
    fields.update(host="api.retab.com", port=443, is_ssl=True, ssl=True)
    fields.update(changes)
    return ConnectionKey(**fields)  # type: ignore[arg-type]


MAPPED: dict[str, tuple[BaseException, type[TransportError]]] = {
    "connector refused": (
        aiohttp.ClientConnectorError(
            connection_key(), OSError(errno.ECONNREFUSED, "Connection refused")
        ),
        ConnectError,
    ),
    "connector DNS": (
        aiohttp.ClientConnectorError(
            connection_key(), OSError(errno.ENOENT, "Name or service not known")
        ),
        ConnectError,
    ),
    "connector SSL": (
        aiohttp.ClientConnectorSSLError(connection_key(), OSError(errno.EPROTO, "handshake")),
        TLSError,
    ),
    "server disconnected": (aiohttp.ServerDisconnectedError(), ConnectionLostError),
    "client OS error": (
        aiohttp.ClientOSError(errno.ECONNRESET, "Connection reset by peer"),
        ConnectionLostError,
    ),
    "payload error": (
        aiohttp.ClientPayloadError("Response payload is not completed"),
        ConnectionLostError,
    ),
    "connection reset": (ConnectionResetError(errno.ECONNRESET, "reset"), ConnectionLostError),
    "broken pipe": (BrokenPipeError(errno.EPIPE, "Broken pipe"), ConnectionLostError),
    "timeout (asyncio.TimeoutError)": (TimeoutError(), RequestTimeoutError),
    "server timeout": (
        aiohttp.ServerTimeoutError("Timeout on reading data from socket"),
        RequestTimeoutError,
    ),
    "other client error": (aiohttp.ClientError("odd"), TransportError),
    "other OS error": (OSError(errno.EMFILE, "Too many open files"), TransportError),
}


async def raised_by_a_request(
    original: BaseException | Callable[[], Awaitable[None]], *, job_id: str = JOB_ID
) -> BaseException:
    """What a request raises when aiohttp raises ``original`` (or when this awaitable
    does): the production path, AiohttpTransport's one place that translates errors,
    with a credential whose secrets are KEY and TOKEN."""

    async def get(*args: object, **kwargs: object) -> None:
        if isinstance(original, BaseException):
            raise original
        await original()

    async with AiohttpTransport("http://127.0.0.1:9") as transport:
        transport._session.get = get  # type: ignore[method-assign,assignment]
        with pytest.raises(BaseException) as info:
            await transport.get_status(job_id, Credential(KEY, access_token=TOKEN))
    return info.value


@pytest.mark.anyio
@pytest.mark.parametrize(("original", "kind"), MAPPED.values(), ids=list(MAPPED))
async def test_client_errors_map_to_transport_errors_chained(
    original: BaseException, kind: type[TransportError]
) -> None:
    error = await raised_by_a_request(original)
    assert isinstance(error, TransportError)

    assert type(error) is kind
    assert error.__cause__ is original
    assert error.job_id == JOB_ID
    assert error.status is None
    assert error.request_id is None
    assert error.retryable is (kind is not TLSError)  # a TLS failure needs a fix, not a retry
    assert type(original).__name__ in str(error)


@pytest.mark.anyio
async def test_connector_error_message_names_the_host() -> None:
    original = aiohttp.ClientConnectorError(
        connection_key(), OSError(errno.ECONNREFUSED, "Connection refused")
    )
    error = await raised_by_a_request(original)
    assert isinstance(error, ConnectError)
    assert "could not connect" in str(error)
    assert "api.retab.com:443" in str(error)


def test_without_job_id() -> None:
    error = client_error(aiohttp.ServerDisconnectedError(), None)
    assert isinstance(error, ConnectionLostError)
    assert error.job_id is None


def _secret_bearing_errors() -> dict[str, BaseException]:
    return {
        "secret in message": aiohttp.ClientOSError(
            errno.ECONNRESET, f"reset while sending Api-Key {KEY}"
        ),
        "secret in URL text": aiohttp.ClientPayloadError(
            f"payload not completed for /v1/jobs/x/status?access_token={TOKEN}"
        ),
        # str() shows host and port only; repr() shows the whole key, proxy password included.
        "secret only in repr": aiohttp.ClientConnectorError(
            connection_key(proxy=URL(f"http://user:{TOKEN}@proxy.internal:3128")),
            OSError(errno.ECONNREFUSED, "Connection refused"),
        ),
    }


@pytest.mark.anyio
@pytest.mark.parametrize("name", list(_secret_bearing_errors()))
async def test_an_original_holding_a_secret_is_not_chained_nor_quoted(name: str) -> None:
    error = await raised_by_a_request(_secret_bearing_errors()[name])
    assert isinstance(error, TransportError)

    assert error.__cause__ is None
    assert error.__suppress_context__ is True
    for text in (str(error), repr(error), *map(str, error.args)):
        assert KEY not in text
        assert TOKEN not in text
    printed = "".join(traceback.format_exception(error))
    assert KEY not in printed
    assert TOKEN not in printed


@pytest.mark.anyio
async def test_a_scrubbed_message_keeps_the_rest_of_the_original() -> None:
    original = aiohttp.ClientOSError(errno.ECONNRESET, f"reset while sending Api-Key {KEY}")
    error = await raised_by_a_request(original)
    assert isinstance(error, ConnectionLostError)
    assert "reset while sending Api-Key [REDACTED]" in str(error)


@pytest.mark.anyio
@pytest.mark.parametrize("name", list(_secret_bearing_errors()))
async def test_an_original_holding_a_secret_is_not_reachable_at_all(name: str) -> None:
    seen: BaseException | None = await raised_by_a_request(_secret_bearing_errors()[name])
    assert isinstance(seen, TransportError)
    while seen is not None:
        assert KEY not in repr(seen)
        assert TOKEN not in repr(seen)
        seen = seen.__cause__ or seen.__context__


PASS_THROUGH: dict[str, BaseException] = {
    "value error": ValueError("not ours"),
    "key error": KeyError("k"),
    "runtime error": RuntimeError("bug"),
    "decode error": DecodeError("bad body", excerpt="x", job_id=JOB_ID),
    "rate limited": RateLimitedError("slow down", retry_after_s=3.0, status=429),
    "connect error": ConnectError("already mapped", job_id=JOB_ID),
    "config error": ConfigError("setting: bad"),
    "invalid job id": InvalidJobIdError("bad id"),
    "cancelled": asyncio.CancelledError(),
    "keyboard interrupt": KeyboardInterrupt(),
}


@pytest.mark.anyio
@pytest.mark.parametrize("original", PASS_THROUGH.values(), ids=list(PASS_THROUGH))
async def test_other_exceptions_pass_through_untouched(original: BaseException) -> None:
    error = await raised_by_a_request(original)
    assert error is original
    assert error.__cause__ is None
    if isinstance(original, PollerError):
        assert error.__context__ is None


@pytest.mark.anyio
async def test_cancellation_of_a_request_passes_through() -> None:
    entered = asyncio.Event()

    async def never_answers() -> None:
        entered.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(raised_by_a_request(never_answers))
    await entered.wait()
    task.cancel()
    error = await task  # what the request raised: the cancellation, as it was
    assert type(error) is asyncio.CancelledError


@pytest.mark.anyio
async def test_a_real_timeout_in_a_request_becomes_request_timeout() -> None:
    async def times_out() -> None:
        await asyncio.wait_for(asyncio.Event().wait(), timeout=0)

    error = await raised_by_a_request(times_out)
    assert isinstance(error, RequestTimeoutError)
    assert isinstance(error.__cause__, TimeoutError)
