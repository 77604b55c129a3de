"""Where a throughput client's CPU goes, per poll: ``python -m benchmarks._profile``.

Not a benchmark (it writes no result): a tool for whoever wants to make the engine
faster. It runs one throughput measurement (``benchmarks._loops``) against nginx
under py-spy (``pip install py-spy``), then prints the CPU per poll and how it
splits by module and by function (self time), in microseconds per poll::

    python -m benchmarks._profile engine bare --concurrency 64 --seconds 10
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ._common import CODE_ROOT, core_plan
from ._server import canned_server

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^:()]+)(?::\d+)?\)$")


def _group(file: str) -> str:
    """poller and benchmark files by name; anything else by its top package (py-spy
    prints paths relative to site-packages or the stdlib)."""
    file = file.split("site-packages/", 1)[-1]
    if file.startswith(("poller/", "benchmarks/")):
        return file
    head, sep, _ = file.partition("/")
    return head if sep and not head.startswith("<") else "stdlib (other)"


def summarise(raw: Path, polls: int, cpu_s: float) -> dict[str, Any]:
    """Self time per module and per function, as microseconds per poll."""
    by_group: collections.Counter[str] = collections.Counter()
    by_func: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        leaf = stack.split(";")[-1]
        match = _FRAME.match(leaf)
        file, func = (match["file"], match["func"]) if match else ("?", leaf)
        by_group[_group(file)] += n
        by_func[f"{func} ({file})"] += n
    us_per_poll = cpu_s / polls * 1e6
    scale = us_per_poll / max(total, 1)
    return {
        "us_per_poll": us_per_poll,
        "by_module": [(g, n * scale) for g, n in by_group.most_common()],
        "by_function": [(f, n * scale) for f, n in by_func.most_common(25)],
    }


def profile(variant: str, concurrency: int, seconds: float, interval_s: float) -> dict[str, Any]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise SystemExit("py-spy is not installed: pip install py-spy")
    client_core, server_core = core_plan()
    with canned_server("steady", core=server_core) as server, tempfile.TemporaryDirectory() as tmp:
        spec = {
            "variant": variant,
            "loop": "asyncio",
            "concurrency": concurrency,
            "jobs": 100_000,
            "interval_s": interval_s,
            "base_url": server.base_url,
            "warmup_s": 2.0,
            "duration_s": seconds,
            "core": client_core,
        }
        cmd = [sys.executable, "-m", "benchmarks.throughput", "--child", json.dumps(spec)]
        child = subprocess.Popen(cmd, cwd=CODE_ROOT, stdout=subprocess.PIPE, text=True)
        time.sleep(2.0)
        raw = Path(tmp) / "raw.txt"
        subprocess.run(
            [
                spy,
                "record",
                "-p",
                str(child.pid),
                "-d",
                str(int(seconds)),
                "-r",
                "250",
                "-f",
                "raw",
                "-o",
                str(raw),
            ],
            capture_output=True,
            check=False,
        )
        out, _ = child.communicate(timeout=seconds + 60)
        result = json.loads(out.strip().splitlines()[-1])
        # py-spy pauses the process to sample: figures are per CPU-second of the child.
        return {"result": result, **summarise(raw, result["polls"], result["cpu_s"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._profile", description=__doc__)
    parser.add_argument("variants", nargs="+", choices=["bare", "engine", "sdk"])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--interval-s", type=float, default=6.0)
    args = parser.parse_args(argv)
    for variant in args.variants:
        out = profile(variant, args.concurrency, args.seconds, args.interval_s)
        print(f"\n== {variant}: {out['us_per_poll']:.1f} us CPU per poll (under py-spy)")
        print("-- self time by module, us/poll")
        for name, us in out["by_module"][:20]:
            print(f"{us:8.2f}  {name}")
        print("-- self time by function, us/poll")
        for name, us in out["by_function"]:
            print(f"{us:8.2f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
