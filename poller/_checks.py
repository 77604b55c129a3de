"""The checks of the engine's settings, one per kind of value: each raises
:class:`~poller.errors.ConfigError` whose message starts with the setting's name.

:class:`~poller.options.PollerOptions` checks every setting with these, and
:class:`~poller.transport.AiohttpTransport` the few it takes itself with the same
ones, so that a value is accepted or refused alike wherever it is given. A ``bool`` is
no number here: ``True`` is refused where an integer or a number is wanted.
"""

from __future__ import annotations

import math

from .errors import ConfigError

__all__ = ["check_bool", "check_int", "check_number", "check_type"]


def check_int(name: str, value: object, *, low: int = 1) -> None:
    """An ``int`` (not a ``bool``) of at least ``low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name}: must be an integer >= {low}")


def check_number(
    name: str,
    value: object,
    *,
    above: float | None = None,
    at_least: float | None = None,
    finite: bool = True,
    optional: bool = False,
) -> None:
    """An ``int`` or ``float`` (not a ``bool``, not NaN) ``> above`` or ``>= at_least``;
    finite unless ``finite=False``; or None when ``optional``."""
    if value is None and optional:
        return
    ok = False
    if isinstance(value, int | float) and not isinstance(value, bool):
        nan = isinstance(value, float) and math.isnan(value)
        infinite = isinstance(value, float) and math.isinf(value)
        ok = (
            not nan
            and not (finite and infinite)
            and (above is None or value > above)
            and (at_least is None or value >= at_least)
        )
    if not ok:
        bound = f"> {above:g}" if above is not None else f">= {at_least:g}"
        kind = "a finite number" if finite else "a number"
        raise ConfigError(f"{name}: must be {kind} {bound}{' or None' if optional else ''}")


def check_bool(name: str, value: object) -> None:
    """``True`` or ``False``."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name}: must be True or False, not {type(value).__name__}")


def check_type(name: str, value: object, kind: type, what: str, *, optional: bool = True) -> None:
    """An instance of ``kind`` (``what`` names it in the message), or None when ``optional``."""
    if not (isinstance(value, kind) or (optional and value is None)):
        raise ConfigError(f"{name}: must be {what}{' or None' if optional else ''}")
