"""The seam between an engine and a fleet of engines: what a coordinator may do.

A coordinator (``poller.redis.RedisCoordinator``) lets several engines, in several
processes or machines, hold each organisation's rate limit together and share what
they learn. The engine knows it only through this protocol, so it imports nothing
of the coordinator's (redis-py is an optional extra):

- :meth:`Coordinator.budget` makes an organisation's :class:`~poller.sched.ratelimit.Budget`
  instead of the engine's own ``AdaptiveBudget``. It must stay a synchronous, local
  object: the hot path asks it on every poll, and no network call may happen there.
  :meth:`Coordinator.forget` drops it when the engine forgets an idle organisation.
- :meth:`Coordinator.claim` is entered by the engine when it opens, before anything
  else, and left once it is closed: a coordinator serves one engine at a time, and a
  second engine given the same one fails to open (``ConfigError``).
- :meth:`Coordinator.run` is the coordinator's background task, started in the
  engine's task group when the engine opens and cancelled when it closes. It talks to
  the shared store, and reaches the engine's learned durations through an
  :class:`EngineLink`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from .sched.learn import LearnedDurations
from .sched.ratelimit import Budget, RateLimit

__all__ = ["Coordinator", "EngineLink"]


@dataclass(frozen=True)
class EngineLink:
    """What a coordinator's background task may reach of its engine.

    Attributes:
        clock: the engine's clock (Unix seconds), the one its budgets are asked with.
        learned: what the engine learned about job durations so far (None: learning off).
        load_learned: replace the engine's knowledge of the kinds in a snapshot by it
            (the fleet's merged tables); kinds not in it are kept.
    """

    clock: Callable[[], float]
    learned: Callable[[], LearnedDurations | None]
    load_learned: Callable[[LearnedDurations], None]


class Coordinator(Protocol):
    """Coordinates the budgets (and learning) of engines that share organisations."""

    def claim(self) -> AbstractContextManager[None]:
        """Reserve the coordinator for one engine while the context lasts; each claim
        starts afresh (no budget, nothing known of the fleet). Raises
        :class:`~poller.ConfigError` when another engine holds it."""
        ...

    def budget(self, org_id: str, limit: RateLimit | None) -> Budget:
        """The budget of ``org_id`` for this engine, given its configured ``limit``
        (None: undisclosed). Called once per organisation the engine meets (again after
        the engine forgot an idle one)."""
        ...

    def forget(self, org_id: str) -> None:
        """The engine forgot ``org_id`` (no job of it for an hour): drop its budget.
        Synchronous and local, like :meth:`budget`."""
        ...

    async def run(self, link: EngineLink) -> None:
        """Run until cancelled (the engine closing): keep the budgets supplied."""
        ...
