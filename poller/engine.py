"""The engine: one scheduler, one connection pool, every tracked job.

:class:`Poller` is the thin asynchronous shell around the pure
:class:`~poller.sched.core.Scheduler`. It owns one transport (one aiohttp session)
and one task group holding a fixed set of tasks, however many jobs are tracked:

- ``max_connections`` workers. A worker asks the core for the next due job,
  fetches its status, reports the outcome, and delivers the resulting events;
  it asks again straight away, so under load no hand-off is needed.
- one dispatcher, which sleeps until the core's next wake-up (one loop timer
  in all) and hands due jobs to idle workers.
- a few callback lanes (see ``poller._callbacks``).

Time: the core works in Unix seconds from ``clock`` (``time.time`` by default),
so ``expires_at`` and ``observed_at`` compare directly.
"""

from __future__ import annotations

import logging
import os
import random
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Final, Literal, Unpack, overload

import anyio

from ._boundary import detached
from ._callbacks import CallbackHandle, CallbackRunner, EventCallback, TransitionCallback
from ._driver import Driver, FetchStatus, Settle
from ._ids import validate_job_id
from ._recorder import Recorder
from ._waiting import wait_for_jobs
from .auth import Credential
from .coordination import Coordinator, EngineLink
from .errors import (
    ConfigError,
    JobsFailedError,
    PollerClosedError,
    PollerError,
    RateLimitedError,
    RequestError,
    UntrackedError,
)
from .events import Stats
from .models import Job, JobStatus, Status
from .options import PollerOptions, PollerSettings, with_settings
from .sched.core import Scheduler
from .sched.learn import LearnedDurations
from .sched.queue import TrackedJob
from .sched.ratelimit import AdaptiveBudget, Budget, RateLimit, TokenBucket
from .subscription import Subscription
from .transport import AiohttpTransport, Transport

__all__ = ["Poller", "PollerArgs"]

log = logging.getLogger("poller")

_CLOSED: Final = "the Poller is closed"
_CALLBACK_DRAIN_S: Final = 5.0


class PollerArgs(PollerSettings, total=False):
    """The keyword arguments of :class:`Poller` (and of ``BlockingPoller``, which passes
    them on): its settings, and the five that are no settings."""

    options: PollerOptions | None
    access_token: str | None
    transport: Transport | None
    clock: Callable[[], float]
    coordinator: Coordinator | None


