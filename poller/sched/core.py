"""The scheduling core: every tracked job, when each is due, and what a response means.

Pure and synchronous, in the manner of h11: no I/O, no sleeping, no event loop.
Time is an argument (Unix seconds, so ``expires_at`` compares directly); the
driver asks :meth:`Scheduler.next_due` for work, reports each outcome with
:meth:`Scheduler.on_success` / :meth:`Scheduler.on_failure`, sleeps until
:meth:`Scheduler.next_wakeup`, and drains the events with :meth:`Scheduler.take_events`.

Structure. Jobs are grouped in buckets, one per rate budget, and a fair queue
picks the bucket that sends next (``poller.sched.queue``). Taking the next poll is
O(log buckets + log jobs). A job sits in at most one heap at a time (none while
its request is in flight); untracking leaves a stale entry that is skipped when
met and compacted away when stale entries outnumber live ones.

Intervals. After a response the next poll is placed where the expected detection
lag piled up since the poll reaches ``Backoff.request_cost_s``: by the learned
duration model (``poller.sched.learn``) when it knows the job's kind, else by the
geometric backoff. When a budget cannot keep up, due jobs wait and the one with
the most lag piled up goes first (``poller.sched.queue``).
"""

from __future__ import annotations

import contextlib
import random
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from typing import Final, Generic

from ..errors import (
    AuthenticationError,
    ConfigError,
    JobNotFoundError,
    PermissionDeniedError,
    PollerError,
    RateLimitedError,
    RequestError,
    TrackingExpiredError,
)
from ..events import Event, HealthStats, TrackingFailure, Transition
from ..models import TERMINAL, JobId, JobStatus, Status
from .backoff import Backoff
from .health import Health, HealthState, Notice
from .learn import DurationModel, LearnedDurations, solve_step, steady_hazard_step, tail_step
from .queue import (
    DONE,
    IN_FLIGHT,
    LEVEL_GROWTH,
    REMOVED,
    SCHEDULED,
    Bucket,
    C,
    FairQueue,
    TrackedJob,
)
from .ratelimit import Budget, ProbeBudget, TokenBucket

__all__ = ["ERROR", "ORG_IDLE_S", "PENDING", "BudgetFactory", "Scheduler"]

# A job never seen has its creation and, typically, three more changes ahead of it
# (queued, in progress, a terminal status), so its unseen lag piles up about three
# times as fast as a job's with one change pending. Under a scarce budget this is
# what lets first polls go before re-polls of long-running jobs, but not all first.
_NEW_JOB_WEIGHT: Final = 3.0
# A refused key (401/403) fails new jobs at once for this long; then it is tried again,
# since permissions can be granted and keys re-enabled while a daemon runs.
_REFUSAL_S: Final = 300.0
# An organisation with no job in the table for this long is forgotten: its queue and
# budget (a rate learned from 429s starts over if it comes back). A worker serving
# many organisations over weeks must not keep them all.
ORG_IDLE_S: Final = 3600.0
_SWEEP_S: Final = 300.0  # how often refusals and idle organisations are looked at
_HEALTH_CHECK_S: Final = 1.0  # how often every scope's state is looked at, for notices
# The whole API is down when every organisation that sent requests in the last window
# is down (tripped by its own faults): then it gates them all, one probe at a time.
# A job first seen validating less than this after its created_at (whole seconds) was
# seen from its creation, near enough to time its validating phase by our own polls.
_FRESH_S: Final = 1.0
PENDING: Final = "pending"
"""``by_status`` key of jobs not seen yet."""
ERROR: Final = "error"
"""``by_status`` key of jobs whose tracking ended in an error."""

BudgetFactory = Callable[[str | None], Budget]
"""Makes the budget of an organisation (its ID), or of a key not resolved yet (None)."""


