"""The throughput chart: polls per second against pool size for (a), (b) and (c).

Drawn from ``throughput.json`` by ``report.py`` (like the README section, it is
derived from the results, never edited by hand). Needs matplotlib (the ``bench``
extra); without it the chart is left as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

STYLES: dict[str, dict[str, Any]] = {
    "bare": {"color": "#555555", "marker": "s"},
    "engine": {"color": "#1f77b4", "marker": "o"},
    "sdk": {"color": "#d62728", "marker": "^"},
}


def render(result: dict[str, Any], path: Path) -> bool:
    """Write the chart of a throughput result to ``path``; False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    labels: dict[str, str] = result.get("labels", {})
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    for loop, series in result["series"].items():
        for variant, points in series.items():
            if not points:
                continue
            xs = [p[0] for p in points]
            ys = [p[1] for p in points]
            style = STYLES.get(variant, {})
            label = labels.get(variant, variant)
            if loop == "asyncio":
                ax.plot(xs, ys, linestyle="-", label=label, **style)
            else:
                ax.plot(
                    xs,
                    ys,
                    linestyle="none",
                    fillstyle="none",
                    markersize=9,
                    label=f"{label}, {loop}",
                    **style,
                )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ticks = sorted({p[0] for s in result["series"].values() for pts in s.values() for p in pts})
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks])
    ax.set_xlabel("connections (requests in flight)")
    ax.set_ylabel("polls per second (log scale)")
    machine = result.get("machine", {})
    ax.set_title(
        "Status polls per second, one client core, nginx on 127.0.0.1\n"
        f"{machine.get('cpu', '')}, {machine.get('python', '')}",
        fontsize=9,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True
