"""Redis connections for the parts that talk to Redis once per call or step (budgets, rate
limits, live events): a bounded pool in which a caller waits for a free connection.

redis-py's default pool raises "Too many connections" once 100 are in use, and a worker with
thousands of steps at once makes thousands of calls at once: each would have failed as if Redis
were down (a budget or rate limit store that cannot be reached refuses the call).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # redis loads in the processes that use it, not in every command
    from redis.asyncio import BlockingConnectionPool, Redis

# Enough for round trips to overlap well; each process holds up to this many per pool.
MAX_CONNECTIONS = 64
# How long a caller waits for a connection before it is an error (Redis is stuck, not busy).
WAIT_SECONDS = 10.0
# How long a connection or a reply may take. A Redis that accepts but never answers (stuck, or
# cut off without a reset) then fails the call, which is refused, instead of hanging it.
SOCKET_TIMEOUT = 5.0


def redis_pool(url: str) -> BlockingConnectionPool:
    """A pool of up to :data:`MAX_CONNECTIONS` connections to ``url``; callers beyond them wait."""
    from redis.asyncio import BlockingConnectionPool

    return BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=WAIT_SECONDS,
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=SOCKET_TIMEOUT,
    )


def redis_client(url: str) -> Redis:
    """A client on its own :func:`redis_pool`, closed with the client."""
    from redis.asyncio import Redis

    return Redis.from_pool(redis_pool(url))
