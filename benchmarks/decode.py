"""Decode: nanoseconds per status payload through the engine's decode path.

``poller._decode.decode_status`` (what the transport calls for every poll) against
the bare ``msgspec.json.Decoder(JobStatus).decode`` it wraps, ``orjson.loads`` to a
dict (no validation), and ``json.loads`` followed by a pydantic model of the same
fields (the SDK way). Each figure is the best of several repeats of a timed loop,
less the cost of the empty loop, so it is the cost of the call itself.

Goal: the engine's path within 1.2x of bare msgspec, on every payload.
"""

from __future__ import annotations

import json
import timeit
from collections.abc import Callable
from typing import Any

import msgspec
import orjson

from poller._decode import decode_status
from poller.models import Endpoint, JobStatus, Status

from ._common import FAILED_PAYLOAD, REFERENCE_PAYLOAD, canned_payload, goal, module_main

NAME = "decode"
GOAL_RATIO = 1.2

PAYLOADS: dict[str, bytes] = {
    "reference example": REFERENCE_PAYLOAD,
    "failed, with error, warnings, metadata": FAILED_PAYLOAD,
    "compact in_progress (the canned server's)": canned_payload("job_V1StGXR8_Z5jdHi6B-myT"),
}
ENGINE = "poller decode_status"
BARE = "bare msgspec"


def _pydantic_decoders() -> dict[str, Callable[[bytes], object]]:
    """json + pydantic, when pydantic is installed (the ``bench`` extra)."""
    try:
        import pydantic
    except ImportError:
        return {}

    class PJobError(pydantic.BaseModel):
        code: str
        message: str
        details: Any = None

    class PJobStatus(pydantic.BaseModel):
        id: str
        status: Status
        endpoint: Endpoint
        created_at: int
        expires_at: int
        organization_id: str
        object: str = "job"
        error: PJobError | None = None
        warnings: list[PJobError] | None = None
        started_at: int | None = None
        completed_at: int | None = None
        metadata: dict[str, Any] | None = None
        cloud_task_name: str | None = None
        cancelled: bool = False
        attempt_count: int = 0
        last_attempt_at: int | None = None
        last_failure_code: str | None = None

    validate = PJobStatus.model_validate
    loads = json.loads
    return {
        "json + pydantic": lambda body: validate(loads(body)),
        "pydantic model_validate_json": PJobStatus.model_validate_json,
    }


def decoders() -> dict[str, Callable[[bytes], object]]:
    bare = msgspec.json.Decoder(JobStatus).decode
    job_id, request_id = "job_V1StGXR8_Z5jdHi6B-myT", "req_0123456789"
    return {
        # Called as the transport calls it: with the job and request IDs.
        ENGINE: lambda body: decode_status(body, job_id, request_id),
        BARE: bare,
        "orjson to dict": orjson.loads,
        **_pydantic_decoders(),
    }


def _ns_per_call(stmt: str, namespace: dict[str, Any], target_s: float, repeat: int) -> float:
    timer = timeit.Timer(stmt, globals=namespace)
    probe = 200
    elapsed = timer.timeit(probe)
    number = max(probe, int(probe * target_s / max(elapsed, 1e-9)))
    return min(timer.repeat(repeat=repeat, number=number)) / number * 1e9


def measure(quick: bool) -> dict[str, dict[str, float]]:
    """{payload: {decoder: ns per call}}."""
    target_s, repeat = (0.005, 3) if quick else (0.05, 7)
    table = decoders()
    results: dict[str, dict[str, float]] = {}
    for label, body in PAYLOADS.items():
        # Every decoder must accept the payload, or the comparison means nothing.
        for fn in table.values():
            fn(body)
        empty = _ns_per_call("pass", {}, target_s, repeat)
        # The engine's call site, as written: a module-level function with two extra args.
        row = {
            ENGINE: _ns_per_call(
                "decode_status(body, job_id, request_id)",
                {
                    "decode_status": decode_status,
                    "body": body,
                    "job_id": "job_V1StGXR8_Z5jdHi6B-myT",
                    "request_id": "req_0123456789",
                },
                target_s,
                repeat,
            )
            - empty
        }
        for name, fn in table.items():
            if name == ENGINE:
                continue
            if name == BARE:
                stmt, namespace = "decode(body)", {"decode": fn, "body": body}
            else:
                stmt, namespace = "fn(body)", {"fn": fn, "body": body}
            row[name] = _ns_per_call(stmt, namespace, target_s, repeat) - empty
        results[label] = row
    return results


def run(quick: bool) -> dict[str, Any]:
    """Measure every decoder on every payload; see the module docstring."""
    ns = measure(quick)
    names = list(next(iter(ns.values())).keys())
    table = []
    worst = 0.0
    for label, row in ns.items():
        bare = row[BARE]
        ratio = row[ENGINE] / bare
        worst = max(worst, ratio)
        entry: dict[str, Any] = {"payload": label, "bytes": len(PAYLOADS[label])}
        for name in names:
            entry[f"{name} (ns)"] = round(row[name], 1)
        entry["engine / bare msgspec"] = round(ratio, 3)
        for name in names:
            if name not in (ENGINE, BARE):
                entry[f"{name} / engine"] = round(row[name] / row[ENGINE], 2)
        table.append(entry)
    notes = [
        "Best of repeated timed loops, less the empty loop; the engine's path is "
        "`decode_status(body, job_id, request_id)` as the transport calls it.",
    ]
    if not any(name.startswith("json + pydantic") for name in names):
        notes.append("pydantic is not installed (the `bench` extra): no pydantic rows.")
    return {
        "title": "Decode",
        "summary": "Nanoseconds to decode one status payload, by decoder.",
        "decoders": names,
        "baseline": BARE,
        "ns_per_payload": ns,
        "worst_ratio_vs_bare_msgspec": round(worst, 3),
        "goals": [
            goal(
                "decode within 1.2x of bare msgspec (worst payload)",
                f"<= {GOAL_RATIO}x",
                f"{worst:.2f}x",
                worst <= GOAL_RATIO,
            )
        ],
        "table": table,
        "notes": notes,
    }


if __name__ == "__main__":
    module_main(NAME, None)
