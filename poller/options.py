"""The engine's settings in one value: :class:`PollerOptions`.

One frozen struct that checks itself, as :class:`~poller.Backoff` and
:class:`~poller.RateLimit` do, shared by every way of making an engine:
``Poller(options=...)`` and ``BlockingPoller(options=...)``, their keyword arguments
(each a field of it), and the daemon's settings (``poller run``, ``poller watch``).

Secrets are not settings: the API key and the ``access_token`` stay arguments of the
engine, so that options can be shown, logged, compared and saved without ever
carrying a key (their ``repr`` holds none).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypedDict

import msgspec

from ._checks import check_bool, check_int, check_number, check_type
from .auth import AuthScheme
from .errors import ConfigError
from .sched.backoff import Backoff
from .sched.learn import LearnedDurations
from .sched.ratelimit import RateLimit

__all__ = ["PollerOptions", "PollerSettings", "with_settings"]


class PollerOptions(msgspec.Struct, frozen=True, kw_only=True):
    """Every setting of an engine but its key and base URL (see the README's
    configuration table). Checked when made: a bad value raises
    :class:`~poller.errors.ConfigError` naming the setting.

    Attributes:
        max_connections: size of the connection pool, and the number of requests in
            flight at most.
        request_timeout_s: limit on one request, connect to last byte.
        auth_scheme: ``"api-key"`` (``Api-Key`` header, the default) or ``"bearer"``;
            held as an :class:`~poller.AuthScheme`.
        backoff: polling intervals (:class:`~poller.Backoff`; None: the default).
        rate_limit: default budget of every organisation; None: uncapped until the
            server answers 429. Either way 429s pause the organisation for the
            ``Retry-After`` and lower its rate to what the server accepts, which then
            regrows (never past the configured rate).
        org_rate_limits: budgets of particular organisations, by organisation ID.
        max_rate_per_s: a cap on all requests together, shared by organisations by
            weight; None: no cap.
        first_poll_rate_per_s: newly tracked jobs get their first polls paced at this
            rate so a burst does not go out at once; None: no pacing.
        terminal_retention_s: how long a finished job is remembered, so that ``wait``
            answers without a request.
        subscriber_buffer: default buffer of each subscription.
        callback_concurrency: async callbacks running at once at most.
        callback_queue_size: async callback invocations queued per lane at most.
        insecure_skip_tls_verify: disable TLS certificate checks (warned; never in
            production).
        seed: seed of the jitter; set it for reproducible schedules.
        learned_durations: what an earlier engine learned about how long jobs stay in
            each status (``Poller.learned_durations()``), to poll well from the first
            job. Needs ``backoff.learn``.
    """

    max_connections: int = 64
    request_timeout_s: float = 10.0
    auth_scheme: str = AuthScheme.API_KEY
    backoff: Backoff = msgspec.field(default_factory=Backoff)
    rate_limit: RateLimit | None = None
    org_rate_limits: dict[str, RateLimit] = msgspec.field(default_factory=dict)
    max_rate_per_s: float | None = None
    first_poll_rate_per_s: float | None = 1000.0
    terminal_retention_s: float = 3600.0
    subscriber_buffer: int = 10_000
    callback_concurrency: int = 16
    callback_queue_size: int = 10_000
    insecure_skip_tls_verify: bool = False
    seed: int | None = None
    learned_durations: LearnedDurations | None = None

    def __post_init__(self) -> None:
        for name in (
            "max_connections",
            "subscriber_buffer",
            "callback_concurrency",
            "callback_queue_size",
        ):
            check_int(name, getattr(self, name))
        check_number("request_timeout_s", self.request_timeout_s, above=0)
        check_number("max_rate_per_s", self.max_rate_per_s, above=0, optional=True)
        check_number(
            "first_poll_rate_per_s",
            self.first_poll_rate_per_s,
            above=0,
            finite=False,
            optional=True,
        )
        check_number("terminal_retention_s", self.terminal_retention_s, at_least=0, finite=False)
        check_bool("insecure_skip_tls_verify", self.insecure_skip_tls_verify)
        try:
            scheme = AuthScheme(self.auth_scheme)
        except ValueError:
            raise ConfigError("auth_scheme: must be 'api-key' or 'bearer'") from None
        msgspec.structs.force_setattr(self, "auth_scheme", scheme)
        if self.backoff is None:  # as a keyword argument, None means the default
            msgspec.structs.force_setattr(self, "backoff", Backoff())
        check_type("backoff", self.backoff, Backoff, "a poller.Backoff", optional=False)
        check_type("rate_limit", self.rate_limit, RateLimit, "a poller.RateLimit")
        limits = self.org_rate_limits if self.org_rate_limits is not None else {}
        if not isinstance(limits, Mapping):
            raise ConfigError("org_rate_limits: must be a mapping of org_id to RateLimit")
        for org_id, limit in limits.items():
            name = f"org_rate_limits[{org_id!r}]"
            check_type(name, limit, RateLimit, "a RateLimit", optional=False)
        msgspec.structs.force_setattr(self, "org_rate_limits", dict(limits))  # a copy of its own
        if isinstance(self.seed, bool) or not isinstance(self.seed, int | None):
            raise ConfigError("seed: must be an integer or None")
        check_type(
            "learned_durations",
            self.learned_durations,
            LearnedDurations,
            "a poller.LearnedDurations (from learned_durations())",
        )


class PollerSettings(TypedDict, total=False):
    """The fields of :class:`PollerOptions`, as keyword arguments of ``Poller`` and
    ``BlockingPoller`` (each may be given alone; None for ``backoff`` and
    ``org_rate_limits`` means the default)."""

    max_connections: int
    request_timeout_s: float
    auth_scheme: AuthScheme | str
    backoff: Backoff | None
    rate_limit: RateLimit | None
    org_rate_limits: Mapping[str, RateLimit] | None
    max_rate_per_s: float | None
    first_poll_rate_per_s: float | None
    terminal_retention_s: float
    subscriber_buffer: int
    callback_concurrency: int
    callback_queue_size: int
    insecure_skip_tls_verify: bool
    seed: int | None
    learned_durations: LearnedDurations | None


def with_settings(options: PollerOptions | None, settings: PollerSettings) -> PollerOptions:
    """``options`` (default: ``PollerOptions()``) with the settings given as keywords in
    its place, checked.

    Raises:
        ConfigError: a bad value, naming the setting.
        TypeError: a keyword that is no setting.
    """
    if options is not None and not isinstance(options, PollerOptions):
        raise ConfigError("options: must be a poller.PollerOptions or None")
    base = options if options is not None else PollerOptions()
    return msgspec.structs.replace(base, **settings) if settings else base
