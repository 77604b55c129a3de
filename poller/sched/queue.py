"""Tracked jobs, buckets and the fair queue: which job, of which organisation, is polled next.

A :class:`TrackedJob` is what the scheduler knows of one tracked job; its ``phase`` says
where it is (waiting in a bucket, in flight, done, removed). A *bucket* holds the
jobs that share one rate budget (an organisation, or a key whose organisation is not
known yet).

**Within a bucket: the most likely change first.** Each waiting job piles up
expected detection lag ``G`` from its last poll on (see ``poller.sched.learn``): the
lag that polling it now would remove. A job becomes *due* when ``G`` reaches the
threshold ``theta`` (``Backoff.request_cost_s``). While the budget keeps up,
every job is polled as it becomes due. When it does not, due jobs wait, and the
next request goes to the job with the most lag piled up, not the one that has
waited longest: jobs sit on levels ``k = 0, 1, ...`` (the level a job is on is
the number of thresholds ``theta * 4**k`` it has passed), each level a heap keyed
by when the job reaches the next threshold, and the highest level is served
first. Moving a job up a level costs one heap operation, and a job climbs at most
``LEVELS`` levels between two polls, so a poll costs O(LEVELS log n).

**Between buckets: fair shares.** The :class:`FairQueue` keeps buckets that have
nothing due in a heap keyed by when they will; buckets with something due take
turns by *start-time fair queueing*: each has a virtual time that advances by
``1 / weight`` per request sent, the smallest goes first, and a bucket that was
idle re-enters at the current virtual time, so it gets its share from then on but
banks nothing for the time it did not need. Under a global cap
(``max_rate_per_s``, or every connection busy) busy organisations share by weight
and none can starve another; an idle one's share goes to the rest.

**Outages.** A bucket whose API scope is down (``poller.sched.health``) has a *gate*:
its breaker, asked before its budget, lets one probe out at a time, then ramps the
rate back up. Its due jobs wait meanwhile, ordered by the lag they pile up.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from typing import Any, Final, Generic, Protocol, TypeVar

from ..errors import PollerError
from ..models import JobId, JobStatus, Status
from .health import Health
from .learn import Row
from .ratelimit import Budget, TokenBucket

__all__ = [
    "DONE",
    "IN_FLIGHT",
    "LEVELS",
    "LEVEL_GROWTH",
    "REMOVED",
    "SCHEDULED",
    "Bucket",
    "Crossing",
    "FairQueue",
    "Principal",
    "TrackedJob",
]

LEVELS: Final = 10
LEVEL_GROWTH: Final = 4.0  # each level's threshold is this many times the one below
_COMPACT_MIN_STALE: Final = 1024
_BINDING_S: Final = 2.0  # a budget that refused this recently is the limit

# Phases of a tracked job.
SCHEDULED: Final = 0
"""Waiting in its bucket's heaps."""
IN_FLIGHT: Final = 1
"""Its request is out (in no heap)."""
DONE: Final = 2
"""Terminal, or its tracking failed: kept for ``terminal_retention_s``, never polled."""
REMOVED: Final = 3
"""Untracked: out of the table (an entry left in a heap is stale)."""


class Principal(Protocol):
    """What the core needs of the credential a job is polled with (the engine's
    :class:`poller.auth.Credential` is one): equal, and hashing alike, for the same key,
    so that a key's jobs share what is known of it; and a fingerprint that names it
    without the secret."""

    @property
    def fingerprint(self) -> str:
        """A short, non-reversible name of the key."""
        ...

    def __hash__(self) -> int: ...

    def __eq__(self, other: object) -> bool: ...


C = TypeVar("C", bound=Principal)


