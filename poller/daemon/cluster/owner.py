"""Ownership: which partitions and sinks this replica holds, and the jobs it polls.

One task (:meth:`Owner.run`) makes every change, one at a time, woken every
``tick_s``, when the live set changes, and when jobs come in:

1. **Rebalance.** The partitions this replica should hold are those rendezvous
   hashing gives it among the live replicas (:func:`.lease.assign`). It first lets
   go of those it holds and should not: it stops polling their jobs, waits until
   none of their polls is in flight (cancelling what is left after a while: see
   :mod:`.guard`), sends what their engine events left to commit, then releases
   them in Redis (``RELEASE``). Then it claims those it should hold (``CLAIM``): a
   partition is granted when free or when its holder's lease is gone, and is used
   after the wait the script answers (a released one: ``gap_s`` after its release).
   So when a replica joins, jobs move to it only once their old owner has released
   them, and a partition is never polled by two replicas within ``gap_s`` of each
   other. Sinks are claimed when free (see :mod:`.stream`). The partitions and
   sinks it holds already are in every claim too: Redis answers 0 while they are
   still its own. If Redis lost that (a restart from a file a second old, a
   failover), the replica stops polling the partition (delivering the sink) at
   once, and polls it again only if its claim succeeds, after its wait; so does a
   commit refused as ``notmine``.
2. **Load.** A partition whose wait is over is loaded: its jobs still to poll, each
   tracked by the engine from its stored status and ``seq``
   (``track(last_status=, last_seq=)``), so a takeover never repeats or skips a
   ``seq``.
3. **Intake.** Jobs added or removed through any replica arrive on ``<p>intake``;
   those of held partitions are tracked or dropped. Every ``reconcile_every_s`` (and
   after the subscription reconnects) the held partitions are read again, in case a
   message was missed.

:meth:`Owner.fence` (synchronous) drops everything at once: every job untracked,
its polls in flight cancelled, every partition and sink forgotten, the outbox's
queue dropped. :meth:`Owner.allows` is what the transport asks before each request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

import anyio
from anyio.abc import TaskGroup
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from ...engine import Poller
from .client import RedisLink, describe
from .commit import ClusterOutbox, Owned
from .guard import OwnedOnly
from .jobset import ClusterJobs, JobState
from .keys import SLOTS, slot_of, slot_unit, unit_slot
from .lease import assign
from .membership import OK, Membership
from .stream import SinkUnit

__all__ = ["Owner"]

log = logging.getLogger("poller.daemon.cluster")

_LOAD_BATCH: Final = 5000
_FLUSH_S: Final = 2.0
_SETTLE_S: Final = 2.0
_SUBSCRIBE_RETRY_S: Final = 1.0


class Owner:
    """Holds partitions and sinks for this replica (see the module docstring).

    Args:
        link: the Redis connections.
        membership: the replica's lease and the live set.
        jobs: the job set.
        engine: the open engine that polls.
        credentials: named API keys (secret).
        default_key: whether the engine has a default key.
        sinks: this replica's push sinks, as units.
        sink_group: where a sink this replica takes is run.
        guard: the engine's transport, whose polls in flight are awaited (or cancelled)
            before a partition is released, and cancelled when it is dropped.
        gap_s: the pause between two holders of a partition.
        tick_s: how often to rebalance at least.
        reconcile_every_s: how often to read the held partitions again.
    """

    def __init__(
        self,
        *,
        link: RedisLink,
        membership: Membership,
        jobs: ClusterJobs,
        engine: Poller,
        credentials: Mapping[str, str],
        default_key: bool,
        sinks: Sequence[SinkUnit] = (),
        sink_group: TaskGroup | None = None,
        guard: OwnedOnly | None = None,
        gap_s: float = 1.5,
        tick_s: float = 1.0,
        reconcile_every_s: float = 30.0,
    ) -> None:
        self._link = link
        self._membership = membership
        self._jobs = jobs
        self._engine = engine
        self._credentials = dict(credentials)
        self._default_key = default_key
        self.sinks = list(sinks)
        self._gap_ms = int(gap_s * 1000)
        self._tick_s = tick_s
        self._reconcile_every_s = reconcile_every_s
        self._next_reconcile = time.monotonic() + reconcile_every_s
        self.owned: dict[str, Owned] = {}
        """The jobs this replica polls (shared with the outbox)."""
        self.slots: set[int] = set()
        """Partitions held and polled."""
        self.waiting: dict[int, float] = {}
        """Partitions held, polled from this monotonic time."""
        self.releasing: set[int] = set()
        """Partitions no longer polled here, still to release in Redis."""
        self.outbox: ClusterOutbox | None = None
        self._messages: list[str] = []
        self._stale: list[str] = []
        self._lost: set[int] = set()
        self._wake = anyio.Event()
        self._sink_group = sink_group
        self._guard = guard
        self.takeovers = 0
        self.released = 0

    # -- what others call --------------------------------------------------------------

    def allows(self, job_id: str) -> bool:
        """Whether this replica may poll ``job_id`` now (the transport asks)."""
        return job_id in self.owned and self._membership.trusted()

    def wake(self) -> None:
        """Rebalance now (the live set changed)."""
        self._wake.set()

    def reload(self, job_ids: list[str]) -> None:
        """Reload these jobs from Redis (the outbox's view of them was behind)."""
        self._stale += job_ids
        self._wake.set()

    def lost(self, slots: Iterable[int], token: str) -> None:
        """Commits for these partitions were refused (``notmine``): Redis does not name
        this replica their holder. They stop being polled at the next step, and are
        claimed again as any other."""
        if token == self._membership.token:
            self._lost.update(slots)
            self._wake.set()

    def fence(self) -> None:
        """Drop every job, partition and sink at once (the lease is not to be trusted)."""
        for job_id in self.owned:
            self._engine.untrack(job_id)
        if self._guard is not None:
            self._guard.cancel()
        dropped = len(self.owned)
        self.owned.clear()
        self.slots.clear()
        self.waiting.clear()
        self.releasing.clear()
        self._messages.clear()
        self._stale.clear()
        self._lost.clear()
        if self.outbox is not None:
            self.outbox.clear()
        for sink in self.sinks:
            sink.cancel()
        log.warning("fenced: %d job(s) no longer polled here", dropped)

    @property
    def held_sinks(self) -> list[str]:
        """The sinks this replica delivers."""
        return [sink.name for sink in self.sinks if sink.held]

    # -- the loop ----------------------------------------------------------------------

    async def run(self) -> None:
        """Hold, load and follow partitions and sinks until cancelled."""
        async with anyio.create_task_group() as group:
            group.start_soon(self._subscribe)
            while True:
                with anyio.move_on_after(self._sleep_s()):
                    await self._wake.wait()
                self._wake = anyio.Event()
                if self._membership.state != OK:  # it holds nothing: news of jobs is moot
                    self._messages.clear()
                    self._stale.clear()
                    continue
                try:
                    await self._step(self._membership.token)
                except RedisError as exc:
                    self._link.failed(exc, "rebalancing")

    def _sleep_s(self) -> float:
        if not self.waiting:
            return self._tick_s
        return max(0.0, min(self._tick_s, min(self.waiting.values()) - time.monotonic()))

    async def _step(self, token: str) -> None:
        # After each await the replica may have been fenced (the transport or the
        # watchdog called fence()): then this step stops; the next one starts afresh.
        if lost := self._lost & self.slots:
            log.warning(
                "%d partition(s) not this replica's in Redis: stopped polling them", len(lost)
            )
            self._drop_slots(lost)
        self._lost.clear()
        await self._follow(token)
        if self._membership.token == token:
            await self._rebalance(token)
        if self._membership.token == token:
            await self._load_due(token)
        if self._membership.token == token and time.monotonic() >= self._next_reconcile:
            await self._reconcile(token)

    async def _rebalance(self, token: str) -> None:
        me, live = self._membership.id, self._membership.live
        if me not in live:  # registered, but the first renewal has not told the live set yet
            return
        units = [slot_unit(slot) for slot in range(SLOTS)]
        desired = {
            slot for unit in assign(units, live, me) if (slot := unit_slot(unit)) is not None
        }
        held = self.slots | set(self.waiting)
        self.releasing -= desired  # wanted back before it was released: claimed again below
        if (leaving := held - desired) or self.releasing:
            await self._release(leaving, token)
        if self._membership.token != token:
            return
        # The units held already are claimed too: Redis answers 0 while they are still
        # this replica's, and says so when it lost them (see the module docstring).
        claims = [slot_unit(slot) for slot in sorted(desired)]
        claims += [sink.unit for sink in self.sinks]
        if not claims:
            return
        args = [self._link.keys.prefix, me, token, self._gap_ms, *claims]
        waits = await self._link.scripts.run(self._link.scripts.claim, args)
        self._link.ok()
        if self._membership.token != token:
            return
        if waits == [-2]:
            self._membership.fence("Redis says its lease is gone")
            return
        now = time.monotonic()
        claimed, lost = 0, 0
        for unit, wait_ms in zip(claims, waits, strict=True):
            slot = unit_slot(unit)
            if slot is None:
                self._sink_claimed(unit, wait_ms, token)
                continue
            held_here = slot in self.slots or slot in self.waiting
            if wait_ms == 0 and held_here:
                continue  # still this replica's
            if held_here:  # another holds it, or Redis had lost it (claimed again: wait)
                self._drop_slots([slot])
                lost += 1
            if wait_ms >= 0:
                self.waiting[slot] = now + wait_ms / 1000
                claimed += 1
        if lost:
            log.warning(
                "%d partition(s) this replica held are not its own in Redis (did Redis lose "
                "writes?): stopped polling them",
                lost,
            )
        if claimed:
            log.info("claimed %d partition(s)", claimed)

    def _sink_claimed(self, unit: str, wait_ms: int, token: str) -> None:
        for sink in self.sinks:
            if sink.unit != unit:
                continue
            if sink.held:
                if wait_ms < 0:  # Redis names another holder: stop at once
                    log.warning("sink %s is held by another replica in Redis: stopped", sink.name)
                    sink.cancel()
            elif wait_ms >= 0 and not sink.running and self._sink_group is not None:
                # A run that ended may still be unwinding: then it is taken at the next
                # step (the unit stays this replica's in Redis meanwhile).
                sink.take(token)
                self._sink_group.start_soon(sink.run, wait_ms / 1000)
                log.info("this replica now delivers sink %s", sink.name)

    async def _release(self, slots: set[int], token: str) -> None:
        """Stop polling ``slots``, wait until none of their polls is in flight, commit what
        their jobs reported, then release them and any partition a failed call left to
        release (retried at the next step)."""
        jobs = [j for j, owned in self.owned.items() if owned.slot in slots]
        for job_id in jobs:
            self._engine.untrack(job_id)
            del self.owned[job_id]
        self.slots -= slots
        for slot in slots:
            self.waiting.pop(slot, None)
        self.releasing |= slots
        # A poll sent before (its connection still opening, say) must not reach the API
        # after the next holder's first: wait for it, or call it back.
        if self._guard is not None and jobs:
            if cancelled := await self._guard.settle(set(jobs), _SETTLE_S):
                log.info("%d poll(s) still in flight cancelled before the release", cancelled)
            if self._membership.token != token:
                return
        # What was observed for them before they were untracked is committed first.
        if self.outbox is not None and slots:
            with anyio.move_on_after(_FLUSH_S):
                await self.outbox.flush()
        if self._membership.token != token:
            return
        releasing = sorted(self.releasing)
        args = [self._link.keys.prefix, self._membership.id, token]
        await self._link.scripts.run(
            self._link.scripts.release, args + [slot_unit(s) for s in releasing]
        )
        self.releasing -= set(releasing)
        self.released += len(releasing)
        log.info("released %d partition(s)", len(releasing))

    async def release_all(self) -> None:
        """Release every partition (a graceful stop: the engine is closed already)."""
        token = self._membership.token
        held = sorted(self.slots | set(self.waiting) | self.releasing)
        self.owned.clear()
        self.slots.clear()
        self.waiting.clear()
        self.releasing.clear()
        if not token or not held:
            return
        args = [self._link.keys.prefix, self._membership.id, token]
        try:
            await self._link.scripts.run(
                self._link.scripts.release, args + [slot_unit(s) for s in held]
            )
        except RedisError as exc:
            log.warning(
                "could not release the partitions (%s): they move when the lease expires",
                describe(exc),
            )

    async def release_sink(self, sink: SinkUnit) -> None:
        """Release a sink this replica stopped delivering."""
        token = self._membership.token
        sink.held = False
        if not token:
            return
        args = [self._link.keys.prefix, self._membership.id, token, sink.unit]
        try:
            await self._link.scripts.run(self._link.scripts.release, args)
        except RedisError as exc:
            log.warning("could not release sink %s (%s)", sink.name, describe(exc))

    async def _load_due(self, token: str) -> None:
        now = time.monotonic()
        due = sorted(slot for slot, at in self.waiting.items() if at <= now)
        if not due:
            return
        members = await self._jobs.slot_jobs(due)
        states = await self._states([job for slot in due for job in members[slot]])
        if self._membership.token != token:
            return
        for slot in due:
            del self.waiting[slot]
            self.slots.add(slot)
        tracked = self._track(states)
        self.takeovers += len(due)
        log.info("polling %d more partition(s): %d job(s)", len(due), tracked)

    async def _states(self, job_ids: Sequence[str]) -> dict[str, JobState]:
        states: dict[str, JobState] = {}
        for start in range(0, len(job_ids), _LOAD_BATCH):
            states.update(await self._jobs.states(job_ids[start : start + _LOAD_BATCH]))
        return states

    def _track(self, states: Mapping[str, JobState]) -> int:
        """Track the active jobs of held partitions that are not tracked yet."""
        tracked = 0
        missing: dict[str | None, int] = {}
        finishing = self.outbox.finishing if self.outbox is not None else set()
        for job_id, state in states.items():
            slot = slot_of(job_id)
            if not state.active or slot not in self.slots or job_id in self.owned:
                continue
            if job_id in finishing:  # its final event is on its way to Redis
                continue
            if state.credential is None and not self._default_key:
                missing[None] = missing.get(None, 0) + 1
                continue
            if state.credential is not None and state.credential not in self._credentials:
                missing[state.credential] = missing.get(state.credential, 0) + 1
                continue
            key = self._credentials[state.credential] if state.credential is not None else None
            # A finished run of the job may still be in the engine's table: drop it first.
            self._engine.untrack(job_id)
            self.owned[job_id] = Owned(
                slot, state.gen, state.seq, state.last_status, state.credential, state.metadata
            )
            self._engine.track(
                job_id, api_key=key, last_status=state.last_status, last_seq=state.seq
            )
            tracked += 1
        for name, count in missing.items():
            what = f"credential {name!r} is" if name is not None else "no default API key is"
            log.error("%d job(s) not tracked: %s configured on this replica", count, what)
        return tracked

    def _drop_slots(self, slots: Iterable[int]) -> None:
        """Stop polling partitions that are not this replica's (any more) in Redis: no
        release, no commit."""
        gone = set(slots)
        jobs = [job for job, owned in self.owned.items() if owned.slot in gone]
        self._drop(jobs)
        if self._guard is not None:
            self._guard.cancel(jobs)
        self.slots -= gone
        for slot in gone:
            self.waiting.pop(slot, None)

    def _drop(self, job_ids: Iterable[str]) -> None:
        for job_id in job_ids:
            if self.owned.pop(job_id, None) is not None:
                self._engine.untrack(job_id)

    # -- jobs coming and going ---------------------------------------------------------

    async def _follow(self, token: str) -> None:
        """Apply the intake messages (the last word on each job wins) and reload the
        stale jobs."""
        messages, self._messages = self._messages, []
        stale, self._stale = self._stale, []
        wanted: dict[str, bool] = {}
        for line in (line for message in messages for line in message.split("\n")):
            wanted.pop(line[1:], None)
            wanted[line[1:]] = line.startswith("+")
        self._drop([job_id for job_id, add in wanted.items() if not add])
        adds = [job for job, add in wanted.items() if add and slot_of(job) in self.slots]
        if not adds and not stale:
            return
        states = await self._states(list(dict.fromkeys(adds + stale)))
        if self._membership.token != token:
            return
        self._drop(stale)  # reloaded from scratch: the engine resumes from Redis
        for job_id in adds:  # added again after a removal or a failure: a new generation
            owned, state = self.owned.get(job_id), states.get(job_id)
            if owned is not None and state is not None and owned.gen != state.gen:
                self._drop([job_id])
        self._track(states)

    async def _reconcile(self, token: str) -> None:
        """Read the held partitions again: track what is missing, drop what is gone."""
        self._next_reconcile = time.monotonic() + self._reconcile_every_s
        held = sorted(self.slots)
        members = await self._jobs.slot_jobs(held)
        listed = {job for slot in held for job in members[slot]}
        missing = [job for job in listed if job not in self.owned]
        states = await self._states(missing)
        if self._membership.token != token:
            return
        self._drop(
            [
                job
                for job, owned in self.owned.items()
                if owned.slot in self.slots and job not in listed
            ]
        )
        if tracked := self._track(states):
            log.info("reconciled: %d job(s) tracked that a message had missed", tracked)

    async def _subscribe(self) -> None:
        """Follow ``<p>intake`` and ``<p>members`` (reconnecting as needed)."""
        keys = self._link.keys
        while True:
            pubsub = self._link.blocking.pubsub()
            try:
                await pubsub.subscribe(keys.intake_channel, keys.members_channel)
                self._next_reconcile = 0.0  # messages may have been missed meanwhile
                self._wake.set()
                heard = time.monotonic()
                while True:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=self._link.block_s
                    )
                    if message is None:  # quiet: is the connection still there?
                        if time.monotonic() - heard > self._link.dead_after_s:
                            raise RedisConnectionError("no answer to a ping on the subscription")
                        await pubsub.ping()
                        continue
                    heard = time.monotonic()
                    if message["type"] == "pong":
                        continue
                    if message["channel"] == keys.intake_channel:
                        self._messages.append(str(message["data"]))
                    else:  # join, leave, release: the live set or the free units changed
                        self._membership.renew_now.set()
                    self._wake.set()
            except RedisError as exc:
                log.debug("subscription lost (%s); subscribing again", describe(exc))
            finally:
                with anyio.CancelScope(shield=True):
                    await pubsub.aclose()
            await anyio.sleep(_SUBSCRIBE_RETRY_S)
