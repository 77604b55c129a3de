"""The engine's transport in cluster mode: it sends a poll only for a job this replica
owns, while its lease is to be trusted, and it can call back the polls in flight.

The owner untracks a job before it lets go of it, and the lease watchdog fences the
replica on time; this check catches what slips between (an event loop that stalled
past the lease's deadline, say): the request is not sent, the poll fails with
:class:`~.client.NotOwnedError`, and asking fences the replica if its lease ran out,
which untracks every job, so the failure is ignored.

A poll already on its way when its job is let go of (its connection still opening,
say) could otherwise reach the API after the next owner's first: before the owner
releases partitions it waits until none of their polls is in flight
(:meth:`OwnedOnly.settle`, bounded; what is left is cancelled), and a fence cancels
every poll in flight at once (:meth:`OwnedOnly.cancel`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable

import anyio

from ...auth import Credential
from ...models import Job, JobId, JobStatus
from ...transport import Transport
from .client import NotOwnedError

__all__ = ["OwnedOnly"]


class OwnedOnly:
    """A :class:`~poller.transport.Transport` that asks ``allows(job_id)`` before each
    status request and forwards it to ``inner`` only if allowed."""

    def __init__(self, inner: Transport, allows: Callable[[str], bool]) -> None:
        self._inner = inner
        self._allows = allows
        self._flying: dict[str, list[anyio.CancelScope]] = {}
        self._landed: anyio.Event | None = None  # set when a poll ends, while settling

    @property
    def in_flight(self) -> int:
        """Polls sent and not answered yet."""
        return sum(len(scopes) for scopes in self._flying.values())

    async def get_status(self, job_id: JobId, credential: Credential) -> JobStatus:
        """``inner.get_status``, if this replica may poll the job.

        Raises:
            NotOwnedError: it may not; nothing was sent. Or the poll was cancelled (the
                job was let go of while it was in flight).
        """
        if not self._allows(job_id):
            raise NotOwnedError("not this replica's job to poll (not sent)", job_id=job_id)
        scope = anyio.CancelScope()
        scopes = self._flying.setdefault(job_id, [])
        scopes.append(scope)
        try:
            with scope:
                return await self._inner.get_status(job_id, credential)
        finally:
            scopes.remove(scope)
            if not scopes:
                del self._flying[job_id]
            if self._landed is not None:
                self._landed.set()
        raise NotOwnedError("no longer this replica's job: the poll was cancelled", job_id=job_id)

    def cancel(self, job_ids: Iterable[str] | None = None) -> int:
        """Cancel the polls in flight of these jobs (None: of every job); returns how
        many."""
        wanted = self._flying.keys() if job_ids is None else job_ids
        scopes = [scope for job_id in wanted for scope in self._flying.get(job_id, ())]
        for scope in scopes:
            scope.cancel()
        return len(scopes)

    async def settle(self, job_ids: Collection[str], timeout_s: float) -> int:
        """Wait until no poll of these jobs is in flight, ``timeout_s`` at most, then
        cancel those still in flight; returns how many."""
        try:
            with anyio.move_on_after(timeout_s):
                while any(job_id in job_ids for job_id in self._flying):
                    self._landed = anyio.Event()
                    await self._landed.wait()
                return 0
        finally:
            self._landed = None
        return self.cancel([job_id for job_id in self._flying if job_id in job_ids])

    async def get_job(
        self,
        job_id: JobId,
        credential: Credential,
        *,
        include_request: bool = False,
        include_response: bool = True,
    ) -> Job:
        """``inner.get_job`` (a user's fetch, not a poll: not checked)."""
        return await self._inner.get_job(
            job_id, credential, include_request=include_request, include_response=include_response
        )

    async def aclose(self) -> None:
        """Close ``inner``."""
        await self._inner.aclose()
