"""The HTTP vocabulary of the pure simulator: responses, routes, and request parsing.

No sockets here: these functions turn a method, a raw path, a query and headers
into values the model acts on, and its answers into a :class:`SimResponse` that the
aiohttp shell (or a test) delivers.
"""

from __future__ import annotations

__all__ = [
    "ListQuery",
    "Route",
    "SimResponse",
    "credential",
    "error_response",
    "json_response",
    "match_route",
    "parse_create_body",
    "parse_flag",
    "parse_list_query",
    "split_target",
]

import urllib.parse
from collections.abc import Mapping
from typing import Any, Final

import msgspec
import orjson

from ._lifecycle import ENDPOINTS, TERMINAL_STATUSES

_JSON: Final = "application/json"
_MAX_METADATA_PAIRS: Final = 16
_LIST_LIMIT_DEFAULT: Final = 10
_LIST_LIMIT_MAX: Final = 100
_LIST_STATUSES: Final = frozenset({"validating", "queued", "in_progress", *TERMINAL_STATUSES})
_TRUE: Final = frozenset({"true", "1", "yes", "on"})
_FALSE: Final = frozenset({"false", "0", "no", "off"})
_ACTIONS: Final = {"status": "GET", "cancel": "POST", "retry": "POST"}


class SimResponse(msgspec.Struct, frozen=True, kw_only=True):
    """What the simulator answers to one request.

    ``status`` is 0 and ``body`` empty when ``reset`` is True: the server must abort
    the connection instead of answering. ``delay_s`` is how long to wait before
    sending. ``fault`` names the injected fault, if any.
    """

    status: int
    headers: dict[str, str]
    body: bytes
    fault: str | None = None
    delay_s: float = 0.0
    reset: bool = False

    def json(self) -> Any:
        """The decoded body (for tests). Raises ``orjson.JSONDecodeError`` if not JSON."""
        return orjson.loads(self.body)


class Route(msgspec.Struct, frozen=True):
    """A matched route: its name (``status``, ``job``, ``list``, ``create``, ``cancel``,
    ``retry``) and the decoded job ID of the path (None for ``list`` and ``create``)."""

    name: str
    job_id: str | None


class ListQuery(msgspec.Struct, frozen=True, kw_only=True):
    """The parameters of ``GET /v1/jobs``: at most ``limit`` jobs, newest first unless
    ``order`` is ``asc``, after (or before) the job ID of a cursor, of one ``status``."""

    limit: int = _LIST_LIMIT_DEFAULT
    order: str = "desc"
    before: str | None = None
    after: str | None = None
    status: str | None = None


def json_response(
    status: int, payload: Any, headers: Mapping[str, str] | None = None
) -> SimResponse:
    """A JSON response encoded with orjson."""
    return SimResponse(
        status=status,
        headers={"content-type": _JSON, **(headers or {})},
        body=orjson.dumps(payload),
    )


def error_response(
    status: int, detail: Any, headers: Mapping[str, str] | None = None
) -> SimResponse:
    """An error in the API's shape: ``{"detail": "text"}`` or ``{"detail": {code, message}}``."""
    return json_response(status, {"detail": detail}, headers)


def split_target(path: str, query: Mapping[str, str] | None) -> tuple[str, dict[str, str]]:
    """The path without its query string, and the query: ``query`` merged over the string's."""
    path, _, raw_query = path.partition("?")
    merged = dict(urllib.parse.parse_qsl(raw_query, keep_blank_values=True))
    merged.update(query or {})
    return path, merged


def match_route(method: str, path: str) -> Route | SimResponse:
    """The route ``method`` and the raw (still percent-encoded) ``path`` address, or the
    404/405 answer when none matches.

    The path is split on ``/`` before each segment is percent-decoded, so an encoded
    slash or dot in a job ID stays inside the ID (which then matches no job) instead of
    changing the route.
    """
    parts = path.split("/")
    if parts[:3] != ["", "v1", "jobs"] or len(parts) > 5:
        return error_response(404, "Not Found")
    job_id = urllib.parse.unquote(parts[3]) if len(parts) > 3 else None
    if len(parts) == 3:
        if method not in ("GET", "POST"):
            return error_response(405, "Method Not Allowed", {"allow": "GET, POST"})
        return Route("list" if method == "GET" else "create", None)
    if len(parts) == 4:
        name, allowed = "job", "GET"
    elif parts[4] in _ACTIONS:
        name, allowed = parts[4], _ACTIONS[parts[4]]
    else:
        return error_response(404, "Not Found")
    if method != allowed:
        return error_response(405, "Method Not Allowed", {"allow": allowed})
    return Route(name, job_id)


def credential(headers: Mapping[str, str], query: Mapping[str, str]) -> tuple[str, str] | None:
    """The credential a request carries, as (kind, value), kind being ``key`` or ``token``.

    ``Api-Key`` comes first, then ``Authorization: Bearer``, then the ``access_token``
    query parameter. Header names match case-insensitively, whatever the mapping.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    if "api-key" in lowered:
        return "key", lowered["api-key"]
    scheme, _, bearer = lowered.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and bearer.strip():
        return "key", bearer.strip()
    token = query.get("access_token")
    return ("token", token) if token else None


def parse_flag(query: Mapping[str, str], name: str) -> bool | None:
    """A boolean query flag (default False), or None when its value is not a boolean."""
    value = query.get(name, "false").lower()
    if value in _TRUE:
        return True
    return False if value in _FALSE else None


def parse_list_query(query: Mapping[str, str]) -> ListQuery | str:
    """The parameters of ``GET /v1/jobs`` (other query parameters are ignored), or why
    they are invalid."""
    try:
        limit = int(query.get("limit", _LIST_LIMIT_DEFAULT))
    except ValueError:
        limit = 0
    if not 1 <= limit <= _LIST_LIMIT_MAX:
        return f"limit must be an integer from 1 to {_LIST_LIMIT_MAX}"
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        return "order must be asc or desc"
    before, after = query.get("before") or None, query.get("after") or None
    if before is not None and after is not None:
        return "give before or after, not both"
    status = query.get("status") or None
    if status is not None and status not in _LIST_STATUSES:
        return f"status must be one of {', '.join(sorted(_LIST_STATUSES))}"
    return ListQuery(limit=limit, order=order, before=before, after=after, status=status)


def parse_create_body(body: bytes) -> tuple[str, dict[str, Any], dict[str, str] | None] | str:
    """``(endpoint, request, metadata)`` from a ``POST /v1/jobs`` body, or why it is invalid."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "body is not valid JSON"
    if not isinstance(data, dict):
        return "body must be a JSON object"
    endpoint, request, metadata = data.get("endpoint"), data.get("request"), data.get("metadata")
    if endpoint not in ENDPOINTS:
        return f"endpoint must be one of {', '.join(ENDPOINTS)}"
    if not isinstance(request, dict):
        return "request must be an object"
    if metadata is not None and not (
        isinstance(metadata, dict)
        and len(metadata) <= _MAX_METADATA_PAIRS
        and all(isinstance(v, str) for v in metadata.values())
    ):
        return f"metadata must be at most {_MAX_METADATA_PAIRS} string pairs"
    return endpoint, request, metadata
