"""JobsSimulator: the jobs API answering HTTP requests, purely, at a time it is given.

:meth:`JobsSimulator.handle` takes a method, a raw path, a query, headers, a body
and the time, and returns a :class:`SimResponse`; it never sleeps and never
touches a socket, so the aiohttp shell (``SimServer``) only does the I/O and tests
can drive it with a fake clock.

A request goes through routing (404/405), authentication (401), the caller's
organisation's rate limit (429), then its route. Job GETs are where faults are
injected: the n-th GET of a job draws its faults from ``(seed, job_id, n)`` alone,
so which request of a job misbehaves does not depend on concurrency.

``GET /v1/jobs`` lists the caller's organisation's jobs as Retab's list endpoints
page them: ``{"data": [...], "list_metadata": {"before", "after"}}``, newest first
(creation order breaks ties), ``limit`` 1-100 (default 10). Pass ``list_metadata.after``
back as ``after`` for the next page, ``list_metadata.before`` as ``before`` for the
previous one; each is null at its end.
"""

from __future__ import annotations

__all__ = ["JobsSimulator"]

import bisect
import time
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
import orjson

from ._faults import GARBAGE_BODY, Faults, add_extra_fields, decide, truncate
from ._http import (
    Route,
    SimResponse,
    credential,
    error_response,
    json_response,
    match_route,
    parse_create_body,
    parse_flag,
    parse_list_query,
    split_target,
)
from ._job import TIMESTAMP_FORMATS, JobView, SimJob, TimestampFormat
from ._lifecycle import DEFAULT_OUTCOMES, Outcomes
from ._log import RequestLog, RequestRecord
from ._ratelimit import RETRY_AFTER_STYLES, RetryAfterStyle, SlidingWindow, retry_after_header
from ._store import JobStateError, JobStore

Render = Callable[[SimJob, JobView, Callable[[float], int | str]], dict[str, Any]]


