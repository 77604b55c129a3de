"""The pure simulator, driven by a fake clock: jobs, auth, routes, limits, faults, the log."""

from __future__ import annotations

import datetime as dt
import email.utils
import math
import random
import re
import types
from collections import Counter
from typing import Any

import msgspec
import orjson
import pytest

import poller.testing
from poller.models import Job, JobStatus
from poller.testing import (
    UNKNOWN_ENDPOINTS,
    Change,
    Faults,
    JobsSimulator,
    JobStateError,
    Outcomes,
    SimResponse,
)

T0 = 1_700_000_000.0
KEY_A = {"Api-Key": "rt_test_a"}
KEY_B = {"Api-Key": "rt_test_b"}
SCRIPT = [
    Change("validating", 0.0),
    Change("queued", 1.0),
    Change("in_progress", 2.0),
    Change("completed", 10.0),
]
FAILING = [Change("queued", 0.0), Change("in_progress", 1.0), Change("failed", 3.0)]
STATUS_FIELDS = {
    "id",
    "object",
    "status",
    "endpoint",
    "error",
    "warnings",
    "created_at",
    "started_at",
    "completed_at",
    "expires_at",
    "organization_id",
    "metadata",
    "cloud_task_name",
    "cancelled",
    "attempt_count",
    "last_attempt_at",
    "last_failure_code",
}


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sim(clock: FakeClock) -> JobsSimulator:
    sim = JobsSimulator(seed=1, clock=clock)
    sim.add_org("org_a", api_keys=["rt_test_a"], access_tokens=["tok_a"])
    sim.add_org("org_b", api_keys=["rt_test_b"])
    return sim


def get(sim: JobsSimulator, path: str, headers: dict[str, str] | None = None) -> SimResponse:
    return sim.handle("GET", path, headers=KEY_A if headers is None else headers)


# Jobs and lifecycles


def test_job_ids_look_real_and_are_deterministic_under_a_seed() -> None:
    def ids(seed: int) -> list[str]:
        sim = JobsSimulator(seed=seed, clock=FakeClock())
        sim.add_org("org_a")
        return sim.add_jobs(50)

    first = ids(3)
    assert all(re.fullmatch(r"job_[A-Za-z0-9_-]{21}", job_id) for job_id in first)
    assert len(set(first)) == 50
    assert ids(3) == first
    assert ids(4) != first


def test_lifecycles_are_deterministic_under_a_seed() -> None:
    def plans(seed: int) -> list[list[Change]]:
        sim = JobsSimulator(seed=seed, clock=FakeClock())
        sim.add_org("org_a")
        return [sim.planned_changes(j) for j in sim.add_jobs(20)]

    assert plans(8) == plans(8)
    assert plans(8) != plans(9)


def test_scripted_job_changes_status_exactly_on_time(sim: JobsSimulator) -> None:
    job_id = sim.add_job(org_id="org_a", script=SCRIPT)
    expected = {0.0: "validating", 0.99: "validating", 1.0: "queued", 5.0: "in_progress"}
    for offset, status in {**expected, 10.0: "completed", 1e5: "completed"}.items():
        assert sim.status(job_id, now=T0 + offset) == status
    assert sim.changes(job_id, now=T0 + 5.0) == [Change(c.status, T0 + c.at) for c in SCRIPT[:3]]


def test_a_job_expires_after_its_ttl_whatever_its_status(sim: JobsSimulator) -> None:
    job_id = sim.add_job(org_id="org_a", script=SCRIPT[:3], ttl_s=60.0)  # never finishes
    assert sim.status(job_id, now=T0 + 59.9) == "in_progress"
    assert sim.status(job_id, now=T0 + 60.0) == "expired"
    assert sim.changes(job_id, now=T0 + 100)[-1] == Change("expired", T0 + 60.0)
    assert sim.planned_changes(job_id)[-1] == Change("expired", T0 + 60.0)
    body = get(sim, f"/v1/jobs/{job_id}/status").json()
    assert body["expires_at"] - body["created_at"] == 60


def test_default_ttl_is_seven_days(sim: JobsSimulator) -> None:
    job_id = sim.add_job(org_id="org_a")
    body = get(sim, f"/v1/jobs/{job_id}/status").json()
    assert body["expires_at"] - body["created_at"] == 604_800