class Poller:
    """Tracks Retab jobs and reports their lifecycle transitions.

    Use it as an async context manager; every method but :meth:`stats` needs it open::

        async with Poller(api_key="rt_live_...") as p:
            p.track("job_123")
            job = await p.wait("job_123", timeout_s=600)

    Args:
        api_key: the default API key; None reads ``RETAB_API_KEY``. Jobs may also carry
            their own key (``track(..., api_key=...)``), in which case no default is needed.
        base_url: API root; None reads ``RETAB_API_BASE_URL``, else ``https://api.retab.com``.
        options: the engine's settings (:class:`~poller.PollerOptions`); default: its
            defaults.
        access_token: sent as the ``access_token`` query parameter with the default key.
        transport: a custom :class:`~poller.transport.Transport` (tests, simulators);
            ``base_url``, ``max_connections`` and TLS settings are then unused.
        clock: Unix-time source.
        coordinator: shares each organisation's budget and the learned durations with
            other engines (``poller.redis.RedisCoordinator``); None: this engine alone.
        **settings: any field of :class:`~poller.PollerOptions` (``max_connections=8``,
            ``backoff=...``, ...), in place of the one in ``options``.

    Raises:
        ConfigError: an invalid setting; the message names it.
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        options: PollerOptions | None = None,
        access_token: str | None = None,
        transport: Transport | None = None,
        clock: Callable[[], float] = time.time,
        coordinator: Coordinator | None = None,
        **settings: Unpack[PollerSettings],
    ) -> None:
        self._options = options = with_settings(options, settings)
        self._default_credential: Credential | None = None
        if api_key is not None or access_token is not None or os.environ.get("RETAB_API_KEY"):
            self._default_credential = Credential(
                api_key, scheme=options.auth_scheme, access_token=access_token
            )
        global_budget = None
        if options.max_rate_per_s is not None:
            global_budget = TokenBucket.from_limit(RateLimit(per_s=options.max_rate_per_s))
        self._base_url = base_url  # resolved below, when the engine makes its transport
        if transport is None:
            # Validate now, not at __aenter__, so a typo fails where it was made.
            self._base_url = AiohttpTransport.check_settings(
                base_url,
                options.max_connections,
                options.request_timeout_s,
                options.insecure_skip_tls_verify,
            )
        self._given_transport = transport
        self._transport: Transport | None = None
        self._clock = clock
        self._core: Scheduler[Credential] = Scheduler(
            backoff=options.backoff,
            budget_for=self._budget_for,
            weight_for=self._weight_for,
            global_budget=global_budget,
            rng=random.Random(options.seed),
            first_poll_rate_per_s=options.first_poll_rate_per_s,
            terminal_retention_s=options.terminal_retention_s,
            learned=options.learned_durations,
            on_forget_org=coordinator.forget if coordinator is not None else lambda org_id: None,
        )
        self._callbacks = CallbackRunner(
            lanes=options.callback_concurrency, lane_capacity=options.callback_queue_size
        )
        # Weak: a key's Credential lives as long as jobs use it, then the entry goes.
        self._credentials: weakref.WeakValueDictionary[str, Credential] = (
            weakref.WeakValueDictionary()
        )
        self._waiters: dict[str, list[Settle]] = {}
        self._subscriptions: list[Subscription] = []
        self._driver: Driver | None = None
        self._stack: AsyncExitStack | None = None
        self._open = False
        self._metrics = Recorder()
        self._coordinator = coordinator

    @property
    def options(self) -> PollerOptions:
        """The settings this engine runs with."""
        return self._options

    # -- lifecycle ---------------------------------------------------------------

    async def __aenter__(self) -> Poller:
        if self._stack is not None:
            raise RuntimeError("a Poller can be entered only once")
        stack = AsyncExitStack()
        self._stack = stack
        try:
            if self._coordinator is not None:
                # Before anything starts: a coordinator another engine holds fails here.
                stack.enter_context(self._coordinator.claim())
            fetch_status: FetchStatus
            if self._given_transport is None:
                own = AiohttpTransport(
                    self._base_url,
                    max_connections=self._options.max_connections,
                    request_timeout_s=self._options.request_timeout_s,
                    insecure_skip_tls_verify=self._options.insecure_skip_tls_verify,
                )
                # Every ID was checked when its job was tracked: the engine's own transport
                # is spared checking it again on every poll. A given transport gets the
                # Transport method, whose JobId it may trust as well.
                self._transport, fetch_status = own, own.get_checked_status
            else:
                self._transport = self._given_transport
                fetch_status = self._given_transport.get_status
            stack.push_async_callback(self._transport.aclose)
            stack.callback(self._finalize)
            task_group = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(task_group.cancel_scope.cancel)
            stack.push_async_callback(self._drain_callbacks)
            self._callbacks.start(task_group)
            self._driver = driver = Driver(
                core=self._core,
                fetch_status=fetch_status,
                clock=self._clock,
                metrics=self._metrics,
                callbacks=self._callbacks,
                waiters=self._waiters,
                subscriptions=self._subscriptions,
            )
            task_group.start_soon(driver.dispatch, name="poller-dispatcher")
            for _ in range(self._options.max_connections):
                task_group.start_soon(driver.work, name="poller-worker")
            if self._coordinator is not None:
                link = EngineLink(self._clock, self._core.learned, self._core.load_learned)
                task_group.start_soon(self._coordinator.run, link, name="poller-coordinator")
        except BaseException:
            await stack.aclose()
            raise
        self._open = True
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self._open = False
        assert self._stack is not None
        # The body's own exception is not handed to the task group (which would wrap it
        # in an ExceptionGroup): shut down cleanly, then let it propagate unchanged.
        await self._stack.aclose()

    def _finalize(self) -> None:
        """Release everyone still waiting: the engine is gone."""
        self._open = False
        waiters = dict(self._waiters)
        self._waiters.clear()  # shared with the driver: emptied in place
        for settles in waiters.values():
            for settle in settles:
                settle(PollerClosedError(_CLOSED))
        for subscription in list(self._subscriptions):
            subscription.end()
        self._subscriptions.clear()

    async def _drain_callbacks(self) -> None:
        # Give queued async callbacks a bounded chance to run before the lanes stop.
        with anyio.move_on_after(_CALLBACK_DRAIN_S):
            await self._callbacks.drain()

    def _check_open(self) -> None:
        if not self._open:
            raise PollerClosedError(_CLOSED)

    # -- tracking ----------------------------------------------------------------

    def track(
        self,
        job_id: str,
        *,
        api_key: str | None = None,
        last_status: Status | str | None = None,
        last_seq: int = 0,
    ) -> None:
        """Start tracking a job; idempotent and non-blocking.

        Args:
            job_id: the job.
            api_key: this job's API key, when it differs from the default (multi-tenant
                workers); sent with the engine's ``auth_scheme``.
            last_status, last_seq: resume a job tracked before, by an earlier process: the
                status and ``seq`` of the last transition delivered for it. Seeing that
                status again is then no transition, and ``seq`` carries on from there.

        Raises:
            InvalidJobIdError: the ID is empty, too long or unsafe.
            ConfigError: no ``api_key`` here and no default key, or a bad ``last_seq``.
            PollerClosedError: the engine is not open.
        """
        if isinstance(last_seq, bool) or not isinstance(last_seq, int) or last_seq < 0:
            raise ConfigError("last_seq: must be an integer >= 0")
        status = Status(last_status) if last_status is not None else None
        self._track(job_id, api_key, status, last_seq)

    def _track(
        self,
        job_id: str,
        api_key: str | None,
        last_status: Status | None = None,
        last_seq: int = 0,
    ) -> TrackedJob[Credential]:
        self._check_open()
        job_id = validate_job_id(job_id)
        job = self._core.get(job_id)
        if job is not None:  # tracked already, perhaps with another key: leave it be
            return job
        job = self._core.track(
            job_id,
            self._credential(api_key),
            self._clock(),
            last_status=last_status,
            last_seq=last_seq,
        )
        driver = self._driver
        assert driver is not None  # set while open
        driver.deliver()
        driver.poke_if_due_before(driver.sleep_until)
        return job

    def untrack(self, job_id: str) -> bool:
        """Stop tracking a job. Returns False if it was not tracked. Pending ``wait`` calls
        for it raise :class:`~poller.errors.UntrackedError`."""
        job = self._core.untrack(job_id, self._clock())
        if job is None:
            return False
        if self._driver is not None:
            error = UntrackedError(f"job {job_id!r} was untracked while being waited for")
            self._driver.settle(job_id, error)
        return True

    def status(self, job_id: str) -> Status | None:
        """The last status seen for a tracked job; None if it was not seen yet or is not
        tracked."""
        job = self._core.get(job_id)
        return job.status if job is not None else None

    async def wait(
        self, job_id: str, *, timeout_s: float | None = None, api_key: str | None = None
    ) -> JobStatus:
        """Wait for a job to reach a terminal status, tracking it if needed.

        Returns:
            the job's payload in its terminal status.

        Raises:
            TimeoutError: ``timeout_s`` passed first (the job stays tracked).
            JobNotFoundError, AuthenticationError, PermissionDeniedError,
            TrackingExpiredError, RequestError: tracking of the job ended in that error.
            PollerClosedError: the engine closed meanwhile.
        """
        results = await self._wait_many([job_id], timeout_s, api_key)
        outcome = results[job_id]
        if isinstance(outcome, PollerError):
            raise outcome
        return outcome

    async def wait_all(
        self,
        job_ids: Iterable[str],
        *,
        timeout_s: float | None = None,
        api_key: str | None = None,
    ) -> dict[str, JobStatus]:
        """Wait until every job is terminal (tracking those not tracked yet).

        Returns:
            ``{job_id: terminal payload}``, in the order of ``job_ids`` (repeats once).

        Raises:
            TimeoutError: ``timeout_s`` passed before all were settled.
            JobsFailedError: some jobs ended in an error; it carries both the results and
                the errors, and is raised only once every job is settled.
            PollerClosedError: the engine closed meanwhile.
        """
        wanted = list(dict.fromkeys(job_ids))
        settled = await self._wait_many(wanted, timeout_s, api_key)
        results = {job_id: settled[job_id] for job_id in wanted}  # as asked, not as finished
        errors = {k: v for k, v in results.items() if isinstance(v, PollerError)}
        statuses = {k: v for k, v in results.items() if not isinstance(v, PollerError)}
        if errors:
            raise JobsFailedError(statuses, errors)
        return statuses

    async def _wait_many(
        self, job_ids: list[str], timeout_s: float | None, api_key: str | None
    ) -> dict[str, JobStatus | PollerError]:
        jobs = [self._track(job_id, api_key) for job_id in job_ids]
        return await wait_for_jobs(jobs, self._waiters, timeout_s, self._clock)

    # -- events ------------------------------------------------------------------

    @asynccontextmanager
    async def subscribe(
        self,
        *,
        statuses: Iterable[Status | str] | None = None,
        job_ids: Iterable[str] | None = None,
        include_failures: bool = True,
        max_buffer: int | None = None,
    ) -> AsyncIterator[Subscription]:
        """Receive transitions (and tracking failures) as they happen.

        Args:
            statuses: only transitions *to* these statuses; None for all.
            job_ids: only these jobs; None for all.
            include_failures: also yield :class:`~poller.events.TrackingFailure` events.
            max_buffer: events buffered for this subscriber before it overflows
                (default: the engine's ``subscriber_buffer``). See
                :mod:`poller.subscription` for the overflow policy.

        Yields:
            a :class:`~poller.subscription.Subscription` to iterate with ``async for``.
        """
        self._check_open()
        subscription = Subscription(
            max_buffer=max_buffer if max_buffer is not None else self._options.subscriber_buffer,
            statuses=statuses,
            job_ids=job_ids,
            include_failures=include_failures,
            on_close=self._unsubscribe,
        )
        self._subscriptions.append(subscription)
        try:
            yield subscription
        finally:
            await subscription.aclose()

    def _unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)

    @overload
    def on_transition(
        self,
        callback: TransitionCallback,
        *,
        statuses: Iterable[Status | str] | None = None,
        include_failures: Literal[False] = False,
    ) -> CallbackHandle: ...

    @overload
    def on_transition(
        self,
        callback: EventCallback,
        *,
        statuses: Iterable[Status | str] | None = None,
        include_failures: Literal[True],
    ) -> CallbackHandle: ...

    def on_transition(
        self,
        callback: TransitionCallback | EventCallback,
        *,
        statuses: Iterable[Status | str] | None = None,
        include_failures: bool = False,
    ) -> CallbackHandle:
        """Call ``callback(transition)`` for every transition (to ``statuses`` only, if given).

        Sync callbacks run inline and should be quick; async ones run concurrently, in order
        per job. A callback that raises is logged and counted. With ``include_failures``
        the callback also gets a :class:`~poller.events.TrackingFailure` whenever tracking of
        a job ends in an error (a sync callback sees every event, it cannot overflow).
        Returns a handle whose ``remove()`` unregisters it.

        A callback gets the events delivered after it is registered: register it before
        tracking the jobs it is for (it may be registered before the engine is entered).
        """
        return self._callbacks.add(callback, statuses, include_failures)

    # -- one-off requests --------------------------------------------------------

    async def fetch(
        self,
        job_id: str,
        *,
        include_request: bool = False,
        include_response: bool = True,
        api_key: str | None = None,
    ) -> Job:
        """Fetch the full job (``GET /v1/jobs/{job_id}``) over the same pool and budget.

        Raises:
            RequestError: the request failed (see :mod:`poller.errors`).
        """
        self._check_open()
        job_id = validate_job_id(job_id)
        credential = self._credential(api_key)
        while True:  # the budget is a rate, not a queue: ask again after the wait it names
            wait_s = self._core.budget_wait(credential, self._clock())
            if wait_s <= 0.0:
                break
            await anyio.sleep(wait_s)
        assert self._transport is not None
        try:
            return await self._transport.get_job(
                job_id,
                credential,
                include_request=include_request,
                include_response=include_response,
            )
        except RequestError as exc:
            if isinstance(exc, RateLimitedError):
                self._core.throttled(credential, exc.retry_after_s, self._clock())
            raise detached(exc)  # noqa: B904 - the same error, without its frames

    # -- introspection -------------------------------------------------------------

    def stats(self) -> Stats:
        """A snapshot of the counters (see :class:`~poller.events.Stats`)."""
        core = self._core
        now = self._clock()
        return Stats(
            tracked=len(core),
            by_status=core.counts(),
            in_flight=core.in_flight,
            polls=self._metrics.polls,
            errors=self._metrics.errors,
            rate_limited=self._metrics.rate_limited,
            transitions=core.transitions,
            failures=core.failures,
            callback_errors=self._callbacks.errors,
            callbacks_dropped=self._callbacks.dropped,
            subscribers=len(self._subscriptions),
            subscriber_overflows=self._metrics.overflows,
            errors_by_kind=dict(self._metrics.errors_by_kind),
            by_org=self._metrics.by_org(
                self._core.org_rate, lambda org_id: core.org_health(org_id, now)
            ),
            request_latency=self._metrics.latency.snapshot(),
            detection_lag=self._metrics.lag.snapshot(),
            api=core.api_health(now),
        )

    def learned_durations(self) -> LearnedDurations | None:
        """What the engine has learned about how long jobs stay in each status, to save
        and give to a later one (``Poller(learned_durations=...)``); None when
        ``backoff.learn`` is off. Works open or closed. Save it with msgspec::

            data = msgspec.json.encode(p.learned_durations())
            learned = msgspec.json.decode(data, type=poller.LearnedDurations)
        """
        return self._core.learned()

    def __repr__(self) -> str:
        state = "open" if self._open else "closed"
        return f"<Poller {state} tracked={len(self._core)} in_flight={self._core.in_flight}>"

    # -- internals -----------------------------------------------------------------

    def _credential(self, api_key: str | None) -> Credential:
        if api_key is None:
            if self._default_credential is None:
                raise ConfigError(
                    "api_key: no default API key (pass api_key to Poller or to this call, "
                    "or set RETAB_API_KEY)"
                )
            return self._default_credential
        credential = self._credentials.get(api_key)
        if credential is None:
            credential = Credential(api_key, scheme=self._options.auth_scheme)
            self._credentials[api_key] = credential
        return credential

    def _limit_for(self, org_id: str | None) -> RateLimit | None:
        default = self._options.rate_limit
        if org_id is None:
            return default
        return self._options.org_rate_limits.get(org_id, default)

    def _budget_for(self, org_id: str | None) -> Budget:
        if self._coordinator is not None and org_id is not None:
            return self._coordinator.budget(org_id, self._limit_for(org_id))
        return AdaptiveBudget(self._limit_for(org_id))

    def _weight_for(self, org_id: str | None) -> float:
        limit = self._limit_for(org_id)
        return limit.weight if limit is not None else 1.0
