"""The README's example runs as written (against the simulator instead of the API)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from poller import Backoff
from poller.testing import Change, SimServer
from poller.testing.pytest_plugin import TEST_API_KEY, TEST_ORG_ID

README = Path(__file__).resolve().parent.parent / "README.md"
FAST = Backoff(min_interval_s=0.01, initial_interval_s={"queued": 0.02, "in_progress": 0.02})


def example() -> str:
    """The first Python block under ``## Example``."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Example") :]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found is not None, "the README has no example"
    return found.group(1)


@pytest.mark.anyio
async def test_the_readme_example_runs(
    retab_sim: SimServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code = example()
    target = 'poller.Poller(api_key="rt_live_...")'
    assert target in code and code.rstrip().endswith("asyncio.run(main())")
    code = code.replace(target, "poller.Poller(api_key=KEY, base_url=BASE_URL, backoff=FAST)")
    code = code.rstrip().removesuffix("asyncio.run(main())")  # we are in a loop already
    for job_id in ("job_a", "job_b", "job_c"):
        retab_sim.sim.add_job(
            org_id=TEST_ORG_ID,
            job_id=job_id,
            script=[Change("queued", 0.0), Change("in_progress", 0.1), Change("completed", 0.2)],
        )
    namespace = {"KEY": TEST_API_KEY, "BASE_URL": retab_sim.base_url, "FAST": FAST}
    exec(compile(code, "README.md", "exec"), namespace)
    await namespace["main"]()
    lines = capsys.readouterr().out.splitlines()
    assert "job_a None -> queued" in lines  # the callback, first sighting
    assert any(re.fullmatch(r"job_a \w+ -> completed", line) for line in lines)
    assert lines[-1] == "{'job_a': 'completed', 'job_b': 'completed', 'job_c': 'completed'}"
