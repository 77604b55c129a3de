"""Security, through the engine: hostile job IDs, secrets, TLS.

- Hostile job IDs (path traversal, encoded slashes, control characters, look-alike
  slashes, very long IDs) are refused by every entry point of the engine before any
  request, and every ID that is accepted addresses exactly its own resource.
- The API key and the access token appear in no log record (every logger, DEBUG), no
  exception (message, repr, args, attributes, the whole cause/context chain and its
  formatted traceback), no event, no repr and no metric, in runs that go through
  success, 401, 404, 429, 5xx, resets, timeouts and malformed bodies, with both auth
  schemes.
- TLS verification is on by default, environment variables do not turn it off, and
  turning it off is explicit and warned.

The daemon's control API (``poller/daemon/``, being written) is not covered here.
"""

from __future__ import annotations

import logging
import random
import ssl
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import msgspec
import pytest
from _helpers import (
    CountingTransport,
    LocalServer,
    exception_chain,
    exception_texts,
    status_body,
)
from aiohttp import web

from poller import Backoff, Poller, Status, TrackingFailure, Transition
from poller.auth import Credential
from poller.errors import (
    ConfigError,
    ConnectError,
    InvalidJobIdError,
    JobNotFoundError,
    JobsFailedError,
    PollerError,
)
from poller.testing import Change, Faults, JobsSimulator, SimServer
from poller.transport import AiohttpTransport

pytestmark = pytest.mark.anyio

KEY = "rt_live_SECRETkey_0123456789abcdef"
BAD_KEY = "rt_live_SECRETbad_fedcba9876543210"
TOKEN = "tok_SECRETtoken_a1b2c3d4e5"
SECRETS = (KEY, BAD_KEY, TOKEN, "SECRET")
ORG = "org_secret"
FAST = Backoff(
    initial_interval_s={"validating": 0.01, "queued": 0.01, "in_progress": 0.01},
    default_interval_s=0.01,
    min_interval_s=0.005,
    max_interval_s=0.05,
    error_base_s=0.01,
    error_max_s=0.05,
    max_consecutive_errors=3,
)


def _leaks(texts: Iterator[str] | list[str]) -> list[str]:
    return [text for text in texts if any(secret in text for secret in SECRETS)]


def _record_texts(records: list[logging.LogRecord]) -> Iterator[str]:
    formatter = logging.Formatter()
    for record in records:
        yield record.getMessage()
        yield repr(record.args)
        yield repr(record.__dict__)
        if record.exc_info:
            yield formatter.formatException(record.exc_info)
        if record.exc_text:
            yield record.exc_text


# -- hostile job IDs ---------------------------------------------------------------------

HOSTILE_IDS = [
    "../x",
    "..",
    ".",
    "a/b",
    "../../v1/jobs/job_other/status",
    "job_1/../job_2",
    "a?b=c",
    "a#b",
    "a;b",
    "a&access_token=x",
    "%2e%2e",
    "..%2f..%2fother",
    "a%2Fb",
    "a%00b",
    "",
    " x",
    "x ",
    "x\t",
    "x\n",
    "x\r\nApi-Key: other",
    "\x00",
    "\x7f",
    "a\\b",
    "jöb",
    "job\u2215x",  # division slash
    "job\uff0fx",  # fullwidth solidus
    "job\u202ex",  # right-to-left override
    "job\u0085x",  # next line
    "x" * 257,
    "x" * 10_000,
]


@pytest.fixture
async def sim_server() -> AsyncIterator[SimServer]:
    sim = JobsSimulator(seed=6)
    sim.add_org(ORG, api_keys=[KEY], access_tokens=[TOKEN])
    sim.add_org("org_other", api_keys=["rt_test_other_org"])
    async with SimServer(sim) as server:
        yield server


async def test_hostile_job_ids_are_refused_by_every_entry_point_before_any_request(
    sim_server: SimServer,
) -> None:
    sim = sim_server.sim
    ok = sim.add_job(org_id=ORG, script=[Change("completed", 0.0)])
    async with Poller(api_key=KEY, base_url=sim_server.base_url, backoff=FAST) as poller:
        for job_id in HOSTILE_IDS:
            with pytest.raises(InvalidJobIdError) as caught:
                poller.track(job_id)
            assert len(str(caught.value)) < 300, "a huge ID is not echoed whole"
            assert str(caught.value).isprintable(), "control characters are escaped"
            with pytest.raises(InvalidJobIdError):
                poller.track(job_id, api_key=KEY, last_status="queued", last_seq=1)
            with pytest.raises(InvalidJobIdError):
                await poller.wait(job_id, timeout_s=1)
            with pytest.raises(InvalidJobIdError):
                await poller.wait_all([job_id], timeout_s=1)
            with pytest.raises(InvalidJobIdError):
                await poller.fetch(job_id)
            assert poller.untrack(job_id) is False
            assert poller.status(job_id) is None
        assert len(sim.log) == 0, [r.path for r in sim.log]
        assert poller.stats().tracked == 0
        # The engine is unharmed.
        assert (await poller.wait(ok, timeout_s=5)).status is Status.COMPLETED