def test_retry_requeues_in_place_with_a_new_attempt(sim: JobsSimulator, clock: FakeClock) -> None:
    job_id = sim.add_job(
        org_id="org_a", script=FAILING, error={"code": "ocr_failed", "message": "x"}
    )
    clock.now = T0 + 5
    failed = get(sim, f"/v1/jobs/{job_id}/status").json()
    assert failed["status"] == "failed"
    assert failed["error"] == {"code": "ocr_failed", "message": "x", "details": None}
    assert (failed["attempt_count"], failed["last_failure_code"]) == (1, "ocr_failed")

    sim.retry(
        job_id, script=[Change("queued", 0.0), Change("in_progress", 2.0), Change("completed", 4.0)]
    )
    requeued = get(sim, f"/v1/jobs/{job_id}/status").json()
    assert (requeued["id"], requeued["status"], requeued["error"]) == (job_id, "queued", None)
    assert requeued["started_at"] is None and requeued["completed_at"] is None
    assert requeued["last_failure_code"] == "ocr_failed"
    assert requeued["expires_at"] == math.floor(T0 + 5 + 604_800)

    clock.now = T0 + 8
    running = get(sim, f"/v1/jobs/{job_id}/status").json()
    assert (running["status"], running["attempt_count"]) == ("in_progress", 2)
    assert running["last_attempt_at"] == T0 + 7
    assert [c.status for c in sim.changes(job_id)] == [
        "queued",
        "in_progress",
        "failed",
        "queued",
        "in_progress",
    ]


def test_retry_of_a_drawn_job_draws_new_durations(sim: JobsSimulator, clock: FakeClock) -> None:
    sim.outcomes = Outcomes(completed=0, failed=1, cancelled=0)
    job_id = sim.add_job(org_id="org_a", endpoint="/v1/documents/classify")
    first = sim.planned_changes(job_id)[:-1]  # without the expiry
    clock.now = first[-1].at
    assert sim.status(job_id) == "failed"
    sim.retry(job_id)
    second = sim.planned_changes(job_id)[len(first) : -1]
    assert [c.status for c in second] == ["queued", "in_progress", "failed"]
    assert second[0].at == clock.now
    assert second[2].at - second[1].at != first[3].at - first[2].at


@pytest.mark.parametrize("status", ["failed", "cancelled", "expired"])
def test_retry_is_allowed_from_failed_cancelled_and_expired(
    sim: JobsSimulator, clock: FakeClock, status: str
) -> None:
    job_id = sim.add_job(
        org_id="org_a", script=[Change("queued", 0.0), Change(status, 1.0)], ttl_s=100
    )
    clock.now = T0 + (200 if status == "expired" else 2)
    assert sim.status(job_id) in {status, "expired"}
    sim.retry(job_id)
    assert sim.status(job_id) == "queued"
    assert sim.changes(job_id)[-1] == Change("queued", clock.now)


@pytest.mark.parametrize("offset", [0.5, 1.5, 20.0])
def test_retry_is_refused_unless_failed_cancelled_or_expired(
    sim: JobsSimulator, offset: float
) -> None:
    job_id = sim.add_job(org_id="org_a", script=SCRIPT)
    with pytest.raises(JobStateError):
        sim.retry(job_id, now=T0 + offset)


def test_cancel_stops_a_running_job_and_is_refused_once_terminal(sim: JobsSimulator) -> None:
    job_id = sim.add_job(org_id="org_a", script=SCRIPT)
    sim.cancel(job_id, now=T0 + 3)
    assert sim.status(job_id, now=T0 + 1e4) == "cancelled"
    assert sim.changes(job_id, now=T0 + 1e4)[-1] == Change("cancelled", T0 + 3)
    body = sim.handle("GET", f"/v1/jobs/{job_id}/status", headers=KEY_A, now=T0 + 4).json()
    assert body["cancelled"] is True and body["completed_at"] == math.floor(T0 + 3)
    with pytest.raises(JobStateError, match="already cancelled"):
        sim.cancel(job_id, now=T0 + 5)


