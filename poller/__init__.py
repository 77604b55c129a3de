"""poller: track thousands of Retab jobs over one connection pool.

Quick start::

    import poller

    async with poller.Poller(api_key="rt_live_...") as p:
        p.track("job_123")
        job = await p.wait("job_123", timeout_s=600)
        print(job.status)

See the README for configuration, subscriptions and callbacks.
"""

from ._callbacks import CallbackHandle, TransitionCallback
from ._ids import validate_job_id
from ._version import __version__
from .auth import AuthScheme, Credential
from .blocking import BlockingPoller
from .engine import Poller, PollerArgs
from .errors import (
    APIError,
    AuthenticationError,
    ConfigError,
    ConnectError,
    ConnectionLostError,
    DecodeError,
    InvalidJobIdError,
    JobNotFoundError,
    JobsFailedError,
    PermissionDeniedError,
    PollerClosedError,
    PollerError,
    RateLimitedError,
    RequestError,
    RequestTimeoutError,
    ServerError,
    SubscriberOverflowError,
    TLSError,
    TrackingExpiredError,
    TransportError,
    UnexpectedStatusError,
    UntrackedError,
)
from .events import Event, HealthStats, Histogram, OrgStats, Stats, TrackingFailure, Transition
from .models import Endpoint, Job, JobError, JobId, JobResponse, JobStatus, JobWarning, Status
from .options import PollerOptions, PollerSettings
from .sched.backoff import Backoff
from .sched.learn import LearnedDurations, LearnedKind
from .sched.ratelimit import RateLimit
from .subscription import Subscription, SubscriptionStatistics
from .transport import AiohttpTransport, Transport

__all__ = [
    "APIError",
    "AiohttpTransport",
    "AuthScheme",
    "AuthenticationError",
    "Backoff",
    "BlockingPoller",
    "CallbackHandle",
    "ConfigError",
    "ConnectError",
    "ConnectionLostError",
    "Credential",
    "DecodeError",
    "Endpoint",
    "Event",
    "HealthStats",
    "Histogram",
    "InvalidJobIdError",
    "Job",
    "JobError",
    "JobId",
    "JobNotFoundError",
    "JobResponse",
    "JobStatus",
    "JobWarning",
    "JobsFailedError",
    "LearnedDurations",
    "LearnedKind",
    "OrgStats",
    "PermissionDeniedError",
    "Poller",
    "PollerArgs",
    "PollerClosedError",
    "PollerError",
    "PollerOptions",
    "PollerSettings",
    "RateLimit",
    "RateLimitedError",
    "RequestError",
    "RequestTimeoutError",
    "ServerError",
    "Stats",
    "Status",
    "SubscriberOverflowError",
    "Subscription",
    "SubscriptionStatistics",
    "TLSError",
    "TrackingExpiredError",
    "TrackingFailure",
    "Transition",
    "TransitionCallback",
    "Transport",
    "TransportError",
    "UnexpectedStatusError",
    "UntrackedError",
    "__version__",
    "validate_job_id",
]
