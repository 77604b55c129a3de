"""The simulator's request log: what every request was, and what it got."""

from __future__ import annotations

__all__ = ["RequestLog", "RequestRecord"]

import collections
from collections.abc import Iterator

import msgspec


class RequestRecord(msgspec.Struct, frozen=True):
    """One request the simulator answered.

    ``at`` is the simulator clock's time; ``org_id`` the caller's organisation (None
    when unauthenticated); ``job_id`` the decoded job ID of the path (None for
    routes without one); ``status`` the HTTP status, 0 when the connection was reset
    without a response; ``fault`` the injected fault, if any; ``client`` the request's
    ``User-Agent`` (a cluster replica names itself there), None without one.
    """

    at: float
    org_id: str | None
    job_id: str | None
    method: str
    path: str
    status: int
    fault: str | None
    client: str | None = None


class RequestLog:
    """The last ``maxlen`` request records, plus counters over every request ever logged.

    The counters (``status_counts``, ``fault_counts``) are not bounded by ``maxlen``:
    they keep counting after old records are dropped.
    """

    __slots__ = ("_records", "fault_counts", "status_counts")

    def __init__(self, maxlen: int = 1_000_000) -> None:
        self._records: collections.deque[RequestRecord] = collections.deque(maxlen=maxlen)
        self.status_counts: collections.Counter[int] = collections.Counter()
        self.fault_counts: collections.Counter[str] = collections.Counter()

    def append(self, record: RequestRecord) -> None:
        """Log ``record`` and count its status and fault."""
        self._records.append(record)
        self.status_counts[record.status] += 1
        if record.fault is not None:
            self.fault_counts[record.fault] += 1

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[RequestRecord]:
        return iter(self._records)

    def clear(self) -> None:
        """Forget every record and reset the counters."""
        self._records.clear()
        self.status_counts.clear()
        self.fault_counts.clear()

    def for_job(self, job_id: str) -> list[RequestRecord]:
        """The kept records of requests for ``job_id``, oldest first."""
        return [r for r in self._records if r.job_id == job_id]

    def max_requests_in_window(
        self, org_id: str, window_s: float = 1.0, *, include_rejected: bool = True
    ) -> int:
        """The most requests of ``org_id`` in any window ``(t - window_s, t]`` of the log.

        Rejected requests (429) count unless ``include_rejected`` is False; with it
        False the answer is what the rate limit guarantees to stay at or below.
        """
        times = sorted(
            r.at
            for r in self._records
            if r.org_id == org_id and (include_rejected or r.status != 429)
        )
        best = 0
        first = 0
        for last, at in enumerate(times):
            while times[first] <= at - window_s:
                first += 1
            best = max(best, last - first + 1)
        return best
