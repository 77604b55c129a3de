"""Decoding response bytes into models: one decoder per type, built once.

The fast path decodes straight into the model with Unix-integer timestamps, as
the API documents them. A body that fails it is tried once more against a
lenient twin of the model whose timestamps also accept ISO-8601 strings and
floats; only when both fail does the caller see a :class:`DecodeError`.
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Any, Final, Protocol, TypeVar

import msgspec

from .errors import DecodeError
from .models import Job, JobStatus

__all__ = ["Decode", "decode_job", "decode_status", "excerpt", "invalid_body"]

_EXCERPT_BYTES: Final = 120
_TIMESTAMP_FIELDS: Final = frozenset(
    {"created_at", "expires_at", "started_at", "completed_at", "last_attempt_at"}
)
_LenientTimestamp = int | float | _dt.datetime
# msgspec reports bad input as DecodeError (ValidationError included); nesting deeper than
# its limit surfaces as RecursionError, invalid UTF-8 inside a string as
# UnicodeDecodeError. All mean "malformed body".
_DECODE_FAILURES: Final = (msgspec.DecodeError, RecursionError, UnicodeDecodeError)

M = TypeVar("M", JobStatus, Job)
M_co = TypeVar("M_co", JobStatus, Job, covariant=True)


class Decode(Protocol[M_co]):
    """Decodes a response body into a model: (body, job ID, request ID) -> payload."""

    def __call__(
        self, body: bytes, job_id: str | None = None, request_id: str | None = None
    ) -> M_co: ...


def _lenient_twin(model: type[msgspec.Struct]) -> type[msgspec.Struct]:
    """A struct with the model's fields, timestamps widened to accept ISO strings and floats."""
    fields: list[tuple[str, Any, Any]] = []
    for field in msgspec.structs.fields(model):
        tp: Any = field.type
        if field.name in _TIMESTAMP_FIELDS:
            tp = _LenientTimestamp | None if field.required is False else _LenientTimestamp
        default = msgspec.NODEFAULT if field.required else field.default
        fields.append((field.name, tp, default))
    return msgspec.defstruct(f"_Lenient{model.__name__}", fields, kw_only=True)


def _to_unix(value: object) -> object:
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.UTC)
        return math.floor(value.timestamp())
    if isinstance(value, float):
        return math.floor(value)
    return value


def invalid_body(
    message: str, body: bytes, job_id: str | None, request_id: str | None, status: int = 200
) -> DecodeError:
    """The :class:`DecodeError` for a response ``body`` that is no valid payload: with its
    excerpt, the job, the HTTP status and the request ID."""
    return DecodeError(
        message, excerpt=excerpt(body), job_id=job_id, status=status, request_id=request_id
    )


def excerpt(body: bytes, limit: int = _EXCERPT_BYTES) -> str:
    """The start of ``body`` as printable text: for error messages, never for parsing."""
    text = repr(body[:limit])[2:-1]
    return text + "..." if len(body) > limit else text


def _decoder(model: type[M]) -> Decode[M]:
    """The decoder of ``model``: one msgspec decoder for the body as documented (one C
    call, the hot path of every poll), and, only when it refuses, one for its lenient
    twin; both built once, here."""
    fast = msgspec.json.Decoder(model).decode
    lenient = msgspec.json.Decoder(_lenient_twin(model)).decode

    def decode(body: bytes, job_id: str | None = None, request_id: str | None = None) -> M:
        try:
            return fast(body)
        except _DECODE_FAILURES as error:
            try:
                loose = lenient(body)
            except _DECODE_FAILURES as exc:
                # Report the strict decoder's complaint: it names the field as documented.
                message = f"invalid {model.__name__} payload: {error}"
                raise invalid_body(message, body, job_id, request_id) from exc
            values: dict[str, Any] = {
                name: _to_unix(value) if name in _TIMESTAMP_FIELDS else value
                for name, value in msgspec.structs.asdict(loose).items()
            }
            return model(**values)

    decode.__name__ = decode.__qualname__ = f"decode_{model.__name__.lower()}"
    return decode


decode_status: Final = _decoder(JobStatus)
"""Decode a ``/status`` body (body, job ID, request ID). Raises :class:`DecodeError` for
anything malformed."""
decode_job: Final = _decoder(Job)
"""Decode a full-job body (body, job ID, request ID). Raises :class:`DecodeError` for
anything malformed."""
