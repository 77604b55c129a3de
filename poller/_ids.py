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

__all__ = ["MAX_JOB_ID_LENGTH", "fast_valid", "validate_job_id"]

MAX_JOB_ID_LENGTH: Final = 256
_VALID: Final = re.compile(r"[A-Za-z0-9_.~:\-]+")
fast_valid: Final = _VALID.fullmatch
"""The character check alone (None: refused), for hot paths; see :func:`validate_job_id`."""


def validate_job_id(job_id: object) -> str:
    """Return ``job_id`` (as a plain ``str``) if it is a safe job ID; raise
    :class:`InvalidJobIdError` otherwise."""
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
    return job_id
