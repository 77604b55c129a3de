"""``poller run --redis URL``: one replica of the cluster, wired together.

Start: check Redis (version, persistence, namespace), create the sinks' consumer
groups, register (a lease and a fencing token), open the engine (its transport
sends only what this replica owns, and names the replica in ``User-Agent``), then
run the lease, the owner, the outbox, the tail, the trimming and the control API.

Stop (SIGTERM, SIGINT, ``stop``): intake stops (adds get 503, ``/healthz`` 503),
``/events`` streams end, the control API finishes its requests, the owner stops, the
engine closes, the outbox commits what the engine reported (this replica still owns
those jobs), then the replica **hands its partitions over at once** (``RELEASE``:
the others claim them, and poll them ``gap_s`` later, instead of waiting for the
lease to expire), its sinks deliver what they read and are released, and the lease
is deleted. All within ``shutdown_timeout_s``; what a sink did not deliver stays
pending in its group for the next holder. Exit status 0; 1 if Redis cannot be
reached at start; 2 for a namespace or a Redis this version cannot use.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Final

import anyio
import msgspec
from prometheus_client import CollectorRegistry
from redis.exceptions import RedisError

from ..._version import __version__
from ...engine import Poller
from ...events import Stats
from ...options import PollerOptions
from ...transport import AiohttpTransport, Transport
from ..config import Settings, coordinator_for, engine_options
from ..health import Backlog, ClusterHealth, Health, api_reasons, report, sink_reasons
from ..intake import read_job_lines
from ..metrics import (
    DaemonCollector,
    DaemonSnapshot,
    SinkCounters,
    daemon_registry,
    render,
)
from ..outbox import Changes
from ..sse import EventStream
from ..wiring import build_sinks, open_control_api
from .client import ClusterError, RedisLink, check_server, default_replica_id, describe
from .commit import ClusterOutbox
from .guard import OwnedOnly
from .jobset import ClusterJobs
from .membership import OK, Membership
from .owner import Owner
from .sse import StreamHistory
from .status import (
    ClusterCollector,
    ClusterCounters,
    lease_reasons,
    redis_reasons,
    sink_backlog,
)
from .stream import SinkUnit, StreamTail, create_groups, trim_forever

__all__ = ["ClusterOptions", "replica_engine_options", "serve_cluster"]

log = logging.getLogger("poller.daemon.cluster")

_TERMINAL_RETENTION_S: Final = 60.0
_FIRST_POLL_RATE_PER_S: Final = 10_000.0
"""A takeover resumes a dead replica's jobs at once: their first polls are paced at
this rate, so 30,000 of them are all polled within 3 s (the single-node default, 1,000
a second, would take 30 s)."""
_HEALTH_QUERY_S: Final = 1.0


class ClusterOptions(msgspec.Struct, frozen=True, kw_only=True):
    """The cluster's timings (the defaults suit production; tests may shorten them).

    Attributes:
        lease_ttl_s: a replica's lease lives this long after its last renewal: a dead
            replica's jobs are taken over about this long after it died.
        lease_margin_s: a replica stops polling this long before its lease may expire.
        renew_every_s: how often the lease is renewed.
        gap_s: the pause between the last poll of a partition's old holder and the
            first of its new one, when it is handed over (over a second: a request
            sent just before may reach the API a little later).
        tick_s: how often each replica rebalances at least.
        reconcile_every_s: how often a replica reads its partitions again.
        trim_every_s: how often the stream is trimmed.
    """

    lease_ttl_s: float = 5.0
    lease_margin_s: float = 1.5
    renew_every_s: float = 1.0
    gap_s: float = 1.5
    tick_s: float = 1.0
    reconcile_every_s: float = 30.0
    trim_every_s: float = 10.0


def replica_engine_options(settings: Settings) -> PollerOptions:
    """A replica's engine settings: the daemon's, but for a short memory of finished
    jobs (their records are in Redis) and faster first polls (a takeover resumes
    thousands of jobs at once)."""
    return msgspec.structs.replace(
        engine_options(settings),
        terminal_retention_s=_TERMINAL_RETENTION_S,
        first_poll_rate_per_s=_FIRST_POLL_RATE_PER_S,
    )


async def serve_cluster(
    settings: Settings,
    stop: anyio.Event,
    *,
    on_ready: Callable[[str], None] | None = None,
    transport: Transport | None = None,
    options: ClusterOptions | None = None,
) -> int:
    """Run one replica until ``stop`` is set; returns the exit status.

    Args:
        settings: the configuration (``redis_url`` set).
        stop: set it to stop gracefully.
        on_ready: called with the control API's URL once it listens.
        transport: a custom transport for the engine (tests).
        options: the cluster's timings.
    """
    assert settings.redis_url is not None
    link = RedisLink(settings.redis_url.reveal(), settings.redis_namespace)
    try:
        try:
            await check_server(link)
        except RedisError as exc:
            log.error("cannot use Redis %s: %s", link.name, describe(exc))
            return 1
        except ClusterError as exc:
            log.error("cluster mode: %s", exc)
            return 2
        replica = _Replica(settings, link, stop, on_ready, transport, options or ClusterOptions())
        return await replica.run()
    finally:
        with anyio.CancelScope(shield=True):
            await link.aclose()


class _Replica:
    def __init__(
        self,
        settings: Settings,
        link: RedisLink,
        stop: anyio.Event,
        on_ready: Callable[[str], None] | None,
        transport: Transport | None,
        options: ClusterOptions,
    ) -> None:
        self.settings = settings
        self.link = link
        self.stop = stop
        self.on_ready = on_ready
        self.transport = transport
        self.options = options
        self.id = settings.replica_id or default_replica_id()
        self.membership = Membership(
            link,
            self.id,
            ttl_s=options.lease_ttl_s,
            margin_s=options.lease_margin_s,
            renew_every_s=options.renew_every_s,
        )
        self.changes = Changes()
        self.sinks, self.dead_letters = build_sinks(settings)
        self.units = [
            SinkUnit(sink, link, self.changes, self.id, self.membership.trusted)
            for sink in self.sinks
        ]
        self.jobs = ClusterJobs(
            link, credentials=settings.credentials.keys(), default_key=settings.api_key is not None
        )
        self.started_at = time.time()
        self.stopping = False
        self.owner: Owner | None = None
        self.engine: Poller | None = None
        self.daemon_metrics = DaemonCollector()
        self.cluster_metrics = ClusterCollector()
        self.registry: CollectorRegistry | None = None  # made with the engine, when needed
        self.outbox: ClusterOutbox | None = None
        self.guard: OwnedOnly | None = None  # made with the engine
        self.events = EventStream(StreamHistory(link), self.changes)

    def _stats(self) -> Stats:
        assert self.engine is not None
        return self.engine.stats()

    def _allows(self, job_id: str) -> bool:
        return self.owner is not None and self.owner.allows(job_id)

    def _engine(self) -> Poller:
        settings = self.settings
        inner = self.transport or AiohttpTransport(
            settings.base_url,
            max_connections=settings.max_connections,
            request_timeout_s=settings.request_timeout_s,
            user_agent=f"poller/{__version__} replica/{self.id}",
        )
        key = settings.api_key.reveal() if settings.api_key is not None else None
        self.guard = OwnedOnly(inner, self._allows)
        return Poller(
            key,
            settings.base_url,
            options=replica_engine_options(settings),
            transport=self.guard,
            coordinator=coordinator_for(settings),
        )

    async def run(self) -> int:
        settings = self.settings
        try:
            await create_groups(self.link, [sink.name for sink in self.sinks])
        except RedisError as exc:
            log.error("cannot use Redis %s: %s", self.link.name, describe(exc))
            return 1
        log.info(
            "cluster mode: replica %s, Redis %s, namespace %s",
            self.id,
            self.link.name,
            settings.redis_namespace,
            extra={"replica": self.id},
        )
        try:
            async with anyio.create_task_group() as background:
                background.start_soon(self.membership.run)
                while not self.membership.registered.is_set():
                    if self.stop.is_set():
                        background.cancel_scope.cancel()
                        return 0
                    with anyio.move_on_after(0.1):
                        await self.membership.registered.wait()
                background.start_soon(StreamTail(self.link, self.changes).run)
                background.start_soon(self._trim)
                status = await self._serve()
                await self.membership.leave()
                background.cancel_scope.cancel()
        finally:
            if self.dead_letters is not None:
                self.dead_letters.close()
        if status == 0:
            log.info("stopped")
        return status

    async def _trim(self) -> None:
        await trim_forever(
            self.link,
            [sink.name for sink in self.sinks],
            retention_s=self.settings.history_retention_s,
            every_s=self.options.trim_every_s,
        )

    async def _serve(self) -> int:
        settings = self.settings
        credentials = {name: key.reveal() for name, key in settings.credentials.items()}
        status = 0
        with anyio.CancelScope() as drain:
            async with anyio.create_task_group() as delivery:
                engine = self.engine = self._engine()
                owner = self.owner = Owner(
                    link=self.link,
                    membership=self.membership,
                    jobs=self.jobs,
                    engine=engine,
                    credentials=credentials,
                    default_key=settings.api_key is not None,
                    sinks=self.units,
                    sink_group=delivery,
                    guard=self.guard,
                    gap_s=self.options.gap_s,
                    tick_s=self.options.tick_s,
                    reconcile_every_s=self.options.reconcile_every_s,
                )
                outbox = self.outbox = ClusterOutbox(
                    self.link, self.membership, owner.owned, self.changes, owner.reload, owner.lost
                )
                owner.outbox = outbox
                self.membership.on_fence.append(owner.fence)
                self.membership.on_change.append(owner.wake)
                delivery.start_soon(outbox.run)
                async with engine:
                    engine.on_transition(outbox.offer, include_failures=True)
                    status = await self._control(owner, drain)
                # The engine is closed: commit what it reported while still the owner,
                # then hand the partitions over at once.
                outbox.close()
                await outbox.flush()
                await owner.release_all()
                for unit in self.units:
                    unit.stop()
            for unit in self.units:
                if unit.held:
                    await owner.release_sink(unit)
        if drain.cancelled_caught:
            log.warning(
                "shutdown deadline reached: undelivered events stay pending for the sinks' "
                "next holder"
            )
        return status

    async def _control(self, owner: Owner, drain: anyio.CancelScope) -> int:
        settings = self.settings
        server = await open_control_api(
            settings,
            self.on_ready,
            intake=self.jobs,
            jobs=self.jobs,
            events=self.events,
            metrics=self._metrics,
            health=self._health,
        )
        if server is None:
            return 1
        async with anyio.create_task_group() as control:
            control.start_soon(owner.run)
            if settings.jobs_from is not None:
                control.start_soon(self._jobs_from)
            await self.stop.wait()
            log.info("stopping: intake closed, handing over")
            self.stopping = True
            drain.deadline = anyio.current_time() + settings.shutdown_timeout_s
            self.jobs.accepting = False
            control.cancel_scope.cancel()
            self.events.close()
            await server.stop()
        return 0

    async def _jobs_from(self) -> None:
        path = self.settings.jobs_from
        assert path is not None
        await read_job_lines(self.jobs.add, path, credential=self.settings.jobs_credential)

    # -- /metrics and /healthz -----------------------------------------------------------

    async def _backlog(self) -> dict[str, int] | None:
        with anyio.move_on_after(_HEALTH_QUERY_S), contextlib.suppress(RedisError):
            return await sink_backlog(self.link, {sink.name: sink for sink in self.sinks})
        return None

    async def _metrics(self) -> str:
        counts: dict[str, int] = {}
        with anyio.move_on_after(_HEALTH_QUERY_S), contextlib.suppress(RedisError):
            counts = await self.jobs.counts()
        owner, outbox, engine = self.owner, self.outbox, self.engine
        assert owner is not None and outbox is not None and engine is not None
        if self.registry is None:
            self.registry = daemon_registry(engine, self.daemon_metrics)
            self.registry.register(self.cluster_metrics)
        self.daemon_metrics.snapshot = DaemonSnapshot(
            jobs_by_status=counts,
            backlog=await self._backlog() or {},
            sinks=tuple(
                SinkCounters(
                    name=s.name,
                    delivered=s.delivered,
                    dead_lettered=s.dead_lettered,
                    errors=s.errors,
                )
                for s in self.sinks
            ),
            outbox_backlog=outbox.backlog,
            sse_clients=self.events.clients,
        )
        self.cluster_metrics.counters = ClusterCounters(
            replica=self.id,
            namespace=self.settings.redis_namespace,
            replicas=len(self.membership.live),
            partitions=len(owner.slots),
            jobs=len(owner.owned),
            lease_ok=self.membership.state == OK,
            fences=self.membership.fences,
            partitions_taken=owner.takeovers,
            partitions_released=owner.released,
            commits=outbox.committed,
            events_dropped=outbox.dropped,
            redis_errors=self.link.errors,
        )
        return render(self.registry)

    async def _health(self) -> Health:
        owner, outbox = self.owner, self.outbox
        assert owner is not None and outbox is not None
        undelivered = await self._backlog()
        held = set(owner.held_sinks)
        reasons = redis_reasons(self.link.error, uncommitted=outbox.backlog)
        reasons += lease_reasons(self.membership.state)
        reasons += api_reasons(self._stats())
        for sink in self.sinks:
            if sink.name in held:
                reasons += sink_reasons(sink.name, sink.failing, undelivered=undelivered)
        return report(
            stopping=self.stopping,
            uptime_s=time.time() - self.started_at,
            tracked=len(owner.owned),
            backlog=Backlog(uncommitted=outbox.backlog, undelivered=undelivered),
            reasons=reasons,
            cluster=ClusterHealth(
                replica=self.id,
                redis="ok" if self.link.error is None else "unreachable",
                lease=self.membership.state,
                replicas=len(self.membership.live),
                slots=len(owner.slots),
                jobs=len(owner.owned),
                sinks=sorted(held),
            ),
        )
