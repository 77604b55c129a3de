"""Fault matrix: the engine against a misbehaving API, and hostile bytes through the transport.

Users leave the engine running for weeks against an API they do not control. Here 5,000
jobs run against the simulator while it answers 10% 5xx, resets 5% of connections, sends
2% garbage and 1% truncated bodies, answers 5% slower than the request timeout, storms
one organisation with 429s (its whole batch of 500 jobs arrives at once, over a hidden
limit of 50 requests a second, ``Retry-After`` in seconds), adds unknown fields and
reports unknown statuses and endpoints, while 4,500 more jobs arrive as a stream. Every
job must still end in its true terminal status, with exactly one terminal transition, no
crash, every error counted in ``stats()``, and no request after the end.

(aiohttp retries a GET once by itself when a reused connection is reset, so most injected
resets cost a second request rather than a ``ConnectionLostError``.)
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import gzip
import itertools
import logging
import random
import time
from collections import Counter, defaultdict

import anyio
import orjson
import pytest
from _helpers import FAST, CountingTransport, LocalServer, poller_tasks, status_body
from aiohttp import web

from poller import Backoff, Poller, Status, Transition
from poller.auth import Credential
from poller.errors import DecodeError, JobsFailedError, RequestError
from poller.testing import UNKNOWN_ENDPOINTS, Change, Faults, JobsSimulator, SimServer
from poller.transport import AiohttpTransport

pytestmark = pytest.mark.anyio

KEY_A, KEY_B, KEY_STORM = "rt_test_fault_a", "rt_test_fault_b", "rt_test_fault_storm"
ORG_OF_KEY = {KEY_A: "org_a", KEY_B: "org_b", KEY_STORM: "org_storm"}
STORM_LIMIT_PER_S = 50
STORM_JOBS = 500
MATRIX = Faults(
    server_error=0.10,
    reset=0.05,
    garbage=0.02,
    truncated=0.01,
    slow=0.05,
    slow_delay_s=0.5,
    extra_fields=0.2,
    unknown_status=0.1,
    unknown_endpoint=0.1,
)
REQUEST_TIMEOUT_S = 0.2
# Endpoints whose jobs last well under a second at this time scale (no "batch" class).
QUICK = ("/v1/documents/classify", "/v1/documents/extract", "/v1/parses", "/v1/documents/split")
# Statuses this version does not know, each lasting longer than the polling cap.
UNKNOWN_SCRIPT = [
    Change("queued", 0.0),
    Change("in_progress", 0.05),
    Change("postprocessing", 0.3),
    Change("awaiting_review", 0.9),
    Change("completed", 1.5),
]


ARRIVALS_PER_TICK, TICK_S = 10, 0.016  # ~600 new jobs a second, as a busy worker sends them


def _new_jobs(sim: JobsSimulator, tick: int) -> list[tuple[str, str, bool]]:
    """The jobs created at ``tick``: (job ID, key, passes through unknown statuses)."""
    created = []
    if tick == 0:  # the storm: an organisation's whole batch at once, over its hidden limit
        for n in range(STORM_JOBS):
            job_id = sim.add_job(org_id="org_storm", endpoint=QUICK[n % len(QUICK)])
            created.append((job_id, KEY_STORM, False))
    for k in range(ARRIVALS_PER_TICK):
        n = tick * ARRIVALS_PER_TICK + k
        if n % 45 == 7:  # 100 of the stream pass through statuses nobody knows yet
            job_id = sim.add_job(org_id="org_a", script=UNKNOWN_SCRIPT, endpoint="/v3/brand/new")
            created.append((job_id, KEY_A, True))
            continue
        org, key = (("org_a", KEY_A), ("org_b", KEY_B))[n % 2]
        created.append((sim.add_job(org_id=org, endpoint=QUICK[n % len(QUICK)]), key, False))
    return created


@pytest.mark.timeout(90)
async def test_fault_matrix_5000_jobs_each_end_once_in_their_true_status(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    sim = JobsSimulator(seed=11, time_scale=0.005, faults=MATRIX)
    sim.add_org("org_a", api_keys=[KEY_A])
    sim.add_org("org_b", api_keys=[KEY_B])
    sim.add_org("org_storm", api_keys=[KEY_STORM], rate_limit_per_s=STORM_LIMIT_PER_S)
    keys: dict[str, str] = {}
    unknown_scripted: list[str] = []
    transitions: dict[str, list[Transition]] = defaultdict(list)
    requests_at_terminal: dict[str, int] = {}
    async with SimServer(sim) as server:
        counting = CountingTransport(
            AiohttpTransport(server.base_url, request_timeout_s=REQUEST_TIMEOUT_S)
        )
        fingerprints = {Credential(k).fingerprint: org for k, org in ORG_OF_KEY.items()}
        started = time.monotonic()
        async with Poller(
            api_key=KEY_A,
            backoff=FAST,
            first_poll_rate_per_s=None,
            transport=counting,
            subscriber_buffer=1_000_000,
            seed=3,
        ) as poller:

            def record(t: Transition) -> None:
                transitions[t.job_id].append(t)
                if t.current.is_terminal:
                    requests_at_terminal[t.job_id] = counting.per_job[t.job_id]

            poller.on_transition(record)
            async with poller.subscribe() as stream:
                for tick in range((5000 - STORM_JOBS) // ARRIVALS_PER_TICK):
                    for job_id, key, odd in _new_jobs(sim, tick):
                        keys[job_id] = key
                        poller.track(job_id, api_key=key)
                        if odd:
                            unknown_scripted.append(job_id)
                    await anyio.sleep(TICK_S)
                results = await poller.wait_all(list(keys), timeout_s=75)
                elapsed = time.monotonic() - started
                # Nothing is polled once everything is terminal: no endless retry loop.
                calls_at_end = len(counting.calls)
                await anyio.sleep(0.3)
                assert len(counting.calls) == calls_at_end
                stats = poller.stats()
                workers = [t for t in poller_tasks() if t.get_name() == "poller-worker"]
                assert len(workers) == 64, "no worker died"
                streamed = stream.statistics().buffered
    truth_at = time.time()
    assert len(keys) == 5000 and len(unknown_scripted) == 100
    # The engine saw most jobs change under the faults, not just their end.
    assert sum(len(transitions[j]) >= 2 for j in keys) > 2500

    # Every job reached its true terminal status, with exactly one terminal transition.
    assert set(results) == set(keys)
    for job_id in keys:
        true_final = sim.changes(job_id, now=truth_at)[-1].status
        assert results[job_id].status.value == true_final, job_id
        seen = transitions[job_id]
        assert [t.seq for t in seen] == list(range(1, len(seen) + 1)), job_id
        assert [t for t in seen if t.current.is_terminal] == [seen[-1]], job_id
        for before, after in itertools.pairwise(seen):
            assert after.previous == before.current != after.current
        # No request for a job after its terminal transition was seen.
        assert counting.per_job[job_id] == requests_at_terminal[job_id], job_id
    assert streamed == stats.transitions == sum(len(v) for v in transitions.values())

    # Unknown statuses are non-terminal transitions keeping their raw value.
    saw_unknown = 0
    for job_id in unknown_scripted:
        raw = [t.current.value for t in transitions[job_id] if not t.current.is_known]
        assert set(raw) <= {"postprocessing", "awaiting_review"}
        saw_unknown += bool(raw)
        assert results[job_id].endpoint.value in ("/v3/brand/new", *UNKNOWN_ENDPOINTS)
        assert not results[job_id].endpoint.is_known
    assert saw_unknown >= 90, saw_unknown
    odd = [t for ts in transitions.values() for t in ts if not t.current.is_known]
    assert odd and all(not t.current.is_terminal for t in odd)
    assert any(not r.endpoint.is_known for r in results.values())

    # Every failed request is counted in stats, exactly as the engine saw it.
    outcomes = counting.outcomes()
    errors_seen = {k: v for k, v in outcomes.items() if k not in ("ok", "RateLimitedError")}
    assert stats.polls == len(counting.calls) == sum(outcomes.values())
    assert stats.errors_by_kind == errors_seen
    assert stats.errors == sum(errors_seen.values())
    assert stats.rate_limited == outcomes["RateLimitedError"] >= 20, "a storm, not a drizzle"
    # 429s answered before the key's organisation was known count under "unknown".
    assert sum(org.throttled for org in stats.by_org.values()) == stats.rate_limited
    assert set(stats.by_org) <= {"org_a", "org_b", "org_storm", "unknown"}
    storm_rate = stats.by_org["org_storm"].rate_per_s
    assert storm_rate is not None and storm_rate <= STORM_LIMIT_PER_S, "the hidden limit learned"
    for kind in ("ServerError", "ConnectionLostError", "DecodeError", "RequestTimeoutError"):
        assert errors_seen.get(kind, 0) > 0, (kind, errors_seen)
    assert stats.failures == 0 and stats.in_flight == 0
    assert set(stats.by_status) <= {"completed", "failed", "cancelled", "expired"}
    assert sum(stats.by_status.values()) == 5000

    # Each error came from the fault the simulator injected (request IDs are its log order).
    records = list(sim.log)
    assert sim.log.status_counts[0] == sim.log.fault_counts["reset"]
    for call in counting.calls:
        error = call.error
        if error is None or error.request_id is None:
            continue
        record = records[int(error.request_id.removeprefix("req_")) - 1]
        if isinstance(error, DecodeError):
            assert record.fault in ("garbage", "truncated"), record
        elif call.outcome == "ServerError":
            assert record.status == 500 and record.fault == "server_error", record
        elif call.outcome == "RateLimitedError":
            assert record.status == 429 and record.org_id == "org_storm", record
        else:
            pytest.fail(f"unexpected error {error!r} for {record}")
    # Unknown fields were served often, and (above) never caused a decode error.
    assert sim.log.fault_counts["extra_fields"] > 1000

    # 429s: after the organisation is known, nothing of it goes out before Retry-After ends.
    storm = [c for c in counting.calls if fingerprints[c.fingerprint] == "org_storm"]
    first_ok = min(c.done_at for c in storm if c.outcome == "ok")
    sends = sorted(c.sent_at for c in storm)
    for call in storm:
        error = call.error
        if call.outcome != "RateLimitedError" or call.done_at < first_ok + 0.05:
            continue
        assert error is not None
        pause_s = getattr(error, "retry_after_s", None)
        assert pause_s is not None and pause_s >= 1
        start = bisect.bisect_right(sends, call.done_at)
        end = bisect.bisect_left(sends, call.done_at + pause_s - 0.01)
        assert start == end, f"{end - start} requests sent during a {pause_s} s Retry-After"
    accepted = sim.log.max_requests_in_window("org_storm", include_rejected=False)
    assert accepted <= STORM_LIMIT_PER_S

    # No endless retries: a bounded number of requests per job; nothing logged as a crash.
    per_job = counting.per_job
    assert max(per_job.values()) < 150, per_job.most_common(3)
    assert sum(per_job.values()) / len(per_job) < 30
    assert counting.max_in_flight_per_job == 1, "a job is never polled twice at once"
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert counting.closed
    assert elapsed < 75


# -- a job the server always fails: bounded retries --------------------------------------


@pytest.mark.parametrize(
    "kind",
    ["ServerError", "DecodeError", "RequestTimeoutError"],
)
async def test_a_job_the_server_always_fails_gets_exactly_max_consecutive_errors_tries(
    kind: str,
) -> None:
    """A fault of one job, while its organisation answers: its own errors count, and it
    ends after ``max_consecutive_errors`` tries (an outage is another story, below)."""

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        job_id = request.path.split("/")[3]
        if job_id.startswith("good"):
            return web.json_response(status_body(job_id, status="in_progress", completed_at=None))
        if kind == "ServerError":
            return web.json_response({"detail": "boom"}, status=500)
        if kind == "DecodeError":
            return web.Response(body=b"<html>gateway</html>", content_type="text/html")
        await asyncio.sleep(0.5)
        return web.json_response(status_body(job_id))

    bad = [f"bad_{i}" for i in range(4)]
    good = [f"good_{i}" for i in range(40)]
    async with LocalServer(handler) as server:
        timeout_s = 0.1 if kind == "RequestTimeoutError" else 5.0
        counting = CountingTransport(AiohttpTransport(server.base_url, request_timeout_s=timeout_s))
        backoff = Backoff(
            min_interval_s=0.01,
            max_interval_s=0.02,
            error_base_s=0.01,
            error_max_s=0.05,
            max_consecutive_errors=4,
            learn=False,
        )
        async with Poller(
            api_key=KEY_A, transport=counting, backoff=backoff, first_poll_rate_per_s=None
        ) as poller:
            for job_id in good:
                poller.track(job_id)
            with pytest.raises(JobsFailedError) as caught:
                await poller.wait_all(bad, timeout_s=20)
            stats = poller.stats()
            calls = {job_id: counting.per_job[job_id] for job_id in bad}
            await anyio.sleep(0.3)
            assert {job_id: counting.per_job[job_id] for job_id in bad} == calls, (
                "no request after giving up"
            )
    assert caught.value.results == {}
    assert {type(e).__name__ for e in caught.value.errors.values()} == {kind}
    assert calls == dict.fromkeys(bad, 4)
    assert stats.errors_by_kind == {kind: 16} and stats.failures == 4
    assert stats.by_org["org_local"].health.state != "down"


# -- hostile payloads through the whole engine -------------------------------------------


async def test_an_absurd_timestamp_from_the_server_does_not_crash_the_engine() -> None:
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        job_id = request.path.split("/")[3]
        overrides = {"completed_at": 1e308} if job_id == "job_hostile" else {}
        return web.json_response(status_body(job_id, **overrides))

    backoff = Backoff(min_interval_s=0.01, error_base_s=0.01, max_consecutive_errors=3)
    async with (
        LocalServer(handler) as server,
        Poller(
            api_key=KEY_A, base_url=server.base_url, backoff=backoff, first_poll_rate_per_s=None
        ) as poller,
    ):
        with contextlib.suppress(RequestError):  # refusing the payload is fine; crashing is not
            await poller.wait("job_hostile", timeout_s=5)
        assert (await poller.wait("job_fine", timeout_s=5)).status is Status.COMPLETED
        assert len([t for t in poller_tasks() if t.get_name() == "poller-worker"]) == 64


# -- mutated bytes through the transport -------------------------------------------------

_TEMPLATE_BODY = orjson.dumps(
    {
        "id": "{ID}",
        "object": "job",
        "status": "in_progress",
        "endpoint": "/v1/documents/extract",
        "error": None,
        "created_at": 1705420800,
        "started_at": 1705420802,
        "completed_at": None,
        "expires_at": 1706025600,
        "organization_id": "org_abc123",
        "metadata": {"batch_id": "batch_001"},
        "warnings": [{"code": "dispatch_delayed", "message": "later", "details": None}],
    }
)
_SPLICES = [
    b"\x00",
    b"\xff\xfe",
    b"\xef\xbb\xbf",
    b'"',
    b"\\",
    b"\\ud800",
    b"{",
    b"[" * 300,
    b"1e400",
    b"-1e308",
    b"18446744073709551616",
    b"NaN",
    b"null",
    b"true",
    b',"x":',
    b'"2024-13-45T99:99:99Z"',
    b"\xc3\x28",
    b"\r\n",
    b"}" * 3,
]


def _mutate_body(rng: random.Random, body: bytes) -> bytes:
    data = bytearray(body)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(data) + 1)
        op = rng.randrange(5)
        if op == 0 and data:
            del data[at : at + rng.randint(1, 8)]
        elif op == 1:
            data[at:at] = rng.choice(_SPLICES)
        elif op == 2 and data:
            data[min(at, len(data) - 1)] = rng.randrange(256)
        elif op == 3:
            data = data[:at]
        else:
            data[at:at] = data[rng.randrange(len(data) + 1) :][: rng.randint(1, 40)]
    return bytes(data)


def _raw_response(rng: random.Random, body: bytes) -> bytes:
    """A raw HTTP/1.1 response carrying ``body``, its framing sometimes mutated too."""
    headers = [b"HTTP/1.1 200 OK", b"Content-Type: application/json", b"Connection: close"]
    framing = rng.randrange(8)
    if framing == 0:
        headers.append(b"Content-Encoding: gzip")
        zipped = gzip.compress(body)
        body = zipped[: rng.randrange(len(zipped) + 1)] if rng.random() < 0.5 else zipped
        headers.append(b"Content-Length: %d" % len(body))
    elif framing == 1:
        headers.append(b"Transfer-Encoding: chunked")
        cut = rng.randrange(len(body) + 1)
        body = b"%x\r\n%s\r\n%s" % (cut, body[:cut], rng.choice([b"0\r\n\r\n", b"zz\r\n", b""]))
    elif framing == 2:
        headers.append(b"Content-Length: %d" % (len(body) + rng.randint(1, 50)))
    elif framing == 3:
        headers.append(rng.choice([b"Content-Length: -1", b"Content-Length: x", b"Content-Le"]))
    elif framing == 4:
        headers[0] = rng.choice([b"HTTP/1.1 2OO OK", b"HTTP/9.9 200", b"HTP/1.1 200 OK", b""])
    elif framing == 5:
        headers.append(b"X-Request-Id: " + bytes(rng.randrange(1, 256) for _ in range(20)))
    else:
        headers.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(headers) + b"\r\n\r\n" + body


async def test_mutated_bytes_through_the_transport_only_ever_raise_request_errors() -> None:
    """Body and framing mutations, served raw over a socket: the transport returns a
    well-typed payload or raises one of the project's RequestErrors, nothing else."""
    rng = random.Random(20_240_116)
    cases: dict[str, bytes] = {}
    for n in range(300):
        job_id = f"job_case_{n}"
        body = _TEMPLATE_BODY.replace(b"{ID}", job_id.encode())
        cases[job_id] = _raw_response(rng, _mutate_body(rng, body) if n % 10 else body)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            job_id = head.split(b" ")[1].split(b"/")[3].decode()
            writer.write(cases[job_id])
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    outcomes: Counter[str] = Counter()
    credential = Credential(KEY_A)
    try:
        async with AiohttpTransport(f"http://127.0.0.1:{port}", request_timeout_s=2) as transport:
            for job_id in cases:
                try:
                    payload = await transport.get_status(job_id, credential)
                except RequestError as exc:
                    outcomes[type(exc).__name__] += 1
                    assert exc.job_id == job_id
                    assert str(exc).isprintable()
                else:
                    outcomes["ok"] += 1
                    assert payload.id == job_id
                    assert isinstance(payload.status, Status)
                    for name in ("created_at", "expires_at", "started_at", "completed_at"):
                        value = getattr(payload, name)
                        assert value is None or type(value) is int
    finally:
        server.close()
        await server.wait_closed()
    assert sum(outcomes.values()) == 300
    assert outcomes["ok"] >= 10 and outcomes["DecodeError"] >= 50, outcomes


