"""Regenerate the README's results section from the JSON results: no number is typed by hand.

Everything between ``<!-- results:start -->`` and ``<!-- results:end -->`` is replaced
by a rendering of every ``*.json`` file in the results directory, whoever wrote it:

- a table of every result's ``goals``, each stated with its target and whether the
  run met it;
- a section per result: the benchmarks of this package have their own rendering;
  any other result that has a ``table`` (a list of flat dicts) is rendered as a
  markdown table, with its ``summary`` and ``notes``;
- the machine and date each result was measured on.

``python -m benchmarks.report`` rewrites the README; ``--check`` only says whether it
is up to date (exit 1 if not). Charts (``throughput.png``) are redrawn alongside.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ._common import README, RESULTS_DIR

START = "<!-- results:start -->"
END = "<!-- results:end -->"
ORDER = ("throughput", "memory", "decode", "latency")
_SHOWN_PACKAGES = ("poller", "aiohttp", "msgspec", "httpx", "pydantic", "uvloop")


class MarkersMissing(ValueError):
    """The README lacks the results markers."""


def load_results(results_dir: Path) -> dict[str, dict[str, Any]]:
    """Every result in ``results_dir``, by name (known benchmarks first)."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(results_dir.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict):
            found[str(data.get("name") or path.stem)] = data
    names = [n for n in ORDER if n in found] + sorted(n for n in found if n not in ORDER)
    return {name: found[name] for name in names}


# -- formatting ------------------------------------------------------------------------


