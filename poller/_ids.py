"""Job ID validation: a job ID must never address another resource.

Retab job IDs look like ``job_V1StGXR8_Z5jdHi6B-myT``. We accept a generous
superset (letters, digits and ``_ - . ~ :``) so a future ID format keeps
working, but nothing that can change the meaning of a URL path: no ``/``, ``?``,
``#``, ``%``, whitespace, control characters, and no ``.`` or ``..`` segment.
What passes is path-safe as is; the transport still percent-encodes it.
"""

from __future__ import annotations

import re
from typing import Final

from .errors import InvalidJobIdError
from .models import JobId

__all__ = ["MAX_JOB_ID_LENGTH", "validate_job_id"]

MAX_JOB_ID_LENGTH: Final = 256
_VALID: Final = re.compile(r"[A-Za-z0-9_.~:\-]+")


def validate_job_id(job_id: object) -> JobId:
    """Check that ``job_id`` is a safe job ID, once: the :data:`~poller.JobId` returned
    (a plain ``str`` at run time) is trusted from then on, by the engine and by every
    transport, and never checked again.

    Raises:
        InvalidJobIdError: not a ``str``, empty, too long, or holding a character that
            could address another resource (see the module docstring).
    """
    if not isinstance(job_id, str):
        raise InvalidJobIdError(f"job ID must be a str, not {type(job_id).__name__}")
    if type(job_id) is not str:
        # A subclass could format itself differently from what is checked here (an
        # f-string calls its __format__): check, and return, the plain string.
        job_id = str.__str__(job_id)
    if not job_id:
        raise InvalidJobIdError("job ID is empty")
    if len(job_id) > MAX_JOB_ID_LENGTH:
        raise InvalidJobIdError(
            f"job ID is {len(job_id)} characters long; the limit is {MAX_JOB_ID_LENGTH}"
        )
    if _VALID.fullmatch(job_id) is None or job_id in (".", ".."):
        shown = job_id if len(job_id) <= 40 else job_id[:40] + "..."
        raise InvalidJobIdError(
            f"job ID {shown!r} holds characters that are not allowed "
            "(letters, digits and _ - . ~ : only, and not '.' or '..')"
        )
    return JobId(job_id)