def test_add_jobs_deals_jobs_round_robin_over_orgs(sim: JobsSimulator) -> None:
    job_ids = sim.add_jobs(7)
    assert sim.job_ids("org_a") == job_ids[0::2]
    assert sim.job_ids("org_b") == job_ids[1::2]


def test_add_job_validates_its_arguments(sim: JobsSimulator) -> None:
    with pytest.raises(KeyError):
        sim.add_job(org_id="org_nope")
    job_id = sim.add_job(org_id="org_a")
    with pytest.raises(ValueError, match="exists"):
        sim.add_job(org_id="org_a", job_id=job_id)
    for script in ([], [Change("queued", 1.0)], [Change("queued", 0.0), Change("completed", -1.0)]):
        with pytest.raises(ValueError, match="script"):
            sim.add_job(org_id="org_a", script=script)
    with pytest.raises(ValueError, match="ttl_s"):
        sim.add_job(org_id="org_a", ttl_s=0)


def test_add_org_generates_a_key_and_refuses_duplicates(sim: JobsSimulator) -> None:
    org = sim.add_org("org_c")
    assert re.fullmatch(r"rt_test_\w{24}", org.api_keys[0])
    with pytest.raises(ValueError, match="exists"):
        sim.add_org("org_c")
    with pytest.raises(ValueError, match="in use"):
        sim.add_org("org_d", api_keys=["rt_test_a"])
    with pytest.raises(ValueError, match="rate_limit_per_s"):
        sim.add_org("org_e", rate_limit_per_s=0)
    assert [o.org_id for o in sim.orgs] == ["org_a", "org_b", "org_c"]


# Payloads


def test_status_payload_has_every_field_of_the_reference(
    sim: JobsSimulator, clock: FakeClock
) -> None:
    job_id = sim.add_job(org_id="org_a", script=SCRIPT, metadata={"batch_id": "b1"})
    clock.now = T0 + 3.7
    response = get(sim, f"/v1/jobs/{job_id}/status")
    assert response.status == 200 and response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == STATUS_FIELDS
    assert body["object"] == "job" and body["organization_id"] == "org_a"
    assert body["metadata"] == {"batch_id": "b1"}
    assert (body["created_at"], body["started_at"]) == (int(T0), int(T0) + 2)
    assert body["completed_at"] is None and body["cloud_task_name"]
    assert msgspec.json.decode(response.body, type=JobStatus).status == "in_progress"


def test_full_job_honours_the_include_flags(sim: JobsSimulator, clock: FakeClock) -> None:
    job_id = sim.add_job(org_id="org_a", script=SCRIPT, request={"document": "d.pdf"})
    path = f"/v1/jobs/{job_id}"
    bare = get(sim, path).json()
    assert set(bare) == STATUS_FIELDS | {"request", "response"}
    assert bare["request"] is None and bare["response"] is None
    assert get(sim, path + "?include_request=true").json()["request"] == {"document": "d.pdf"}
    assert get(sim, path + "?include_response=true").json()["response"] is None  # not done yet
    clock.now = T0 + 11
    done = get(sim, path + "?include_request=1&include_response=True")
    assert done.json()["response"]["status_code"] == 200
    assert msgspec.json.decode(done.body, type=Job).response is not None
    assert get(sim, path + "?include_request=maybe").status == 422


def test_iso_timestamps(sim: JobsSimulator, clock: FakeClock) -> None:
    sim.timestamp_format = "iso"
    job_id = sim.add_job(org_id="org_a", script=SCRIPT)
    clock.now = T0 + 20
    body = get(sim, f"/v1/jobs/{job_id}/status").json()
    stamps = {k: body[k] for k in ("created_at", "started_at", "completed_at", "expires_at")}
    assert stamps == {
        k: dt.datetime.fromtimestamp(T0 + offset, dt.UTC).isoformat().replace("+00:00", "Z")
        for k, offset in [
            ("created_at", 0),
            ("started_at", 2),
            ("completed_at", 10),
            ("expires_at", 604_800),
        ]
    }
    assert dt.datetime.fromisoformat(body["last_attempt_at"]).timestamp() == T0 + 2


# Auth, routes and errors


