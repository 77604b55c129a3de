"""Opt-in faults: which request of a job misbehaves, and how its bytes are spoiled.

Two kinds of fault exist. Per-request faults (``reset``, ``server_error``,
``unavailable``, ``garbage``, ``truncated``, ``slow``, and ``extra_fields``) are
decided for the n-th status or job GET of a job by hashing ``(seed, job_id, n)``:
the decision depends on nothing else, so concurrency, other jobs and other orgs
never change which request of a job gets which fault. Per-job faults
(``unknown_status``, ``unknown_endpoint``) are drawn once, when the job is created,
so a job behaves consistently for its whole life.
"""

from __future__ import annotations

__all__ = [
    "GARBAGE_BODY",
    "REQUEST_FAULTS",
    "UNKNOWN_ENDPOINTS",
    "Faults",
    "add_extra_fields",
    "decide",
    "truncate",
]

import hashlib
from typing import Any, Final

import msgspec

REQUEST_FAULTS: Final = ("reset", "server_error", "unavailable", "garbage", "truncated", "slow")
"""The mutually exclusive per-request faults, in the order their rates are stacked."""

UNKNOWN_ENDPOINTS: Final = ("/v2/documents/understand", "/v1/documents/redact", "/v1/agents/run")
"""Endpoint values outside the documented enum, carried by ``unknown_endpoint`` jobs."""

# A 200 whose body is an HTML page is what a misconfigured proxy or captive portal sends.
GARBAGE_BODY: Final = (
    b"<!DOCTYPE html><html><head><title>Gateway</title></head>"
    b"<body><h1>upstream sent an invalid response</h1></body></html>\n"
)

_TWO_POW_64: Final = float(2**64)


class Faults(msgspec.Struct, frozen=True, kw_only=True):
    """Fault rates of a simulator, each a probability in [0, 1]; all default to 0.

    Per request (a status or job GET by an authenticated caller of a job it owns);
    the first six are mutually exclusive, so their rates must sum to at most 1:

    - ``reset``: the connection is aborted without a response.
    - ``server_error``: 500 ``{"detail": "Internal Server Error"}``.
    - ``unavailable``: 503 with ``Retry-After: unavailable_retry_after_s``.
    - ``garbage``: 200 with a body that is not JSON (an HTML page).
    - ``truncated``: 200 with valid JSON cut in the middle.
    - ``slow``: the normal response, sent after ``slow_delay_s`` seconds.
    - ``extra_fields``: independent of the others: the JSON body carries unknown
      fields, some holding nested objects, also inside ``error``.

    Per job, decided when the job is created:

    - ``unknown_status``: the job passes through ``unknown_status_value`` between
      ``in_progress`` and its terminal status (not applied to scripted jobs).
    - ``unknown_endpoint``: the job reports an endpoint outside the enum.

    Raises ``ValueError`` for a rate outside [0, 1] or exclusive rates summing above 1.
    """

    reset: float = 0.0
    server_error: float = 0.0
    unavailable: float = 0.0
    garbage: float = 0.0
    truncated: float = 0.0
    slow: float = 0.0
    extra_fields: float = 0.0
    unknown_status: float = 0.0
    unknown_endpoint: float = 0.0
    slow_delay_s: float = 2.0
    unavailable_retry_after_s: int = 1
    unknown_status_value: str = "postprocessing"

    def __post_init__(self) -> None:
        rates = {
            name: getattr(self, name)
            for name in (*REQUEST_FAULTS, "extra_fields", "unknown_status", "unknown_endpoint")
        }
        bad = {name: rate for name, rate in rates.items() if not 0.0 <= rate <= 1.0}
        if bad:
            raise ValueError(f"fault rates must be within [0, 1]: {bad}")
        exclusive = sum(rates[name] for name in REQUEST_FAULTS)
        if exclusive > 1.0 + 1e-9:
            raise ValueError(f"the rates of {REQUEST_FAULTS} sum to {exclusive}, above 1")
        if self.slow_delay_s < 0 or self.unavailable_retry_after_s < 0:
            raise ValueError("slow_delay_s and unavailable_retry_after_s must be >= 0")


def decide(seed: int, job_id: str, n: int, faults: Faults) -> tuple[str | None, bool]:
    """The faults of the ``n``-th request of ``job_id``: (exclusive fault or None, extra fields).

    A pure function of its arguments: two uniforms come from one BLAKE2b digest of
    ``(seed, job_id, n)``, the first picks among the stacked exclusive rates, the
    second decides ``extra_fields``.
    """
    digest = hashlib.blake2b(f"{seed}\x00{job_id}\x00{n}".encode(), digest_size=16).digest()
    pick = int.from_bytes(digest[:8]) / _TWO_POW_64
    extra = int.from_bytes(digest[8:]) / _TWO_POW_64 < faults.extra_fields
    threshold = 0.0
    for name in REQUEST_FAULTS:
        threshold += getattr(faults, name)
        if pick < threshold:
            return name, extra
    return None, extra


def truncate(body: bytes) -> bytes:
    """The first half of ``body``: valid JSON cut in the middle, so it no longer parses."""
    return body[: len(body) // 2]


def add_extra_fields(payload: dict[str, Any]) -> None:
    """Add fields a client does not know to a job payload, in place, nested ones included."""
    payload["region"] = "europe-west1"
    payload["usage"] = {"credits": 1.25, "pages": {"count": 3, "billed": True}}
    payload["trace"] = {"spans": [{"name": "ocr", "duration_ms": 812}], "sampled": False}
    if isinstance(payload.get("error"), dict):
        payload["error"] = {**payload["error"], "retryable": False, "hint": {"docs": None}}
