"""The control API over real HTTP: intake, listing, errors, auth, /healthz, /metrics, /events."""

from __future__ import annotations

import io
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import msgspec
import pytest

from poller import LearnedDurations
from poller.daemon.config import Settings, load_settings
from poller.daemon.records import EventRecord, decode_record
from poller.daemon.run import running
from poller.daemon.store import Store
from poller.testing import Change, SimServer

pytestmark = pytest.mark.anyio

KEY = "rt_test_key"  # the retab_sim fixture's organisation org_test
TENANT_KEY = "rt_test_tenant_b"
TOKEN = "control-token-123"
QUICK = [Change("queued", 0.0), Change("in_progress", 0.1), Change("completed", 0.3)]


def settings_for(sim: SimServer, tmp_path: Path, **flags: Any) -> Settings:
    env = {
        "RETAB_API_KEY": KEY,
        "RETAB_API_BASE_URL": sim.base_url,
        "POLLER_CREDENTIAL_TENANT_B": TENANT_KEY,
    }
    if flags.pop("token", False):
        env["POLLER_CONTROL_TOKEN"] = TOKEN
    base = {
        "db": str(tmp_path / "poller.db"),
        "port": "0",
        "jsonl": str(tmp_path / "events.jsonl"),
        "poll_interval_s": "0.1",
        "max_interval_s": "0.5",
        "shutdown_timeout_s": "3",
    }
    return load_settings({**base, **flags}, env)


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    with anyio.fail_after(timeout_s):
        while not await check():  # noqa: ASYNC110 - polls the daemon over HTTP
            await anyio.sleep(0.05)


@pytest.fixture
async def daemon(retab_sim: SimServer, tmp_path: Path) -> AsyncIterator[str]:
    retab_sim.sim.add_org("org_b", api_keys=[TENANT_KEY])
    async with running(settings_for(retab_sim, tmp_path)) as url:
        yield url


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def get_json(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url) as response:
        return response.status, await response.json()


async def test_add_track_get_list_remove(
    daemon: str, http: aiohttp.ClientSession, retab_sim: SimServer, tmp_path: Path
) -> None:
    job_a = retab_sim.sim.add_job(org_id="org_test", script=QUICK, metadata={"k": "v"})
    job_b = retab_sim.sim.add_job(org_id="org_test", script=[Change("queued", 0.0)])
    body = {"job_ids": [job_a, job_b], "metadata": {"batch": "42"}}
    async with http.post(f"{daemon}/jobs", json=body) as response:
        assert response.status == 201
        assert await response.json() == {"added": [job_a, job_b], "existing": []}
    async with http.post(f"{daemon}/jobs", json={"job_id": job_a}) as response:
        assert response.status == 200
        assert await response.json() == {"added": [], "existing": [job_a]}

    async def completed() -> bool:
        return (await get_json(http, f"{daemon}/jobs/{job_a}"))[1]["status"] == "completed"

    await eventually(completed)
    status, job = await get_json(http, f"{daemon}/jobs/{job_a}")
    assert status == 200
    assert job["seq"] >= 2
    assert job["metadata"] == {"batch": "42"}
    assert job["job"]["status"] == "completed"
    assert job["job"]["metadata"] == {"k": "v"}
    _, listing = await get_json(http, f"{daemon}/jobs?status=completed")
    assert [j["job_id"] for j in listing["jobs"]] == [job_a]
    _, page = await get_json(http, f"{daemon}/jobs?limit=1")
    assert len(page["jobs"]) == 1 and page["next"] == page["jobs"][0]["job_id"]

    async with http.delete(f"{daemon}/jobs/{job_b}") as response:
        assert response.status == 200
    async with http.delete(f"{daemon}/jobs/{job_b}") as response:
        assert response.status == 404
    _, listing = await get_json(http, f"{daemon}/jobs")
    assert [j["job_id"] for j in listing["jobs"]] == [job_a]

    lines = (tmp_path / "events.jsonl").read_bytes().splitlines()
    records = [decode_record(line) for line in lines]
    mine = [r for r in records if r.job_id == job_a]
    assert mine[-1].current == "completed" and mine[-1].final
    assert [r.seq for r in mine] == list(range(1, len(mine) + 1))
    assert all(r.metadata == {"batch": "42"} for r in mine)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"job_ids": ["job_ok", "../etc"]}, 400, "invalid_job_id"),
        ({"job_ids": ["job_ok"], "credential": "nobody"}, 400, "unknown_credential"),
        ({"job_ids": ["job_ok"], "job_id": "job_ok"}, 400, "invalid_body"),
        ({"jobs": ["job_ok"]}, 400, "invalid_body"),
        ({"job_ids": "job_ok"}, 400, "invalid_body"),
        ({"job_ids": [f"job_{n}" for n in range(10_001)]}, 413, "too_many_jobs"),
    ],
)
async def test_bad_adds_change_nothing(
    daemon: str, http: aiohttp.ClientSession, body: Any, status: int, code: str
) -> None:
    async with http.post(f"{daemon}/jobs", json=body) as response:
        assert response.status == status
        assert (await response.json())["error"]["code"] == code
    _, listing = await get_json(http, f"{daemon}/jobs")
    assert listing["jobs"] == []


