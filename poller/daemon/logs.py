"""Logging for the command line: human-readable lines or JSON lines, never a secret.

The engine logs to ``poller``, ``poller.transport`` and ``poller.callbacks``; the
daemon to ``poller.daemon.*``. :func:`configure_logging` installs one handler on the
root logger, on standard error. Whatever the format, each finished line goes through
a scrubber that replaces every configured secret with ``***``: the code never logs a
key on purpose, and this makes sure a mistake (or a third-party message) cannot either.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable
from typing import Any, Final, TextIO

import msgspec

__all__ = ["JsonFormatter", "configure_logging"]

_HANDLER_NAME: Final = "poller-cli"
_ENCODER: Final = msgspec.json.Encoder()
# Attributes every LogRecord has; anything else was passed with ``extra=`` and is kept.
_STANDARD: Final = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
_MASK: Final = "***"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message``, any ``extra=``
    fields, and ``exc`` with the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return _ENCODER.encode(entry).decode()


class _HumanFormatter(logging.Formatter):
    """``2024-05-01T12:00:00.123Z INFO  poller.daemon.run: message``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


class _Scrubbing(logging.Formatter):
    """Formats with ``inner``, then masks every secret in the finished text."""

    def __init__(self, inner: logging.Formatter, secrets: Iterable[str]) -> None:
        super().__init__()
        self._inner = inner
        # Longest first, so a secret that contains another is masked whole.
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        text = self._inner.format(record)
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, _MASK)
        return text


def configure_logging(
    *,
    fmt: str = "human",
    level: str = "info",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> logging.Handler:
    """Send every log record at ``level`` or above to ``stream`` (default: stderr).

    Args:
        fmt: ``"human"`` or ``"json"``.
        level: ``"debug"``, ``"info"``, ``"warning"`` or ``"error"``.
        secrets: strings to mask wherever they would appear.
        stream: where lines go.

    Calling it again replaces the handler it installed before. Returns the handler.
    """
    inner: logging.Formatter = JsonFormatter() if fmt == "json" else _HumanFormatter()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(_Scrubbing(inner, secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == _HANDLER_NAME:
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp's access log would add a line per control request; its errors still show.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return handler
