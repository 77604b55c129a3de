"""Decoding response bytes into models: one decoder per type, built once.

The fast path decodes straight into the model with Unix-integer timestamps, as
the API documents them. A body that fails it is tried once more against a
lenient twin of the model whose timestamps also accept ISO-8601 strings and
floats; only when both fail does the caller see a :class:`DecodeError`.
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Any, Final, TypeVar

import msgspec

from .errors import DecodeError
from .models import Job, JobStatus

__all__ = ["decode_job", "decode_status", "excerpt"]

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


class _Decoder:
    __slots__ = ("_fast", "_lenient", "_model")

    def __init__(self, model: type[msgspec.Struct]) -> None:
        self._model = model
        self._fast = msgspec.json.Decoder(model)
        self._lenient = msgspec.json.Decoder(_lenient_twin(model))

    def decode(self, body: bytes, job_id: str | None, request_id: str | None) -> Any:
        try:
            return self._fast.decode(body)
        except _DECODE_FAILURES as exc:
            return self.decode_lenient(body, exc, job_id, request_id)

    def decode_lenient(
        self, body: bytes, error: Exception, job_id: str | None, request_id: str | None
    ) -> Any:
        """The slow path, after the fast decoder refused ``body`` with ``error``."""
        try:
            loose = self._lenient.decode(body)
        except _DECODE_FAILURES as exc:
            # Report the strict decoder's complaint: it names the field as documented.
            raise DecodeError(
                f"invalid {self._model.__name__} payload: {error}",
                excerpt=excerpt(body),
                job_id=job_id,
                status=200,
                request_id=request_id,
            ) from exc
        values = {
            name: _to_unix(value) if name in _TIMESTAMP_FIELDS else value
            for name, value in msgspec.structs.asdict(loose).items()
        }
        return self._model(**values)


def excerpt(body: bytes, limit: int = _EXCERPT_BYTES) -> str:
    """The start of ``body`` as printable text: for error messages, never for parsing."""
    text = repr(body[:limit])[2:-1]
    return text + "..." if len(body) > limit else text


_status_decoder: Final = _Decoder(JobStatus)
_job_decoder: Final = _Decoder(Job)


_decode_status_fast: Final = msgspec.json.Decoder(JobStatus).decode


def decode_status(
    body: bytes, job_id: str | None = None, request_id: str | None = None
) -> JobStatus:
    """Decode a ``/status`` body. Raises :class:`DecodeError` for anything malformed."""
    # The hot path of every poll: one C call when the body is as documented.
    try:
        return _decode_status_fast(body)
    except _DECODE_FAILURES as exc:
        result: JobStatus = _status_decoder.decode_lenient(body, exc, job_id, request_id)
        return result


def decode_job(body: bytes, job_id: str | None = None, request_id: str | None = None) -> Job:
    """Decode a full-job body. Raises :class:`DecodeError` for anything malformed."""
    result: Job = _job_decoder.decode(body, job_id, request_id)
    return result