class TrackedJob(Generic[C]):
    """One tracked job: what the scheduler knows of it. Opaque to users.

    Kept small on purpose (slots, small ints, shared status members): the engine
    holds one per tracked job, and the goal is well under 600 bytes each.
    """

    __slots__ = (
        "base_s",
        "bucket",
        "credential",
        "errors",
        "final",
        "job_id",
        "phase",
        "polled_at",
        "row",
        "seen_at",
        "seq",
        "status",
        "unchanged",
    )

    def __init__(self, job_id: JobId, credential: C, bucket: Bucket) -> None:
        self.job_id = job_id
        self.credential = credential
        self.bucket = bucket
        self.phase = SCHEDULED
        # How its lag piles up since polled_at: along a learned table row, else as if the
        # hazard were steady with first step base_s, else (never seen) one second a second.
        self.polled_at = 0.0
        self.row: Row | None = None
        self.base_s = 0.0
        self.status: Status | None = None
        # When it was first seen validating, if seen from its creation; else 0.0.
        self.seen_at = 0.0
        self.seq = 0
        self.unchanged = 0
        self.errors = 0
        self.final: JobStatus | PollerError | None = None

    def __lt__(self, other: TrackedJob[Any]) -> bool:
        # Only consulted when two jobs are due at the same instant: keep it deterministic.
        return self.job_id < other.job_id

    @property
    def done(self) -> bool:
        """True once the job reached a terminal status or its tracking failed."""
        return self.phase == DONE

    def __repr__(self) -> str:
        return f"<TrackedJob {self.job_id!r} status={self.status} phase={self.phase}>"


Crossing = Callable[[TrackedJob[Any], int], float]
"""When a job's piled-up lag reaches level ``k``'s threshold (``k >= 1``)."""

_Entry = tuple[float, TrackedJob[Any]]


class Bucket:
    """The jobs sharing one budget, and that budget."""

    __slots__ = (
        "budget",
        "climbed",
        "emptied_at",
        "gate",
        "health",
        "in_fair",
        "key",
        "levels",
        "members",
        "org_id",
        "refused_at",
        "stale",
        "vtime",
        "waiting_at",
        "weight",
    )

    def __init__(self, key: str, org_id: str | None, budget: Budget, weight: float = 1.0) -> None:
        self.key = key
        self.org_id = org_id
        self.budget = budget
        self.weight = weight
        self.levels: list[list[_Entry]] = [[] for _ in range(LEVELS)]
        self.stale = 0
        # Entries above level 0, stale ones included: while 0, the live top of level 0 is
        # the next job (the fair queue's fast path reads it).
        self.climbed = 0
        self.refused_at = -math.inf  # when the budget last said "not yet"
        self.vtime = 0.0
        self.waiting_at: float | None = None
        self.in_fair = False
        self.members = 0  # jobs in the scheduler's table that belong here
        self.emptied_at: float | None = None  # when members was first seen at 0
        self.health = Health(org_id or key.replace("key:", "key ", 1))
        # The health while its breaker is not closed (down or recovering), else None:
        # the one check the hot path makes.
        self.gate: Health | None = None

    def __repr__(self) -> str:
        return f"<Bucket {self.key} jobs={len(self)}>"

    def join(self) -> None:
        """A job of the scheduler's table now belongs here."""
        self.members += 1
        self.emptied_at = None

    def __len__(self) -> int:
        return sum(len(level) for level in self.levels) - self.stale

    def _top(self, level: int) -> _Entry | None:
        heap = self.levels[level]
        while heap:
            if heap[0][1].phase == SCHEDULED:
                return heap[0]
            heapq.heappop(heap)
            self.stale -= 1
        return None

    def next_due(self) -> float | None:
        """When the first job becomes due: -inf if one already climbed, None if empty."""
        if self.climbed:
            for level in range(LEVELS - 1, 0, -1):
                if self._top(level) is not None:
                    return -math.inf
            self.climbed = 0  # only stale entries were left up there
        top = self._top(0)
        return top[0] if top is not None else None

    def climb(self, now: float, crossing: Crossing) -> None:
        """Move every job whose lag passed a threshold by ``now`` up to its level."""
        levels = self.levels
        for level in range(LEVELS - 1):
            heap = levels[level]
            while heap and heap[0][0] <= now:
                _, job = heapq.heappop(heap)
                if job.phase != SCHEDULED:
                    self.stale -= 1
                    continue
                heapq.heappush(levels[level + 1], (crossing(job, level + 1), job))
                self.climbed += level == 0

    def pop_best(self, now: float) -> TrackedJob[Any] | None:
        """Remove and return the due job with the most lag piled up: the top of the highest
        level climbed (see :meth:`climb`), else the earliest due; None when none is due."""
        if self.climbed:
            for level in range(LEVELS - 1, 0, -1):
                if self._top(level) is not None:
                    self.climbed -= 1
                    return heapq.heappop(self.levels[level])[1]
        top = self._top(0)
        if top is None or top[0] > now:
            return None
        return heapq.heappop(self.levels[0])[1]

    def drain(self) -> list[_Entry]:
        """Remove and return every live entry with the time it is (or was) due (the bucket
        is being merged into another)."""
        live = [entry for entry in self.levels[0] if entry[1].phase == SCHEDULED]
        live += [
            (job.polled_at, job)
            for level in self.levels[1:]
            for _, job in level
            if job.phase == SCHEDULED
        ]
        self.levels = [[] for _ in range(LEVELS)]
        self.stale = 0
        self.climbed = 0
        return live

    def forget_one(self) -> None:
        """A scheduled job left the table: its entry is stale now."""
        self.stale += 1
        if self.stale > _COMPACT_MIN_STALE and self.stale * 2 > len(self) + self.stale:
            self.levels = [
                [entry for entry in level if entry[1].phase == SCHEDULED] for level in self.levels
            ]
            for level in self.levels:
                heapq.heapify(level)
            self.stale = 0
            self.climbed = sum(len(level) for level in self.levels[1:])


