"""Pure lifecycle generation: which statuses a simulated job goes through, and when.

Nothing here reads a clock or sleeps: every function takes a start time and a
``random.Random`` and returns plain values, so the HTTP simulator, the tests and a
virtual-time benchmark can all share it.

The duration model (``STANDARD_MIX``) has four endpoint classes. A job spends a
fixed ``validating_s`` validating, an exponentially distributed time queued
(mean ``queued_mean_s``), then a log-normal time in progress whose median and
spread depend on its endpoint's class:

=========  ========  =====  ======  ==========================================
class      median    sigma  weight  endpoints
=========  ========  =====  ======  ==========================================
fast       4 s       0.5    0.35    classify, classifications, files/analyze
standard   25 s      0.8    0.40    extract, parse, schemas, edit/* (and any
                                    endpoint not listed: the middle of the mix)
heavy      60 s      0.7    0.15    split, splits, partitions
batch      600 s     1.0    0.10    every evals/* endpoint
=========  ========  =====  ======  ==========================================

``weight`` is the share of each class when the endpoint is drawn at random.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_OUTCOMES",
    "ENDPOINTS",
    "STANDARD_MIX",
    "TERMINAL_STATUSES",
    "Change",
    "EndpointClass",
    "Outcomes",
    "draw_endpoint",
    "draw_error",
    "draw_lifecycle",
    "endpoint_class",
]

import itertools
import math
import random
from collections.abc import Sequence
from typing import Any, Final

import msgspec

TERMINAL_STATUSES: Final = frozenset({"completed", "failed", "cancelled", "expired"})

# A job marked for the extra (unknown) phase spends this long in it, before scaling.
_EXTRA_PHASE_S: Final = 2.0
# Failures happen while processing, never in its first instant.
_EARLIEST_FAILURE: Final = 0.1

_ERRORS: Final = (
    ("document_unreadable", "The document could not be read."),
    ("model_timeout", "The model did not answer in time."),
    ("schema_validation_failed", "The output did not match the JSON schema."),
    ("internal_error", "An internal error occurred while processing the job."),
)


class Change(msgspec.Struct, frozen=True):
    """A job entered ``status`` at time ``at`` (seconds, the simulator clock's unit)."""

    status: str
    at: float


class EndpointClass(msgspec.Struct, frozen=True, kw_only=True):
    """A group of endpoints sharing one in-progress duration distribution.

    ``median_s`` and ``sigma`` parametrise a log-normal distribution (``sigma`` is the
    standard deviation of its logarithm). ``weight`` is the class's share when an
    endpoint is drawn at random, and ``endpoints`` the endpoint strings it covers.
    """

    name: str
    median_s: float
    sigma: float
    weight: float
    endpoints: tuple[str, ...]


class Outcomes(msgspec.Struct, frozen=True, kw_only=True):
    """Relative weights of a job's final status. They need not sum to 1."""

    completed: float = 0.90
    failed: float = 0.07
    cancelled: float = 0.03

    def __post_init__(self) -> None:
        weights = (self.completed, self.failed, self.cancelled)
        if min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"outcome weights must be >= 0 and not all 0: {weights}")

    def pick(self, u: float) -> str:
        """The outcome a uniform draw ``u`` in [0, 1) lands on."""
        point = u * (self.completed + self.failed + self.cancelled)
        if point < self.completed:
            return "completed"
        return "failed" if point < self.completed + self.failed else "cancelled"


DEFAULT_OUTCOMES: Final = Outcomes()

STANDARD_MIX: Final = (
    EndpointClass(
        name="fast",
        median_s=4.0,
        sigma=0.5,
        weight=0.35,
        endpoints=("/v1/documents/classify", "/v1/classifications", "/v1/files/analyze"),
    ),
    EndpointClass(
        name="standard",
        median_s=25.0,
        sigma=0.8,
        weight=0.40,
        endpoints=(
            "/v1/documents/extract",
            "/v1/documents/parse",
            "/v1/schemas/generate",
            "/v1/edit/agent/fill",
            "/v1/edit/templates/fill",
            "/v1/edit/templates/generate",
            "/v1/extractions",
            "/v1/parses",
            "/v1/edits",
        ),
    ),
    EndpointClass(
        name="heavy",
        median_s=60.0,
        sigma=0.7,
        weight=0.15,
        endpoints=("/v1/documents/split", "/v1/splits", "/v1/partitions"),
    ),
    EndpointClass(
        name="batch",
        median_s=600.0,
        sigma=1.0,
        weight=0.10,
        endpoints=(
            "/v1/evals/extract/process",
            "/v1/evals/split/process",
            "/v1/evals/classify/process",
            "/v1/evals/extract/extract",
            "/v1/evals/extract/split",
        ),
    ),
)