async def test_every_accepted_job_id_addresses_exactly_its_own_resource(
    sim_server: SimServer,
) -> None:
    """Random IDs drawn from an alphabet rich in separators: each is refused, or polled at
    exactly ``/v1/jobs/<quoted id>/status`` and seen by the server as that very ID."""
    rng = random.Random(77)
    safe, unsafe = "aZ09_-.~:", "/?#%&=;+@!$'()*,[] \\\t\n\x00\x7fé\u2215\uff0f"
    alphabet = safe * 4 + unsafe
    candidates = {"".join(rng.choices(alphabet, k=rng.randint(1, 12))) for _ in range(400)}
    candidates |= {"a.b", "...", "~x", "a:b", "-_-", "x" * 256, "job_" + "9" * 252}
    accepted: list[str] = []
    async with Poller(
        api_key=KEY,
        base_url=sim_server.base_url,
        backoff=FAST,
        first_poll_rate_per_s=None,
    ) as poller:
        for job_id in sorted(candidates):
            try:
                poller.track(job_id)
            except InvalidJobIdError:
                continue
            accepted.append(job_id)
        with pytest.raises(JobsFailedError) as caught:
            await poller.wait_all(accepted, timeout_s=10)
    assert len(accepted) >= 20
    assert all(isinstance(e, JobNotFoundError) for e in caught.value.errors.values())
    records = list(sim_server.sim.log)
    assert sorted(r.job_id for r in records if r.job_id is not None) == sorted(accepted)
    for record in records:
        assert record.job_id is not None
        assert record.path == f"/v1/jobs/{quote(record.job_id, safe='')}/status"
        assert record.status == 404


async def test_another_organisations_job_is_not_found_and_not_revealed(
    sim_server: SimServer,
) -> None:
    theirs = sim_server.sim.add_job(org_id="org_other", script=[Change("completed", 0.0)])
    async with Poller(api_key=KEY, base_url=sim_server.base_url, backoff=FAST) as poller:
        with pytest.raises(JobNotFoundError):
            await poller.wait(theirs, timeout_s=5)
        with pytest.raises(JobNotFoundError):
            await poller.fetch(theirs)


