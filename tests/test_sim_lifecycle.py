"""The simulator's pure lifecycle generation: order, distributions, outcomes, scaling."""

from __future__ import annotations

import itertools
import math
import random
import statistics
from collections import Counter

import pytest

from poller.models import Endpoint
from poller.testing import (
    ENDPOINTS,
    STANDARD_MIX,
    Change,
    EndpointClass,
    Outcomes,
    draw_endpoint,
    draw_error,
    draw_lifecycle,
    endpoint_class,
)

ALWAYS_COMPLETES = Outcomes(completed=1, failed=0, cancelled=0)
ORDER = ["validating", "queued", "in_progress", "postprocessing"]


def _phase_durations(changes: list[Change]) -> dict[str, float]:
    return {a.status: b.at - a.at for a, b in itertools.pairwise(changes)}


def test_completed_lifecycle_runs_every_phase_in_order() -> None:
    changes = draw_lifecycle(
        random.Random(1), "/v1/documents/extract", 100.0, outcomes=ALWAYS_COMPLETES
    )
    assert [c.status for c in changes] == ["validating", "queued", "in_progress", "completed"]
    assert changes[0].at == 100.0
    assert [c.at for c in changes] == sorted(c.at for c in changes)


def test_every_lifecycle_is_a_prefix_of_the_phases_then_one_terminal() -> None:
    for seed in range(300):
        changes = draw_lifecycle(
            random.Random(seed), "/v1/documents/split", 0.0, extra_phase="postprocessing"
        )
        *phases, last = changes
        assert [c.status for c in phases] == ORDER[: len(phases)], seed
        assert last.status in {"completed", "failed", "cancelled"}, seed
        assert all(a.at <= b.at for a, b in itertools.pairwise(changes)), seed
        if last.status == "failed":  # failures happen while processing
            assert "in_progress" in [c.status for c in phases], seed


def test_same_rng_state_gives_the_same_lifecycle() -> None:
    first = draw_lifecycle(random.Random(42), "/v1/documents/parse", 5.0)
    second = draw_lifecycle(random.Random(42), "/v1/documents/parse", 5.0)
    assert first == second
    assert first != draw_lifecycle(random.Random(43), "/v1/documents/parse", 5.0)


@pytest.mark.parametrize("cls", STANDARD_MIX, ids=lambda c: c.name)
def test_in_progress_durations_follow_the_class_log_normal(cls: EndpointClass) -> None:
    rng = random.Random(7)
    endpoint = cls.endpoints[0]
    durations = [
        _phase_durations(draw_lifecycle(rng, endpoint, 0.0, outcomes=ALWAYS_COMPLETES))
        for _ in range(4000)
    ]
    logs = [math.log(d["in_progress"]) for d in durations]
    assert math.exp(statistics.median(logs)) == pytest.approx(cls.median_s, rel=0.08)
    assert statistics.stdev(logs) == pytest.approx(cls.sigma, rel=0.08)
    assert statistics.fmean(d["queued"] for d in durations) == pytest.approx(3.0, rel=0.08)
    assert {d["validating"] for d in durations} == {0.5}


def test_time_scale_multiplies_every_duration() -> None:
    full = draw_lifecycle(
        random.Random(3), "/v1/documents/classify", 0.0, outcomes=ALWAYS_COMPLETES
    )
    fast = draw_lifecycle(
        random.Random(3), "/v1/documents/classify", 0.0, outcomes=ALWAYS_COMPLETES, time_scale=0.01
    )
    assert [c.status for c in fast] == [c.status for c in full]
    assert [c.at for c in fast] == pytest.approx([c.at * 0.01 for c in full])


@pytest.mark.parametrize("time_scale", [0.0, -1.0, math.nan])
def test_time_scale_must_be_positive(time_scale: float) -> None:
    with pytest.raises(ValueError, match="time_scale"):
        draw_lifecycle(random.Random(), "/v1/documents/extract", 0.0, time_scale=time_scale)