@pytest.mark.parametrize(
    ("headers", "path_suffix"),
    [
        ({"Api-Key": "rt_test_a"}, ""),
        ({"api-key": "rt_test_a"}, ""),
        ({"Authorization": "Bearer rt_test_a"}, ""),
        ({"authorization": "bearer rt_test_a"}, ""),
        ({}, "?access_token=tok_a"),
    ],
)
def test_every_credential_style_authenticates(
    sim: JobsSimulator, headers: dict[str, str], path_suffix: str
) -> None:
    job_id = sim.add_job(org_id="org_a")
    assert get(sim, f"/v1/jobs/{job_id}/status{path_suffix}", headers).status == 200


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({}, "Missing API key"),
        ({"Api-Key": "rt_test_nope"}, "Invalid API key"),
        ({"Authorization": "Basic cnRfdGVzdF9h"}, "Missing API key"),
        ({"Authorization": "Bearer "}, "Missing API key"),
    ],
)
def test_missing_or_unknown_credentials_get_401(
    sim: JobsSimulator, headers: dict[str, str], detail: str
) -> None:
    job_id = sim.add_job(org_id="org_a")
    response = get(sim, f"/v1/jobs/{job_id}/status", headers)
    assert (response.status, response.json()) == (401, {"detail": detail})


def test_another_orgs_job_is_not_found(sim: JobsSimulator) -> None:
    job_id = sim.add_job(org_id="org_a")
    for path in (f"/v1/jobs/{job_id}/status", f"/v1/jobs/{job_id}"):
        theirs, unknown = get(sim, path, KEY_B), get(sim, "/v1/jobs/job_unknown/status", KEY_B)
        assert theirs.status == unknown.status == 404
        assert theirs.body == unknown.body == b'{"detail":"Job not found"}'
    assert sim.handle("POST", f"/v1/jobs/{job_id}/cancel", headers=KEY_B).status == 404


@pytest.mark.parametrize(
    "segment",
    [
        "a%2Fb",
        "..",
        "%2e%2e",
        ".",
        "",
        "%ZZ",
        "job_x%00",
        "%C3%A9t%C3%A9",
        "%FF%FE",
        "a;b",
        "x" * 5000,
    ],
)
def test_weird_job_ids_are_unknown_jobs(sim: JobsSimulator, segment: str) -> None:
    response = get(sim, f"/v1/jobs/{segment}/status")
    assert (response.status, response.json()) == (404, {"detail": "Job not found"})


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/jobs/a/b/status", 404),
        ("GET", "/v1/jobs/a/results", 404),
        ("GET", "/v2/jobs/a", 404),
        ("GET", "/", 404),
        ("DELETE", "/v1/jobs/a", 405),
        ("POST", "/v1/jobs/a/status", 405),
        ("GET", "/v1/jobs/a/cancel", 405),
        ("DELETE", "/v1/jobs", 405),
    ],
)
def test_unknown_routes_and_methods(
    sim: JobsSimulator, method: str, path: str, status: int
) -> None:
    assert sim.handle(method, path, headers=KEY_A).status == status


def test_every_response_carries_a_request_id(sim: JobsSimulator) -> None:
    ids = [
        get(sim, p, h).headers["x-request-id"]
        for p, h in [("/", {}), ("/v1/jobs/x/status", {}), ("/v1/jobs/x", KEY_A)]
    ]
    assert ids == ["req_1", "req_2", "req_3"]


def test_create_a_job_over_the_api(sim: JobsSimulator) -> None:
    body = orjson.dumps(
        {"endpoint": "/v1/documents/parse", "request": {"doc": 1}, "metadata": {"k": "v"}}
    )
    response = sim.handle("POST", "/v1/jobs", headers=KEY_B, body=body)
    assert response.status == 200
    job = response.json()
    assert (job["status"], job["organization_id"], job["endpoint"]) == (
        "validating",
        "org_b",
        "/v1/documents/parse",
    )
    assert (job["request"], job["metadata"]) == ({"doc": 1}, {"k": "v"})
    assert sim.job_ids("org_b") == [job["id"]]


def _page(sim: JobsSimulator, query: str, headers: dict[str, str] = KEY_A) -> dict[str, Any]:
    response = get(sim, f"/v1/jobs{query}", headers)
    assert response.status == 200, response.body
    page: dict[str, Any] = response.json()
    return page


