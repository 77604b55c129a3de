"""The webhook signature, as Standard Webhooks (https://www.standardwebhooks.com) lay it out.

Every POST carries three headers:

- ``webhook-id``: the event's stable ``id``, ``<job_id>:<seq>``, the same on every retry;
- ``webhook-timestamp``: when this attempt was signed, in whole Unix seconds;
- ``webhook-signature``: ``v1,`` then the base64 HMAC-SHA256 of
  ``f"{webhook-id}.{webhook-timestamp}.{body}"`` (space-separated if there were more).

The key comes from the configured secret: a Standard Webhooks secret (``whsec_`` then
base64) is the base64-decoded bytes; any other secret is its UTF-8 bytes. Either way
the key must be 16 bytes or more. The timestamp is signed too, so a receiver that
refuses old timestamps (five minutes: :func:`verify`'s default) refuses replays.

Pure: no I/O; the key never appears in a message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping
from typing import Final

__all__ = [
    "ID_HEADER",
    "MIN_KEY_BYTES",
    "SECRET_PREFIX",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "TOLERANCE_S",
    "headers",
    "sign",
    "signing_key",
    "verify",
]

ID_HEADER: Final = "webhook-id"
TIMESTAMP_HEADER: Final = "webhook-timestamp"
SIGNATURE_HEADER: Final = "webhook-signature"
SECRET_PREFIX: Final = "whsec_"
MIN_KEY_BYTES: Final = 16
TOLERANCE_S: Final = 300.0
_VERSION: Final = "v1,"


def signing_key(secret: str) -> bytes:
    """The HMAC key of ``secret``: ``whsec_<base64>`` decoded, or the UTF-8 bytes.

    Raises:
        ValueError: ``whsec_`` not followed by base64, or a key under 16 bytes (the
            message never quotes the secret).
    """
    if secret.startswith(SECRET_PREFIX):
        try:
            key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"after {SECRET_PREFIX!r} must come base64") from None
    else:
        key = secret.encode()
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"must give a key of at least {MIN_KEY_BYTES} bytes")
    return key


def sign(key: bytes, msg_id: str, timestamp: int | str, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,`` and the base64 HMAC-SHA256 of
    ``{msg_id}.{timestamp}.{body}``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return _VERSION + base64.b64encode(digest).decode()


def headers(key: bytes, msg_id: str, body: bytes, *, now: float | None = None) -> dict[str, str]:
    """The three signature headers of a POST of ``body`` sent ``now`` (Unix seconds)."""
    timestamp = int(time.time() if now is None else now)
    return {
        ID_HEADER: msg_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(key, msg_id, timestamp, body),
    }


def verify(
    key: bytes,
    received: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
    tolerance_s: float = TOLERANCE_S,
) -> bool:
    """True if ``received`` (the request's headers, with lower-case names or a
    case-insensitive mapping) sign ``body`` under ``key`` and the timestamp is within
    ``tolerance_s`` of ``now``. Compares in constant time."""
    msg_id = received.get(ID_HEADER)
    stamp = received.get(TIMESTAMP_HEADER)
    signatures = received.get(SIGNATURE_HEADER)
    if msg_id is None or stamp is None or signatures is None or not stamp.isascii():
        return False
    try:
        timestamp = int(stamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = sign(key, msg_id, stamp, body).encode()  # the header as sent, not re-formatted
    return any(
        hmac.compare_digest(expected, given.encode("utf-8", "surrogateescape"))
        for given in signatures.split()
    )