def test_outcomes_follow_their_weights() -> None:
    rng = random.Random(11)
    counts = Counter(draw_lifecycle(rng, "/v1/parses", 0.0)[-1].status for _ in range(20_000))
    assert counts["completed"] / 20_000 == pytest.approx(0.90, abs=0.01)
    assert counts["failed"] / 20_000 == pytest.approx(0.07, abs=0.01)
    assert counts["cancelled"] / 20_000 == pytest.approx(0.03, abs=0.005)


def test_failures_cut_processing_and_cancellations_cut_the_attempt() -> None:
    # The outcome weights do not change how many draws are made, so under one seed the
    # three outcomes share their durations and can be compared.
    def draw(seed: int, **weights: float) -> list[Change]:
        outcomes = Outcomes(**{"completed": 0.0, "failed": 0.0, "cancelled": 0.0, **weights})
        return draw_lifecycle(random.Random(seed), "/v1/documents/extract", 10.0, outcomes=outcomes)

    for seed in range(200):
        completed = draw(seed, completed=1)
        failed, cancelled = draw(seed, failed=1), draw(seed, cancelled=1)
        processing_start, end = completed[2].at, completed[-1].at
        assert failed[-1].status == "failed"
        assert processing_start < failed[-1].at <= end
        assert failed[:-1] == [c for c in completed[:-1] if c.at < failed[-1].at]
        assert cancelled[-1].status == "cancelled"
        assert 10.0 <= cancelled[-1].at <= end
        assert cancelled[:-1] == [c for c in completed[:-1] if c.at < cancelled[-1].at]


def test_extra_phase_sits_between_in_progress_and_the_terminal_status() -> None:
    changes = draw_lifecycle(
        random.Random(2),
        "/v1/documents/extract",
        0.0,
        outcomes=ALWAYS_COMPLETES,
        extra_phase="postprocessing",
    )
    assert [c.status for c in changes] == [*ORDER, "completed"]


def test_a_retry_attempt_skips_validation() -> None:
    changes = draw_lifecycle(
        random.Random(2), "/v1/splits", 50.0, validate=False, outcomes=ALWAYS_COMPLETES
    )
    assert [c.status for c in changes] == ["queued", "in_progress", "completed"]
    assert changes[0].at == 50.0


@pytest.mark.parametrize(
    ("endpoint", "name"),
    [
        ("/v1/documents/classify", "fast"),
        ("/v1/documents/extract", "standard"),
        ("/v1/documents/parse", "standard"),
        ("/v1/documents/split", "heavy"),
        ("/v1/evals/extract/process", "batch"),
        ("/v1/evals/classify/process", "batch"),
        ("/v2/never/heard/of", "standard"),
    ],
)
def test_endpoints_map_to_duration_classes(endpoint: str, name: str) -> None:
    assert endpoint_class(endpoint).name == name


def test_the_simulator_knows_every_endpoint_the_client_knows() -> None:
    known = {e.value for e in Endpoint if e.is_known}
    assert known == set(ENDPOINTS)


def test_standard_mix_medians_and_draw_weights() -> None:
    assert [(c.median_s, c.sigma) for c in STANDARD_MIX] == [
        (4, 0.5),
        (25, 0.8),
        (60, 0.7),
        (600, 1.0),
    ]
    rng = random.Random(9)
    counts = Counter(endpoint_class(draw_endpoint(rng)).name for _ in range(20_000))
    for cls in STANDARD_MIX:
        assert counts[cls.name] / 20_000 == pytest.approx(cls.weight, abs=0.015)


def test_errors_have_the_job_error_shape() -> None:
    error = draw_error(random.Random(1))
    assert set(error) == {"code", "message", "details"}
    assert isinstance(error["code"], str) and isinstance(error["message"], str)


def test_outcome_weights_are_validated() -> None:
    with pytest.raises(ValueError, match="outcome weights"):
        Outcomes(completed=0, failed=0, cancelled=0)
    with pytest.raises(ValueError, match="outcome weights"):
        Outcomes(completed=1, failed=-0.1)
