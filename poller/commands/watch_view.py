"""How ``poller watch`` shows progress: a rich live bar, plain lines, or JSON lines.

- :class:`RichView` (standard output is a terminal and ``rich`` is installed, the
  ``cli`` extra): a progress bar with counts by status, and one line per finished
  job printed above it.
- :class:`PlainView` (no terminal, or no ``rich``): one line per finished job on
  standard output, and a progress line on standard error when the counts change, at
  most every ``every_s``.
- :class:`JsonView` (``--json``): one JSON object per finished job on standard output,
  nothing else.

Every view but the JSON one also says when the API fails (``API unreachable:
ConnectError x4 since 12:03:11``), and when it answers again.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Final, Protocol, TextIO

import msgspec

from .tally import Outcome, Tally

__all__ = ["JsonView", "PlainView", "RichView", "View", "describe", "make_view"]

_ENCODER: Final = msgspec.json.Encoder()


class View(Protocol):
    """Receives the tally as it changes."""

    def start(self, tally: Tally) -> None:
        """Before the first event."""

    def update(self, tally: Tally, outcome: Outcome | None) -> None:
        """After each event; ``outcome`` when it ended a job."""

    def stop(self, tally: Tally) -> None:
        """At the end (also on errors and interruption)."""

    def trouble(self, line: str | None) -> None:
        """What is going wrong with the API (``API unreachable: ConnectError x4 since
        12:03:11``), when it changes; None once it is over."""


def describe(outcome: Outcome) -> str:
    """One human line: ``job_abc  failed  model_timeout: ...  (took 42 s)``.

    The time is the job's own duration from its timestamps when known (whole
    seconds, so under 1 s reads ``< 1 s``), else how long the watch had run.
    """
    parts = [outcome.job_id, outcome.status]
    if outcome.error is not None:
        parts.append(f"{outcome.error['code']}: {outcome.error['message']}")
    if outcome.duration_s is not None:
        took = f"{outcome.duration_s} s" if outcome.duration_s >= 1 else "< 1 s"
        parts.append(f"(took {took})")
    else:
        parts.append(f"({outcome.watched_s:.1f} s into the watch)")
    return "  ".join(parts)


def summary(tally: Tally) -> str:
    """``3/10 finished: completed 2, failed 1, in_progress 5, queued 2``."""
    counts = ", ".join(f"{status} {n}" for status, n in tally.counts().items())
    return f"{tally.finished}/{tally.total} finished: {counts}"


class JsonView:
    """One JSON line per finished job."""

    def __init__(self, out: TextIO | None = None) -> None:
        self._out = out if out is not None else sys.stdout

    def start(self, tally: Tally) -> None:
        """Nothing to show yet."""

    def update(self, tally: Tally, outcome: Outcome | None) -> None:
        """Print the outcome, if any."""
        if outcome is not None:
            self._out.write(_ENCODER.encode(outcome).decode() + "\n")
            self._out.flush()

    def stop(self, tally: Tally) -> None:
        """Nothing more."""

    def trouble(self, line: str | None) -> None:
        """Nothing: standard output is for the outcomes (the log says it, on stderr)."""


class PlainView:
    """Finished jobs on ``out``; throttled progress lines on ``err``."""

    def __init__(
        self, out: TextIO | None = None, err: TextIO | None = None, *, every_s: float = 2.0
    ) -> None:
        self._out = out if out is not None else sys.stdout
        self._err = err if err is not None else sys.stderr
        self._every_s = every_s
        self._shown_at = 0.0
        self._shown = ""

    def start(self, tally: Tally) -> None:
        """Say what is watched."""
        self._progress(tally, force=True)

    def update(self, tally: Tally, outcome: Outcome | None) -> None:
        """Print the outcome, and the progress when due."""
        if outcome is not None:
            self._out.write(describe(outcome) + "\n")
            self._out.flush()
        self._progress(tally)

    def stop(self, tally: Tally) -> None:
        """The final counts."""
        self._progress(tally, force=True)

    def trouble(self, line: str | None) -> None:
        """The trouble, or that it is over, on ``err``."""
        self._err.write((line or "the API answers again") + "\n")
        self._err.flush()

    def _progress(self, tally: Tally, *, force: bool = False) -> None:
        line = summary(tally)
        now = time.monotonic()
        if line != self._shown and (force or now - self._shown_at >= self._every_s):
            self._err.write(line + "\n")
            self._err.flush()
            self._shown, self._shown_at = line, now


class RichView:
    """A live progress bar (``rich``) with the counts by status, on ``console`` (a
    ``rich.console.Console``; default: standard output)."""

    def __init__(self, console: Any = None) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]watching"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=console,
        )
        self._task: Any = None

    def start(self, tally: Tally) -> None:
        """Show the bar."""
        self._task = self._progress.add_task(self._counts(tally), total=tally.total)
        self._progress.start()

    def update(self, tally: Tally, outcome: Outcome | None) -> None:
        """Move the bar; print the outcome above it."""
        if outcome is not None:
            style = "green" if outcome.status == "completed" else "red"
            self._progress.console.print(describe(outcome), style=style, highlight=False)
        self._progress.update(self._task, completed=tally.finished, description=self._counts(tally))

    def stop(self, tally: Tally) -> None:
        """Leave the final bar on screen."""
        self._progress.update(self._task, completed=tally.finished, description=self._counts(tally))
        self._progress.stop()

    def trouble(self, line: str | None) -> None:
        """Print the trouble above the bar."""
        if line is None:
            self._progress.console.print("the API answers again", style="green", highlight=False)
        else:
            self._progress.console.print(line, style="yellow", highlight=False)

    @staticmethod
    def _counts(tally: Tally) -> str:
        return "  ".join(f"{status} {n}" for status, n in tally.counts().items())


def make_view(*, json_lines: bool) -> View:
    """The view for this terminal: JSON lines, rich when possible, else plain lines."""
    if json_lines:
        return JsonView()
    if sys.stdout.isatty():
        try:
            return RichView()
        except ImportError:  # rich is the optional "cli" extra
            pass
    return PlainView()