def test_list_pages_through_the_callers_jobs_newest_first(sim: JobsSimulator) -> None:
    mine = sim.add_jobs(25, org_ids=["org_a"])
    theirs = sim.add_jobs(3, org_ids=["org_b"])
    first = _page(sim, "")
    assert len(first["data"]) == 10  # the default limit
    assert [job["id"] for job in first["data"]] == mine[::-1][:10]
    assert first["list_metadata"] == {"before": None, "after": mine[-10]}
    assert set(first["data"][0]) >= {"id", "status", "created_at", "organization_id"}
    seen, cursor = [], None
    while True:
        page = _page(sim, "?limit=7" + (f"&after={cursor}" if cursor else ""))
        seen += [job["id"] for job in page["data"]]
        if (cursor := page["list_metadata"]["after"]) is None:
            break
    assert seen == mine[::-1]  # each job once, none of org_b's
    second = _page(sim, f"?limit=7&after={mine[-7]}")
    back = _page(sim, f"?limit=7&before={second['list_metadata']['before']}")
    assert [job["id"] for job in back["data"]] == mine[::-1][:7]
    assert back["list_metadata"] == {"before": None, "after": mine[-7]}
    oldest = _page(sim, "?order=asc&limit=100")
    assert [job["id"] for job in oldest["data"]] == mine
    assert oldest["list_metadata"] == {"before": None, "after": None}
    assert [job["id"] for job in _page(sim, "", KEY_B)["data"]] == theirs[::-1]


def test_list_filters_by_status(sim: JobsSimulator, clock: FakeClock) -> None:
    done = sim.add_job(org_id="org_a", script=SCRIPT)
    waiting = sim.add_job(org_id="org_a", script=[Change("queued", 0.0)])
    clock.now += 60
    assert [j["id"] for j in _page(sim, "?status=completed")["data"]] == [done]
    assert [j["id"] for j in _page(sim, "?status=queued")["data"]] == [waiting]


@pytest.mark.parametrize(
    "query",
    ["?limit=0", "?limit=101", "?limit=ten", "?order=up", "?before=x&after=y", "?status=done"],
)
def test_list_refuses_bad_parameters(sim: JobsSimulator, query: str) -> None:
    response = get(sim, f"/v1/jobs{query}")
    assert response.status == 422 and response.json()["detail"][0]["msg"]


def test_list_cursors_must_be_the_callers_jobs(sim: JobsSimulator) -> None:
    theirs = sim.add_job(org_id="org_b")
    for query in (f"?after={theirs}", "?before=job_nope"):
        response = get(sim, f"/v1/jobs{query}")
        assert response.status == 422 and b"to page from" in response.body
    assert get(sim, "/v1/jobs", {}).status == 401


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"request": {}}',
        b'{"endpoint": "/v1/nope", "request": {}}',
        b'{"endpoint": "/v1/documents/parse"}',
        b'{"endpoint": "/v1/documents/parse", "request": {}, "metadata": {"k": 1}}',
        orjson.dumps(
            {
                "endpoint": "/v1/documents/parse",
                "request": {},
                "metadata": {str(i): "v" for i in range(17)},
            }
        ),
    ],
)
def test_invalid_creations_get_422(sim: JobsSimulator, body: bytes) -> None:
    response = sim.handle("POST", "/v1/jobs", headers=KEY_A, body=body)
    assert response.status == 422 and response.json()["detail"][0]["msg"]
    assert sim.job_ids() == []


def test_cancel_and_retry_over_the_api(sim: JobsSimulator, clock: FakeClock) -> None:
    job_id = sim.add_job(org_id="org_a", script=SCRIPT)
    clock.now = T0 + 1.5
    assert sim.handle("POST", f"/v1/jobs/{job_id}/retry", headers=KEY_A).status == 400
    cancelled = sim.handle("POST", f"/v1/jobs/{job_id}/cancel", headers=KEY_A)
    assert (cancelled.status, cancelled.json()["status"]) == (200, "cancelled")
    again = sim.handle("POST", f"/v1/jobs/{job_id}/cancel", headers=KEY_A)
    assert (again.status, again.json()) == (400, {"detail": "Job is already cancelled"})
    retried = sim.handle("POST", f"/v1/jobs/{job_id}/retry", headers=KEY_A)
    assert (retried.status, retried.json()["status"]) == (200, "queued")


