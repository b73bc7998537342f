"""Step queues: how a worker learns which steps to run (DESIGN decision 2).

The database is the truth; a queue only carries "step S may start" to workers, at least once.
Whatever a queue delivers, a worker still claims the step in the database (a conditional update
on its status, attempt and lease), so a duplicate or stale message changes nothing.

* ``sql`` (the default): workers claim ready steps straight from the steps table
  (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; one writer on SQLite).
* ``redis``: Redis Streams with a consumer group (``AGENTMILL_QUEUE_URL=redis://…``); see
  :mod:`agentmill.queue.redis_streams`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

from agentmill.engine.claims import Claim
from agentmill.errors import ConfigError

if TYPE_CHECKING:
    from agentmill.engine.engine import Engine


class StepQueue(Protocol):
    """What a worker asks of its queue."""

    name: str

    async def start(self, wake: Callable[[], None]) -> None:
        """Begin; call ``wake`` when there may be work to take."""

    async def take(self, limit: int) -> list[Claim]:
        """Claim up to ``limit`` steps that may start now."""

    async def done(self, step_ids: Iterable[str]) -> None:
        """These steps need no more delivery (recorded, given back, or lost to another)."""

    async def keep_alive(self, step_ids: Iterable[str]) -> None:
        """These steps are still running here (with each lease heartbeat)."""

    async def take_over(self, owners: Iterable[str]) -> None:
        """These workers were declared lost (their steps' leases expired): have what the queue
        still holds for them delivered again now."""

    async def close(self) -> None: ...


def queue_backend(url: str | None) -> str:
    """The backend a queue URL selects: ``sql`` (unset, or ``sql``) or ``redis``."""
    if not url or url == "sql":
        return "sql"
    if url.startswith(("redis://", "rediss://", "unix://")):
        return "redis"
    raise ConfigError(
        f"AGENTMILL_QUEUE_URL {url!r} is not a queue: leave it unset (or `sql`) for the "
        "database's own queue, or give redis://host:6379/0 for Redis Streams"
    )


def open_queue(
    url: str | None,
    engine: Engine,
    *,
    owner: str,
    free: Callable[[], int],
    root_run_id: str | None = None,
    queues: tuple[str, ...] | None = None,
) -> StepQueue:
    """The queue ``url`` selects, for the worker ``owner`` (``free()``: its empty slots),
    carrying the steps of the named ``queues`` it serves (None: every queue)."""
    if queue_backend(url) == "sql" or root_run_id is not None:
        # A worker bound to one run (``agentmill run``) claims that run's steps directly.
        from agentmill.queue.sql import SqlQueue

        return SqlQueue(engine, owner=owner, root_run_id=root_run_id, queues=queues)
    from agentmill.queue.redis_streams import RedisQueue

    assert url is not None
    return RedisQueue(url, engine, owner=owner, free=free, queues=queues)
