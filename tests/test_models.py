"""Wire models and their decoding: tolerant of what the API may add, strict about garbage."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poller._decode import decode_job, decode_status, excerpt
from poller.errors import DecodeError, RequestError
from poller.models import Endpoint, Job, JobError, JobResponse, JobStatus, JobWarning, Status

# The example response of the API reference, section 1, byte for byte.
EXAMPLE = b"""{
  "id": "job_V1StGXR8_Z5jdHi6B-myT",
  "object": "job",
  "status": "in_progress",
  "endpoint": "/v1/documents/extract",
  "error": null,
  "created_at": 1705420800,
  "started_at": 1705420802,
  "completed_at": null,
  "expires_at": 1706025600,
  "organization_id": "org_abc123",
  "metadata": {"batch_id": "batch_001"}
}"""
EXAMPLE_DICT: dict[str, Any] = json.loads(EXAMPLE)
JOB_ID = "job_V1StGXR8_Z5jdHi6B-myT"
REQUIRED = ("id", "status", "endpoint", "created_at", "expires_at", "organization_id")
TIMESTAMPS = ("created_at", "expires_at", "started_at", "completed_at", "last_attempt_at")
# 2024-01-16T16:00:00Z, the example's created_at.
T0 = 1705420800

SPEC_ENDPOINTS = {
    "/v1/documents/extract": "DOCUMENTS_EXTRACT",
    "/v1/documents/parse": "DOCUMENTS_PARSE",
    "/v1/documents/split": "DOCUMENTS_SPLIT",
    "/v1/documents/classify": "DOCUMENTS_CLASSIFY",
    "/v1/schemas/generate": "SCHEMAS_GENERATE",
    "/v1/edit/agent/fill": "EDIT_AGENT_FILL",
    "/v1/edit/templates/fill": "EDIT_TEMPLATES_FILL",
    "/v1/edit/templates/generate": "EDIT_TEMPLATES_GENERATE",
    "/v1/evals/extract/process": "EVALS_EXTRACT_PROCESS",
    "/v1/evals/split/process": "EVALS_SPLIT_PROCESS",
    "/v1/evals/classify/process": "EVALS_CLASSIFY_PROCESS",
    "/v1/evals/extract/extract": "EVALS_EXTRACT_EXTRACT",
    "/v1/evals/extract/split": "EVALS_EXTRACT_SPLIT",
}
NEWER_ENDPOINTS = {
    "/v1/extractions": "EXTRACTIONS",
    "/v1/parses": "PARSES",
    "/v1/splits": "SPLITS",
    "/v1/partitions": "PARTITIONS",
    "/v1/classifications": "CLASSIFICATIONS",
    "/v1/edits": "EDITS",
    "/v1/files/analyze": "FILES_ANALYZE",
}


def payload(**changes: Any) -> bytes:
    """The example payload with fields replaced; a value of ``...`` removes the field."""
    data = dict(EXAMPLE_DICT)
    for name, value in changes.items():
        if value is ...:
            data.pop(name, None)
        else:
            data[name] = value
    return json.dumps(data).encode()


# -- the documented example --------------------------------------------------------


def test_example_payload_decodes_to_exactly_its_values() -> None:
    decoded = decode_status(EXAMPLE)

    assert type(decoded) is JobStatus
    assert msgspec.structs.asdict(decoded) == {
        "id": JOB_ID,
        "object": "job",
        "status": Status.IN_PROGRESS,
        "endpoint": Endpoint.DOCUMENTS_EXTRACT,
        "error": None,
        "created_at": 1705420800,
        "started_at": 1705420802,
        "completed_at": None,
        "expires_at": 1706025600,
        "organization_id": "org_abc123",
        "metadata": {"batch_id": "batch_001"},
        # Absent from the example: their documented defaults.
        "warnings": None,
        "cloud_task_name": None,
        "cancelled": False,
        "attempt_count": 0,
        "last_attempt_at": None,
        "last_failure_code": None,
    }
    assert decoded.status is Status.IN_PROGRESS
    assert decoded.endpoint is Endpoint.DOCUMENTS_EXTRACT
    assert type(decoded.created_at) is int
    assert type(decoded.started_at) is int


def test_example_payload_decodes_as_a_full_job_without_request_or_response() -> None:
    job = decode_job(EXAMPLE)

    assert type(job) is Job
    assert isinstance(job, JobStatus)
    assert job.request is None
    assert job.response is None
    status_fields = {f.name for f in msgspec.structs.fields(JobStatus)}
    as_dict = msgspec.structs.asdict(job)
    assert {k: v for k, v in as_dict.items() if k in status_fields} == msgspec.structs.asdict(
        decode_status(EXAMPLE)
    )


def test_required_fields_are_the_documented_ones() -> None:
    required = {f.name for f in msgspec.structs.fields(JobStatus) if f.required}
    assert required == set(REQUIRED)


def test_models_are_frozen() -> None:
    decoded = decode_status(EXAMPLE)
    with pytest.raises(AttributeError):
        decoded.status = Status.COMPLETED  # type: ignore[misc]


# -- statuses ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "terminal"),
    [
        ("validating", False),
        ("queued", False),
        ("in_progress", False),
        ("completed", True),
        ("failed", True),
        ("cancelled", True),
        ("expired", True),
    ],
)
def test_every_known_status_decodes_known_and_says_whether_it_is_terminal(
    value: str, terminal: bool
) -> None:
    decoded = decode_status(payload(status=value))

    assert decoded.status is Status(value)
    assert decoded.status.name == value.upper()
    assert decoded.status.is_known
    assert decoded.status.is_terminal is terminal


@pytest.mark.parametrize("value", ["paused", "COMPLETED", "in-progress", "", "succeeded ", "ok"])
def test_unknown_status_decodes_to_unknown_keeping_the_raw_value(value: str) -> None:
    decoded = decode_status(payload(status=value))

    assert isinstance(decoded.status, Status)
    assert decoded.status.name == "UNKNOWN"
    assert decoded.status.value == value
    assert decoded.status == value
    assert decoded.status.is_known is False
    assert decoded.status.is_terminal is False
    # The rest of the payload is unaffected.
    assert decoded.id == JOB_ID
    assert decoded.endpoint is Endpoint.DOCUMENTS_EXTRACT


def test_unknown_status_in_a_full_job_too() -> None:
    job = decode_job(payload(status="archived"))
    assert job.status.name == "UNKNOWN"
    assert job.status.value == "archived"
    assert not job.status.is_terminal


def test_the_unknown_member_itself_is_neither_known_nor_terminal() -> None:
    assert Status.UNKNOWN.is_known is False
    assert Status.UNKNOWN.is_terminal is False
    assert Endpoint.UNKNOWN.is_known is False


def test_status_is_a_str_enum_comparing_equal_to_its_wire_value() -> None:
    assert Status.COMPLETED == "completed"
    assert isinstance(Status.QUEUED, str)
    assert Status("queued") is Status.QUEUED


# -- endpoints -------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "name"), sorted({**SPEC_ENDPOINTS, **NEWER_ENDPOINTS}.items()))
def test_every_documented_endpoint_decodes_to_its_member(value: str, name: str) -> None:
    decoded = decode_status(payload(endpoint=value))

    assert decoded.endpoint is Endpoint[name]
    assert decoded.endpoint.value == value
    assert decoded.endpoint.is_known


@pytest.mark.parametrize("value", ["/v2/extractions", "/v1/brand-new", "extract", ""])
def test_unknown_endpoint_decodes_to_unknown_keeping_the_raw_value(value: str) -> None:
    decoded = decode_status(payload(endpoint=value))

    assert isinstance(decoded.endpoint, Endpoint)
    assert decoded.endpoint.name == "UNKNOWN"
    assert decoded.endpoint.value == value
    assert decoded.endpoint == value
    assert decoded.endpoint.is_known is False
    assert decoded.status is Status.IN_PROGRESS


# -- timestamps ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-16T16:00:00Z", T0),
        ("2024-01-16T16:00:00+00:00", T0),
        ("2024-01-16T18:00:00+02:00", T0),
        ("2024-01-16T11:30:00-04:30", T0),
        ("2024-01-16T16:00:00", T0),  # naive: taken as UTC
        ("2024-01-16T16:00:00.999999Z", T0),  # sub-second part dropped, not rounded up
        ("2024-01-16T16:00:01.5+00:00", T0 + 1),
        ("1970-01-01T00:00:00Z", 0),
        ("1969-12-31T23:59:59Z", -1),
    ],
)
def test_iso_8601_timestamps_become_unix_seconds(text: str, expected: int) -> None:
    decoded = decode_status(payload(created_at=text, started_at=text, completed_at=text))

    for value in (decoded.created_at, decoded.started_at, decoded.completed_at):
        assert value == expected
        assert type(value) is int
    assert decoded.expires_at == 1706025600


@pytest.mark.parametrize("name", TIMESTAMPS)
def test_each_timestamp_field_accepts_iso_8601(name: str) -> None:
    decoded = decode_job(payload(**{name: "2024-01-16T17:00:00+01:00"}))
    assert getattr(decoded, name) == T0


def test_iso_and_integer_timestamps_mix_in_one_payload() -> None:
    decoded = decode_status(
        payload(created_at=T0, started_at="2024-01-16T16:00:02Z", last_attempt_at=T0 + 5)
    )
    assert (decoded.created_at, decoded.started_at, decoded.last_attempt_at) == (
        T0,
        T0 + 2,
        T0 + 5,
    )
    assert decoded.completed_at is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1705420800.0, T0), (1705420800.25, T0), (1705420800.999, T0), (-0.5, -1), (0.0, 0)],
)
def test_float_timestamps_become_whole_seconds(value: float, expected: int) -> None:
    decoded = decode_status(payload(created_at=value, started_at=value))
    assert decoded.created_at == expected
    assert decoded.started_at == expected
    assert type(decoded.created_at) is int


@pytest.mark.parametrize(
    "body",
    [
        payload(created_at="yesterday"),
        payload(created_at="2024-01-16"),
        payload(created_at="16:00:00"),
        payload(created_at="1705420800"),
        payload(created_at=True),
        payload(created_at=[T0]),
        payload(created_at={"s": T0}),
        payload(created_at=0).replace(b'"created_at": 0', b'"created_at": 1e400'),
    ],
    ids=["word", "date only", "time only", "digits", "bool", "list", "object", "overflow"],
)
def test_unreadable_timestamps_are_refused(body: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        decode_status(body, JOB_ID)
    assert "created_at" in str(info.value)


# -- tolerance ------------------------------------------------------------------------


def test_extra_unknown_fields_are_ignored_even_nested() -> None:
    body = payload(
        new_flag=True,
        priority=3,
        routing={"region": "eu", "shards": [1, {"deep": {"deeper": [None, 1.5]}}]},
        tags=["a", "b"],
        nothing=None,
        error={"code": "x", "message": "y", "trace_id": "t", "extra": {"k": [1]}},
        warnings=[{"code": "w", "message": "m", "severity": "low"}],
    )
    decoded = decode_status(body)

    assert decoded.id == JOB_ID
    assert decoded.status is Status.IN_PROGRESS
    assert decoded.metadata == {"batch_id": "batch_001"}
    assert decoded.error == JobError(code="x", message="y")
    assert decoded.warnings == [JobWarning(code="w", message="m")]


def test_extra_fields_in_a_full_job_response_are_ignored() -> None:
    job = decode_job(
        payload(response={"status_code": 200, "body": {"a": 1}, "headers": {"x": "y"}}, v=2)
    )
    assert job.response == JobResponse(status_code=200, body={"a": 1})


def test_missing_optional_fields_get_their_documented_defaults() -> None:
    minimal = {k: EXAMPLE_DICT[k] for k in REQUIRED}
    decoded = decode_status(json.dumps(minimal).encode())

    assert decoded.object == "job"
    assert decoded.error is None
    assert decoded.warnings is None
    assert decoded.started_at is None
    assert decoded.completed_at is None
    assert decoded.metadata is None
    assert decoded.cloud_task_name is None
    assert decoded.cancelled is False
    assert decoded.attempt_count == 0
    assert decoded.last_attempt_at is None
    assert decoded.last_failure_code is None

    job = decode_job(json.dumps(minimal).encode())
    assert job.request is None
    assert job.response is None


def test_missing_optional_fields_default_on_the_lenient_path_too() -> None:
    minimal = {k: EXAMPLE_DICT[k] for k in REQUIRED}
    minimal["created_at"] = "2024-01-16T16:00:00Z"  # forces the ISO-tolerant path
    decoded = decode_status(json.dumps(minimal).encode())
    assert decoded == JobStatus(
        id=JOB_ID,
        status=Status.IN_PROGRESS,
        endpoint=Endpoint.DOCUMENTS_EXTRACT,
        created_at=T0,
        expires_at=1706025600,
        organization_id="org_abc123",
    )


def test_all_optional_fields_present() -> None:
    decoded = decode_status(
        payload(
            status="failed",
            completed_at=T0 + 60,
            warnings=None,
            cloud_task_name="task-1",
            cancelled=True,
            attempt_count=3,
            last_attempt_at=T0 + 59,
            last_failure_code="ocr_timeout",
            metadata=None,
        )
    )
    assert decoded.status is Status.FAILED
    assert decoded.completed_at == T0 + 60
    assert decoded.cloud_task_name == "task-1"
    assert decoded.cancelled is True
    assert decoded.attempt_count == 3
    assert decoded.last_attempt_at == T0 + 59
    assert decoded.last_failure_code == "ocr_timeout"
    assert decoded.metadata is None


# -- errors and warnings ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        (
            {"code": "ocr_failed", "message": "page 3"},
            JobError(code="ocr_failed", message="page 3"),
        ),
        (
            {"code": "c", "message": "m", "details": None},
            JobError(code="c", message="m", details=None),
        ),
        (
            {"code": "c", "message": "m", "details": {"page": 3, "why": ["a"]}},
            JobError(code="c", message="m", details={"page": 3, "why": ["a"]}),
        ),
        (
            {"code": "c", "message": "m", "details": "text"},
            JobError(code="c", message="m", details="text"),
        ),
    ],
)
def test_error_shapes(wire: dict[str, Any], expected: JobError) -> None:
    decoded = decode_status(payload(status="failed", error=wire))
    assert decoded.error == expected


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        (None, None),
        ([], []),
        (
            [
                {"code": "dispatch_delayed", "message": "queued late"},
                {"code": "w2", "message": "m2", "details": {"n": 1}},
            ],
            [
                JobWarning(code="dispatch_delayed", message="queued late"),
                JobWarning(code="w2", message="m2", details={"n": 1}),
            ],
        ),
    ],
)
def test_warning_shapes(
    wire: list[dict[str, Any]] | None, expected: list[JobWarning] | None
) -> None:
    assert decode_status(payload(warnings=wire)).warnings == expected


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("error", {"message": "no code"}),
        ("error", {"code": "no message"}),
        ("error", {"code": 1, "message": "m"}),
        ("error", "boom"),
        ("warnings", {"code": "c", "message": "m"}),
        ("warnings", [{"code": "c"}]),
        ("warnings", ["text"]),
    ],
)
def test_malformed_error_or_warnings_are_refused(field: str, value: object) -> None:
    with pytest.raises(DecodeError) as info:
        decode_status(payload(**{field: value}), JOB_ID)
    assert field in str(info.value)


# -- full job --------------------------------------------------------------------------


def test_full_job_with_request_and_response() -> None:
    body = payload(
        status="completed",
        completed_at=T0 + 30,
        request={"document": {"url": "https://x/doc.pdf"}, "model": "gpt", "n": 1},
        response={"status_code": 200, "body": {"result": [1, 2, {"k": None}]}},
    )
    job = decode_job(body, JOB_ID)

    assert job.status is Status.COMPLETED
    assert job.status.is_terminal
    assert job.completed_at == T0 + 30
    assert job.request == {"document": {"url": "https://x/doc.pdf"}, "model": "gpt", "n": 1}
    assert job.response == JobResponse(status_code=200, body={"result": [1, 2, {"k": None}]})
    assert job.metadata == {"batch_id": "batch_001"}


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        (None, None),
        ({"status_code": 422}, JobResponse(status_code=422, body=None)),
        ({"status_code": 500, "body": "oops"}, JobResponse(status_code=500, body="oops")),
    ],
)
def test_full_job_response_shapes(wire: object, expected: JobResponse | None) -> None:
    assert decode_job(payload(response=wire)).response == expected


def test_full_job_with_iso_timestamps_keeps_request_and_response() -> None:
    job = decode_job(
        payload(
            created_at="2024-01-16T16:00:00Z",
            request={"a": 1},
            response={"status_code": 200, "body": [1]},
        )
    )
    assert job.created_at == T0
    assert job.request == {"a": 1}
    assert job.response == JobResponse(status_code=200, body=[1])
    assert type(job) is Job


@pytest.mark.parametrize(
    "response", [{"body": {}}, {"status_code": "200"}, [200, {}], "ok", {"status_code": 1.5}]
)
def test_full_job_with_a_malformed_response_is_refused(response: object) -> None:
    with pytest.raises(DecodeError) as info:
        decode_job(payload(response=response), JOB_ID)
    assert info.value.job_id == JOB_ID
    assert "response" in str(info.value)


# -- malformed bodies -------------------------------------------------------------------

MALFORMED: dict[str, bytes] = {
    "truncated": EXAMPLE[:-10],
    "truncated mid-string": EXAMPLE[:30],
    "only an opening brace": b"{",
    "not JSON (html)": b"<html><body>502 Bad Gateway</body></html>",
    "not JSON (text)": b"upstream connect error or disconnect/reset before headers",
    "empty body": b"",
    "whitespace only": b"  \r\n ",
    "JSON null": b"null",
    "JSON number": b"42",
    "JSON string": b'"job"',
    "JSON array": b"[]",
    "JSON array holding the payload": b"[" + EXAMPLE + b"]",
    "deeply nested array": b"[" * 100_000 + b"]" * 100_000,
    "deeply nested object": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    "deeply nested metadata": EXAMPLE.replace(
        b'{"batch_id": "batch_001"}', b'{"a":' * 20_000 + b"1" + b"}" * 20_000
    ),
    "invalid UTF-8 outside a string": EXAMPLE.replace(b'"id"', b'\xff"id"'),
    "trailing garbage": EXAMPLE + b"}",
    "two documents": EXAMPLE + EXAMPLE,
    "NaN literal": payload(attempt_count=0).replace(b'"attempt_count": 0', b'"attempt_count": NaN'),
    "single quotes": EXAMPLE.replace(b'"', b"'"),
    "id is a number": payload(id=123),
    "id is null": payload(id=None),
    "status is a number": payload(status=3),
    "status is null": payload(status=None),
    "endpoint is null": payload(endpoint=None),
    "endpoint is a list": payload(endpoint=["/v1/parses"]),
    "organization_id is null": payload(organization_id=None),
    "created_at is a word": payload(created_at="soon"),
    "expires_at is null": payload(expires_at=None),
    "started_at is a bool": payload(started_at=False),
    "cancelled is a string": payload(cancelled="yes"),
    "attempt_count is a string": payload(attempt_count="1"),
    "attempt_count is fractional": payload(attempt_count=1.5),
    "metadata is a list": payload(metadata=["batch_001"]),
    "metadata is a string": payload(metadata="batch_001"),
    "object is null": payload(object=None),
    "cloud_task_name is a number": payload(cloud_task_name=7),
    **{f"missing {name}": payload(**{name: ...}) for name in REQUIRED},
}


@pytest.mark.parametrize("decode", [decode_status, decode_job], ids=["status", "job"])
@pytest.mark.parametrize("body", MALFORMED.values(), ids=list(MALFORMED))
def test_malformed_bodies_raise_decode_error_with_job_id_and_excerpt(
    decode: Any, body: bytes
) -> None:
    with pytest.raises(DecodeError) as info:
        decode(body, JOB_ID, "req_123")
    error = info.value

    # Our error, never msgspec's (which may only be chained as the cause).
    assert type(error) is DecodeError
    assert isinstance(error, RequestError)
    assert not isinstance(error, msgspec.MsgspecError)
    assert error.job_id == JOB_ID
    assert error.request_id == "req_123"
    assert error.retryable is True
    assert error.excerpt == excerpt(body)
    assert JOB_ID in str(error)
    if body.strip():
        assert error.excerpt
        assert error.excerpt[:8] in repr(body[:40])


# msgspec raises UnicodeDecodeError, not its own DecodeError, for invalid UTF-8 inside a
# JSON string: it must still come out as poller's DecodeError.
@pytest.mark.parametrize("decode", [decode_status, decode_job], ids=["status", "job"])
@pytest.mark.parametrize(
    "body",
    [
        EXAMPLE.replace(b"org_abc123", b"org_\xff\xfe"),
        EXAMPLE.replace(b"batch_001", b"batch_\xc3"),
        payload(status="failed", error={"code": "c", "message": "m"}).replace(b'"m"', b'"\x80"'),
    ],
    ids=["organization_id", "metadata value", "error message"],
)
def test_invalid_utf8_inside_a_string_raises_decode_error(decode: Any, body: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        decode(body, JOB_ID)
    assert info.value.job_id == JOB_ID
    assert info.value.excerpt == excerpt(body)
    assert info.value.excerpt.isprintable()


@pytest.mark.parametrize("name", REQUIRED)
def test_a_missing_required_field_is_named(name: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_status(payload(**{name: ...}), JOB_ID)
    assert f"`{name}`" in str(info.value)


def test_decode_error_without_a_job_id() -> None:
    with pytest.raises(DecodeError) as info:
        decode_status(b"nope")
    assert info.value.job_id is None
    assert info.value.excerpt == "nope"


# -- excerpts -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"\xff" * 100_000,
        b"\x00" * 5000,
        b"x" * 1_000_000,
        b"\x1b[31mred\x1b[0m\r\n\t\x07" * 200,
        "é😀\u202e".encode() * 300,
        b"'\"\\" * 500,
    ],
    ids=["high bytes", "NUL", "long ascii", "control", "utf-8 and bidi", "quotes"],
)
def test_excerpt_is_bounded_and_printable(body: bytes) -> None:
    text = excerpt(body)

    # Each byte is at most 4 escaped characters ("\\xff"); 120 bytes plus "...".
    assert len(text) <= 4 * 120 + 3
    assert text.endswith("...")
    assert text.isascii()
    assert text.isprintable()


def test_excerpt_of_a_short_body_is_its_text() -> None:
    assert excerpt(b'{"detail": "x"}') == '{"detail": "x"}'
    assert excerpt(b"") == ""
    assert excerpt(b"a\nb") == "a\\nb"


def test_decode_error_excerpt_is_bounded_for_a_huge_body() -> None:
    body = b'{"id": "' + b"\x01" * 2_000_000
    with pytest.raises(DecodeError) as info:
        decode_status(body, JOB_ID)
    assert len(info.value.excerpt) <= 4 * 120 + 3
    assert info.value.excerpt.isprintable()
    assert len(str(info.value)) < 2000


# -- property tests ----------------------------------------------------------------------

_FAST = settings(
    max_examples=150,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _check_outcome(decode: Any, body: bytes) -> None:
    """Decoding ``body`` either succeeds with well-typed values or raises DecodeError."""
    try:
        decoded = decode(body, JOB_ID)
    except DecodeError as error:
        assert error.job_id == JOB_ID
        assert error.excerpt == excerpt(body)
        return
    assert isinstance(decoded, JobStatus)
    assert isinstance(decoded.id, str)
    assert isinstance(decoded.status, Status)
    assert isinstance(decoded.endpoint, Endpoint)
    for name in TIMESTAMPS:
        value = getattr(decoded, name)
        assert value is None or type(value) is int


@_FAST
@given(body=st.binary(max_size=400))
def test_random_bytes_only_ever_raise_decode_error(body: bytes) -> None:
    _check_outcome(decode_status, body)
    _check_outcome(decode_job, body)


_edits = st.lists(
    st.tuples(
        st.sampled_from(["delete", "insert", "replace"]),
        st.integers(min_value=0, max_value=len(EXAMPLE) - 1),
        st.binary(min_size=1, max_size=4),
    ),
    min_size=1,
    max_size=6,
)


@_FAST
@given(edits=_edits)
def test_byte_mutations_of_a_valid_payload_only_ever_raise_decode_error(
    edits: list[tuple[str, int, bytes]],
) -> None:
    body = bytearray(EXAMPLE)
    for op, at, data in edits:
        at = min(at, len(body))
        if op == "delete":
            del body[at : at + len(data)]
        elif op == "insert":
            body[at:at] = data
        else:
            body[at : at + len(data)] = data
    _check_outcome(decode_status, bytes(body))
    _check_outcome(decode_job, bytes(body))


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | st.sampled_from(["2024-01-16T16:00:00Z", "2024-01-16T16:00:00", "queued", "/v1/parses"]),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
_field_names = st.sampled_from([f.name for f in msgspec.structs.fields(Job)] + ["unknown_field"])


@_FAST
@given(changes=st.dictionaries(_field_names, _json_values | st.just(...), min_size=1, max_size=4))
def test_field_mutations_of_a_valid_payload_only_ever_raise_decode_error(
    changes: dict[str, Any],
) -> None:
    body = payload(**changes)
    _check_outcome(decode_status, body)
    _check_outcome(decode_job, body)