def fmt(value: Any) -> str:
    """A cell: thousands separators, about three significant digits, escaped pipes."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:  # NaN
            return "–"
        magnitude = abs(value)
        if magnitude >= 1000:
            return f"{value:,.0f}"
        if magnitude >= 100:
            return f"{value:.0f}"
        if magnitude >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}"
    if isinstance(value, list | dict):
        value = json.dumps(value, separators=(",", ":"))
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Rows of flat dicts as a markdown table; columns in order of first appearance."""
    if not rows:
        return ""
    if columns is None:
        columns = []
        for row in rows:
            columns += [key for key in row if key not in columns]
    numeric = [
        all(isinstance(row.get(c), int | float) or row.get(c) is None for row in rows)
        for c in columns
    ]
    lines = [
        "| " + " | ".join(fmt(c) for c in columns) + " |",
        "|" + "|".join("---:" if n else "---" for n in numeric) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def goal_lines(result: Mapping[str, Any]) -> list[str]:
    """Each goal of a result as one line of text (for logs)."""
    return [
        f"{'met' if g.get('met') else 'MISSED'}: {g.get('goal')} "
        f"(target {g.get('target')}, measured {g.get('measured')})"
        for g in result.get("goals") or []
        if isinstance(g, Mapping)
    ]


def _machine_line(result: Mapping[str, Any]) -> str:
    m = result.get("machine")
    if not isinstance(m, Mapping):
        return ""
    packages = m.get("packages") or {}
    versions = ", ".join(f"{p} {packages[p]}" for p in _SHOWN_PACKAGES if packages.get(p))
    cores = m.get("cores")
    parts = [
        str(m.get("date", "")).replace("T", " ").replace("+00:00", " UTC"),
        str(m.get("cpu", "")),
        f"{cores} cores" if cores else "",
        str(m.get("python", "")),
        versions,
    ]
    source = m.get("source")
    if isinstance(source, Mapping) and source.get("commit"):
        edits = source.get("poller_modified")
        digest = f", poller/ sha256 {source.get('poller_sha256')}" if edits else ""
        parts.append(f"commit {source['commit']}" + (f" + local edits{digest}" if edits else ""))
    elif isinstance(source, Mapping) and source.get("changed"):
        parts.append("the engine's code changed during the run")
    quick = " **Quick (smoke) run: not representative.**" if result.get("quick") else ""
    elapsed = f"; took {result['elapsed_s']} s" if "elapsed_s" in result else ""
    return f"<sub>Measured {' · '.join(p for p in parts if p)}{elapsed}.</sub>{quick}"


def _notes(result: Mapping[str, Any]) -> list[str]:
    notes = result.get("notes") or []
    return [f"- {note}" for note in notes if isinstance(note, str)]


# -- renderings ----------------------------------------------------------------------


def _columns(rows: Sequence[Mapping[str, Any]], wanted: Sequence[str]) -> list[str]:
    """The wanted columns the rows have; KeyError (so: the generic rendering) when most
    are missing, as in a result of an older or foreign shape."""
    present = [c for c in wanted if any(c in row for row in rows)]
    if len(present) * 2 < len(wanted):
        raise KeyError(f"columns missing: {sorted(set(wanted) - set(present))}")
    return present


def _generic(result: Mapping[str, Any], context: Mapping[str, Any]) -> list[str]:
    lines = []
    table = result.get("table")
    if isinstance(table, list) and table and all(isinstance(r, Mapping) for r in table):
        flat = [{k: v for k, v in row.items() if not isinstance(v, Mapping)} for row in table]
        lines += [markdown_table(flat), ""]
    return lines


def _throughput(result: Mapping[str, Any], context: Mapping[str, Any]) -> list[str]:
    labels = result["labels"]
    head = result["headline"]["asyncio"]
    lines = [
        f"At {result['headline_concurrency']} connections (asyncio): "
        f"{labels['engine']} **{fmt(float(head['(b) polls/s']))} polls/s**, "
        f"{fmt(head['(b)/(a) polls/s'])}x {labels['bare']} ({fmt(float(head['(a) polls/s']))}); "
        f"**{fmt(head['(b)/(c) polls/CPU-s'])}x** {labels['sdk']} in polls per CPU-second "
        f"({fmt(float(head['(b) polls/CPU-s']))} against {fmt(float(head['(c) polls/CPU-s']))}).",
        "",
    ]
    chart = context.get("charts", {}).get(result.get("name", "throughput"))
    if chart:
        lines += [f"![Polls per second against connections]({chart})", ""]
    columns = [
        "loop",
        "connections",
        "clean runs (a)/(b)",
        "(a) polls/s",
        "(b) polls/s",
        "(c) polls/s",
        "(b)/(a) polls/s",
        "(a) polls/CPU-s",
        "(b) polls/CPU-s",
        "(c) polls/CPU-s",
        "(b)/(c) polls/CPU-s",
    ]
    lines += [markdown_table(result["table"], _columns(result["table"], columns)), ""]
    return lines


def _memory(result: Mapping[str, Any], context: Mapping[str, Any]) -> list[str]:
    columns = [
        "jobs",
        "engine B/job (RSS)",
        "engine B/job (tracemalloc)",
        "engine B/job just tracked (RSS)",
        "task-per-job B/job (RSS)",
        "task-per-job B/job (tracemalloc)",
        "task-per-job / engine",
    ]
    lines = [markdown_table(result["table"], _columns(result["table"], columns)), ""]
    sites = result.get("top_allocations")
    if sites:
        lines += [
            f"Where the engine's bytes go at {fmt(result['top_allocations_jobs'])} jobs "
            "(tracemalloc, bytes per job by allocation site):",
            "",
            markdown_table(sites),
            "",
        ]
    return lines


def _decode(result: Mapping[str, Any], context: Mapping[str, Any]) -> list[str]:
    decoders = result["decoders"]
    columns = ["payload", "bytes", *[f"{d} (ns)" for d in decoders], "engine / bare msgspec"]
    return [markdown_table(result["table"], _columns(result["table"], columns)), ""]


def _latency(result: Mapping[str, Any], context: Mapping[str, Any]) -> list[str]:
    return [markdown_table(result["table"]), ""]


def _faults(result: Mapping[str, Any], context: Mapping[str, Any]) -> list[str]:
    columns = [
        "faults",
        "requests_per_job",
        "answered_per_job",
        "mean_lag_s",
        "p95_lag_s",
        "lag_vs_none",
        "lost",
        "unfinished",
    ]
    table = result["table"]
    lines = [markdown_table(table, _columns(table, columns)), ""]
    outages = [row for row in table if "first_second_requests" in row]
    if outages:
        recovery = [
            "faults",
            "down_requests_per_s",
            "steady_per_s",
            "first_second_requests",
            "paced_after_s",
            "caught_up_after_s",
        ]
        lines += ["The outages, from the first success after the API came back:", ""]
        lines += [markdown_table(outages, recovery), ""]
    discovery = result.get("discovery")
    if discovery:
        lines += ["Discovering an undisclosed 50 req/s limit with random 503s on top:", ""]
        lines += [markdown_table(discovery), ""]
    return lines


def _fleet(result: Mapping[str, Any], context: Mapping[str, Any]) -> list[str]:
    lines = _generic(result, context)
    rounds = result.get("cost_rounds")
    if rounds:
        rows = [
            {
                "round": r["round"],
                "with_polls_per_s": r["polls_per_s"]["with"],
                "without_polls_per_s": r["polls_per_s"]["without"],
                "ratio": r["ratio"],
                "redis_commands_per_poll": r["commands_per_poll"],
            }
            for r in rounds
        ]
        lines += ["(c) One engine with the coordinator and one without, side by side:", ""]
        lines += [markdown_table(rows), ""]
    return lines


RENDERERS: dict[str, Callable[[Mapping[str, Any], Mapping[str, Any]], list[str]]] = {
    "faults": _faults,
    "fleet": _fleet,
    "throughput": _throughput,
    "memory": _memory,
    "decode": _decode,
    "latency": _latency,
}


def render(
    results: Mapping[str, Mapping[str, Any]], context: Mapping[str, Any] | None = None
) -> str:
    """The README section (without the markers) for ``results``."""
    context = context or {}
    lines = [
        "_Generated by `make bench` from `benchmarks/results/*.json` "
        "(`python -m benchmarks.report`); do not edit by hand. Each figure is compared "
        "with a baseline measured in the same run, on the machine named under it._",
        "",
    ]
    goals = [
        {
            "benchmark": name,
            "goal": g.get("goal"),
            "target": g.get("target"),
            "measured": g.get("measured"),
            "met": "met" if g.get("met") else "**missed**",
        }
        for name, result in results.items()
        for g in result.get("goals") or []
        if isinstance(g, Mapping)
    ]
    if goals:
        lines += [markdown_table(goals), ""]
    if not results:
        lines += ["No results yet: run `make bench`.", ""]
    for name, result in results.items():
        title = result.get("title") or name.replace("_", " ").capitalize()
        lines += [f"### {title}", ""]
        if result.get("summary"):
            lines += [str(result["summary"]), ""]
        renderer = RENDERERS.get(name, _generic)
        try:
            body = renderer(result, context)
        except (KeyError, TypeError, IndexError, ValueError):
            body = _generic(result, context)  # an older or foreign shape: show it plainly
        lines += body
        notes = _notes(result)
        if notes:
            lines += [*notes, ""]
        machine = _machine_line(result)
        if machine:
            lines += [machine, ""]
    return "\n".join(lines).rstrip() + "\n"


def _charts(
    results: Mapping[str, Mapping[str, Any]], results_dir: Path, base: Path, draw: bool
) -> dict[str, str]:
    """Redraw the charts (if ``draw``); {result name: path relative to ``base``} of each
    chart present."""
    from . import chart

    charts = {}
    for name, result in results.items():
        filename = result.get("chart")
        if not isinstance(filename, str) or "series" not in result:
            continue
        path = results_dir / filename
        if draw:
            try:
                chart.render(dict(result), path)
            except (KeyError, TypeError, ValueError) as exc:
                print(f"chart for {name} not drawn: {exc}", file=sys.stderr)
        if path.exists():
            charts[name] = Path(os.path.relpath(path, base)).as_posix()
    return charts


def section(results_dir: Path, base: Path, draw: bool = True) -> str:
    results = load_results(results_dir)
    charts = _charts(results, results_dir, base, draw)
    return render(results, {"charts": charts})


def splice(readme_text: str, body: str) -> str:
    """Replace what lies between the markers with ``body``."""
    start = readme_text.find(START)
    end = readme_text.find(END)
    if start < 0 or end < start:
        raise MarkersMissing(f"the README needs {START} and {END}, in that order")
    return readme_text[: start + len(START)] + "\n" + body + readme_text[end:]


def update_readme(
    readme: Path = README, results_dir: Path = RESULTS_DIR, draw: bool = True
) -> bool:
    """Rewrite the README's results section; True if it changed."""
    text = readme.read_text()
    updated = splice(text, section(results_dir, readme.parent, draw))
    if updated == text:
        return False
    readme.write_text(updated)
    return True


def write_section(results_dir: Path) -> Path:
    """Write the rendering to ``results_dir/results.md`` (for quick runs)."""
    path = results_dir / "results.md"
    results_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(section(results_dir, results_dir))
    return path


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--readme", type=Path, default=README)
    parser.add_argument("--check", action="store_true", help="exit 1 if the README is stale")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.check:
        text = args.readme.read_text()
        fresh = splice(text, section(args.results_dir, args.readme.parent, draw=False))
        if fresh != text:
            print(f"{args.readme}: the results section is out of date; run make bench")
            return 1
        return 0
    changed = update_readme(args.readme, args.results_dir)
    print(f"{args.readme}: results section {'regenerated' if changed else 'unchanged'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
