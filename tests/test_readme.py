"""Every ```python block of the README runs as written, imports included.

A block is known by the section it is in (the nearest heading above it) and its place
there, ``("Example", 0)`` for the first of "## Example", and must be one of:

- **run here**: :data:`RUNNERS` maps it to a function that runs the block exactly as
  written, in a temporary directory, against the simulator (``poller.testing``) served
  on loopback. The README's code takes its key and URL from ``RETAB_API_KEY`` and
  ``RETAB_API_BASE_URL``, as users' code does; the test points them at the simulator,
  which has the jobs the README names (``job_a``, ``job_b``, ``job_c``).
- **tested elsewhere**: preceded by ``<!-- tested: tests/test_x.py -->``. That file
  must exist and read the README.
- **a fragment**: preceded by ``<!-- fragment: why -->``. It must only compile (top-level
  ``await`` allowed). Prefer a complete snippet: a fragment is not known to work.

A block that is none of these fails ``test_readme_block``, so a new block cannot go
untested; a runner whose block is gone (or has moved) fails
``test_every_runner_has_its_block``.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from poller import LearnedDurations
from poller.testing import Change, JobsSimulator, SimServer
from poller.testing.pytest_plugin import TEST_API_KEY, TEST_ORG_ID

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<ticks>`{3,})(?P<lang>[^`\s]*)\s*$")
_MARKER = re.compile(r"<!--\s*(?P<kind>tested|fragment):\s*(?P<value>.*?)\s*-->")


@dataclass(frozen=True)
class Block:
    """One ```python block: where it is, its code (dedented) and its marker, if any."""

    section: str
    index: int
    line: int
    code: str
    marker: tuple[str, str] | None

    @property
    def key(self) -> tuple[str, int]:
        return self.section, self.index


def python_blocks(markdown: str) -> list[Block]:
    """The ```python blocks of ``markdown``, fenced at any indentation (in lists too).
    Headings inside code blocks are code, not headings."""
    lines = markdown.splitlines()
    blocks: list[Block] = []
    section, per_section = "", 0
    previous = ""  # the last non-blank line of text before the block
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if fence is None:
            text = lines[i].strip()
            if lines[i].startswith("#"):
                section, per_section = lines[i].lstrip("#").strip(), 0
            if text:
                previous = text
            i += 1
            continue
        indent, ticks = fence["indent"], fence["ticks"]
        end = i + 1
        while end < len(lines) and lines[end].strip() != ticks:
            end += 1
        assert end < len(lines), f"README line {i + 1}: the code block is never closed"
        if fence["lang"] == "python":
            body = [line.removeprefix(indent) for line in lines[i + 1 : end]]
            marker = _MARKER.fullmatch(previous)
            blocks.append(
                Block(
                    section=section,
                    index=per_section,
                    line=i + 1,
                    code="\n".join(body) + "\n",
                    marker=(marker["kind"], marker["value"]) if marker else None,
                )
            )
            per_section += 1
        previous = ""
        i = end + 1
    return blocks


# -- the simulator the blocks run against ------------------------------------------------

JOBS = ("job_a", "job_b", "job_c")


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[JobsSimulator]:
    """The simulator served from its own thread (the README's code runs its own loop, or
    none), with the README's jobs; the environment points at it; the working directory
    is a temporary one."""
    import anyio
    from anyio.from_thread import start_blocking_portal

    sim = JobsSimulator(seed=0)
    sim.add_org(TEST_ORG_ID, api_keys=[TEST_API_KEY])
    for job_id in JOBS:
        script = [Change("validating", 0.0), Change("queued", 0.05), Change("completed", 0.1)]
        sim.add_job(org_id=TEST_ORG_ID, job_id=job_id, script=script)
    with start_blocking_portal() as portal:
        server = SimServer(sim)
        with portal.wrap_async_context_manager(server):
            monkeypatch.setenv("RETAB_API_KEY", TEST_API_KEY)
            monkeypatch.setenv("RETAB_API_BASE_URL", server.base_url)
            monkeypatch.chdir(tmp_path)
            yield sim
        portal.call(anyio.sleep, 0)


def run(block: Block) -> None:
    """Run the block as a script of its own (it starts its own event loop, if any)."""
    code = compile(block.code, f"README.md, line {block.line}", "exec")
    exec(code, {"__name__": "readme"})


def run_against_the_simulator(block: Block, request: pytest.FixtureRequest) -> list[str]:
    """Run the block with the ``api`` fixture in place; the lines it printed."""
    capsys: pytest.CaptureFixture[str] = request.getfixturevalue("capsys")
    request.getfixturevalue("api")
    run(block)
    return capsys.readouterr().out.splitlines()


# -- what each block must do -------------------------------------------------------------

Runner = Callable[[Block, pytest.FixtureRequest], None]


def example(block: Block, request: pytest.FixtureRequest) -> None:
    lines = run_against_the_simulator(block, request)
    for job_id in JOBS:
        assert any(line.startswith(f"{job_id} None -> ") for line in lines)  # first sighting
        assert any(re.fullmatch(rf"{job_id} \w+ -> completed", line) for line in lines)
    assert lines[-1] == "{'job_a': 'completed', 'job_b': 'completed', 'job_c': 'completed'}"


def stream(block: Block, request: pytest.FixtureRequest) -> None:
    lines = run_against_the_simulator(block, request)
    assert sorted(lines) == ["job_a completed", "job_b completed"]


def blocking(block: Block, request: pytest.FixtureRequest) -> None:
    lines = run_against_the_simulator(block, request)
    assert lines[0].startswith("job_a None -> ")
    assert re.fullmatch(r"job_a \w+ -> completed", lines[-2])
    assert lines[-1] == "completed"


def metrics(block: Block, request: pytest.FixtureRequest) -> None:
    lines = run_against_the_simulator(block, request)
    assert "# TYPE poller_polls_total counter" in lines
    assert any(
        line.startswith('poller_polls_total{org="org_test",outcome="ok"} ') for line in lines
    )
    assert any(
        re.fullmatch(r'poller_tracked_jobs\{status="completed"\} 1\.0', line) for line in lines
    )


def warm_start(block: Block, request: pytest.FixtureRequest) -> None:
    run_against_the_simulator(block, request)  # learns, saves
    saved = Path("learned.json")  # in the temporary directory
    first = msgspec.json.decode(saved.read_bytes(), type=LearnedDurations)
    run(block)  # starts from what it saved
    again = msgspec.json.decode(saved.read_bytes(), type=LearnedDurations)
    assert isinstance(first, LearnedDurations) and isinstance(again, LearnedDurations)


def offline(block: Block, request: pytest.FixtureRequest) -> None:
    """Saved as a test module in an empty directory and run by pytest in a fresh process,
    as a user would (the plugin named in the block provides the fixtures)."""
    tmp_path: Path = request.getfixturevalue("tmp_path")
    (tmp_path / "test_worker.py").write_text(block.code, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=45,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout


RUNNERS: dict[tuple[str, int], Runner] = {
    ("Example", 0): example,
    ("Example", 1): stream,
    ("Example", 2): blocking,
    ("Metrics", 0): metrics,
    ("How requests are spent", 0): warm_start,
    ("Testing your code offline", 0): offline,
}


# -- the tests ---------------------------------------------------------------------------

BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


@pytest.mark.parametrize("block", BLOCKS, ids=[f"{b.section} {b.index}" for b in BLOCKS])
def test_readme_block(block: Block, request: pytest.FixtureRequest) -> None:
    where = f"README.md line {block.line} ({block.section!r} block {block.index})"
    if block.marker is not None:
        kind, value = block.marker
        if kind == "tested":
            test_file = ROOT / value
            assert test_file.is_file(), f"{where}: {value} does not exist"
            assert "README" in test_file.read_text(encoding="utf-8"), (
                f"{where}: {value} does not read the README"
            )
        else:
            ast.parse(block.code)  # a fragment: it must at least be Python
            compile(block.code, where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        return
    runner = RUNNERS.get(block.key)
    assert runner is not None, (
        f"{where} is not tested: add a runner to RUNNERS in tests/test_readme.py, or mark "
        "the block (see this module's docstring)"
    )
    runner(block, request)


def test_every_runner_has_its_block() -> None:
    keys = {b.key for b in BLOCKS if b.marker is None}
    assert set(RUNNERS) <= keys, f"runners without their block: {set(RUNNERS) - keys}"


def test_the_parser_finds_every_kind_of_block() -> None:
    """What test_readme_block relies on: blocks in lists, markers, and headings in code."""
    markdown = "\n".join(
        [
            "# Top",
            "```python",
            "# not a heading",
            "x = 1",
            "```",
            "## Part",
            "- a list item:",
            "",
            "  ```python",
            "  async with a() as b:",
            "      pass",
            "  ```",
            "<!-- tested: tests/test_readme_webhook.py -->",
            "```python",
            "y = 2",
            "```",
            "```sh",
            "make test",
            "```",
            "<!-- fragment: needs p from above -->",
            "",
            "```python",
            "await p.stop()",
            "```",
        ]
    )
    blocks = python_blocks(markdown)
    assert [(b.key, b.line, b.marker) for b in blocks] == [
        (("Top", 0), 2, None),
        (("Part", 0), 9, None),
        (("Part", 1), 14, ("tested", "tests/test_readme_webhook.py")),
        (("Part", 2), 22, ("fragment", "needs p from above")),
    ]
    assert blocks[0].code == "# not a heading\nx = 1\n"
    assert blocks[1].code == "async with a() as b:\n    pass\n"


def test_an_untested_block_fails(request: pytest.FixtureRequest) -> None:
    """A block added without a runner or a marker is reported, not skipped."""
    new = Block(section="Example", index=99, line=1, code="print(1)\n", marker=None)
    with pytest.raises(AssertionError, match="is not tested"):
        test_readme_block(new, request)