class FairQueue:
    """Picks the bucket that sends next (see the module docstring).

    Args:
        crossing: when a job reaches a level's threshold.
        global_budget: a cap on the total rate of every bucket together, or None.
    """

    def __init__(self, crossing: Crossing, global_budget: TokenBucket | None = None) -> None:
        self._crossing = crossing
        self._global = global_budget
        self._global_until = -math.inf
        self._waiting: list[tuple[float, int, Bucket]] = []
        self._fair: list[tuple[float, int, Bucket]] = []
        self._vclock = 0.0
        self._serial = 0
        # The whole API's breaker while it is not closed (down or recovering), else None:
        # asked before any bucket's (see poller.sched.health).
        self.gate: Health | None = None

    def _wait(self, bucket: Bucket, at: float) -> None:
        if bucket.waiting_at is not None and bucket.waiting_at <= at:
            return  # already due to be looked at sooner; it re-files itself then
        bucket.waiting_at = at
        self._serial += 1
        heapq.heappush(self._waiting, (at, self._serial, bucket))

    def _enter_fair(self, bucket: Bucket) -> None:
        if bucket.in_fair:
            return
        bucket.in_fair = True
        bucket.vtime = max(bucket.vtime, self._vclock)
        self._serial += 1
        heapq.heappush(self._fair, (bucket.vtime, self._serial, bucket))

    def _leave_fair(self, bucket: Bucket, wait_until: float | None) -> None:
        heapq.heappop(self._fair)  # the bucket is at the top: only the top ever leaves
        bucket.in_fair = False
        if wait_until is not None:
            self._wait(bucket, wait_until)

    def poke_all(self, at: float) -> None:
        """Look at every bucket with due work again at ``at`` (the whole API's breaker may
        let a request go sooner than it said)."""
        self._global_until = min(self._global_until, at)

    def poke(self, bucket: Bucket, at: float) -> None:
        """Look at ``bucket`` again at ``at`` (its budget may allow a request sooner than it
        said: a probe's answer came back)."""
        if not bucket.in_fair and bucket.next_due() is not None:
            self._wait(bucket, at)

    def push(self, bucket: Bucket, job: TrackedJob[Any], due: float) -> None:
        """File ``job`` in ``bucket`` and make sure the bucket is looked at in time."""
        heapq.heappush(bucket.levels[0], (due, job))  # on level 0: it climbs from there
        if not bucket.in_fair:
            waiting_at = bucket.waiting_at
            if waiting_at is None or due < waiting_at:
                self._wait(bucket, due)

    def take(self, now: float) -> TrackedJob[Any] | None:
        """Pop the next job to send now, its budgets charged; None if none may go now."""
        waiting = self._waiting
        while waiting and waiting[0][0] <= now:
            at, _, bucket = heapq.heappop(waiting)
            if bucket.waiting_at == at:
                bucket.waiting_at = None
                self._enter_fair(bucket)
        if self._global is not None and self._fair:
            wait = self._global.peek(now)
            if wait > 0.0:
                self._global_until = max(now + wait, math.nextafter(now, math.inf))
                return None
        api = self.gate
        if api is not None and self._fair:
            wait = api.wait_s(now)
            if wait > 0.0:
                self._global_until = max(now + wait, math.nextafter(now, math.inf))
                return None
            if api.closed:  # the whole API's ramp after an outage is over
                self.gate = api = None
        fair = self._fair
        while fair:
            vtime, _, bucket = fair[0]
            if now - bucket.refused_at <= _BINDING_S:
                # The budget is the limit: order due jobs by the lag they piled up. While it
                # is not, every due job goes at once, and earliest due first is as good.
                bucket.climb(now, self._crossing)
            # Nothing climbed and a live top: that top is next_due()'s answer, read here
            # without the call (this runs on every poll); else ask next_due().
            levels0 = bucket.levels[0]
            if not bucket.climbed and levels0 and levels0[0][1].phase == SCHEDULED:
                due: float | None = levels0[0][0]
            else:
                due = bucket.next_due()
            if due is None or due > now:
                self._leave_fair(bucket, due)
                continue
            gate = bucket.gate
            if gate is not None:
                wait = gate.wait_s(now)
                if wait > 0.0:
                    bucket.refused_at = now
                    self._leave_fair(bucket, max(now + wait, math.nextafter(now, math.inf)))
                    continue
                if gate.closed:  # the ramp after an outage is over
                    bucket.gate = gate = None
            wait = bucket.budget.try_acquire(now)
            if wait > 0.0:
                bucket.refused_at = now
                # A wait too small to move a Unix timestamp must still move it, or this
                # bucket would be met again at the same instant forever.
                self._leave_fair(bucket, max(now + wait, math.nextafter(now, math.inf)))
                continue
            if self._global is not None:
                self._global.try_acquire(now)
            if bucket.climbed:
                popped = bucket.pop_best(now)
                assert popped is not None
                job = popped
            else:  # nothing climbed: the live top of level 0, due, is pop_best()'s answer
                job = heapq.heappop(levels0)[1]
            if gate is not None:
                gate.sent(job)
            if api is not None:
                api.sent(job)
            self._vclock = vtime
            bucket.vtime = vtime + 1.0 / bucket.weight
            if not bucket.climbed and levels0 and levels0[0][1].phase == SCHEDULED:  # as above
                following: float | None = levels0[0][0]
            else:
                following = bucket.next_due()
            if following is not None and following <= now:
                self._serial += 1
                heapq.heapreplace(fair, (bucket.vtime, self._serial, bucket))
            else:
                # Keep the fair heap to buckets with work due, so next_wakeup can trust it.
                self._leave_fair(bucket, following)
            return job
        return None

    def next_wakeup(self, now: float) -> float | None:
        """When :meth:`take` may next return a job; None: not until something is pushed."""
        if self._fair:
            return self._global_until if self._global_until > now else now
        waiting = self._waiting
        while waiting and waiting[0][2].waiting_at != waiting[0][0]:
            heapq.heappop(waiting)
        return waiting[0][0] if waiting else None
