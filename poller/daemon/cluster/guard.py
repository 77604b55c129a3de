"""The engine's transport in cluster mode: it sends a poll only for a job this replica
owns, while its lease is to be trusted.

The owner untracks a job before it lets go of it, and the lease watchdog fences the
replica on time; this check catches what slips between (an event loop that stalled
past the lease's deadline, say): the request is not sent, the poll fails with
:class:`~.client.NotOwnedError`, and asking fences the replica if its lease ran out,
which untracks every job, so the failure is ignored.
"""

from __future__ import annotations

from collections.abc import Callable

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

    async def get_status(self, job_id: JobId, credential: Credential) -> JobStatus:
        """``inner.get_status``, if this replica may poll the job.

        Raises:
            NotOwnedError: it may not; nothing was sent.
        """
        if not self._allows(job_id):
            raise NotOwnedError("not this replica's job to poll (not sent)", job_id=job_id)
        return await self._inner.get_status(job_id, credential)

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