async def test_invalid_id_error_names_its_index(daemon: str, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{daemon}/jobs", json={"job_ids": ["job_ok", "a/b"]}) as response:
        error = (await response.json())["error"]
    assert error["field"] == "job_ids[1]"


async def test_requests_a_browser_could_forge_are_refused(
    daemon: str, http: aiohttp.ClientSession
) -> None:
    # A cross-site form can post text/plain without a CORS preflight: refused.
    data = b'{"job_ids": ["job_x"]}'
    headers = {"Content-Type": "text/plain"}
    async with http.post(f"{daemon}/jobs", data=data, headers=headers) as response:
        assert response.status == 415
    # DNS rebinding: a loopback socket reached under a foreign name.
    async with http.get(f"{daemon}/jobs", headers={"Host": "evil.example:8787"}) as response:
        assert response.status == 403
    async with http.post(f"{daemon}/jobs", data=b"{not json", headers=_JSON) as response:
        assert (await response.json())["error"]["code"] == "invalid_json"
    async with http.get(f"{daemon}/jobs?limit=0") as response:
        assert response.status == 400
    async with http.get(f"{daemon}/jobs/job_never") as response:
        assert response.status == 404


_JSON = {"Content-Type": "application/json"}


async def test_named_credential_tracks_another_tenant(
    daemon: str, http: aiohttp.ClientSession, retab_sim: SimServer
) -> None:
    job = retab_sim.sim.add_job(org_id="org_b", script=QUICK)
    async with http.post(f"{daemon}/jobs", json={"job_id": job, "credential": "tenant_b"}) as r:
        assert r.status == 201

    async def done() -> bool:
        return (await get_json(http, f"{daemon}/jobs/{job}"))[1]["status"] == "completed"

    await eventually(done)
    _, row = await get_json(http, f"{daemon}/jobs/{job}")
    assert (row["credential"], row["organization_id"]) == ("tenant_b", "org_b")
    text = await (await http.get(f"{daemon}/jobs/{job}")).text()
    assert TENANT_KEY not in text


async def test_unknown_job_ends_in_a_failure_record(
    daemon: str, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async with http.post(f"{daemon}/jobs", json={"job_id": "job_does_not_exist"}) as response:
        assert response.status == 201

    async def failed() -> bool:
        return (await get_json(http, f"{daemon}/jobs/job_does_not_exist"))[1]["status"] == "error"

    await eventually(failed)
    _, row = await get_json(http, f"{daemon}/jobs/job_does_not_exist")
    assert row["error"]["kind"] == "JobNotFoundError"
    assert row["error"]["status"] == 404
    _, listing = await get_json(http, f"{daemon}/jobs?status=error")
    assert [j["job_id"] for j in listing["jobs"]] == ["job_does_not_exist"]


async def test_healthz_and_metrics(
    daemon: str, http: aiohttp.ClientSession, retab_sim: SimServer
) -> None:
    status, health = await get_json(http, f"{daemon}/healthz")
    assert status == 200 and health["status"] == "ok"
    job = retab_sim.sim.add_job(org_id="org_test", script=QUICK)
    async with http.post(f"{daemon}/jobs", json={"job_id": job}):
        pass

    async def delivered() -> bool:
        async with http.get(f"{daemon}/metrics") as response:
            text = await response.text()
        return 'poller_jobs{status="completed"} 1.0' in text and (
            'poller_sink_backlog{sink="jsonl"} 0.0' in text
        )

    await eventually(delivered)
    async with http.get(f"{daemon}/metrics") as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await response.text()
    assert 'poller_polls_total{org="org_test",outcome="ok"}' in text
    assert 'poller_request_latency_seconds_bucket{le="+Inf"}' in text
    assert "poller_detection_lag_seconds_count" in text
    assert 'poller_sink_delivered_total{sink="jsonl"}' in text
    assert KEY not in text and TENANT_KEY not in text


async def test_token_required_when_configured(retab_sim: SimServer, tmp_path: Path) -> None:
    async with (
        running(settings_for(retab_sim, tmp_path, token=True)) as url,
        aiohttp.ClientSession() as http,
    ):
        async with http.get(f"{url}/jobs") as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
        async with http.get(f"{url}/jobs", headers={"Authorization": "Bearer wrong"}) as response:
            assert response.status == 401
        async with http.get(f"{url}/jobs", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            assert r.status == 200
        async with http.get(f"{url}/healthz") as response:
            assert response.status == 200


async def read_events(response: aiohttp.ClientResponse, count: int) -> list[tuple[str, str, str]]:
    """(id, event, data) of the next ``count`` server-sent events."""
    events: list[tuple[str, str, str]] = []
    fields: dict[str, str] = {}
    with anyio.fail_after(10):
        while len(events) < count:
            line = (await response.content.readline()).decode().rstrip("\n")
            if not line:
                if "data" in fields:
                    events.append((fields["id"], fields["event"], fields["data"]))
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value
    return events


async def test_events_stream_resumes_from_last_event_id(
    daemon: str, http: aiohttp.ClientSession, retab_sim: SimServer
) -> None:
    job = retab_sim.sim.add_job(org_id="org_test", script=QUICK)
    async with http.get(f"{daemon}/events") as stream:
        assert stream.headers["Content-Type"] == "text/event-stream"
        async with http.post(f"{daemon}/jobs", json={"job_id": job}):
            pass
        live = await read_events(stream, 1)
        records: list[EventRecord] = [decode_record(live[0][2])]
        while not records[-1].final:
            (event,) = await read_events(stream, 1)
            records.append(decode_record(event[2]))
    assert live[0][0] == records[0].id == f"{job}:1"
    assert live[0][1] == "transition"
    # Reconnect after the first event: the rest is replayed from the history, in order.
    headers = {"Last-Event-ID": records[0].id}
    async with http.get(f"{daemon}/events", headers=headers) as stream:
        replay = await read_events(stream, len(records) - 1)
    assert [e[0] for e in replay] == [r.id for r in records[1:]]
    assert [msgspec.json.decode(e[2])["seq"] for e in replay] == [r.seq for r in records[1:]]
    # An unknown ID replays all that is kept.
    async with http.get(f"{daemon}/events?last_event_id=job_x:9") as stream:
        everything = await read_events(stream, len(records))
    assert [e[0] for e in everything] == [r.id for r in records]


async def test_jobs_from_stdin_skips_bad_lines(
    retab_sim: SimServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import io
    import sys

    good = [retab_sim.sim.add_job(org_id="org_test", script=QUICK) for _ in range(3)]
    lines = ["# a comment", good[0], "", "not/valid", f"  {good[1]}  ", good[2], good[0]]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines) + "\n"))
    settings = settings_for(retab_sim, tmp_path, jobs_from="-")
    async with running(settings) as url, aiohttp.ClientSession() as http:

        async def all_done() -> bool:
            _, listing = await get_json(http, f"{url}/jobs?status=completed")
            return len(listing["jobs"]) == 3

        await eventually(all_done)
        _, listing = await get_json(http, f"{url}/jobs")
    assert sorted(j["job_id"] for j in listing["jobs"]) == sorted(good)
    assert "stdin line 4 skipped" in caplog.text


async def test_address_in_use_fails_to_start(retab_sim: SimServer, tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match=r"did not start \(status \[1\]\)"):
            async with running(settings_for(retab_sim, tmp_path, port=str(port))):
                pass


async def test_a_job_added_again_after_its_tracking_failed_is_polled_again(
    retab_sim: SimServer, daemon: str, http: aiohttp.ClientSession
) -> None:
    job = "job_created_later_0001"  # added before it exists: a 404 ends its tracking

    async def status_is(wanted: str) -> bool:
        _, body = await get_json(http, f"{daemon}/jobs/{job}")
        return bool(body["status"] == wanted)

    async with http.post(f"{daemon}/jobs", json={"job_ids": [job]}) as response:
        assert response.status == 201
    await eventually(lambda: status_is("error"))
    retab_sim.sim.add_job(org_id="org_test", job_id=job, script=QUICK)
    async with http.post(f"{daemon}/jobs", json={"job_ids": [job]}) as response:
        assert response.status == 201
        assert (await response.json())["added"] == [job]
    await eventually(lambda: status_is("completed"))


async def test_hostile_input_gets_a_4xx_never_a_500(
    retab_sim: SimServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(settings_for(retab_sim, tmp_path, token=True)) as url:
        auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        deep = b'{"job_id": "job_a", "metadata": {"x": ' + b"[" * 3000 + b"]" * 3000 + b"}}"
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{url}/jobs", data=deep, headers=auth) as response,
        ):
            assert response.status == 400
            assert (await response.json())["error"]["code"] in ("invalid_json", "invalid_metadata")
        # An Authorization header that is not UTF-8, sent raw (clients refuse to).
        host, port = url.removeprefix("http://").split(":")
        request = (
            b"GET /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer \xff\xfe\r\n"
            b"Connection: close\r\n\r\n"
        )
        stream = await anyio.connect_tcp(host, int(port))
        async with stream:
            await stream.send(request)
            answer = await stream.receive()
        assert answer.startswith(b"HTTP/1.1 401")
    assert "Error handling request" not in caplog.text


async def test_learned_durations_survive_a_restart(
    retab_sim: SimServer, tmp_path: Path, http: aiohttp.ClientSession, caplog: Any
) -> None:
    settings = settings_for(retab_sim, tmp_path)
    jobs = [retab_sim.sim.add_job(org_id="org_test", script=QUICK) for _ in range(3)]
    async with running(settings) as url:
        async with http.post(f"{url}/jobs", json={"job_ids": jobs}) as response:
            assert response.status == 201

        async def all_completed() -> bool:
            _, listing = await get_json(http, f"{url}/jobs?status=completed")
            return len(listing["jobs"]) == len(jobs)

        await eventually(all_completed)
    store = Store(settings.db)
    try:
        body = store.learned()
    finally:
        store.close()
    assert body is not None, "saved at the graceful stop"
    learned = msgspec.json.decode(body, type=LearnedDurations)
    assert {(k.organization_id, k.status) for k in learned.kinds} >= {
        ("org_test", "queued"),
        ("org_test", "in_progress"),
    }
    with caplog.at_level("INFO", logger="poller.daemon"):
        async with running(settings):
            pass
    assert f"loaded learned durations of {len(learned.kinds)} kind(s)" in caplog.text


async def test_unreadable_learned_durations_are_set_aside(
    retab_sim: SimServer, tmp_path: Path, caplog: Any
) -> None:
    settings = settings_for(retab_sim, tmp_path)
    store = Store(settings.db)
    store.save_learned(b'{"layout": "log-bins/9/9/9", "kinds": []}')  # another version's
    store.close()
    with caplog.at_level("INFO", logger="poller.daemon"):
        async with running(settings):
            pass
    assert "not used" in caplog.text and "learning afresh" in caplog.text
    store = Store(settings.db)
    store.save_learned(b"\x00 not json")
    store.close()
    caplog.clear()
    with caplog.at_level("INFO", logger="poller.daemon"):
        async with running(settings):
            pass
    assert "not readable" in caplog.text


async def raw_exchange(url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` as it is on a new connection; the answer's status, headers and
    body (the server closes the connection after an error)."""
    host, port = url.removeprefix("http://").split(":")
    stream = await anyio.connect_tcp(host, int(port))
    answer = b""
    async with stream:
        await stream.send(request)
        with anyio.fail_after(5):
            try:
                while True:
                    answer += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def json_error(headers: dict[str, str], body: bytes) -> dict[str, Any]:
    assert headers["content-type"].startswith("application/json")
    error: dict[str, Any] = msgspec.json.decode(body)["error"]
    assert set(error) <= {"code", "message", "field"} and error["message"]
    return error


@pytest.mark.parametrize(
    ("request_bytes", "code"),
    [
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", "bad_request"),
        (b"GET /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n", None),
        (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 40, "bad_request"),
        (b"GET /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nno colon here\r\n\r\n", "bad_request"),
    ],
    ids=["request-line-too-long", "header-too-long", "tls-hello", "header-without-colon"],
)
async def test_requests_aiohttp_cannot_parse_get_a_json_400(
    daemon: str, request_bytes: bytes, code: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    status, headers, body = await raw_exchange(daemon, request_bytes)
    assert status == 400
    error = json_error(headers, body)
    assert error["code"] == "bad_request"
    if b"a" * 9000 in request_bytes:
        assert error["message"] == "the request line or a header is too long"
    assert "Error handling request" not in caplog.text


@pytest.mark.parametrize(
    ("method", "path", "headers", "data", "status", "code"),
    [
        ("GET", "/jobs/", {}, None, 404, "not_found"),
        ("GET", "/nowhere", {}, None, 404, "not_found"),
        ("PUT", "/jobs", _JSON, b"{}", 405, "method_not_allowed"),
        ("POST", "/jobs", _JSON, b" " * (8 * 1024 * 1024 + 1), 413, "request_too_large"),
        (
            "POST",
            "/jobs",
            {"Content-Type": "application/json; charset=utf-16"},
            '{"job_id": "job_a"}'.encode("utf-16"),
            415,
            "unsupported_media_type",
        ),
        ("GET", "/jobs?limit=x", {}, None, 400, "invalid_limit"),
    ],
    ids=["jobs-slash", "unknown-path", "put", "too-large", "utf-16", "bad-limit"],
)
async def test_every_error_answer_is_json(
    daemon: str,
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    headers: dict[str, str],
    data: bytes | None,
    status: int,
    code: str,
) -> None:
    body = io.BytesIO(data) if data is not None and len(data) > 1 << 20 else data
    async with http.request(method, f"{daemon}{path}", headers=headers, data=body) as response:
        assert response.status == status
        error = json_error({"content-type": response.content_type}, await response.read())
        assert error["code"] == code
        if status == 405:
            assert set(response.headers["Allow"].split(",")) == {"GET", "HEAD", "POST"}


async def test_utf8_bodies_are_accepted_with_or_without_a_charset(
    daemon: str, http: aiohttp.ClientSession
) -> None:
    for n, content_type in enumerate(["application/json; charset=UTF-8", "application/json"]):
        body = msgspec.json.encode({"job_id": f"job_{n}"})
        async with http.post(
            f"{daemon}/jobs", data=body, headers={"Content-Type": content_type}
        ) as response:
            assert response.status == 201


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1", True),
        ("127.0.0.1:8787", True),
        ("localhost:8787", True),
        ("[::1]:8787", True),
        ("127.0.0.1:80@evil.example", False),
        ("127.0.0.1@evil.example", False),
        ("evil.example:8787", False),
        ("127.0.0.1:99999", False),
        ("127.0.0.1:port", False),
        ("127.0.0.1:80:80", False),
        ("[::1", False),
        ("[::1]x", False),
        ("::1", False),
        ("", False),
    ],
)
async def test_the_host_header_is_parsed_strictly(daemon: str, host: str, allowed: bool) -> None:
    request = f"GET /jobs HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    status, headers, body = await raw_exchange(daemon, request)
    if allowed:
        assert status == 200
    else:
        assert status == 403
        assert json_error(headers, body)["code"] == "forbidden_host"


@pytest.mark.parametrize(
    ("failure", "status", "code"),
    [
        (sqlite3.OperationalError("disk I/O error"), 503, "store_unavailable"),
        (RuntimeError("a bug"), 500, "internal_error"),
    ],
)
async def test_a_failing_handler_answers_json(
    daemon: str,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    failure: Exception,
    status: int,
    code: str,
) -> None:
    def fail(self: Store, job_id: str) -> None:
        raise failure

    monkeypatch.setattr(Store, "job", fail)
    async with http.get(f"{daemon}/jobs/job_a") as response:
        assert response.status == status
        error = json_error({"content-type": response.content_type}, await response.read())
    assert error["code"] == code
    assert str(failure) in caplog.text  # logged, once, by the daemon


async def test_listing_by_an_unknown_status_is_refused_naming_the_allowed_ones(
    daemon: str, http: aiohttp.ClientSession
) -> None:
    status, body = await get_json(http, f"{daemon}/jobs?status=bogus")
    assert status == 400
    assert body["error"]["code"] == "invalid_status" and body["error"]["field"] == "status"
    assert body["error"]["message"] == (
        "status must be one of pending, validating, queued, in_progress, completed, "
        "failed, cancelled, expired, error"
    )
    for known in ("pending", "in_progress", "error"):
        assert (await get_json(http, f"{daemon}/jobs?status={known}"))[0] == 200


async def test_a_deleted_job_posted_again_is_added(
    daemon: str, http: aiohttp.ClientSession, retab_sim: SimServer
) -> None:
    done = retab_sim.sim.add_job(org_id="org_test", script=QUICK)
    running_job = retab_sim.sim.add_job(org_id="org_test", script=[Change("in_progress", 0.0)])
    async with http.post(f"{daemon}/jobs", json={"job_ids": [done, running_job]}) as response:
        assert response.status == 201

    async def seen() -> bool:
        _, a = await get_json(http, f"{daemon}/jobs/{done}")
        _, b = await get_json(http, f"{daemon}/jobs/{running_job}")
        return bool(a["status"] == "completed" and b["status"] == "in_progress")

    await eventually(seen)
    for job in (done, running_job):
        async with http.delete(f"{daemon}/jobs/{job}") as response:
            assert response.status == 200
    async with http.post(f"{daemon}/jobs", json={"job_ids": [done, running_job]}) as response:
        assert response.status == 201
        assert await response.json() == {"added": [done, running_job], "existing": []}
    _, listing = await get_json(http, f"{daemon}/jobs")
    assert {j["job_id"]: j["status"] for j in listing["jobs"]} == {
        done: "completed",
        running_job: "in_progress",
    }
    async with http.post(f"{daemon}/jobs", json={"job_ids": [done]}) as response:
        assert response.status == 200
        assert await response.json() == {"added": [], "existing": [done]}
