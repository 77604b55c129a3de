"""The ``poller`` command: subcommands, help, version, configuration errors, ``watch``."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest

from poller import JobNotFoundError, Status, TrackingFailure, Transition, __version__
from poller.commands.cli import main
from poller.commands.tally import Outcome, Tally
from poller.commands.watch import trouble_line, watch
from poller.commands.watch_view import JsonView, PlainView, RichView, describe, make_view
from poller.daemon.config import Settings, engine_options, load_settings
from poller.daemon.options import Secret
from poller.events import HealthStats, Histogram, OrgStats, Stats
from poller.models import JobError, JobStatus
from poller.testing import Change, SimServer

KEY = "rt_test_key"  # the retab_sim fixture's organisation
DONE = [Change("queued", 0.0), Change("in_progress", 0.05), Change("completed", 0.15)]
FAIL = [Change("queued", 0.0), Change("failed", 0.1)]
CANCEL = [Change("queued", 0.0), Change("cancelled", 0.1)]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"poller {__version__}"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], ["run", "watch", "sim", "demo"]),
        (["run"], ["--jobs-from", "--webhook", "--jsonl", "POLLER_PORT", "RETAB_API_KEY"]),
        (["watch"], ["--from", "--json", "--sim-create", "not_found", "Exit status"]),
        (["sim"], ["GET  /v1/jobs ", "--time-scale SCALE", "100x faster", "(default 8080)"]),
        (["demo"], ["--jobs", "--duration"]),
    ],
)
def test_help_everywhere(
    argv: list[str], expected: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for text in expected:
        assert text in out


def test_installed_command_and_module() -> None:
    script = Path(sys.executable).parent / "poller"
    started = [
        subprocess.Popen([*argv, "--version"], stdout=subprocess.PIPE, text=True)
        for argv in ([str(script)], [sys.executable, "-m", "poller"])
    ]
    for process in started:
        out, _ = process.communicate(timeout=30)
        assert (process.returncode, out.strip()) == (0, f"poller {__version__}")


def test_make_and_readme_say_where_the_command_is() -> None:
    root = Path(__file__).resolve().parent.parent
    hint = "the poller command is in .venv/bin: run .venv/bin/poller --help, or 'source "
    for target in ("install", "demo"):  # -n: print the recipe, run nothing
        made = subprocess.run(
            ["make", "-n", "--no-print-directory", target],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        )
        assert [line for line in made.stdout.splitlines() if hint in line], made.stdout
    readme = (root / "README.md").read_text()
    section = readme[readme.index("## The `poller` command") :]
    assert "`.venv/bin/poller`" in section[:400] and "source .venv/bin/activate" in section[:400]


def test_extras_hold_what_is_used() -> None:
    root = Path(__file__).resolve().parent.parent
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    # uvloop: only the benchmarks run on it, so it is in bench alone, not an extra of its own.
    assert "uvloop" not in extras and any(r.startswith("uvloop") for r in extras["bench"])
    assert not any("uvloop" in path.read_text() for path in (root / "poller").rglob("*.py"))
    # numpy: the benchmarks' oracle, declared once; dev has it so that tests/test_oracle.py
    # runs under make test (CI installs dev only) rather than failing or skipping.
    assert extras["oracle"] == ["numpy>=1.26"] and "poller[oracle]" in extras["bench"]
    assert not any(r.startswith("numpy") for r in extras["dev"] + extras["bench"])
    assert any(r.startswith("poller[") and "oracle" in r for r in extras["dev"])


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["run"], {}, "configuration error: api_key: no API key"),
        (["run", "--port", "99999"], {"RETAB_API_KEY": KEY}, "port: must be an integer"),
        (["run", "--host", "0.0.0.0"], {"RETAB_API_KEY": KEY}, "control_token: required"),
        (["run", "--log-level", "loud"], {"RETAB_API_KEY": KEY}, "log_level: must be one of"),
    ],
)
def test_run_configuration_errors_exit_2(
    argv: list[str],
    env: dict[str, str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in ("RETAB_API_KEY", "RETAB_API_BASE_URL", "POLLER_CONFIG", "POLLER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert KEY not in err


def test_run_bad_config_file_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "poller.toml"
    config.write_text('api_key = "rt_test_x"\nwebhooks = ["http://127.0.0.1:1/h"]\n')
    assert main(["run", "--config", str(config)]) == 2
    assert "webhook_secret: required" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["demo", "job_abc"], {}, "poller demo: error: api_key: set RETAB_API_KEY"),
        (["demo", "../x"], {"RETAB_API_KEY": KEY}, "poller demo: error: job ID '../x'"),
        (["demo", "--jobs", "0"], {}, "poller demo: error: --jobs must be >= 1"),
        (
            ["demo", "job_abc"],
            {"RETAB_API_KEY": KEY, "RETAB_API_BASE_URL": "ftp://example.com"},
            "poller demo: error: base_url",
        ),
    ],
)
def test_demo_usage_errors_are_one_line_and_exit_2(
    argv: list[str],
    env: dict[str, str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in ("RETAB_API_KEY", "RETAB_API_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith(message), captured.err
    assert KEY not in captured.err


# -- watch -------------------------------------------------------------------------


def sample_transition(
    job_id: str, status: str, *, error: JobError | None = None, completed_at: int | None = None
) -> Transition:
    job = JobStatus(
        id=job_id,
        status=Status(status),
        endpoint="/v1/documents/extract",  # type: ignore[arg-type]
        created_at=100,
        completed_at=completed_at,
        expires_at=200,
        organization_id="org_a",
        error=error,
    )
    return Transition(
        job_id=job_id,
        organization_id="org_a",
        previous=None,
        current=Status(status),
        job=job,
        observed_at=12.5,
        seq=1,
    )


def test_tally_exit_status_and_counts() -> None:
    tally = Tally(["a", "b", "c"], started_at=10.0)
    assert tally.observe(sample_transition("a", "in_progress")) is None
    outcome = tally.observe(sample_transition("a", "completed", completed_at=142))
    assert outcome == Outcome(
        job_id="a", status="completed", watched_s=2.5, duration_s=42, organization_id="org_a"
    )
    assert tally.observe(sample_transition("zzz", "completed")) is None  # not watched
    error = JobError(code="model_timeout", message="slow")
    failed = tally.observe(sample_transition("b", "failed", error=error))
    assert failed is not None and failed.error == {"code": "model_timeout", "message": "slow"}
    assert tally.counts() == {"completed": 1, "failed": 1, "pending": 1}
    assert not tally.done
    gone = TrackingFailure(
        job_id="c", organization_id=None, error=JobNotFoundError("no"), observed_at=11.0
    )
    ended = tally.observe(gone)
    assert ended is not None and ended.status == "error"  # the daemon's word for it
    assert ended.error == {
        "code": "not_found",
        "kind": "JobNotFoundError",
        "message": "no",
        "status": None,
        "retryable": False,
    }
    assert tally.counts() == {"completed": 1, "failed": 1, "error": 1}
    assert tally.done and tally.exit_status == 1


def test_a_finished_job_shows_its_own_duration_else_the_watch_time() -> None:
    tally = Tally(["a", "b", "c"], started_at=10.0)
    done = tally.observe(sample_transition("a", "completed", completed_at=142))
    quick = tally.observe(sample_transition("b", "completed", completed_at=100))
    gone = tally.observe(
        TrackingFailure(
            job_id="c", organization_id=None, error=JobNotFoundError("no"), observed_at=11.25
        )
    )
    assert done is not None and describe(done) == "a  completed  (took 42 s)"
    assert quick is not None and describe(quick) == "b  completed  (took < 1 s)"
    assert gone is not None
    assert describe(gone) == "c  error  not_found: no  (1.2 s into the watch)"
    assert msgspec.json.decode(msgspec.json.encode(done)) == {
        "job_id": "a",
        "status": "completed",
        "watched_s": 2.5,
        "duration_s": 42,
        "organization_id": "org_a",
    }


def test_tally_all_completed_exits_0_and_timeouts_exit_1() -> None:
    tally = Tally(["a"], started_at=0.0)
    tally.observe(sample_transition("a", "completed"))
    assert tally.exit_status == 0
    waiting = Tally(["a", "b"], started_at=0.0)
    waiting.observe(sample_transition("a", "completed"))
    assert [o.status for o in waiting.time_out(5.0)] == ["timed_out"]
    assert waiting.exit_status == 1


def _settings(retab_sim: SimServer, **more: Any) -> Settings:
    return Settings(api_key=Secret(KEY), base_url=retab_sim.base_url, poll_interval_s=0.05, **more)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("scripts", "missing", "expected"),
    [
        ([DONE, DONE], False, 0),
        ([DONE, FAIL], False, 1),
        ([CANCEL], False, 1),
        ([DONE], True, 1),
    ],
)
async def test_watch_exit_status(
    retab_sim: SimServer, scripts: list[list[Change]], missing: bool, expected: int
) -> None:
    job_ids = [retab_sim.sim.add_job(org_id="org_test", script=s) for s in scripts]
    if missing:
        job_ids.append("job_not_there")
    out = io.StringIO()
    status = await watch(job_ids, JsonView(out), settings=_settings(retab_sim))
    assert status == expected
    printed = [msgspec.json.decode(line) for line in out.getvalue().splitlines()]
    assert sorted(p["job_id"] for p in printed) == sorted(job_ids)
    statuses = {p["job_id"]: p["status"] for p in printed}
    for job_id in job_ids:
        want = "error" if job_id == "job_not_there" else retab_sim.sim.status(job_id)
        assert statuses[job_id] == want
    for p in printed:
        if p["job_id"] == "job_not_there":
            assert (p["error"]["code"], p["error"]["status"]) == ("not_found", 404)


@pytest.mark.anyio
async def test_watch_timeout(retab_sim: SimServer) -> None:
    job = retab_sim.sim.add_job(org_id="org_test", script=[Change("queued", 0.0)])
    out, err = io.StringIO(), io.StringIO()
    view = PlainView(out, err)
    status = await watch([job], view, settings=_settings(retab_sim), timeout_s=0.5)
    assert status == 1
    assert out.getvalue().startswith(f"{job}  timed_out")
    assert err.getvalue().splitlines()[-1] == "1/1 finished: timed_out 1"


@pytest.mark.anyio
async def test_rich_view_shows_bar_counts_and_lines(retab_sim: SimServer) -> None:
    from rich.console import Console

    job_ids = [retab_sim.sim.add_job(org_id="org_test", script=s) for s in (DONE, FAIL)]
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120, color_system=None)
    status = await watch(job_ids, RichView(console), settings=_settings(retab_sim))
    assert status == 1
    text = screen.getvalue()
    assert f"{job_ids[0]}  completed" in text
    assert f"{job_ids[1]}  failed  scripted_failure" in text
    assert "2/2" in text and "completed 1" in text and "failed 1" in text


def test_view_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(make_view(json_lines=True), JsonView)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    assert isinstance(make_view(json_lines=False), PlainView)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert isinstance(make_view(json_lines=False), RichView)
    monkeypatch.setitem(sys.modules, "rich.progress", None)  # rich not installed
    assert isinstance(make_view(json_lines=False), PlainView)


@pytest.mark.anyio
async def test_watch_takes_its_key_and_engine_settings_from_the_config_file(
    retab_sim: SimServer, tmp_path: Path
) -> None:
    config = tmp_path / "poller.toml"
    config.write_text(
        f'api_key = "{KEY}"\nauth_scheme = "bearer"\nbase_url = "{retab_sim.base_url}"\n'
        "poll_interval_s = 0.05\nrate_limit_per_s = 40\nmax_connections = 4\n"
    )
    settings = load_settings({}, {}, str(config))  # no RETAB_API_KEY: the file's key
    options = engine_options(settings)
    assert options.auth_scheme == "bearer" and options.max_connections == 4
    assert options.rate_limit is not None and options.rate_limit.per_s == 40
    assert settings.api_key is not None and settings.api_key.reveal() == KEY
    job = retab_sim.sim.add_job(org_id="org_test", script=DONE)
    out = io.StringIO()
    assert await watch([job], JsonView(out), settings=settings) == 0
    assert msgspec.json.decode(out.getvalue())["status"] == "completed"


def test_watch_command_reads_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("RETAB_API_KEY", raising=False)
    config = tmp_path / "poller.toml"
    config.write_text('api_key = "rt_test_from_file"\npoll_interval_s = -1\n')
    assert main(["watch", "--config", str(config), "job_a"]) == 2
    err = capsys.readouterr().err
    assert "poll_interval_s: must be a finite number > 0" in err and "poller.toml" in err
    assert "rt_test_from_file" not in err


def test_watch_ignores_the_daemon_settings_of_a_shared_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "poller.toml"  # poller run's file; its secrets in its own env
    config.write_text(
        'host = "0.0.0.0"\nwebhooks = ["https://hooks.example.com/x"]\n'
        'db = "/nonexistent/poller.db"\nwebhook_max_attempts = 0\n'
    )
    monkeypatch.setenv("POLLER_CONTROL_TOKEN", "short")
    argv = ["watch", "--sim", "--json", "--sim-jobs", "2", "--sim-time-scale", "0.002"]
    status = main([*argv, "--config", str(config), "--poll-interval", "0.05", "--timeout", "30"])
    assert status in (0, 1), capsys.readouterr().err
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_watch_sim_command(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "watch",
        "--sim",
        "--json",
        "--sim-jobs",
        "6",
        "--sim-time-scale",
        "0.002",
        "--poll-interval",
        "0.05",
    ]
    status = main([*argv, "--seed", "4", "--timeout", "30"])
    printed = [msgspec.json.decode(line) for line in capsys.readouterr().out.splitlines()]
    assert len(printed) == 6
    assert all(p["status"] in {"completed", "failed", "cancelled"} for p in printed)
    assert status == (0 if all(p["status"] == "completed" for p in printed) else 1)


def test_watch_reads_ids_from_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("# my jobs\njob_one\n\njob_two\n")
    argv = [
        "watch",
        "--sim",
        "--sim-create",
        "--json",
        "--from",
        str(ids),
        "--sim-time-scale",
        "0.002",
        "--poll-interval",
        "0.05",
    ]
    main([*argv, "--timeout", "30"])
    printed = [msgspec.json.decode(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(p["job_id"] for p in printed) == ["job_one", "job_two"]
    assert all(p["status"] != "error" for p in printed)


def test_watch_sim_knows_only_the_jobs_it_made(capsys: pytest.CaptureFixture[str]) -> None:
    fast = ["--sim-time-scale", "0.002", "--poll-interval", "0.05", "--timeout", "30"]
    status = main(["watch", "--sim", "--json", "--sim-jobs", "2", "job_nope", *fast])
    printed = {
        p["job_id"]: p for p in map(msgspec.json.decode, capsys.readouterr().out.splitlines())
    }
    assert status == 1 and len(printed) == 3
    assert printed["job_nope"]["status"] == "error"
    assert printed["job_nope"]["error"]["code"] == "not_found"
    made = [p for job_id, p in printed.items() if job_id != "job_nope"]
    assert all(p["status"] in {"completed", "failed", "cancelled"} for p in made)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["watch", "job_a"], "RETAB_API_KEY"),
        (["watch"], "give job IDs"),
        (["watch", "--sim", "../etc"], "not allowed"),
        (["watch", "--sim", "--timeout", "0"], "timeout: must be > 0"),
        (["watch", "--sim-create", "job_a"], "need --sim"),
        (["watch", "--sim", "--sim-jobs", "0"], "--sim-jobs >= 1"),
    ],
)
def test_watch_usage_errors_exit_2(
    argv: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("RETAB_API_KEY", raising=False)
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_run_unwritable_sink_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RETAB_API_KEY", KEY)
    argv = ["run", "--db", str(tmp_path / "p.db"), "--jsonl", str(tmp_path / "no" / "x.jsonl")]
    assert main(argv) == 2
    assert "jsonl: cannot write to" in capsys.readouterr().err


def test_watch_plain_http_error_gives_the_command_line_fix(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RETAB_API_KEY", KEY)
    assert main(["watch", "--base-url", "http://api.example.com", "job_a"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("poller watch: error: base_url: plain http://")
    assert "--base-url https://" in err and err.count("\n") == 1
    assert "insecure_skip_tls_verify" not in err and KEY not in err


@pytest.mark.anyio
async def test_watch_says_when_the_api_is_unreachable() -> None:
    """Nothing listens on the port: the watch says so, instead of a silent bar."""
    with socket.socket() as unused:  # a port nobody listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    settings = Settings(api_key=Secret(KEY), base_url=f"http://127.0.0.1:{port}")
    out, err = io.StringIO(), io.StringIO()
    status = await watch(["job_x"], PlainView(out, err), settings=settings, timeout_s=2.5)
    assert status == 1
    assert out.getvalue().startswith("job_x  timed_out")
    lines = err.getvalue().splitlines()
    trouble = [line for line in lines if line.startswith("API not answering: the last ")]
    trouble += [line for line in lines if line.startswith("API unreachable: ConnectError x")]
    assert trouble, lines
    assert "ConnectError x" in trouble[0] and " since " in trouble[0]


def test_trouble_line_names_what_fails() -> None:
    def health(state: str, **kwargs: object) -> HealthStats:
        return HealthStats(
            state=state, since=0.0, recent_errors={"ServerError": 7}, error_share=0.35, **kwargs
        )

    def stats(api: HealthStats, **orgs: HealthStats) -> Stats:
        by_org = {
            org: OrgStats(polls=1, errors=0, throttled=0, rate_per_s=None, health=h)
            for org, h in orgs.items()
        }
        empty = Histogram(bounds=(), counts=(0,), sum=0.0, count=0)
        return Stats(
            tracked=1, by_status={}, in_flight=0, polls=1, errors=0, rate_limited=0,
            transitions=0, failures=0, callback_errors=0, callbacks_dropped=0, subscribers=0,
            subscriber_overflows=0, errors_by_kind={}, by_org=by_org, request_latency=empty,
            detection_lag=empty, api=api,
        )  # fmt: skip

    ok = HealthStats()
    assert trouble_line(stats(ok, org_a=ok)) is None
    failing = HealthStats(streak=3, since=0.0, recent_errors={"ConnectError": 3})
    line = trouble_line(stats(failing))
    assert line is not None and line.startswith("API not answering: the last 3 requests failed")
    down = trouble_line(stats(health("down"), org_a=health("down")))
    assert down is not None and down.startswith("API unreachable: ServerError x7 since ")
    line = trouble_line(stats(ok, org_a=ok, org_b=health("degraded")))
    assert line is not None and line.startswith("organisation org_b is degraded: 35% of requests")
    line = trouble_line(stats(ok, org_a=health("down"), org_b=health("degraded")))
    assert line is not None and line.startswith("organisation org_a is down: ServerError x7")
