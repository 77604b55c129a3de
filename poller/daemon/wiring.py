"""What ``poller run`` wires the same way in both modes (one node, or a replica of a
cluster): its push sinks, its control API's server, and running it in the background."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio

from .api import ControlServer, EventSource, JobIntake, JobsView, build_app
from .config import Settings
from .health import Health
from .signature import signing_key
from .sinks import JsonlSink, Sink
from .webhook import DeadLetters, WebhookSink

__all__ = ["build_sinks", "in_background", "open_control_api"]

log = logging.getLogger("poller.daemon")


def build_sinks(settings: Settings) -> tuple[list[Sink], DeadLetters | None]:
    """The push sinks the settings name, and the dead-letter file of the webhooks."""
    sinks: list[Sink] = []
    if settings.jsonl is not None:
        sinks.append(JsonlSink(settings.jsonl))
    dead_letters = DeadLetters(settings.dead_letter_path) if settings.webhooks else None
    for url in settings.webhooks:
        assert settings.webhook_secret is not None and dead_letters is not None
        sinks.append(
            WebhookSink(
                url,
                key=signing_key(settings.webhook_secret.reveal()),
                dead_letters=dead_letters,
                max_attempts=settings.webhook_max_attempts,
                timeout_s=settings.webhook_timeout_s,
                backoff_s=settings.webhook_backoff_s,
                backoff_max_s=settings.webhook_backoff_max_s,
                concurrency=settings.webhook_concurrency,
            )
        )
    return sinks, dead_letters


async def open_control_api(
    settings: Settings,
    on_ready: Callable[[str], None] | None,
    *,
    intake: JobIntake,
    jobs: JobsView,
    events: EventSource,
    metrics: Callable[[], Awaitable[str]],
    health: Callable[[], Awaitable[Health]],
) -> ControlServer | None:
    """Serve the control API (:func:`~.api.build_app` of these parts) where the settings
    say; tell ``on_ready`` its URL. None (logged) if the address cannot be used."""
    token = settings.control_token.reveal() if settings.control_token else None
    app = build_app(
        intake=intake, jobs=jobs, events=events, metrics=metrics, health=health, token=token
    )
    server = ControlServer(app, host=settings.host, port=settings.port)
    try:
        url = await server.start()
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", settings.host, settings.port, exc)
        return None
    log.info("control API listening on %s", url, extra={"url": url})
    if on_ready is not None:
        on_ready(url)
    return server


ServeFunction = Callable[[anyio.Event, Callable[[str], None]], Awaitable[int]]
"""Serves until the event is set; calls back with the control API's URL once it listens;
returns the exit status."""


@asynccontextmanager
async def in_background(serve: ServeFunction) -> AsyncIterator[str]:
    """Run ``serve`` in the background (tests, embedding); yields the control API's URL
    and stops it gracefully on exit.

    Raises:
        RuntimeError: it could not start, or did not stop with status 0.
    """
    stop = anyio.Event()
    ready = anyio.Event()
    urls: list[str] = []
    statuses: list[int] = []

    def on_ready(url: str) -> None:
        urls.append(url)
        ready.set()

    async def main() -> None:
        try:
            statuses.append(await serve(stop, on_ready))
        finally:
            ready.set()

    async with anyio.create_task_group() as group:
        group.start_soon(main)
        await ready.wait()
        if urls:
            try:
                yield urls[0]
            finally:
                stop.set()
    if not urls:
        raise RuntimeError(f"the daemon did not start (status {statuses})")
    if statuses != [0]:
        raise RuntimeError(f"the daemon stopped with status {statuses}")