# Rate limits


def test_rate_limit_refuses_beyond_the_window(sim: JobsSimulator, clock: FakeClock) -> None:
    sim.set_rate_limit("org_a", 5)
    statuses = [get(sim, "/v1/jobs/x/status").status for _ in range(8)]
    assert statuses == [404] * 5 + [429] * 3
    refused = get(sim, "/v1/jobs/x/status")
    assert refused.json() == {"detail": {"code": "rate_limited", "message": "Too many requests"}}
    assert refused.headers["retry-after"] == "1"
    assert not any(h.startswith("x-ratelimit") for h in refused.headers)  # undisclosed
    assert get(sim, "/v1/jobs/x/status", KEY_B).status == 404  # other orgs are not limited
    clock.now = T0 + 0.999
    assert get(sim, "/v1/jobs/x/status").status == 429
    clock.now = T0 + 1.0  # the first five leave the window (t - 1 s, t]
    assert [get(sim, "/v1/jobs/x/status").status for _ in range(6)] == [404] * 5 + [429]


def test_unauthenticated_requests_do_not_spend_the_budget(sim: JobsSimulator) -> None:
    sim.set_rate_limit("org_a", 2)
    for _ in range(5):
        assert get(sim, "/v1/jobs/x/status", {"Api-Key": "wrong"}).status == 401
    assert [get(sim, "/v1/jobs/x/status").status for _ in range(3)] == [404, 404, 429]


def test_retry_after_as_an_http_date(sim: JobsSimulator, clock: FakeClock) -> None:
    sim.retry_after = "http-date"
    sim.set_rate_limit("org_a", 1)
    get(sim, "/v1/jobs/x/status")
    clock.now = T0 + 0.25
    refused = get(sim, "/v1/jobs/x/status")
    retry_at = email.utils.parsedate_to_datetime(refused.headers["retry-after"])
    assert retry_at.timestamp() == math.ceil(T0 + 1.0)


def test_retry_after_can_be_left_out(sim: JobsSimulator) -> None:
    sim.retry_after = "none"
    sim.set_rate_limit("org_a", 1)
    get(sim, "/v1/jobs/x/status")
    refused = get(sim, "/v1/jobs/x/status")
    assert refused.status == 429 and "retry-after" not in refused.headers


def test_a_disclosed_limit_is_named(sim: JobsSimulator) -> None:
    sim.disclose_rate_limit = True
    sim.set_rate_limit("org_a", 2)
    first = get(sim, "/v1/jobs/x/status")
    assert (first.headers["x-ratelimit-limit"], first.headers["x-ratelimit-remaining"]) == (
        "2",
        "1",
    )
    get(sim, "/v1/jobs/x/status")
    refused = get(sim, "/v1/jobs/x/status")
    assert "2 requests per second" in refused.json()["detail"]["message"]
    assert refused.headers["x-ratelimit-remaining"] == "0"


def test_accepted_requests_never_exceed_the_limit_in_any_window(
    sim: JobsSimulator, clock: FakeClock
) -> None:
    limit = 7
    sim.set_rate_limit("org_a", limit)
    rng = random.Random(4)
    for _ in range(3000):  # bursts and gaps: a client that ignores the limit
        clock.now += rng.choice([0.0, 0.0, 0.001, 0.01, 0.05, 0.3])
        get(sim, "/v1/jobs/x/status")
    accepted = [r.at for r in sim.log if r.status != 429]
    brute_force = max(sum(1 for t in accepted if end - 1.0 < t <= end) for end in accepted)
    assert sim.log.max_requests_in_window("org_a", include_rejected=False) == brute_force == limit
    assert sim.log.max_requests_in_window("org_a") > limit  # the client did try harder


# Faults


