"""RedisCoordinator: engines in many processes share budgets and learning through Redis.

The engine's hot path never waits on Redis: each organisation's budget is a
:class:`~poller.redis._lease.LeasedBudget`, spending tokens leased ahead of need.
This module is its background side, four loops in the engine's task group:

- **leases** (each budget at its own period: ``lease_period_s``, 100 ms, for a busy
  one, up to a second for one that polls a few times a second; sooner when a budget
  runs dry or meets a 429): for each organisation with something to say, one
  ``LEASE`` script call (all of them in one pipelined round trip) reports what the
  engine sent and had accepted and its demand, and takes slots covering the period
  and a margin of that demand, at a pace within this engine's max-min fair share (by
  demand and ``weight``) of the organisation's rate, where the paces the other
  engines reserved leave room (``poller.redis._lease``). A 429 is a ``THROTTLE``
  call: the organisation is paused and its rate cut for every engine, and the news
  is published at once;
- **events**: a pub/sub subscription that hears those 429s, so every engine drops
  its unspent slots and pauses within one round trip of the first. Its connection is
  PINGed every few heartbeats and replaced when the answer does not come (a
  half-open connection is silent, not closed), and after every outage;
- **heartbeat** (every ``heartbeat_s``): registers the engine, counts the live ones,
  and watches the namespace's epoch (a new one: Redis lost its data);
- **learning** (every ``sync_interval_s``): pushes what the engine learned about job
  durations since the last push, and loads the fleet's tables changed since it last
  read them (``poller.redis._learning``), a few dozen kinds per call, on a connection
  of its own with a longer timeout; the first sync runs at once, so a new engine
  polls with the fleet's knowledge from its first jobs. A failed sync is retried at
  the next one (with one warning): it never sends the budgets local.

**When Redis fails** (unreachable, slower than ``timeout_s``, restarted empty),
polling goes on. One failed call is a blip (the budgets spend the slots they hold);
after :data:`_FALLBACK_FAILURES` in a row, or failures for longer than leased slots
last, every budget falls back to a local share of its configured limit, the limit
divided by the live engines last counted, starting from that share of the rate the
fleet had learned, with one warning. The heartbeat keeps trying; once it answers,
the next lease round asks for the local budgets too, and when it goes through they
rejoin the shared ones, with one more line in the log (a heartbeat alone proves
nothing of the leases). The scripts carry the configuration on every call, so an
empty Redis is re-seeded by the first calls, and the learned tables by the engines
pushing what they know whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Final

import anyio
import orjson
from redis.exceptions import RedisError

from .._boundary import MAX_RETRY_AFTER_S, scrub
from .._redis_url import redact_url, url_secrets
from ..coordination import EngineLink
from ..errors import ConfigError
from ..sched.core import ORG_IDLE_S
from ..sched.ratelimit import HEADROOM, AdaptiveBudget, Budget, RateLimit
from ._client import Call, ScriptClient, check_namespace, check_url
from ._learning import PUSH_KINDS, LearnSync
from ._lease import LEASE_HORIZON_S, LeasedBudget, LeaseGrant, LeaseReport
from ._scripts import HEARTBEAT, LEARN_PUSH, LEARN_READ, LEASE, THROTTLE

__all__ = ["RedisCoordinator"]

log = logging.getLogger("poller.redis")

_MIN_GAP_S: Final = 0.01  # lease rounds never come closer than this
# The budget holds the adaptive state (what the fleet learned of an undisclosed limit):
# kept as long as an engine keeps an idle organisation's budget.
_BUDGET_TTL_S: Final = int(ORG_IDLE_S)
_ENGINES_TTL_S: Final = 60  # at least: twice the liveness window if that is longer
_CLOSE_S: Final = 0.5  # at most this long spent telling the fleet this engine leaves
_FALLBACK_FAILURES: Final = 3  # Redis calls failed in a row: budgets go local
_EVENTS_PING_HEARTBEATS: Final = 5  # the events connection is PINGed every 5 heartbeats
_TROUBLE: Final = (RedisError, OSError, TimeoutError)
_LEARN_BINS: Final = 100
_LEARN_TIMEOUT_S: Final = 2.0  # learning calls may be slower than leases: at least this
# The adaptive parameters travel to the scripts from AdaptiveBudget's own defaults.
_DEFAULTS: Final = AdaptiveBudget()
_ADAPTIVE: Final = [
    _DEFAULTS.beta,
    _DEFAULTS.recovery_s,
    _DEFAULTS.min_rate_per_s,
    _DEFAULTS.min_growth_per_s,
    _DEFAULTS.doubling_s,
]


def _positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ConfigError(f"{name}: must be a finite number > 0")
    return float(value)


class RedisCoordinator:
    """Shares every organisation's rate budget, and learned job durations, between the
    engines that use the same Redis and ``namespace`` (see the module docstring)::

        coord = RedisCoordinator("redis://127.0.0.1:6379/0", namespace="poller")
        async with Poller(rate_limit=RateLimit(per_s=100), coordinator=coord) as p: ...

    One coordinator serves one engine at a time (a second engine given it fails to
    open, with ``ConfigError``); reused once its engine closed, it starts afresh, as a
    new engine of the fleet. Every engine of a fleet should be configured with the same
    limits; the last to speak sets an organisation's.

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` (TLS) or
            ``unix://``; a password may also come as ``?password=``. It is never logged
            nor shown, in any form (see ``poller._redis_url``).
        namespace: prefix of every key; fleets that must not share use different ones.
        weight: this engine's share of an organisation's rate, relative to the other
            engines', when they all want more than there is.
        timeout_s: a Redis call slower than this counts as Redis being out of reach.
        lease_period_s: how often a busy budget's leases are topped up (the shortest
            lease period; a budget polling a few times a second leases once a second).
        heartbeat_s: how often the engine says it is alive (and Redis is retried).
        sync_interval_s: how often learned durations are pushed and merged.
        learned_ttl_s: how long the fleet's learned tables outlive their last change.
        max_learned_kinds: at most this many (organisation, endpoint, status) tables.

    Raises:
        ConfigError: a bad URL, namespace or setting.
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "poller",
        weight: float = 1.0,
        timeout_s: float = 0.25,
        lease_period_s: float = 0.1,
        heartbeat_s: float = 1.0,
        sync_interval_s: float = 5.0,
        learned_ttl_s: float = 86_400.0,
        max_learned_kinds: int = 2_000,
    ) -> None:
        self._url = check_url(url)
        self.namespace = check_namespace(namespace)
        self.weight = _positive("weight", weight)
        self.timeout_s = _positive("timeout_s", timeout_s)
        self.lease_period_s = _positive("lease_period_s", lease_period_s)
        self.heartbeat_s = _positive("heartbeat_s", heartbeat_s)
        self.sync_interval_s = _positive("sync_interval_s", sync_interval_s)
        self.learned_ttl_s = int(max(1.0, _positive("learned_ttl_s", learned_ttl_s)))
        if isinstance(max_learned_kinds, bool) or not isinstance(max_learned_kinds, int):
            raise ConfigError("max_learned_kinds: must be an integer >= 1")
        if max_learned_kinds < 1:
            raise ConfigError("max_learned_kinds: must be an integer >= 1")
        self.max_learned_kinds = max_learned_kinds
        # An engine that missed two heartbeats, the last one slow, is no longer counted.
        self._alive_s = 2 * self.heartbeat_s + 4 * self.timeout_s
        self._claimed = False
        self._running = False
        self._given_time = False  # tests: the scripts take the engine's clock
        self._start()

    def _start(self) -> None:
        """A fresh state: no budget, nothing known of the fleet, a new engine ID."""
        self.engine_id = secrets.token_hex(8)
        self._budgets: dict[str, LeasedBudget] = {}
        self._next_lease: dict[str, float] = {}
        self._last_lease: dict[str, float] = {}
        self._online: bool | None = None  # None: not known yet
        self._reachable = False  # offline, but a heartbeat went through: probe with leases
        self._resubscribe = False  # the events listener should subscribe again
        self._failures = 0  # Redis calls failed in a row
        self._failing_since: float | None = None
        self._fallback_s = LEASE_HORIZON_S + self.timeout_s  # the longest a lease lasts
        self._engines = 1  # live engines last counted, this one included
        self._epoch: str | None = None
        self._learn = LearnSync()
        self._wake: asyncio.Event | None = None
        self._clock: Callable[[], float] | None = None
        self.lease_calls = 0
        self.throttle_calls = 0

    def __repr__(self) -> str:
        state = {None: "joining", True: "online", False: "offline"}[self._online]
        return (
            f"<RedisCoordinator {redact_url(self._url)} namespace={self.namespace!r} "
            f"engine={self.engine_id} {state}>"
        )

    @property
    def url(self) -> str:
        """The Redis URL, password hidden."""
        return redact_url(self._url)

    @property
    def online(self) -> bool:
        """Whether budgets are shared through Redis right now."""
        return bool(self._online)

    @property
    def engines(self) -> int:
        """Live engines of the namespace at the last heartbeat (1 before the first)."""
        return self._engines

    # -- the Coordinator protocol ---------------------------------------------------

    def budget(self, org_id: str, limit: RateLimit | None) -> Budget:
        """See :meth:`poller.coordination.Coordinator.budget`."""
        budget = LeasedBudget(org_id, limit, wake=self._poke, min_period_s=self.lease_period_s)
        if self._online is False:
            budget.go_local(self._now(), self._engines)
        self._budgets[org_id] = budget
        self._next_lease.pop(org_id, None)
        return budget

    @contextlib.contextmanager
    def claim(self) -> Iterator[None]:
        """See :meth:`poller.coordination.Coordinator.claim`."""
        if self._claimed or self._running:
            raise ConfigError(
                "coordinator: this RedisCoordinator serves another engine; give each "
                "engine a RedisCoordinator of its own"
            )
        self._claimed = True
        self._start()
        try:
            yield
        finally:
            self._claimed = False

    def forget(self, org_id: str) -> None:
        """See :meth:`poller.coordination.Coordinator.forget`. The budget is idle (its
        slots handed back long ago): its entry in Redis expires by itself."""
        self._budgets.pop(org_id, None)
        self._next_lease.pop(org_id, None)
        self._last_lease.pop(org_id, None)

    async def run(self, link: EngineLink) -> None:
        """See :meth:`poller.coordination.Coordinator.run`."""
        if self._running:
            raise RuntimeError("a RedisCoordinator serves one engine at a time")
        self._running = True
        self._clock = link.clock
        self._wake = asyncio.Event()
        client = ScriptClient(self._url, timeout_s=self.timeout_s)
        # Learning has a client of its own, with a longer timeout: its calls carry more.
        learner = ScriptClient(self._url, timeout_s=max(_LEARN_TIMEOUT_S, 4 * self.timeout_s))
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._heartbeats, client, name="poller-redis-heartbeat")
                tg.start_soon(self._leases, client, name="poller-redis-leases")
                tg.start_soon(self._events, client, name="poller-redis-events")
                tg.start_soon(self._learning, learner, link, name="poller-redis-learning")
        finally:
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(_CLOSE_S):
                    await self._leave(client, learner, link)
                for each in (client, learner):
                    with anyio.move_on_after(_CLOSE_S):
                        await each.aclose()
            self._running = False

    # -- keys -------------------------------------------------------------------------

    def _budget_key(self, org_id: str) -> str:
        return f"{self.namespace}:{{{self.namespace}:{org_id}}}:budget"

    @property
    def _channel(self) -> str:
        return f"{self.namespace}:events"

    @property
    def _epoch_key(self) -> str:
        return f"{self.namespace}:epoch"

    @property
    def _learn_key(self) -> str:
        return f"{self.namespace}:learn"

    # -- state ------------------------------------------------------------------------

    def _now(self) -> float:
        assert self._clock is not None or not self._running
        return self._clock() if self._clock is not None else 0.0

    def _script_now(self) -> float | None:
        """The time the scripts are given: None, the server's (one clock for a fleet on
        many machines); the engine's clock only when ``_given_time`` (tests in virtual
        time)."""
        return self._now() if self._given_time else None

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _failed(self, exc: BaseException) -> None:
        """A Redis call failed. Budgets go local only when it is no blip: after
        :data:`_FALLBACK_FAILURES` failures in a row, or when calls have failed for
        longer than leased slots last (meanwhile they spend what they hold)."""
        now = self._now()
        self._failures += 1
        if self._failing_since is None:
            self._failing_since = now
        if self._online is False:
            self._reachable = False  # the probe failed: the next heartbeat says when to retry
        elif self._failures >= _FALLBACK_FAILURES or now - self._failing_since >= self._fallback_s:
            self._trouble(exc)

    def _succeeded(self) -> None:
        """A lease round went through (or a heartbeat, with nothing to lease)."""
        self._failures = 0
        self._failing_since = None
        if self._online:
            return
        rejoining = self._online is False
        self._online = True
        self._reachable = False
        # The events connection may have died with the outage, half-open: a new one.
        self._resubscribe = rejoining
        for budget in self._budgets.values():
            if budget.mode == "local":
                budget.rejoin()
        self._poke()
        if rejoining:
            log.warning("Redis at %s answers again: budgets are shared again", self.url)

    def _trouble(self, exc: BaseException) -> None:
        """Redis is out of reach: budgets go local (once, with one warning)."""
        self._online = False
        self._reachable = False
        now = self._now()
        for budget in self._budgets.values():
            budget.go_local(now, self._engines)
        log.warning(
            "Redis at %s is out of reach (%s): each organisation's budget falls back to "
            "1/%d of its configured limit until it answers",
            self.url,
            _describe(exc, self._url),
            self._engines,
        )

    async def _guarded(self, what: Callable[[], Awaitable[None]]) -> bool:
        try:
            with anyio.fail_after(self.timeout_s * 4):
                await what()
        except _TROUBLE as exc:
            self._failed(exc)
            return False
        return True

    # -- heartbeat ----------------------------------------------------------------------

    async def _heartbeats(self, client: ScriptClient) -> None:
        while True:
            await self._guarded(lambda: self._heartbeat(client))
            await anyio.sleep(self.heartbeat_s)

    async def _heartbeat(self, client: ScriptClient, *, leaving: bool = False) -> None:
        count, epoch = await client.run(
            HEARTBEAT,
            [f"{self.namespace}:engines", self._epoch_key],
            [
                "",
                self.engine_id,
                self._alive_s,
                max(_ENGINES_TTL_S, math.ceil(2 * self._alive_s)),
                secrets.token_hex(8),
                "1" if leaving else "0",
                self.learned_ttl_s,
            ],
        )
        if leaving:
            return
        self._engines = max(1, int(count))
        if self._epoch is not None and epoch != self._epoch:
            log.warning("Redis at %s lost the fleet's data: re-seeding it", self.url)
            self._learn.reset()
        self._epoch = epoch
        if not self._budgets:
            self._succeeded()  # nothing to lease: the heartbeat is the proof
        elif self._online is False and not self._reachable:
            # Budgets rejoin once a lease goes through, not on a heartbeat alone.
            self._reachable = True
            self._poke()

    # -- leases ---------------------------------------------------------------------------

    async def _leases(self, client: ScriptClient) -> None:
        wake = self._wake
        assert wake is not None
        while True:
            timeout = self.lease_period_s
            if self._online and self._next_lease:
                soonest = min(self._next_lease.values()) - self._now()
                timeout = min(timeout, max(_MIN_GAP_S, soonest))
            with anyio.move_on_after(timeout):
                await wake.wait()
            wake.clear()
            if self._online is not False or self._reachable:
                try:
                    with anyio.fail_after(self.timeout_s * 4):
                        called = await self._lease_round(client)
                except _TROUBLE as exc:
                    self._failed(exc)
                else:
                    if called:
                        self._succeeded()
            await anyio.sleep(_MIN_GAP_S)

    async def _lease_round(self, client: ScriptClient) -> bool:
        """One pipelined round of LEASE (and THROTTLE) calls; whether there was one to
        make."""
        now = self._now()
        calls: list[Call] = []
        plan: list[tuple[str, LeasedBudget, LeaseReport | None]] = []
        report: LeaseReport | None
        probing = self._online is False  # local budgets ask too: they rejoin on an answer
        for org_id, budget in list(self._budgets.items()):
            if budget.mode == "local" and not probing:
                continue
            pause_s = budget.take_throttle()
            if pause_s is not None:
                calls.append(self._throttle_call(org_id, budget, pause_s, self._script_now()))
                plan.append(("throttle", budget, None))
            if probing or (budget.needs_lease() and self._lease_due(org_id, budget, now)):
                report = budget.report(now)
                calls.append(self._lease_call(org_id, budget, report, self._script_now()))
                plan.append((org_id, budget, report))
        if not calls:
            return False
        results = await client.run_many(calls)
        arrived = self._now()
        for (org_id, budget, report), result in zip(plan, results, strict=True):
            if report is None:
                self.throttle_calls += 1
                budget.fleet_paused(arrived, float(result[0]))
                continue
            self.lease_calls += 1
            grant = _grant(result)
            if budget.mode == "local":
                budget.rejoin()
                budget.granted(arrived, grant)  # its first slots since the fallback
            else:
                budget.granted(arrived, grant, report)
            # Hungry and given all it asked for (it is finding its demand): soon again.
            ramping = report.hungry and 0 < report.want <= grant.count
            self._next_lease[org_id] = now + (_MIN_GAP_S if ramping else report.period_s)
            self._last_lease[org_id] = now
        return True

    def _lease_due(self, org_id: str, budget: LeasedBudget, now: float) -> bool:
        """At the budget's period; sooner if it ran dry, lease_period_s after the last."""
        if now >= self._next_lease.get(org_id, -math.inf):
            return True
        return budget.dry and now >= self._last_lease.get(org_id, -math.inf) + self.lease_period_s

    def _ceiling(self, budget: LeasedBudget) -> float | str:
        """The fleet's rate for a configured limit (aimed HEADROOM below); '' for none."""
        return "" if budget.limit is None else budget.limit.per_s * HEADROOM

    def _lease_call(
        self, org_id: str, budget: LeasedBudget, report: LeaseReport, now: float | None = None
    ) -> Call:
        """The LEASE call for a report; ``now`` only for tests (else the server's time)."""
        argv = [
            "" if now is None else now,
            self.engine_id,
            self.weight,  # between engines (a limit's weight is between organisations)
            -1 if report.hungry else report.demand_per_s,
            report.want,
            report.give_back,
            report.accepted,
            self._ceiling(budget),
            report.horizon_s,
            _BUDGET_TTL_S,
            # Its demand counts until it is overdue: two periods, and a slow call.
            2.0 * report.period_s + 4 * self.timeout_s,
            LEASE_HORIZON_S,
            MAX_RETRY_AFTER_S,
            *_ADAPTIVE,
        ]
        return (LEASE, [self._budget_key(org_id)], argv)

    def _throttle_call(
        self, org_id: str, budget: LeasedBudget, pause_s: float, now: float | None = None
    ) -> Call:
        """The THROTTLE call for a 429; ``now`` only for tests (else the server's time)."""
        argv = [
            "" if now is None else now,
            pause_s,
            budget.take_accepted(),
            self._ceiling(budget),
            _BUDGET_TTL_S,
            self._channel,
            org_id,
            LEASE_HORIZON_S,
            MAX_RETRY_AFTER_S,
            *_ADAPTIVE,
        ]
        return (THROTTLE, [self._budget_key(org_id)], argv)

    # -- events ---------------------------------------------------------------------------

    async def _events(self, client: ScriptClient) -> None:
        while True:
            with contextlib.suppress(*_TROUBLE):  # the heartbeat tells if Redis is down
                await self._listen(client)
                continue  # asked to subscribe again (the budgets rejoined): at once
            await anyio.sleep(self.heartbeat_s)

    async def _listen(self, client: ScriptClient) -> None:
        """Hear the fleet's 429s until the connection fails (raises), looks dead (a PING
        unanswered: raises ``TimeoutError``) or the budgets rejoin (returns: a connection
        kept through an outage may be half-open, silent for ever)."""
        pubsub = client.redis.pubsub()
        ping_s = _EVENTS_PING_HEARTBEATS * self.heartbeat_s
        deadline_s = ping_s + 4 * self.timeout_s
        self._resubscribe = False
        try:
            with anyio.fail_after(self.timeout_s * 4):
                await pubsub.subscribe(self._channel)
            heard = pinged = time.monotonic()
            while not self._resubscribe:
                now = time.monotonic()
                if now - heard > deadline_s:
                    raise TimeoutError("the events connection did not answer a PING")
                if now - pinged >= ping_s:
                    await pubsub.ping()
                    pinged = now
                message = await pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=min(1.0, ping_s)
                )
                if message is not None:
                    heard = time.monotonic()
                    if message.get("type") == "message":
                        self._on_event(message.get("data"))
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_S):
                await pubsub.aclose()

    def _on_event(self, data: object) -> None:
        try:
            event = orjson.loads(data) if isinstance(data, str | bytes) else {}
            org_id, pause_s = event["org"], float(event["pause"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return
        budget = self._budgets.get(org_id) if isinstance(org_id, str) else None
        if budget is not None and budget.mode != "local" and pause_s > 0:
            budget.fleet_paused(self._now(), pause_s)

    # -- learning -------------------------------------------------------------------------

    async def _learning(self, client: ScriptClient, link: EngineLink) -> None:
        if link.learned() is None:
            return  # learning is off in this engine
        failing = False
        while True:
            if not self._online:
                await anyio.sleep(min(self.heartbeat_s, self.sync_interval_s) / 2)
                continue
            # Its own guard: a slow or failed sync is retried at the next one, and never
            # sends the budgets local (the leases and the heartbeat tell that).
            try:
                await self._sync(client, link)
            except _TROUBLE as exc:
                if not failing:
                    log.warning(
                        "learned durations not shared with the fleet this time (%s): "
                        "retrying every %g s",
                        _describe(exc, self._url),
                        self.sync_interval_s,
                    )
                failing = True
            else:
                failing = False
            await anyio.sleep(self.sync_interval_s)

    async def _sync(self, client: ScriptClient, link: EngineLink, *, read: bool = True) -> None:
        """Push what was learned, a few dozen kinds a call, then read the fleet's changed
        tables a page at a time, loading each (see ``poller.redis._learning``)."""
        sync = self._learn
        sync.take(link.learned())
        resets = 0
        while (push := sync.pending()) is not None:
            number, deltas = push
            epoch, applied = await client.run(
                LEARN_PUSH,
                [self._learn_key, self._epoch_key, f"{self._learn_key}-seq:{self.engine_id}"],
                [
                    self._epoch or "",
                    secrets.token_hex(8),
                    number,
                    sync.max_weight,
                    self.max_learned_kinds,
                    self.learned_ttl_s,
                    f"{self._learn_key}:",
                    _LEARN_BINS,
                    deltas,
                ],
            )
            if applied == "0":  # the namespace's epoch changed: push everything whole
                if resets:
                    return
                resets += 1
                self._epoch = epoch
                sync.reset()
                sync.take(link.learned())
                continue
            sync.acknowledged(number)
        if not read:
            return
        for _ in range(self.max_learned_kinds // PUSH_KINDS + 2):  # bounded: others push
            epoch, ok, body, last, done = await client.run(
                LEARN_READ,
                [self._learn_key, self._epoch_key],
                [self._epoch or "", sync.after, PUSH_KINDS, f"{self._learn_key}:"],
            )
            if ok != "1":
                sync.reset()  # the next sync pushes everything whole
                return
            merged = sync.merge(orjson.loads(body), link.learned())
            if merged is not None:
                try:
                    link.load_learned(merged)
                except ConfigError as exc:  # a table this version cannot use
                    log.warning("ignoring the fleet's learned durations: %s", exc)
            sync.after = last
            if done == "1":
                return

    # -- leaving ----------------------------------------------------------------------------

    async def _leave(self, client: ScriptClient, learner: ScriptClient, link: EngineLink) -> None:
        """Leave the shares (giving back the slots still to come), deregister, push the
        last learned samples."""
        if not self._online:
            return
        calls: list[Call] = []
        now = self._now()
        for org_id, budget in self._budgets.items():
            if budget.mode == "shared" and budget.needs_lease():
                calls.append(self._lease_call(org_id, budget, budget.leave(now)))
        with contextlib.suppress(*_TROUBLE):
            if calls:
                await client.run_many(calls)
            await self._heartbeat(client, leaving=True)
            if link.learned() is not None:
                await self._sync(learner, link, read=False)


def _grant(result: list[Any]) -> LeaseGrant:
    count, start_in, step, rate, share, pause, engines, tight = result
    rate_per_s = float(rate)
    return LeaseGrant(
        count=int(count),
        start_in_s=float(start_in),
        step_s=float(step),
        rate_per_s=None if rate_per_s < 0 else rate_per_s,
        share_per_s=float(share),
        pause_s=float(pause),
        engines=int(engines),
        tight=tight == "1",
    )


def _describe(exc: BaseException, url: str) -> str:
    """A failure in a few words, without the URL's password (in any of its forms)."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return scrub(text, url_secrets(url))[:200]