# -- an API that stops answering: probed, no job ends, and back at once --------------------


@pytest.mark.parametrize(
    ("outage", "kind"),
    [
        (Faults(server_error=1.0), "ServerError"),
        (Faults(garbage=1.0), "DecodeError"),
        (Faults(reset=1.0), "ConnectionLostError"),
    ],
    ids=["5xx", "garbage", "reset"],
)
async def test_an_api_that_stops_answering_is_probed_and_no_job_ends(
    outage: Faults, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    sim = JobsSimulator(seed=5)
    sim.add_org("org_a", api_keys=[KEY_A])
    job_ids = [sim.add_job(org_id="org_a", script=[Change("queued", 0.0)]) for _ in range(30)]
    backoff = Backoff(
        min_interval_s=0.05,
        max_interval_s=0.2,
        error_base_s=0.05,
        error_max_s=0.2,
        max_consecutive_errors=3,
        learn=False,
    )
    async with SimServer(sim) as server:
        counting = CountingTransport(AiohttpTransport(server.base_url, request_timeout_s=2.0))
        async with Poller(
            api_key=KEY_A, transport=counting, backoff=backoff, first_poll_rate_per_s=None
        ) as poller:
            for job_id in job_ids:
                poller.track(job_id)
            await anyio.sleep(1.0)
            sim.faults = outage
            down_at = time.time()
            await anyio.sleep(5.0)
            stats = poller.stats()
            assert stats.failures == 0, "an outage ends no job"
            assert stats.by_org["org_a"].health.state == "down"
            assert stats.api.state == "down"
            assert stats.api.recent_errors.get(kind, 0) >= 8
            late = [c for c in counting.calls if c.sent_at >= down_at + 2.5]
            assert 1 <= len(late) <= 4, f"{len(late)} requests in 2.5 s: one probe at a time"
            assert all(a.done_at <= b.sent_at for a, b in itertools.pairwise(late))
            sim.faults = Faults()
            back_at = time.time()
            for job_id in job_ids:  # the jobs move on while the API is back
                sim.cancel(job_id)
            await poller.wait_all(job_ids, timeout_s=15)
            recovered_in = time.time() - back_at
            stats = poller.stats()
    assert recovered_in < 12.0  # the next probe (<= 10 s) and a second or so
    assert stats.by_org["org_a"].health.state in ("recovering", "ok")
    texts = [r.getMessage() for r in caplog.records if r.name == "poller"]
    assert any("is down" in t or "API unreachable" in t for t in texts), texts
    assert any("answers again" in t for t in texts), texts