@pytest.mark.parametrize(
    ("faults", "status", "fault"),
    [
        (Faults(server_error=1), 500, "server_error"),
        (Faults(unavailable=1, unavailable_retry_after_s=7), 503, "unavailable"),
        (Faults(garbage=1), 200, "garbage"),
        (Faults(truncated=1), 200, "truncated"),
        (Faults(slow=1, slow_delay_s=1.5), 200, "slow"),
        (Faults(reset=1), 0, "reset"),
        (Faults(extra_fields=1), 200, "extra_fields"),
    ],
)
def test_each_request_fault(sim: JobsSimulator, faults: Faults, status: int, fault: str) -> None:
    job_id = sim.add_job(org_id="org_a", script=FAILING)
    normal = sim.handle("GET", f"/v1/jobs/{job_id}", headers=KEY_A, now=T0 + 5)
    sim.faults = faults
    response = sim.handle("GET", f"/v1/jobs/{job_id}", headers=KEY_A, now=T0 + 5)
    assert (response.status, response.fault) == (status, fault)
    assert response.reset is (fault == "reset")
    assert response.delay_s == (1.5 if fault == "slow" else 0.0)
    if fault == "unavailable":
        assert response.headers["retry-after"] == "7"
    if fault in ("garbage", "truncated"):
        with pytest.raises(orjson.JSONDecodeError):
            response.json()
    if fault == "truncated":
        assert response.body == normal.body[: len(normal.body) // 2]
    if fault in ("slow", "extra_fields"):
        body: dict[str, Any] = response.json()
        assert body.items() >= {k: v for k, v in normal.json().items() if k != "error"}.items()
    if fault == "extra_fields":
        assert set(body) - set(normal.json()) and isinstance(body["usage"]["pages"], dict)
        assert body["error"]["hint"] == {"docs": None}
        assert msgspec.json.decode(response.body, type=Job).error is not None
    assert sim.log.fault_counts[fault] == 1


def test_faults_spare_everything_but_job_gets(sim: JobsSimulator) -> None:
    sim.faults = Faults(server_error=1)
    job_id = sim.add_job(org_id="org_a", script=SCRIPT)
    assert get(sim, f"/v1/jobs/{job_id}/status", {}).status == 401
    assert get(sim, "/v1/jobs/job_unknown/status").status == 404
    assert get(sim, f"/v1/jobs/{job_id}/status", KEY_B).status == 404
    assert sim.handle("POST", f"/v1/jobs/{job_id}/cancel", headers=KEY_A).status == 200
    assert get(sim, f"/v1/jobs/{job_id}/status").status == 500


def test_faults_can_change_while_running(sim: JobsSimulator) -> None:
    job_id = sim.add_job(org_id="org_a")
    sim.faults = Faults(server_error=1)
    assert get(sim, f"/v1/jobs/{job_id}/status").status == 500
    sim.faults = Faults()
    assert get(sim, f"/v1/jobs/{job_id}/status").status == 200


def test_fault_rates_are_honoured(sim: JobsSimulator) -> None:
    sim.faults = Faults(server_error=0.1, unavailable=0.05, reset=0.05, extra_fields=0.5)
    job_ids = sim.add_jobs(100, org_ids=["org_a"])
    faults = Counter(get(sim, f"/v1/jobs/{j}/status").fault for j in job_ids for _ in range(50))
    assert faults["server_error"] / 5000 == pytest.approx(0.10, abs=0.015)
    assert faults["unavailable"] / 5000 == pytest.approx(0.05, abs=0.01)
    assert faults["reset"] / 5000 == pytest.approx(0.05, abs=0.01)
    assert faults["extra_fields"] / 5000 == pytest.approx(0.5 * 0.8, abs=0.03)


def test_fault_decisions_depend_only_on_seed_job_and_request_number() -> None:
    def faults_per_job(order: str) -> dict[str, list[str | None]]:
        sim = JobsSimulator(
            seed=5, clock=FakeClock(), faults=Faults(server_error=0.3, truncated=0.2)
        )
        sim.add_org("org_a", api_keys=["rt_test_a"])
        job_ids = sim.add_jobs(10)
        requests = [j for j in job_ids for _ in range(20)]
        if order == "interleaved":
            requests = [job_ids[i % 10] for i in range(200)]
        elif order == "shuffled":
            random.Random(1).shuffle(requests)
        seen: dict[str, list[str | None]] = {j: [] for j in job_ids}
        for j in requests:
            seen[j].append(get(sim, f"/v1/jobs/{j}/status").fault)
        return seen

    grouped = faults_per_job("grouped")
    assert grouped == faults_per_job("interleaved") == faults_per_job("shuffled")
    assert any(grouped.values())


def test_unknown_status_jobs_pass_through_an_extra_phase(
    sim: JobsSimulator, clock: FakeClock
) -> None:
    sim.faults = Faults(unknown_status=1)
    sim.outcomes = Outcomes(completed=1, failed=0, cancelled=0)
    job_id = sim.add_job(org_id="org_a", endpoint="/v1/documents/classify")
    scripted = sim.add_job(org_id="org_a", script=SCRIPT)
    plan = sim.planned_changes(job_id)
    assert [c.status for c in plan] == [
        "validating",
        "queued",
        "in_progress",
        "postprocessing",
        "completed",
        "expired",
    ]
    assert "postprocessing" not in [c.status for c in sim.planned_changes(scripted)]
    clock.now = plan[3].at
    assert get(sim, f"/v1/jobs/{job_id}/status").json()["status"] == "postprocessing"


def test_unknown_status_and_endpoint_are_decided_per_job(sim: JobsSimulator) -> None:
    sim.faults = Faults(unknown_status=0.3, unknown_endpoint=0.2)
    sim.outcomes = Outcomes(completed=1, failed=0, cancelled=0)
    job_ids = sim.add_jobs(2000, org_ids=["org_a"])
    odd_status = [
        j for j in job_ids if "postprocessing" in [c.status for c in sim.planned_changes(j)]
    ]
    endpoints = [get(sim, f"/v1/jobs/{j}/status").json()["endpoint"] for j in job_ids]
    assert len(odd_status) / 2000 == pytest.approx(0.3, abs=0.04)
    assert sum(e in UNKNOWN_ENDPOINTS for e in endpoints) / 2000 == pytest.approx(0.2, abs=0.03)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"server_error": 1.5},
        {"reset": -0.1},
        {"server_error": 0.6, "garbage": 0.5},
        {"slow_delay_s": -1},
    ],
)
def test_invalid_fault_rates_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Faults(**kwargs)  # type: ignore[arg-type]


