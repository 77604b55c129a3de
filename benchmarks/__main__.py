"""``python -m benchmarks [NAME ...] [--quick]``: run benchmarks, write their results,
regenerate the README's results section.

With no names every benchmark runs. Benchmarks are found, not listed: any module of
this package (not starting with ``_``) that exposes ``NAME`` and ``run``. A full run
writes ``benchmarks/results/<NAME>.json`` and rewrites the README section from every
JSON file there; ``--quick`` is a smoke run whose results go to
``benchmarks/results/quick/`` (not committed) and never touch the README.

The run measures a snapshot: ``poller/`` and ``benchmarks/`` are copied to a temporary
directory and the run continues there, so edits made to the checkout meanwhile (by
anyone) cannot mix two versions of the engine into one set of results. The results
name the snapshot (commit, local edits, a hash of ``poller/``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from . import report
from ._common import (
    CODE_ROOT,
    QUICK_RESULTS_DIR,
    README,
    RESULTS_DIR,
    ROOT,
    SNAPSHOT_ENV,
    SOURCE_ENV,
    log,
    machine,
    source_state,
    write_result,
)

# Known benchmarks run in this order; others (found later) after them, by name.
ORDER = ("throughput", "memory", "decode", "latency")
_NOT_BENCHMARKS = frozenset({"report", "chart"})


def discover(strict: bool = False) -> dict[str, ModuleType]:
    """Every benchmark module of the package, by ``NAME``. A module that fails to import
    is reported and skipped (it may be someone's work in progress), unless ``strict``."""
    found: dict[str, ModuleType] = {}
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if info.name.startswith("_") or info.name in _NOT_BENCHMARKS:
            continue
        try:
            module = importlib.import_module(f"{__package__}.{info.name}")
        except Exception:
            if strict:
                raise
            log(f"skipping benchmarks.{info.name}: it does not import")
            traceback.print_exc()
            continue
        name = getattr(module, "NAME", None)
        if isinstance(name, str) and callable(getattr(module, "run", None)):
            found[name] = module
    ordered = [n for n in ORDER if n in found] + sorted(n for n in found if n not in ORDER)
    return {name: found[name] for name in ordered}


def run_one(module: ModuleType, quick: bool) -> dict[str, Any]:
    """Run one benchmark and add the facts every result carries."""
    started = time.perf_counter()
    source = source_state()
    result = module.run(quick)
    if not isinstance(result, dict):
        raise TypeError(f"{module.__name__}.run() returned {type(result).__name__}, not dict")
    facts = result.get("machine") or machine()
    if facts.get("source") != source:
        # Others may commit or edit the engine while a benchmark runs: say so.
        facts["source"] = {"at_start": source, "at_end": facts.get("source"), "changed": True}
    return {
        "name": module.NAME,
        "quick": quick,
        **result,
        "elapsed_s": round(time.perf_counter() - started, 1),
        "machine": facts,
    }


def _in_snapshot(argv: list[str]) -> int:
    """Copy the code to a temporary directory and run ``python -m benchmarks`` there."""
    source = source_state()
    with tempfile.TemporaryDirectory(prefix="poller-bench-src-") as tmp:
        ignore = shutil.ignore_patterns("__pycache__", "results")
        for package in ("poller", "benchmarks"):
            shutil.copytree(CODE_ROOT / package, Path(tmp) / package, ignore=ignore)
        log(
            f"measuring a snapshot of commit {source['commit']}"
            + (" with local edits" if source["poller_modified"] else "")
            + f" (poller/ sha256 {source['poller_sha256']})"
        )
        env = {
            **os.environ,
            SNAPSHOT_ENV: str(ROOT),
            SOURCE_ENV: json.dumps(source),
            "PYTHONPATH": tmp,
        }
        return subprocess.call([sys.executable, "-m", "benchmarks", *argv], cwd=tmp, env=env)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--results-dir", type=Path, help="where to write the JSON results")
    parser.add_argument(
        "--no-readme", action="store_true", help="do not regenerate the README section"
    )
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument(
        "--no-snapshot", action="store_true", help="run the checkout's code in place"
    )
    args = parser.parse_args(argv)
    if not (args.no_snapshot or args.list or os.environ.get(SNAPSHOT_ENV)):
        return _in_snapshot(argv)

    benchmarks = discover(strict=bool(args.names))
    if args.list:
        print("\n".join(benchmarks))
        return 0
    unknown = [n for n in args.names if n not in benchmarks]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(benchmarks)}")
    names = args.names or list(benchmarks)
    results_dir: Path = args.results_dir or (QUICK_RESULTS_DIR if args.quick else RESULTS_DIR)

    failed = []
    for name in names:
        log(f"{name}: running{' (quick)' if args.quick else ''}")
        try:
            result = run_one(benchmarks[name], args.quick)
        except Exception:
            traceback.print_exc()
            log(f"{name}: FAILED")
            failed.append(name)
            continue
        path = write_result(result, results_dir)
        for line in report.goal_lines(result):
            log(f"{name}: {line}")
        log(f"{name}: {result['elapsed_s']} s, wrote {path}")

    if args.quick or args.no_readme:
        section = report.write_section(results_dir)
        log(f"report (README untouched): {section}")
    else:
        changed = report.update_readme(README, results_dir)
        log(f"README results section {'regenerated' if changed else 'unchanged'}")
    if failed:
        log(f"failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
