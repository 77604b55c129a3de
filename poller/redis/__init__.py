"""Scaling out: engines in several processes and machines share each organisation's
budget, and what they learn about job durations, through Redis.

Install with ``pip install 'poller[redis]'`` (redis-py's asyncio client, with hiredis)::

    from poller.redis import RedisCoordinator

    coord = RedisCoordinator("redis://127.0.0.1:6379/0", namespace="poller")
    async with poller.Poller(rate_limit=poller.RateLimit(per_s=100), coordinator=coord) as p:
        ...

Modules: ``_lease`` (the budget the hot path spends, pure), ``_scripts`` (the Lua
scripts and the key layout), ``_learning`` (merging learned durations, pure),
``_client`` (the connection), ``_coordinator`` (the background loops, and what happens
when Redis fails).
"""

from ._coordinator import RedisCoordinator
from ._lease import LeasedBudget

__all__ = ["LeasedBudget", "RedisCoordinator"]
