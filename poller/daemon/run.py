"""``poller run``: the daemon wired together, and its graceful stop.

Start: open the store, start the outbox writer and the push sinks (they first send
whatever an earlier run left undelivered), open the engine (with the job durations
the last run learned, saved every minute and at the stop), register the outbox as
a *synchronous* transition callback, resume every unfinished job from its last
committed status and ``seq``, then start the control API and ``--jobs-from``.

Stop (SIGTERM, SIGINT, or ``stop`` set): intake stops (``/healthz`` turns 503, adds
get 503), ``/events`` streams end, the HTTP server finishes the requests in flight,
the engine closes (its polls in flight are dropped: their answers were never
committed, so the next run asks again), the outbox commits what the engine
reported, the sinks deliver what is committed, the store is checkpointed, and the
exit status is 0. All of it within ``shutdown_timeout_s``; what is not delivered by
then stays in the outbox for the next run. The last line logged is ``stopped``. A
second signal stops at once. If the checkpoint fails (a full disk), one line says so
and the status is 1; the write-ahead log it leaves is read at the next start, so
nothing committed is lost.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import anyio
import msgspec

from ..engine import Poller
from ..errors import ConfigError
from ..sched.learn import LearnedDurations
from ..transport import Transport
from .api import StoreJobs
from .config import Settings, coordinator_for, engine_options
from .health import (
    Backlog,
    Health,
    HealthCheck,
    api_reasons,
    collect,
    report,
    sink_reasons,
    store_reasons,
)
from .intake import Intake
from .metrics import DaemonCollector, DaemonSnapshot, SinkCounters, daemon_registry, render
from .outbox import Changes, Outbox
from .sinks import Feed, Sink, run_sink
from .sse import EventStream, StoreHistory
from .store import Store
from .webhook import DeadLetters
from .wiring import build_sinks, in_background, open_control_api

__all__ = ["build_sinks", "open_control_api", "running", "serve", "serve_until_signalled"]

log = logging.getLogger("poller.daemon")

_PRUNE_EVERY_S: Final = 60.0
_TERMINAL_RETENTION_S: Final = 60.0
_ORPHAN_BATCH: Final = 1000
_HEALTH_QUERY_S: Final = 1.0


def _engine(
    settings: Settings, transport: Transport | None, learned: LearnedDurations | None
) -> Poller:
    key = settings.api_key.reveal() if settings.api_key is not None else None
    options = msgspec.structs.replace(
        engine_options(settings), terminal_retention_s=_TERMINAL_RETENTION_S
    )
    coordinator = coordinator_for(settings)
    if learned is not None:
        try:
            with_learned = msgspec.structs.replace(options, learned_durations=learned)
            return Poller(
                key,
                settings.base_url,
                options=with_learned,
                transport=transport,
                coordinator=coordinator,
            )
        except ConfigError as exc:  # saved by another version, or learning is now off
            log.warning("learned durations from the last run not used (%s); learning afresh", exc)
    return Poller(
        key, settings.base_url, options=options, transport=transport, coordinator=coordinator
    )


async def _load_learned(store: Store) -> LearnedDurations | None:
    """The learned durations the last run saved, or None (none, or unreadable)."""
    try:
        body = await store.call(store.learned)
        if body is None:
            return None
        learned = msgspec.json.decode(body, type=LearnedDurations)
    except (sqlite3.Error, msgspec.DecodeError) as exc:
        log.warning("learned durations from the last run not readable (%s); learning afresh", exc)
        return None
    log.info("loaded learned durations of %d kind(s) of job", len(learned.kinds))
    return learned


async def serve(
    settings: Settings,
    stop: anyio.Event,
    *,
    on_ready: Callable[[str], None] | None = None,
    transport: Transport | None = None,
) -> int:
    """Run the daemon until ``stop`` is set; returns the exit status.

    Args:
        settings: the configuration.
        stop: set it to stop gracefully.
        on_ready: called with the control API's URL once it listens.
        transport: a custom transport for the engine (tests).
    """
    if settings.redis_url is not None:
        return await _serve_cluster(settings, stop, on_ready, transport)
    sinks, dead_letters = build_sinks(settings)
    try:
        store = Store(settings.db, sinks=[s.name for s in sinks], sync=settings.store_sync)
    except sqlite3.Error as exc:
        log.error("cannot open the database %s: %s", settings.db, exc)
        return 1
    status = 1
    try:
        status = await _serve_store(settings, store, sinks, stop, on_ready, transport)
    finally:
        if dead_letters is not None:
            dead_letters.close()
        with anyio.CancelScope(shield=True):  # even when stopped at once: checkpoint the WAL
            try:
                await store.call(store.close)
            except sqlite3.Error as exc:
                # Committed data is in the write-ahead log, which the next start reads.
                log.error(
                    "cannot checkpoint the database %s at the stop (%s); its write-ahead log "
                    "is kept and read at the next start",
                    settings.db,
                    exc,
                )
                status = status or 1
    if status == 0:
        log.info("stopped")
    return status


async def _serve_cluster(
    settings: Settings,
    stop: anyio.Event,
    on_ready: Callable[[str], None] | None,
    transport: Transport | None,
) -> int:
    """Cluster mode (see :mod:`poller.daemon.cluster`); redis-py is an extra, imported
    only here."""
    try:
        from .cluster import serve_cluster
    except ImportError as exc:
        log.error("cluster mode needs redis-py: pip install 'poller[redis]' (%s)", exc)
        return 2
    return await serve_cluster(settings, stop, on_ready=on_ready, transport=transport)


async def _serve_store(
    settings: Settings,
    store: Store,
    sinks: list[Sink],
    stop: anyio.Event,
    on_ready: Callable[[str], None] | None,
    transport: Transport | None,
) -> int:
    """Everything :func:`serve` does between opening and closing the store; the status."""
    try:
        await _retire_orphans(store, settings.dead_letter_path, stop)
    except (OSError, sqlite3.Error) as exc:
        log.error("cannot move the backlog of removed sinks to the dead-letter file: %s", exc)
        return 1
    if stop.is_set():  # told to stop while at it: nothing else was started
        return 0
    learned = await _load_learned(store)
    try:
        daemon = _Daemon(settings, store, sinks, stop, on_ready, transport, learned)
    except ConfigError as exc:  # a setting the engine refuses
        log.error("configuration error: %s", exc)
        return 2
    return await daemon.run()


async def _retire_orphans(store: Store, path: str, stop: anyio.Event) -> None:
    """Move the undelivered events of sinks no longer configured (a webhook removed from
    the settings) to the dead-letter file, so that they are kept somewhere a person can
    find them, and neither count as backlog nor keep old events from being pruned.

    In batches, each written durably before it leaves the database (a crash in between
    repeats a batch, never loses one); a stop request ends it between two batches, and
    the next start carries on."""
    orphans = await store.call(store.orphans)
    if not orphans:
        return
    dead_letters = DeadLetters(path)
    try:
        for sink, count in orphans.items():
            moved = 0
            while not stop.is_set() and (
                rows := await store.call(store.pending, sink, after=0, limit=_ORPHAN_BATCH)
            ):
                reason = "sink no longer configured"
                await dead_letters.write_many(sink, [(r, r.attempts) for r in rows], reason)
                await store.call(store.delivered, sink, [row.rowid for row in rows])
                moved += len(rows)
            log.warning(
                "sink %s is no longer configured: %d of its %d undelivered event(s) moved to "
                "the dead-letter file %s",
                sink,
                moved,
                count,
                path,
            )
    finally:
        dead_letters.close()


class _Daemon:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        sinks: Sequence[Sink],
        stop: anyio.Event,
        on_ready: Callable[[str], None] | None,
        transport: Transport | None,
        learned: LearnedDurations | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.sinks = list(sinks)
        self.stop = stop
        self.on_ready = on_ready
        self.changes = Changes()
        self.outbox = Outbox(store, self.changes)
        self.feeds = [Feed(store, self.changes, sink.name) for sink in sinks]
        self.engine = _engine(settings, transport, learned)
        self.daemon_metrics = DaemonCollector()
        self.registry = daemon_registry(self.engine, self.daemon_metrics)
        self.started_at = time.time()
        self.stopping = False
        self.events: EventStream | None = None
        self.saved_learned: bytes | None = None  # what _save_learned wrote last

    async def run(self) -> int:
        status = 0
        with anyio.CancelScope() as drain:
            self.drain_scope = drain
            async with anyio.create_task_group() as delivery:
                delivery.start_soon(self._persist)
                for sink, feed in zip(self.sinks, self.feeds, strict=True):
                    delivery.start_soon(
                        functools.partial(run_sink, sink, feed, errors=(OSError, sqlite3.Error))
                    )
                try:
                    status = await self._serve(delivery)
                finally:
                    # The engine is closed: nothing more will be observed. Whatever ended
                    # the run, the rest of the drain is bounded.
                    limit = anyio.current_time() + self.settings.shutdown_timeout_s
                    drain.deadline = min(drain.deadline, limit)
                    self.outbox.close()
        if drain.cancelled_caught:
            log.warning(
                "shutdown deadline reached: %d event(s) not committed (observed again at next "
                "start), undelivered ones stay in the outbox",
                self.outbox.backlog,
            )
        return status

    async def _persist(self) -> None:
        await self.outbox.run()
        for feed in self.feeds:  # everything is committed: the sinks may finish
            feed.close()

    async def _serve(self, delivery: anyio.abc.TaskGroup) -> int:
        settings = self.settings
        credentials = {name: key.reveal() for name, key in settings.credentials.items()}
        async with self.engine as engine:
            # Transitions and tracking failures alike, inline: nothing can overflow.
            engine.on_transition(self.outbox.offer, include_failures=True)
            intake = Intake(
                self.store,
                engine,
                credentials=credentials,
                default_key=settings.api_key is not None,
            )
            resumable = await self.store.call(self.store.resumable)
            resumed = intake.track(resumable)
            log.info("resumed %d job(s)", resumed, extra={"resumed": resumed})
            events = self.events = EventStream(StoreHistory(self.store), self.changes)
            server = await open_control_api(
                settings,
                self.on_ready,
                intake=intake,
                jobs=StoreJobs(self.store),
                events=events,
                metrics=self._metrics,
                health=self._health,
            )
            if server is None:
                return 1
            async with anyio.create_task_group() as intake_tasks:
                intake_tasks.start_soon(self._prune)
                if settings.jobs_from is not None:
                    intake_tasks.start_soon(self._jobs_from, intake)
                await self.stop.wait()
                log.info("stopping: intake closed, draining")
                self.stopping = True
                self.drain_scope.deadline = anyio.current_time() + settings.shutdown_timeout_s
                intake.accepting = False
                intake_tasks.cancel_scope.cancel()
                events.close()
                await server.stop()
        await self._save_learned()
        return 0

    async def _jobs_from(self, intake: Intake) -> None:
        path = self.settings.jobs_from
        assert path is not None
        await intake.read_lines(path, credential=self.settings.jobs_credential)

    async def _prune(self) -> None:
        while True:
            try:
                pruned = await self.store.call(
                    self.store.prune, older_than_s=self.settings.history_retention_s
                )
            except sqlite3.Error as exc:  # a full disk, say: pruning can wait
                log.warning("cannot prune the history: %s", exc)
                pruned = 0
            if pruned:
                log.debug("pruned %d delivered event(s) from the history", pruned)
            await anyio.sleep(_PRUNE_EVERY_S)
            await self._save_learned()  # so even a kill -9 loses at most a minute of it

    async def _save_learned(self) -> None:
        learned = self.engine.learned_durations()
        if learned is None or not learned.kinds:
            return
        body = msgspec.json.encode(learned)
        if body == self.saved_learned:  # nothing learned since: no write
            return
        try:
            await self.store.call(self.store.save_learned, body)
        except sqlite3.Error as exc:
            log.warning("cannot save the learned durations: %s", exc)
            return
        self.saved_learned = body

    async def _metrics(self) -> str:
        counts = await self.store.call(self.store.counts)
        backlog = await self.store.call(self.store.backlog)
        self.daemon_metrics.snapshot = DaemonSnapshot(
            jobs_by_status=counts,
            backlog=backlog,
            sinks=tuple(
                SinkCounters(
                    name=s.name,
                    delivered=s.delivered,
                    dead_lettered=s.dead_lettered,
                    errors=s.errors,
                )
                for s in self.sinks
            ),
            outbox_backlog=self.outbox.backlog,
            sse_clients=self.events.clients if self.events is not None else 0,
        )
        return render(self.registry)

    async def _health(self) -> Health:
        undelivered: dict[str, int] | None = None
        # Unknown if the store fails or is busy: that must not hang /healthz.
        with anyio.move_on_after(_HEALTH_QUERY_S), contextlib.suppress(sqlite3.Error):
            undelivered = await self.store.call(self.store.backlog)
        return report(
            stopping=self.stopping,
            uptime_s=time.time() - self.started_at,
            tracked=self.engine.stats().tracked,
            backlog=Backlog(uncommitted=self.outbox.backlog, undelivered=undelivered),
            reasons=collect(self._health_checks(undelivered)),
        )

    def _health_checks(self, undelivered: dict[str, int] | None) -> list[HealthCheck]:
        """Each component's report for ``/healthz``: a new reason to be degraded is one
        more check here (see :mod:`.health`)."""
        store, outbox, engine = self.store, self.outbox, self.engine
        checks: list[HealthCheck] = [
            lambda: store_reasons(store.write_error, uncommitted=outbox.backlog),
            lambda: api_reasons(engine.stats()),
        ]
        checks += [
            functools.partial(sink_reasons, sink.name, sink.failing, undelivered=undelivered)
            for sink in self.sinks
        ]
        return checks


def running(
    settings: Settings, *, transport: Transport | None = None
) -> contextlib.AbstractAsyncContextManager[str]:
    """Run the daemon in the background (tests, embedding); yields the control API's URL
    and stops it gracefully on exit.

    Raises:
        RuntimeError: the daemon could not start, or did not stop with status 0.
    """

    def serving(stop: anyio.Event, on_ready: Callable[[str], None]) -> Awaitable[int]:
        return serve(settings, stop, on_ready=on_ready, transport=transport)

    return in_background(serving)


async def serve_until_signalled(settings: Settings) -> int:
    """:func:`serve` until SIGTERM or SIGINT (a second one stops at once)."""
    stop = anyio.Event()
    status = 130  # unless serve() returns: stopped at once by a second signal
    async with anyio.create_task_group() as group:

        async def watch_signals() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    if stop.is_set():
                        log.warning("second signal: stopping at once")
                        group.cancel_scope.cancel()
                        return
                    log.info("received %s", signal.Signals(signum).name)
                    stop.set()

        group.start_soon(watch_signals)
        status = await serve(settings, stop)
        group.cancel_scope.cancel()
    return status
