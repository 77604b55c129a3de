"""Cluster mode (``poller run --redis URL``): replicas share one job set through Redis,
each job is polled by exactly one live replica, and every transition is committed
once and delivered at least once, whichever replica dies.

Picture three replicas behind a load balancer::

                 POST /jobs, GET /jobs, GET /events (any replica)
                      |              |              |
                 +---------+    +---------+    +---------+
                 |replica a|    |replica b|    |replica c|   each: an engine, an owner,
                 +---------+    +---------+    +---------+   an outbox, its control API
                      \\             |             /
                       +--------- Redis ---------+
        leases <p>replica:<id> (TTL) | partitions <p>slot:<n> (owner, token)
        jobs <p>job:<id>, <p>jobs, <p>status:<s> | events <p>events (a stream)
        sinks: consumer groups of the stream, one holder each

**The job set** (:mod:`.keys`, :mod:`.jobset`). Per job a hash: its credential's *name*
(never the key), metadata, last status, ``seq``, payload, error, when it was added.
The listing pages sorted sets by job ID (all jobs, and one per status); every
replica answers the same. Jobs are split into 256 partitions by ``crc32(id)``.

**Membership and fencing** (:mod:`.membership`, :mod:`.lease`). A replica registers
a lease (a key with a 5 s TTL, renewed every second) and gets a fencing token from
``INCR`` at each registration. It trusts its lease until 1.5 s before the earliest
moment Redis could expire it, on its own monotonic clock; past that it *fences
itself*: it untracks every job and stops every sink, so it has stopped before any
other replica may take over. Its transport also refuses to send a poll for a job it
does not own or while its lease is not trusted (:mod:`.guard`).

**Ownership** (:mod:`.owner`). Partitions go to live replicas by rendezvous hashing;
a partition is *claimed* in Redis (owner and token, by Lua) only when its holder
released it or its lease is gone, and a released one is used 1.5 s after its
release (a second, and a margin for requests still on their way). So a joining
replica gets its partitions once their old owner has stopped polling them, and a
dead replica's partitions are taken over when its lease expires
(about 6 s after a ``kill -9``). The new owner resumes every job from its stored
status and ``seq``. A holder claims what it holds at every step: if Redis lost
recent writes and no longer names it the holder, it stops at once.

**Exactly once in the log** (:mod:`.commit`, :mod:`.scripts`). One Lua script commits
an event: it checks the replica's token, that it holds the job's partition with that
token, and that the event's ``seq`` is the stored ``seq`` + 1; then it writes the
job's new state, appends the event to the stream ``<p>events`` (``XADD``) and keeps
the entry's ID in the job (``e:<seq>``), atomically. A fenced replica's commits are
refused; a takeover neither repeats nor skips a ``seq``.

**At least once to every sink** (:mod:`.stream`). Each push sink is a consumer group
of the stream, delivered by one replica at a time (the sink's holder, claimed as a
partition is); the next holder takes over what its predecessor left pending
(``XAUTOCLAIM``). Webhooks keep their order per job, retries and dead letters (in the
holder's dead-letter file); JSON lines go to the holder's own ``--jsonl`` file. The
stream is trimmed of what every group acknowledged, beyond the history window.

**Events** (:mod:`.sse`). ``GET /events`` reads the stream; ``Last-Event-ID`` finds its
entry through the job's ``e:<seq>``, so a client resumes from any replica.

**Durability.** Nothing is lost when a replica dies: what it committed is in Redis,
what it did not is observed again by the next owner under the same ID. What a crash
of Redis loses depends on its persistence (AOF with ``appendfsync everysec``: about
the last second of transitions); the replica warns at start when Redis persists
nothing, or may evict keys (:func:`.client.check_server`). After such a loss, holders
learn at their next step what Redis no longer names theirs, and sinks make their lost
consumer groups again. Leases are trusted on the replica's monotonic clock and
expired on Redis's wall clock: a step of that clock, or a suspended host, is not
covered (the README says what to do).

**Budgets.** An organisation's rate limit is held across the cluster by issue 16's
``RedisCoordinator``: :func:`.serve.fleet_options` is the hook.

Modules: ``keys``, ``scripts``, ``lease`` (pure), ``client``, ``membership``, ``jobset``,
``commit``, ``owner``, ``guard``, ``stream``, ``sse``, ``status``, ``serve``.
"""

from .client import ClusterError, NotOwnedError
from .serve import ClusterOptions, serve_cluster

__all__ = ["ClusterError", "ClusterOptions", "NotOwnedError", "serve_cluster"]