class JobsSimulator(JobStore):
    """A simulated Retab jobs API: a :class:`JobStore` that answers HTTP requests.

    Args:
        seed: seeds every random choice (IDs, keys, lifecycles, faults).
        clock: the time source, in seconds; read whenever a method gets no ``now``.
        time_scale: multiplies every drawn duration (0.01 makes jobs 100x faster).
        outcomes: weights of completed / failed / cancelled for drawn lifecycles.
        faults: fault rates; assign ``sim.faults`` to change them while running.
        timestamp_format: ``"unix"`` (integer seconds, as documented) or ``"iso"``.
        retry_after: the ``Retry-After`` style of 429s: ``"seconds"``, ``"http-date"``
            or ``"none"``.
        disclose_rate_limit: send ``x-ratelimit-limit`` / ``-remaining`` headers and
            name the limit in 429 messages; by default the limit stays hidden.
        log_maxlen: how many request records ``log`` keeps.

    Raises ``ValueError`` for an invalid option.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        clock: Callable[[], float] = time.time,
        time_scale: float = 1.0,
        outcomes: Outcomes = DEFAULT_OUTCOMES,
        faults: Faults | None = None,
        timestamp_format: TimestampFormat = "unix",
        retry_after: RetryAfterStyle = "seconds",
        disclose_rate_limit: bool = False,
        log_maxlen: int = 1_000_000,
    ) -> None:
        super().__init__(
            seed=seed, clock=clock, time_scale=time_scale, outcomes=outcomes, faults=faults
        )
        if timestamp_format not in TIMESTAMP_FORMATS:
            raise ValueError(f"timestamp_format must be 'unix' or 'iso', not {timestamp_format!r}")
        if retry_after not in RETRY_AFTER_STYLES:
            raise ValueError(f"retry_after must be one of {RETRY_AFTER_STYLES}")
        self.timestamp_format: TimestampFormat = timestamp_format
        self.retry_after: RetryAfterStyle = retry_after
        self.disclose_rate_limit = disclose_rate_limit
        self.log = RequestLog(log_maxlen)
        self._limiters: dict[str, SlidingWindow] = {}
        self._request_seq = 0

    def handle(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        now: float | None = None,
    ) -> SimResponse:
        """Answer one HTTP request at ``now`` (default: the clock), and log it.

        ``path`` is the raw, percent-encoded path; a query string in it is merged
        under ``query``. Never raises for any request: bad input gets a 4xx answer.
        """
        now = self._now(now)
        self._request_seq += 1
        path, query = split_target(path, query)
        route = match_route(method, path)
        org_id: str | None = None
        if isinstance(route, SimResponse):
            response = route
        else:
            org_id, response = self._answer(route, query, headers or {}, body, now)
        # The dict of a frozen response is still ours to fill in: every answer gets an ID.
        response.headers["x-request-id"] = f"req_{self._request_seq}"
        job_id = None if isinstance(route, SimResponse) else route.job_id
        client = next((v for k, v in (headers or {}).items() if k.lower() == "user-agent"), None)
        self.log.append(
            RequestRecord(
                now, org_id, job_id, method, path, response.status, response.fault, client
            )
        )
        return response

    def _answer(
        self,
        route: Route,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes,
        now: float,
    ) -> tuple[str | None, SimResponse]:
        presented = credential(headers, query)
        if presented is None:
            return None, error_response(401, "Missing API key")
        org_id = self._credentials.get(presented)
        if org_id is None:
            return None, error_response(401, "Invalid API key")
        limit_headers, refusal = self._admit(org_id, now)
        if refusal is not None:
            return org_id, refusal
        response = self._dispatch(route, org_id, query, body, now)
        response.headers.update(limit_headers)
        return org_id, response

    def _admit(self, org_id: str, now: float) -> tuple[dict[str, str], SimResponse | None]:
        """Headers for the caller's org and, when its window is full, the 429 to send."""
        limiter = self._limiter(org_id)
        if limiter is None:
            return {}, None
        wait_s = limiter.try_acquire(now)
        headers: dict[str, str] = {}
        if self.disclose_rate_limit:
            headers["x-ratelimit-limit"] = str(limiter.limit_per_s)
            headers["x-ratelimit-remaining"] = str(limiter.remaining(now))
        if wait_s == 0.0:
            return headers, None
        retry_after = retry_after_header(wait_s, now, self.retry_after)
        if retry_after is not None:
            headers["retry-after"] = retry_after
        message = (
            f"Rate limit of {limiter.limit_per_s} requests per second exceeded"
            if self.disclose_rate_limit
            else "Too many requests"
        )
        return headers, error_response(429, {"code": "rate_limited", "message": message}, headers)

    def _dispatch(
        self, route: Route, org_id: str, query: Mapping[str, str], body: bytes, now: float
    ) -> SimResponse:
        if route.name == "create":
            return self._create(org_id, body, now)
        if route.name == "list":
            return self._list(org_id, query, now)
        job = self._jobs.get(route.job_id or "")
        if job is None or job.org_id != org_id:
            # Another org's job is "not found" too: the answer never leaks that it exists.
            return error_response(404, "Job not found")
        if route.name == "status":
            return self._serve(job, now, _render_status)
        if route.name == "job":
            return self._serve_full(job, query, now)
        try:
            if route.name == "cancel":
                self.cancel(job.id, now=now)
            else:
                self.retry(job.id, now=now)
        except JobStateError as exc:
            return error_response(400, str(exc))
        return json_response(200, _render_status(job, job.view(now), self._timestamp))

    def _serve_full(self, job: SimJob, query: Mapping[str, str], now: float) -> SimResponse:
        include_request = parse_flag(query, "include_request")
        include_response = parse_flag(query, "include_response")
        if include_request is None or include_response is None:
            detail = [{"loc": ["query"], "msg": "flags must be booleans", "type": "bool_parsing"}]
            return error_response(422, detail)

        def render(job: SimJob, view: JobView, ts: Callable[[float], int | str]) -> dict[str, Any]:
            return job.full_payload(
                view, ts, include_request=include_request, include_response=include_response
            )

        return self._serve(job, now, render)

    def _serve(self, job: SimJob, now: float, render: Render) -> SimResponse:
        """A job GET, with the faults the job's next request number draws."""
        job.requests_served += 1
        fault, extra = decide(self.seed, job.id, job.requests_served, self.faults)
        if fault == "reset":
            return SimResponse(status=0, headers={}, body=b"", fault=fault, reset=True)
        if fault == "server_error":
            return _faulty(error_response(500, "Internal Server Error"), fault)
        if fault == "unavailable":
            retry_after = {"retry-after": str(self.faults.unavailable_retry_after_s)}
            detail = {"code": "service_unavailable", "message": "Service temporarily unavailable"}
            return _faulty(error_response(503, detail, retry_after), fault)
        if fault == "garbage":
            return SimResponse(
                status=200, headers={"content-type": "text/html"}, body=GARBAGE_BODY, fault=fault
            )
        payload = render(job, job.view(now), self._timestamp)
        if extra:
            add_extra_fields(payload)
        body = orjson.dumps(payload)
        return SimResponse(
            status=200,
            headers={"content-type": "application/json"},
            body=truncate(body) if fault == "truncated" else body,
            fault=fault or ("extra_fields" if extra else None),
            delay_s=self.faults.slow_delay_s if fault == "slow" else 0.0,
        )

    def _create(self, org_id: str, body: bytes, now: float) -> SimResponse:
        parsed = parse_create_body(body)
        if isinstance(parsed, str):
            return error_response(422, [{"loc": ["body"], "msg": parsed, "type": "value_error"}])
        endpoint, request, metadata = parsed
        job = self._jobs[
            self.add_job(
                org_id=org_id, endpoint=endpoint, request=request, metadata=metadata, now=now
            )
        ]
        payload = job.full_payload(
            job.view(now), self._timestamp, include_request=True, include_response=False
        )
        return json_response(200, payload)

    def _list(self, org_id: str, query: Mapping[str, str], now: float) -> SimResponse:
        parsed = parse_list_query(query)
        if isinstance(parsed, str):
            return error_response(422, [{"loc": ["query"], "msg": parsed, "type": "value_error"}])
        ordered = [job for job in self._jobs.values() if job.org_id == org_id]
        if parsed.order == "desc":
            ordered.reverse()
        position = {job.id: i for i, job in enumerate(ordered)}
        cursor = parsed.after or parsed.before
        if cursor is not None and cursor not in position:
            # Another org's job is no cursor either: the answer never leaks that it exists.
            detail = {
                "loc": ["query"],
                "msg": f"no job {cursor!r} to page from",
                "type": "value_error",
            }
            return error_response(422, [detail])
        # Positions (in ``ordered``) of the jobs the filter keeps, ascending.
        kept = [
            i
            for i, job in enumerate(ordered)
            if parsed.status is None or job.view(now).status == parsed.status
        ]
        if parsed.after is not None:
            start = bisect.bisect_right(kept, position[parsed.after])
            end = min(start + parsed.limit, len(kept))
        elif parsed.before is not None:
            end = bisect.bisect_left(kept, position[parsed.before])
            start = max(0, end - parsed.limit)
        else:
            start, end = 0, min(parsed.limit, len(kept))
        page = [ordered[i] for i in kept[start:end]]
        data = [
            job.full_payload(
                job.view(now), self._timestamp, include_request=False, include_response=False
            )
            for job in page
        ]
        metadata = {
            "before": page[0].id if page and start > 0 else None,
            "after": page[-1].id if page and end < len(kept) else None,
        }
        return json_response(200, {"data": data, "list_metadata": metadata})

    # Helpers

    def _limiter(self, org_id: str) -> SlidingWindow | None:
        """The org's window, made afresh (empty) when its limit was set or changed."""
        limit = self._orgs[org_id].rate_limit_per_s
        if limit is None:
            return None
        limiter = self._limiters.get(org_id)
        if limiter is None or limiter.limit_per_s != limit:
            limiter = self._limiters[org_id] = SlidingWindow(limit)
        return limiter

    def _timestamp(self, at: float) -> int | str:
        return TIMESTAMP_FORMATS[self.timestamp_format](at)


def _render_status(job: SimJob, view: JobView, ts: Callable[[float], int | str]) -> dict[str, Any]:
    return job.status_payload(view, ts)


def _faulty(response: SimResponse, fault: str) -> SimResponse:
    return msgspec.structs.replace(response, fault=fault)