ENDPOINTS: Final = tuple(e for cls in STANDARD_MIX for e in cls.endpoints)
"""Every endpoint value the simulator knows (the documented enum and the newer names)."""

_BY_ENDPOINT: Final = {e: cls for cls in STANDARD_MIX for e in cls.endpoints}
_DEFAULT_CLASS: Final = STANDARD_MIX[1]
_MIX_CUM_WEIGHTS: Final = tuple(itertools.accumulate(c.weight for c in STANDARD_MIX))


def endpoint_class(endpoint: str) -> EndpointClass:
    """The duration class of ``endpoint``; endpoints not listed get the "standard" class."""
    return _BY_ENDPOINT.get(endpoint, _DEFAULT_CLASS)


def draw_endpoint(rng: random.Random) -> str:
    """An endpoint drawn from the standard mix: a class by weight, then one of its endpoints."""
    (cls,) = rng.choices(STANDARD_MIX, cum_weights=_MIX_CUM_WEIGHTS)
    return rng.choice(cls.endpoints)


def draw_error(rng: random.Random) -> dict[str, Any]:
    """A ``JobError`` payload (``code``, ``message``, ``details``) for a failed job."""
    code, message = rng.choice(_ERRORS)
    return {"code": code, "message": message, "details": None}


def draw_lifecycle(
    rng: random.Random,
    endpoint: str,
    start: float,
    *,
    time_scale: float = 1.0,
    outcomes: Outcomes = DEFAULT_OUTCOMES,
    validating_s: float = 0.5,
    queued_mean_s: float = 3.0,
    extra_phase: str | None = None,
    validate: bool = True,
) -> list[Change]:
    """Draw one attempt of a job: its status changes from ``start`` to a terminal status.

    The attempt runs ``validating`` (skipped when ``validate`` is False, as for a
    retry), ``queued``, ``in_progress``, then ``extra_phase`` when given (a status the
    client may not know), and ends ``completed``, ``failed`` or ``cancelled`` as drawn
    from ``outcomes``. A failure cuts processing at a uniformly drawn point; a
    cancellation cuts the whole attempt at a uniformly drawn point. Every duration is
    multiplied by ``time_scale``. The same ``rng`` state always gives the same list,
    and every call consumes the same number of draws whatever the outcome.

    Raises ``ValueError`` when ``time_scale`` is not positive.
    """
    if not time_scale > 0:
        raise ValueError(f"time_scale must be > 0, got {time_scale}")
    outcome = outcomes.pick(rng.random())
    cls = endpoint_class(endpoint)
    queued_s = rng.expovariate(1 / queued_mean_s) if queued_mean_s > 0 else 0.0
    in_progress_s = rng.lognormvariate(math.log(cls.median_s), cls.sigma)
    fraction = rng.random()

    phases: list[Change] = []
    at = start
    if validate:
        phases.append(Change("validating", at))
        at += validating_s * time_scale
    phases.append(Change("queued", at))
    at += queued_s * time_scale
    processing_start = at
    phases.append(Change("in_progress", at))
    at += in_progress_s * time_scale
    if extra_phase is not None:
        phases.append(Change(extra_phase, at))
        at += _EXTRA_PHASE_S * time_scale

    if outcome == "completed":
        return [*phases, Change("completed", at)]
    if outcome == "failed":
        fraction = _EARLIEST_FAILURE + (1 - _EARLIEST_FAILURE) * fraction
        return _cut(phases, processing_start + fraction * (at - processing_start), "failed")
    return _cut(phases, start + fraction * (at - start), "cancelled")


def _cut(phases: Sequence[Change], at: float, status: str) -> list[Change]:
    """The phases that began before ``at``, then ``status`` at ``at``."""
    return [*(c for c in phases if c.at < at), Change(status, at)]