# -- secrets -----------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["api-key", "bearer"])
@pytest.mark.timeout(60)
async def test_secrets_never_reach_logs_errors_events_reprs_or_stats(
    scheme: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sim = JobsSimulator(
        seed=8,
        faults=Faults(
            server_error=0.15,
            reset=0.1,
            garbage=0.08,
            truncated=0.04,
            slow=0.08,
            slow_delay_s=0.3,
            extra_fields=0.3,
        ),
    )
    sim.add_org(ORG, api_keys=[KEY], access_tokens=[TOKEN], rate_limit_per_s=40)
    script = [Change("queued", 0.0), Change("in_progress", 0.05), Change("completed", 0.15)]
    good = [sim.add_job(org_id=ORG, script=script) for _ in range(60)]
    refused = [sim.add_job(org_id=ORG, script=script) for _ in range(3)]
    missing = ["job_missing_1", "job_missing_2"]
    captured: list[BaseException] = []
    events: list[Transition | TrackingFailure] = []

    def broken_callback(t: Transition) -> None:
        raise RuntimeError(f"user callback failed for {t.job_id}")

    async with SimServer(sim) as server:
        counting = CountingTransport(AiohttpTransport(server.base_url, request_timeout_s=0.1))
        async with Poller(
            api_key=KEY,
            access_token=TOKEN,
            auth_scheme=scheme,
            transport=counting,
            backoff=FAST,
            first_poll_rate_per_s=None,
            seed=2,
        ) as poller:
            poller.on_transition(broken_callback, statuses=["completed"])
            async with poller.subscribe() as stream, anyio.create_task_group() as tg:

                async def collect() -> None:
                    async for event in stream:
                        events.append(event)

                tg.start_soon(collect)
                for job_id in refused:
                    poller.track(job_id, api_key=BAD_KEY)
                for call in (
                    poller.wait_all(good + refused + missing, timeout_s=30),
                    poller.fetch(good[0], include_request=True),
                    poller.fetch("job_missing_3"),
                    poller.fetch(good[1], api_key=BAD_KEY),
                    poller.wait("../etc/passwd"),
                ):
                    try:
                        await call
                    except PollerError as exc:
                        captured.append(exc)
                await anyio.sleep(0.1)
                tg.cancel_scope.cancel()
            stats = poller.stats()
            reprs = [
                repr(poller),
                str(poller),
                repr(counting.inner),
                repr(poller._default_credential),
                str(poller._default_credential),
                *(repr(c) for c in poller._credentials.values()),
                repr(stats),
                msgspec.json.encode(stats).decode(),
                repr(stats.to_dict()),
            ]
    # What the run went through, so that the scan below means something.
    kinds = {type(e).__name__ for e in captured}
    assert {"JobsFailedError", "JobNotFoundError", "AuthenticationError"} <= kinds, kinds
    assert "InvalidJobIdError" in kinds
    seen = counting.outcomes()
    for kind in ("ok", "ServerError", "DecodeError", "RequestTimeoutError", "RateLimitedError"):
        assert seen[kind] > 0, seen
    assert stats.callback_errors > 0
    failures = [e for e in events if isinstance(e, TrackingFailure)]
    assert {type(f.error).__name__ for f in failures} >= {"AuthenticationError", "JobNotFoundError"}

    # The scan.
    texts: list[str] = []
    for exc in captured:
        texts += exception_texts(exc)
    for call in counting.calls:  # every error the engine handled, not only the last ones
        if call.error is not None:
            texts += exception_texts(call.error)
    for event in events:
        texts.append(repr(event))
        if isinstance(event, TrackingFailure):
            texts += exception_texts(event.error)
    texts += _record_texts(caplog.records)
    texts += reprs
    assert _leaks(texts) == []
    assert any("user callback failed" in t for t in _record_texts(caplog.records))


async def test_secrets_are_not_in_the_frames_of_the_errors_users_receive(
    sim_server: SimServer,
) -> None:
    """Every error ``wait`` raises: a request's (404 here), and a timeout while every
    request fails (its message tells what failed)."""
    sim = sim_server.sim
    job_id = sim.add_job(org_id=ORG, script=[Change("queued", 0.0)])
    backoff = Backoff(min_interval_s=0.01, error_base_s=0.01, max_consecutive_errors=1)
    caught: list[BaseException] = []
    async with Poller(
        api_key=KEY, access_token=TOKEN, base_url=sim_server.base_url, backoff=backoff
    ) as poller:
        with pytest.raises(JobNotFoundError) as not_found:
            await poller.wait("job_nobody_made_this", timeout_s=5)
        caught.append(not_found.value)
        sim.faults = Faults(server_error=1.0)
        with pytest.raises(TimeoutError) as timed_out:
            await poller.wait(job_id, timeout_s=2)
        caught.append(timed_out.value)
    assert "ServerError" in str(timed_out.value)
    holders = []
    for error in caught:
        for exc in exception_chain(error):
            tb = exc.__traceback__
            while tb is not None:
                for name, value in tb.tb_frame.f_locals.items():
                    if _leaks([_safe_repr(value)]):
                        holders.append(f"{tb.tb_frame.f_code.co_name}:{name}")
                tb = tb.tb_next
    assert holders == []


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:  # some half-built objects cannot repr
        return ""


async def test_an_unexpected_transport_error_is_logged_without_the_secrets(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)

    class LeakyTransport:
        async def get_status(self, job_id: str, credential: Credential) -> Any:
            query = "&".join(f"{k}={v}" for k, v in credential.params.items())
            raise RuntimeError(f"GET /v1/jobs/{job_id}/status?{query} {dict(credential.headers)}")

        async def get_job(self, job_id: str, credential: Credential, **_: Any) -> Any:
            raise NotImplementedError

        async def aclose(self) -> None:
            pass

    backoff = Backoff(min_interval_s=0.01, error_base_s=0.01, max_consecutive_errors=2)
    async with Poller(
        api_key=KEY, access_token=TOKEN, transport=LeakyTransport(), backoff=backoff
    ) as poller:
        # Every request fails, so this is an outage: the wait times out, and says why.
        with pytest.raises(TimeoutError) as caught:
            await poller.wait("job_1", timeout_s=2)
    assert "TransportError" in str(caught.value)
    assert _leaks(exception_texts(caught.value)) == [], "the error itself is clean"
    assert any("unexpected" in r.getMessage() for r in caplog.records)
    assert _leaks(list(_record_texts(caplog.records))) == []


# -- TLS ---------------------------------------------------------------------------------


@pytest.fixture
async def tls_server(tls_files: tuple[Path, Path]) -> AsyncIterator[LocalServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*tls_files)

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return web.json_response(status_body(request.path.split("/")[3]))

    async with LocalServer(handler, ssl_context=context) as server:
        yield server


ONE_TRY = Backoff(min_interval_s=0.01, error_base_s=0.01, max_consecutive_errors=1)


@pytest.mark.parametrize(
    "environment",
    [
        {},
        {"PYTHONHTTPSVERIFY": "0"},
        {"CURL_CA_BUNDLE": "", "REQUESTS_CA_BUNDLE": ""},
        {"SSL_NO_VERIFY": "1", "NODE_TLS_REJECT_UNAUTHORIZED": "0"},
        {"RETAB_INSECURE_SKIP_TLS_VERIFY": "true", "POLLER_INSECURE_SKIP_TLS_VERIFY": "1"},
    ],
    ids=["plain", "pythonhttpsverify", "ca-bundles", "no-verify", "insecure-names"],
)
async def test_tls_is_verified_by_default_whatever_the_environment(
    tls_server: LocalServer, monkeypatch: pytest.MonkeyPatch, environment: dict[str, str]
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # turning verification off would warn
        async with Poller(api_key=KEY, base_url=tls_server.base_url, backoff=ONE_TRY) as poller:
            with pytest.raises(ConnectError) as caught:
                await poller.wait("job_tls", timeout_s=5)
    assert "certificate" in str(caught.value).lower()
    assert tls_server.paths == [], "no request went over an unverified connection"


async def test_turning_tls_verification_off_is_explicit_and_warned(
    tls_server: LocalServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    poller = Poller(
        api_key=KEY, base_url=tls_server.base_url, backoff=ONE_TRY, insecure_skip_tls_verify=True
    )
    with pytest.warns(RuntimeWarning, match="TLS certificate verification is OFF"):
        await poller.__aenter__()
    try:
        assert (await poller.wait("job_tls", timeout_s=5)).status is Status.COMPLETED
    finally:
        await poller.__aexit__(None, None, None)
    warned = [r for r in caplog.records if "verification is OFF" in r.getMessage()]
    assert [r.levelno for r in warned] == [logging.WARNING]


@pytest.mark.parametrize("value", ["false", "0", "no", 1])
async def test_insecure_skip_tls_verify_accepts_only_a_real_bool(value: object) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ConfigError, match="insecure_skip_tls_verify"):
            async with Poller(
                api_key=KEY,
                base_url="https://127.0.0.1:9",
                insecure_skip_tls_verify=value,  # type: ignore[arg-type]
            ):
                pass
    assert [str(w.message) for w in caught] == [], "nothing was turned off"


async def test_plain_http_to_a_remote_host_is_not_silent() -> None:
    with pytest.raises(ConfigError, match=r"^base_url: plain http:// to a remote host") as caught:
        async with Poller(api_key=KEY, base_url="http://api.retab.com"):
            pass
    # The fix it suggests is the one that applies: https, or a loopback host. Not the
    # TLS switch, which is about certificates and has no command-line flag.
    assert "use an https:// URL" in str(caught.value) and "loopback" in str(caught.value)
    assert "insecure_skip_tls_verify" not in str(caught.value)


async def test_a_non_verifying_ssl_context_is_warned_too(tls_server: LocalServer) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        transport = AiohttpTransport(tls_server.base_url, ssl_context=context)
    await transport.aclose()
    assert any(issubclass(w.category, RuntimeWarning) for w in caught), "not warned"


@pytest.mark.parametrize("status", [200, 404, 500])
async def test_secrets_echoed_by_a_proxy_are_scrubbed_in_every_form(status: int) -> None:
    """A proxy error page that echoes the request: the token as sent (percent-encoded),
    the key in its header; a 200 page over the size limit as well."""
    token = "tok/SECRET+b64=="  # base64-style: percent-encoded on the wire
    from poller.transport import MAX_STATUS_BODY_BYTES

    async def echo(request: web.BaseRequest) -> web.StreamResponse:
        page = f"proxy error for {request.raw_path} ({request.headers.get('Api-Key')})"
        if status == 200:
            page += " " * (MAX_STATUS_BODY_BYTES + 10)  # too big: a DecodeError
        return web.Response(status=status, text=page)

    async with LocalServer(echo) as server, AiohttpTransport(server.base_url) as transport:
        with pytest.raises(PollerError) as caught:
            await transport.get_status("job_1", Credential(KEY, access_token=token))
        assert quote(token, safe="") in server.paths[0], "the token was sent encoded"
    texts = "\n".join(exception_texts(caught.value))
    for secret in (KEY, token, quote(token, safe=""), "SECRET"):
        assert secret not in texts


@pytest.mark.parametrize("job_id", [None, b"job_1", 123])
async def test_a_job_id_of_the_wrong_type_is_refused_when_awaited(job_id: Any) -> None:
    async with AiohttpTransport("http://127.0.0.1:9") as transport:
        pending = transport.get_status(job_id, Credential(KEY))
        with pytest.raises(InvalidJobIdError, match="must be a str"):
            await pending