class Scheduler(Generic[C]):
    """Per-job state and due times for every tracked job.

    Args:
        backoff: the interval policy.
        budget_for: makes each bucket's rate budget.
        weight_for: an organisation's share when buckets compete (1 by default).
        global_budget: a cap on the total request rate, or None.
        rng: randomness for jitter (seed it for reproducible runs).
        first_poll_rate_per_s: newly tracked jobs get their first polls paced at this
            rate, so a burst of thousands does not go out in lockstep; None: no pacing.
        terminal_retention_s: how long a finished job stays in the table (so ``wait``
            answers without a request) before it is forgotten.
        expiry_grace_s: a job still not terminal this long after its ``expires_at``
            stops being tracked with :class:`TrackingExpiredError`.
        learned: durations learned by an earlier engine (:meth:`learned`), to start from.
        on_forget_org: called with an organisation's ID when it is forgotten (no job of
            it for ``ORG_IDLE_S``), so that whoever made its budget can drop it too.
    """

    def __init__(
        self,
        *,
        backoff: Backoff,
        budget_for: BudgetFactory,
        rng: random.Random,
        weight_for: Callable[[str | None], float] = lambda org_id: 1.0,
        global_budget: TokenBucket | None = None,
        first_poll_rate_per_s: float | None = 1000.0,
        terminal_retention_s: float = 3600.0,
        expiry_grace_s: float = 60.0,
        learned: LearnedDurations | None = None,
        on_forget_org: Callable[[str], None] = lambda org_id: None,
    ) -> None:
        self._backoff = backoff
        self._on_forget_org = on_forget_org
        self._budget_for = budget_for
        self._weight_for = weight_for
        self._rng = rng
        self._model = DurationModel() if backoff.learn else None
        if learned is not None:
            if self._model is None:
                raise ConfigError("learned_durations: given, but backoff.learn is False")
            self._model.load(learned)
        self._queue = FairQueue(self._crossing, global_budget)
        self._intake_gap_s = 1.0 / first_poll_rate_per_s if first_poll_rate_per_s else 0.0
        self._intake_cursor = 0.0
        self._retention_s = terminal_retention_s
        self._expiry_grace_s = expiry_grace_s
        self._jobs: dict[str, TrackedJob[C]] = {}
        self._buckets: dict[str, Bucket] = {}
        self._key_orgs: dict[C, str] = {}
        self._refused: dict[C, tuple[PollerError, float]] = {}
        self._users: dict[C, int] = {}  # jobs in the table, per credential
        self._retired: deque[tuple[float, TrackedJob[C]]] = deque()
        self._next_sweep = 0.0
        self._api = Health("api", breaker=False)
        # Buckets whose health may have something to report (a fault, a throttle, a
        # state): the only ones the once-a-second check looks at.
        self._troubled: set[Bucket] = set()
        self._next_check = 0.0
        self.new_notices: list[Notice] = []  # drained by take_notices
        # Drained by take_events / take_finished; the driver may test them for emptiness.
        self.new_events: list[Event] = []
        self.new_finished: list[TrackedJob[C]] = []
        self._counts: dict[str, int] = {}
        self._flying: set[TrackedJob[C]] = set()
        self.transitions = 0
        self.failures = 0

    # -- queries -----------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._jobs

    def get(self, job_id: str) -> TrackedJob[C] | None:
        """The tracked job, or None."""
        return self._jobs.get(job_id)

    def jobs(self) -> Iterator[TrackedJob[C]]:
        """Every job in the table."""
        return iter(self._jobs.values())

    @property
    def in_flight(self) -> int:
        """Requests under way."""
        return len(self._flying)

    def counts(self) -> dict[str, int]:
        """Tracked jobs by last seen status value (``pending``: not seen, ``error``: failed)."""
        return {k: v for k, v in self._counts.items() if v}

    def org_rate(self, org_id: str) -> float | None:
        """The current rate of an organisation's budget (None: uncapped or unknown)."""
        bucket = self._buckets.get(f"org:{org_id}")
        return bucket.budget.rate_per_s if bucket is not None else None

    def org_health(self, org_id: str, now: float) -> HealthStats | None:
        """How an organisation's requests fare (None: not known)."""
        bucket = self._buckets.get(f"org:{org_id}")
        return bucket.health.stats(now) if bucket is not None else None

    def api_health(self, now: float) -> HealthStats:
        """How every request together fares (the base URL)."""
        return self._api.stats(now)

    def take_notices(self) -> list[Notice]:
        """Changes of health worth telling a person, since the last call, in order."""
        notices, self.new_notices = self.new_notices, []
        return notices

    def learned(self) -> LearnedDurations | None:
        """What has been learned about job durations (None: ``Backoff.learn`` is off)."""
        return self._model.snapshot() if self._model is not None else None

    def load_learned(self, learned: LearnedDurations) -> None:
        """Replace what is known of the kinds in ``learned`` by it (a fleet's merged
        tables); a no-op when ``Backoff.learn`` is off. Raises ``ConfigError`` as
        :meth:`DurationModel.load` does."""
        if self._model is not None:
            self._model.load(learned)

    def take_events(self) -> list[Event]:
        """The events produced since the last call, in order."""
        events, self.new_events = self.new_events, []
        return events

    def has_finished(self) -> bool:
        """Whether :meth:`take_finished` has anything (cheap: the hot path asks each poll)."""
        return bool(self.new_finished)

    def take_finished(self) -> list[TrackedJob[C]]:
        """The jobs that finished (terminal, or tracking failed) since the last call. Not
        every finish is an event: a job resumed in a terminal status finishes silently."""
        finished, self.new_finished = self.new_finished, []
        return finished

    def next_wakeup(self, now: float) -> float | None:
        """When :meth:`next_due` may next return a job, or housekeeping is due; None: never."""
        first = self._queue.next_wakeup(now)
        if self._retired and (first is None or self._retired[0][0] < first):
            return self._retired[0][0]
        return first

    # -- tracking ----------------------------------------------------------------

    def track(
        self,
        job_id: JobId,
        credential: C,
        now: float,
        *,
        last_status: Status | None = None,
        last_seq: int = 0,
    ) -> TrackedJob[C]:
        """Start tracking ``job_id`` (checked by the caller: a :data:`~poller.JobId`); idempotent.

        A job already in the table is returned as is, whatever its state. A job whose
        credential was refused before ends at once with a :class:`TrackingFailure`.
        ``last_status`` and ``last_seq`` resume a job tracked before (by an earlier
        process): seeing that status again is then no transition, and ``seq`` goes on.
        """
        job = self._jobs.get(job_id)
        if job is not None:
            return job
        job = TrackedJob(job_id, credential, self._bucket_for(credential, None))
        job.bucket.join()
        job.status, job.seq = last_status, last_seq
        self._jobs[job_id] = job
        self._users[credential] = self._users.get(credential, 0) + 1
        self._count(last_status.value if last_status is not None else PENDING, 1)
        refused = self._refused.get(credential)
        if refused is not None:
            if now < refused[1]:
                self._fail(job, refused[0], now)
                return job
            del self._refused[credential]  # long enough: the key may have been fixed
        due = now
        if self._intake_gap_s:
            due = max(now, self._intake_cursor)
            self._intake_cursor = due + self._intake_gap_s
        job.polled_at = due
        self._push(job, due)
        return job

    def untrack(self, job_id: str, now: float | None = None) -> TrackedJob[C] | None:
        """Stop tracking ``job_id``; returns the removed job, or None if it was not tracked.
        A request in flight for it completes, and its result is ignored. ``now``, when
        given, lets a key's probe state be kept while it matters."""
        job = self._jobs.pop(job_id, None)
        if job is None:
            return None
        self._count(self._count_key(job), -1)
        job.bucket.members -= 1
        self._release(job.credential, now)
        was_scheduled = job.phase == SCHEDULED
        if job.phase == IN_FLIGHT:
            self._release_probe(job)
        job.phase = REMOVED
        if was_scheduled:
            job.bucket.forget_one()
        return job

    # -- the poll cycle ----------------------------------------------------------

    def next_due(self, now: float) -> TrackedJob[C] | None:
        """The next job to poll now, with its budget already charged; None if nothing is
        due (or every due job's budget is spent). The job is in flight until its outcome
        is reported."""
        if (self._retired and self._retired[0][0] <= now) or now >= self._next_sweep:
            self._retire(now)
        if now >= self._next_check:
            self._check_health(now)
        job = self._queue.take(now)
        if job is not None:
            job.phase = IN_FLIGHT
            self._flying.add(job)
        return job

    def on_success(self, job: TrackedJob[C], payload: JobStatus, now: float) -> None:
        """Record a status payload for a job returned by :meth:`next_due`."""
        # Landed: a job untracked, refused or abandoned meanwhile has left IN_FLIGHT
        # (while in flight, a job is in _flying exactly when its phase is IN_FLIGHT).
        self._flying.discard(job)
        if job.phase != IN_FLIGHT:
            return
        job.errors = 0
        bucket = job.bucket
        bucket.budget.on_accepted(now)
        bucket.health.answered(now)
        self._api.answered(now)
        if bucket.gate is not None or self._queue.gate is not None:
            self._landed_gated(job, bucket, now, answered=True)
        if bucket.org_id is None:
            self._learn_org(job, payload.organization_id, now)
        current = payload.status
        if current != job.status:
            previous = job.status
            job.seq += 1
            job.status = current
            job.unchanged = 0
            self._count(previous.value if previous is not None else PENDING, -1)
            self._count(current.value, 1)
            self.transitions += 1
            if self._model is not None:
                # Learning is best effort: an absurd timestamp teaches nothing, and must
                # not stop tracking.
                with contextlib.suppress(ArithmeticError):
                    self._model.observe(payload, previous)
                    if previous is Status.VALIDATING and job.seen_at:
                        # It changed after the last poll (which showed validating).
                        self._model.observe_validating(
                            payload.organization_id,
                            payload.endpoint.value,
                            job.polled_at - job.seen_at,
                            now - job.seen_at,
                        )
            fresh = previous is None and now - payload.created_at < _FRESH_S
            job.seen_at = now if current is Status.VALIDATING and fresh else 0.0
            self.new_events.append(
                Transition(
                    job_id=job.job_id,
                    organization_id=payload.organization_id,
                    previous=previous,
                    current=current,
                    job=payload,
                    observed_at=now,
                    seq=job.seq,
                )
            )
        else:
            job.unchanged += 1
        if current in TERMINAL:
            self._finish(job, payload, now)
        elif now >= payload.expires_at + self._expiry_grace_s:
            error = TrackingExpiredError(
                f"job {job.job_id!r} is still {current.value!r} after its expires_at",
                job_id=job.job_id,
            )
            self._fail(job, error, now)
        else:
            due = self._next_poll(job, payload, now)
            if due > payload.expires_at >= now:
                # Look once just after expiry: the server then reports "expired".
                due = payload.expires_at + self._backoff.min_interval_s
            job.phase = SCHEDULED
            self._queue.push(job.bucket, job, due)

    def on_failure(self, job: TrackedJob[C], error: RequestError, now: float) -> None:
        """Record a failed request for a job returned by :meth:`next_due`.

        A 429 is a rate signal: the organisation pauses and slows down. A fault (5xx,
        transport error, garbage body) is the request's own: the job retries it after
        its backoff (never before a ``Retry-After``), unless 503s track load or the
        organisation is down (``poller.sched.health``)."""
        self._flying.discard(job)  # landed, as in on_success
        if job.phase != IN_FLIGHT:
            return
        bucket = job.bucket
        health = bucket.health
        status = error.status
        throttled = isinstance(error, RateLimitedError)
        if status is not None and not throttled:
            bucket.budget.on_accepted(now)  # answered, so it counted at the server
        budget = bucket.budget
        if isinstance(budget, ProbeBudget) and not throttled:
            budget.settled(now)  # the probe is over, answered or not: the next may go
            self._queue.poke(bucket, now)
        # Some failures are neither a fault nor an answer (a refused TLS certificate, a
        # request not sent): no sign of the API's health either way; they count against
        # their job like any error.
        fault = error.api_fault
        answered = not fault and status is not None
        if fault:
            kind, text = type(error).__name__, str(error)
            self._api.fault(now, kind, status, text, job)
            self._troubled.add(bucket)
            if health.fault(now, kind, status, text, job):
                bucket.gate = health
                self._health_changed(bucket, now)
                self._check_api_down(now)
        elif answered:
            health.answered(now)
            self._api.answered(now)
        if bucket.gate is not None or self._queue.gate is not None:
            self._landed_gated(job, bucket, now, answered=answered)
        if isinstance(error, AuthenticationError | PermissionDeniedError):
            self._refuse(job.credential, error, now)
            return
        if isinstance(error, JobNotFoundError):
            self._fail(job, error, now)
            return
        load = status == 503 and health.load_signal(now)
        if throttled or load:
            # The server speaks for the whole organisation: pause its budget, not just
            # this job, and count it against no job.
            if load:
                health.load_cut(now)
            else:
                health.throttled(now)
            self._troubled.add(bucket)
            pause_s = self.throttled(bucket, getattr(error, "retry_after_s", None), now)
            self._retry_at(job, now, max(pause_s, self._backoff.min_interval_s))
            return
        if fault and not (health.closed and self._api.closed):
            if HealthState.DOWN in (health.state, self._api.state):
                # An outage: the job waits behind the probes, its error count starts
                # over (a long outage must not end the tracking of every job), and it
                # goes to the back of the line so that probes go to each job in turn.
                job.errors = 0
                self._retry_at(job, now, 0.0)
                return
            # Recovering: a fault counts against no job until that job is answered again.
            self._retry_at(job, now, self._backoff.error_delay_s(1, None, self._rng))
            return
        job.errors += 1
        limit = self._backoff.max_consecutive_errors
        # Only while its organisation answered others since this job's first error: if
        # every request of it failed meanwhile, there is no sign that the job, rather than
        # the API, is at fault: hold on, backing off further.
        if limit is not None and job.errors >= limit and health.streak < job.errors:
            self._fail(job, error, now)
            return
        retry_after_s = getattr(error, "retry_after_s", None)
        if retry_after_s is not None:
            # One request's Retry-After: honoured, within reason.
            retry_after_s = min(retry_after_s, self._backoff.error_max_s)
        self._retry_at(job, now, self._backoff.error_delay_s(job.errors, retry_after_s, self._rng))

    def abandon(self, job: TrackedJob[C], error: PollerError, now: float) -> None:
        """End tracking of ``job`` with ``error`` whatever state it is in: the driver's last
        resort when recording an outcome failed (a bug must cost one job, not the engine)."""
        self._flying.discard(job)
        if self._jobs.get(job.job_id) is not job or job.phase == DONE:
            return
        self._end(job, error, now)

    def budget_wait(self, credential: C, now: float) -> float:
        """Charge one request to ``credential``'s budget outside the poll cycle (a full-job
        fetch). Returns 0.0 when charged, else the seconds to wait before asking again."""
        return self._bucket_for(credential, None).budget.try_acquire(now)

    def throttled(self, where: C | Bucket, retry_after_s: float | None, now: float) -> float:
        """The server asked a credential's (or bucket's) organisation to slow down: pause its
        budget. Returns the pause in seconds."""
        bucket = where if isinstance(where, Bucket) else self._bucket_for(where, None)
        return bucket.budget.on_throttled(now, retry_after_s)

    # -- internals ---------------------------------------------------------------

    def _landed_gated(
        self, job: TrackedJob[C], bucket: Bucket, now: float, *, answered: bool
    ) -> None:
        """An outcome while a breaker is not closed (the bucket's, or the whole API's):
        the probe ended, or the scope came back."""
        health = bucket.health
        was_down = health.state is HealthState.DOWN
        if health.landed(job, now, answered):
            self._queue.poke(bucket, now)
        if was_down and health.state is not HealthState.DOWN:
            self._health_changed(bucket, now)
        api = self._api
        if api.state is HealthState.DOWN and api.landed(job, now, answered):
            self._queue.poke_all(now)
            if api.state is not HealthState.DOWN:
                self._api_answers(now)
        elif self._queue.gate is not None and api.closed:
            self._queue.gate = None

    def _release_probe(self, job: TrackedJob[C]) -> None:
        """``job``'s request will never land (it was untracked or ended in flight): if it
        was a probe, the next may go."""
        bucket = job.bucket
        if bucket.gate is not None and bucket.gate.release(job):
            self._queue.poke(bucket, bucket.gate.next_probe_at)
        if self._queue.gate is not None and self._queue.gate.release(job):
            self._queue.poke_all(self._queue.gate.next_probe_at)

    def _api_answers(self, now: float) -> None:
        """An answer while the whole API was down: it is back (at its steady rate, then
        catching up), and every organisation down with it probes now rather than at its
        own next probe; their own notices start afresh."""
        self._note(self._api, now)
        for bucket in self._buckets.values():
            bucket.health.sync_reported(now)
            if bucket.gate is not None:
                bucket.gate.probe_now(now)
                self._queue.poke(bucket, now)

    def _check_api_down(self, now: float) -> None:
        """A bucket tripped: if every organisation still polling is down, so is the API:
        one probe at a time for all of them."""
        api = self._api
        if api.state is HealthState.DOWN:
            return
        # Polling: jobs waiting to be polled, or requests that ended lately. A quiet
        # organisation still polling (every 30 s, say) keeps the API up: its next answer
        # tells whether the API is down, and until then one organisation's outage is its own.
        polling = [b for b in self._buckets.values() if len(b) or b.health.active(now)]
        if polling and all(b.health.state is HealthState.DOWN for b in polling):
            api.trip(now)
            self._queue.gate = api
            self._note(api, now)

    def _health_changed(self, bucket: Bucket, now: float) -> None:
        """A bucket's breaker tripped or closed: tell, unless the whole API is down (then
        the API's own notice says it all, and the bucket's waits for the API's return)."""
        self._troubled.add(bucket)
        if self._api.state is not HealthState.DOWN:
            self._note(bucket.health, now)

    def _note(self, health: Health, now: float) -> None:
        notice = health.notice(now)
        if notice is not None:
            self.new_notices.append(notice)

    def _check_health(self, now: float) -> None:
        """Look at the state of every scope with something to report: notices of degraded,
        throttled and their end; an API down with no job left is forgotten."""
        self._next_check = now + _HEALTH_CHECK_S
        api = self._api
        if api.state is not HealthState.OK and not any(b.members for b in self._buckets.values()):
            api.reset(now)
            self._queue.gate = None
        api_down = api.state is HealthState.DOWN
        for bucket in list(self._troubled):
            if self._buckets.get(bucket.key) is not bucket:
                self._troubled.discard(bucket)  # merged or forgotten
            elif not api_down:
                self._note(bucket.health, now)
                if bucket.health.quiet(now):
                    self._troubled.discard(bucket)

    def _push(self, job: TrackedJob[C], due: float) -> None:
        job.phase = SCHEDULED
        self._queue.push(job.bucket, job, due)

    def _next_poll(self, job: TrackedJob[C], payload: JobStatus, now: float) -> float:
        """When to poll next a job whose status did not end tracking (level 0), and how its
        lag piles up meanwhile (for the higher levels)."""
        backoff = self._backoff
        job.polled_at = now
        job.row = None
        status = payload.status
        # How long it has been in its status, as its own timestamps tell (validating: as
        # our polls since it was first seen tell).
        if status is Status.IN_PROGRESS and payload.started_at is not None:
            age: float | None = now - payload.started_at
        elif status is Status.QUEUED:
            age = now - payload.created_at
        elif status is Status.VALIDATING and job.seen_at:
            age = now - job.seen_at
        else:
            age = None
        if age is not None and age < 0.0:  # clocks disagree: the job just started
            age = 0.0
        model = self._model
        learned = model.row_at_age(payload, age) if model is not None and age is not None else None
        theta = backoff.request_cost_s
        if isinstance(learned, array):
            job.row = learned
            step = solve_step(learned, theta)
        elif learned == "tail":
            step = job.base_s = tail_step(age or 0.0, theta)
        else:
            step = job.base_s = backoff.interval_s(status, job.unchanged, self._rng, age)
        if learned is not None:
            step *= 1.0 + backoff.jitter * (2.0 * self._rng.random() - 1.0)
        if step < backoff.min_interval_s:
            step = backoff.min_interval_s
        elif step > backoff.max_interval_s:
            step = backoff.max_interval_s
        return now + step

    def _retry_at(self, job: TrackedJob[C], now: float, delay_s: float) -> None:
        """Retry a failed request after ``delay_s``; while it waits, it gains priority as
        slowly as a job with a steady hazard."""
        bucket = job.bucket
        if bucket.org_id is None and self._buckets.get(bucket.key) is not bucket:
            # Its key's bucket merged into the organisation's while this request was out
            # (a job that succeeds moves in _learn_org): join it, or the organisation
            # would have a second queue, and once its bucket is forgotten, two budgets.
            self._move(job, self._bucket_for(job.credential, None))
        job.polled_at, job.row, job.base_s = now, None, delay_s
        # No status seen at this poll: the validating phase can no longer be timed.
        job.seen_at = 0.0
        self._push(job, now + delay_s)

    def _crossing(self, job: TrackedJob[C], level: int) -> float:
        """When ``job``'s piled-up lag reaches the threshold of ``level`` (>= 1)."""
        theta = self._backoff.request_cost_s * LEVEL_GROWTH**level
        if job.row is not None:
            return job.polled_at + solve_step(job.row, theta)
        if job.base_s:
            return job.polled_at + steady_hazard_step(
                job.base_s, self._backoff.request_cost_s, theta
            )
        return job.polled_at + theta / _NEW_JOB_WEIGHT

    def _bucket_for(self, credential: C, org_id: str | None) -> Bucket:
        org_id = org_id or self._key_orgs.get(credential)
        key = f"org:{org_id}" if org_id is not None else f"key:{credential.fingerprint}"
        bucket = self._buckets.get(key)
        if bucket is None:
            budget = self._budget_for(org_id)
            if org_id is None:
                # Whose limit applies is only known from the first answer: probe first.
                budget = ProbeBudget(budget)
            bucket = Bucket(key, org_id, budget, self._weight_for(org_id))
            self._buckets[key] = bucket
        return bucket

    def _learn_org(self, job: TrackedJob[C], org_id: str, now: float) -> None:
        """The first answer for a key names its organisation. The key's bucket merges into
        the organisation's: one budget, and one queue, so the key's first polls and the
        organisation's re-polls go in due order instead of taking turns."""
        key_bucket = job.bucket
        self._key_orgs.setdefault(job.credential, org_id)
        known = f"org:{org_id}" in self._buckets
        org_bucket = self._bucket_for(job.credential, org_id)
        org_bucket.budget.try_acquire(now)  # the probe was a request of this organisation
        probe = key_bucket.budget
        if isinstance(probe, ProbeBudget) and probe.paused_until > now:
            # A 429 the key got was its organisation's: its pause holds there too.
            org_bucket.budget.on_throttled(now, probe.paused_until - now)
        if key_bucket.gate is not None and org_bucket.gate is None:
            # The key was coming back from an outage: its jobs that waited come back as
            # slowly in the organisation's bucket, not all at once.
            if not known:
                org_bucket.health = key_bucket.health
                org_bucket.health.scope = org_id
            else:
                org_bucket.health.start_ramp(now, key_bucket.health.steady_per_s)
            org_bucket.gate = org_bucket.health
            self._troubled.add(org_bucket)
        self._move(job, org_bucket)
        if self._buckets.get(key_bucket.key) is key_bucket:
            del self._buckets[key_bucket.key]
            for due, waiting in key_bucket.drain():
                self._move(waiting, org_bucket)
                self._queue.push(org_bucket, waiting, due)
        # Jobs of the key still in flight point at the old bucket; it lends them the
        # organisation's budget until they land and move.
        key_bucket.budget = org_bucket.budget

    @staticmethod
    def _move(job: TrackedJob[C], bucket: Bucket) -> None:
        if job.phase != REMOVED:  # an untracked job in flight is no member any more
            job.bucket.members -= 1
            bucket.join()
        job.bucket = bucket

    def _finish(self, job: TrackedJob[C], final: JobStatus | PollerError, now: float) -> None:
        job.phase = DONE
        job.final = final
        self.new_finished.append(job)
        self._retired.append((now + self._retention_s, job))

    def _fail(self, job: TrackedJob[C], error: PollerError, now: float) -> None:
        self._count(self._count_key(job), -1)
        self._finish(job, error, now)
        self._count(ERROR, 1)
        self.failures += 1
        self.new_events.append(
            TrackingFailure(
                job_id=job.job_id, organization_id=job.bucket.org_id, error=error, observed_at=now
            )
        )

    def _refuse(self, credential: C, error: PollerError, now: float) -> None:
        """The server refused a credential: end every live job that uses it."""
        self._refused[credential] = (error, now + _REFUSAL_S)
        for job in list(self._jobs.values()):
            if job.credential == credential and job.phase in (SCHEDULED, IN_FLIGHT):
                self._end(job, error, now)

    def _end(self, job: TrackedJob[C], error: PollerError, now: float) -> None:
        """End a live job (waiting, or in flight: its outcome will be ignored) with
        ``error``."""
        if job.phase == SCHEDULED:
            job.phase = DONE
            job.bucket.forget_one()
        else:
            self._release_probe(job)
        self._fail(job, error, now)

    def _retire(self, now: float) -> None:
        retired = self._retired
        while retired and retired[0][0] <= now:
            _, job = retired.popleft()
            if self._jobs.get(job.job_id) is job:
                self.untrack(job.job_id, now)
        if now >= self._next_sweep:
            self._next_sweep = now + _SWEEP_S
            for credential, (_, until) in list(self._refused.items()):
                if now >= until:
                    del self._refused[credential]
            self._forget_idle_orgs(now)

    def _forget_idle_orgs(self, now: float) -> None:
        """Drop the bucket of every organisation that had no job in the table for
        ``ORG_IDLE_S``: seen empty at one sweep, no job joined since (a join clears
        ``emptied_at``), and that sweep at least that long ago."""
        for key, bucket in list(self._buckets.items()):
            if bucket.org_id is None and not bucket.members and not len(bucket):
                del self._buckets[key]  # a key's, kept while its last probe was out
                continue
            if bucket.org_id is None or bucket.members:
                bucket.emptied_at = None
            elif bucket.emptied_at is None:
                bucket.emptied_at = now
            elif now - bucket.emptied_at >= ORG_IDLE_S:
                del self._buckets[key]
                self._troubled.discard(bucket)
                self._on_forget_org(bucket.org_id)

    def _release(self, credential: C, now: float | None) -> None:
        """A job left the table: once a key has none left, forget what was kept for it
        (a worker rotating through many keys must not keep them all)."""
        users = self._users[credential] - 1
        if users:
            self._users[credential] = users
            return
        del self._users[credential]
        self._key_orgs.pop(credential, None)
        key = f"key:{credential.fingerprint}"
        bucket = self._buckets.get(key)
        # Not while its probe is out or paused by a 429: a new job of the key would probe
        # again at once (the idle sweep drops it later).
        budget = bucket.budget if bucket is not None else None
        busy = isinstance(budget, ProbeBudget) and budget.busy(now)
        if bucket is not None and not len(bucket) and not busy:
            del self._buckets[key]

    def _count_key(self, job: TrackedJob[C]) -> str:
        if isinstance(job.final, PollerError):
            return ERROR
        return job.status.value if job.status is not None else PENDING

    def _count(self, key: str, delta: int) -> None:
        self._counts[key] = self._counts.get(key, 0) + delta