# The request log


def test_the_log_records_every_request(sim: JobsSimulator, clock: FakeClock) -> None:
    job_id = sim.add_job(org_id="org_a")
    get(sim, f"/v1/jobs/{job_id}/status")
    clock.now += 0.5
    get(sim, "/v1/jobs/a%2Fb/status", {})
    get(sim, "/nowhere")
    records = list(sim.log)
    assert [(r.org_id, r.job_id, r.status) for r in records] == [
        ("org_a", job_id, 200),
        (None, "a/b", 401),
        (None, None, 404),
    ]
    assert records[0].at == T0 and records[1].at == T0 + 0.5
    assert records[1].path == "/v1/jobs/a%2Fb/status" and records[1].method == "GET"
    assert sim.log.status_counts == {200: 1, 401: 1, 404: 1}
    assert sim.log.for_job(job_id) == records[:1]


def test_the_log_is_bounded_but_its_counters_are_not(clock: FakeClock) -> None:
    sim = JobsSimulator(clock=clock, log_maxlen=10)
    for _ in range(25):
        sim.handle("GET", "/")
    assert len(sim.log) == 10 and sim.log.status_counts[404] == 25
    sim.log.clear()
    assert len(sim.log) == 0 and not sim.log.status_counts


def test_max_requests_in_window_slides(sim: JobsSimulator, clock: FakeClock) -> None:
    for offset in (0.0, 0.2, 0.9, 1.0, 1.1, 1.15, 3.0):
        clock.now = T0 + offset
        get(sim, "/v1/jobs/x/status")
    assert sim.log.max_requests_in_window("org_a") == 5  # 0.2 .. 1.15
    assert sim.log.max_requests_in_window("org_a", window_s=0.1) == 2
    assert sim.log.max_requests_in_window("org_b") == 0


@pytest.mark.parametrize(
    "kwargs", [{"time_scale": 0}, {"timestamp_format": "rfc"}, {"retry_after": "soon"}]
)
def test_invalid_simulator_options_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        JobsSimulator(**kwargs)


def test_the_package_exports_exactly_its_public_names() -> None:
    public = {
        name
        for name, value in vars(poller.testing).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(poller.testing.__all__) == public
