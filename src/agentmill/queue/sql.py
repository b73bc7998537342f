"""The database as the queue: workers claim ready steps from the steps table itself."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from agentmill.engine.claims import Claim
from agentmill.store.db import Tx

if TYPE_CHECKING:
    from agentmill.engine.engine import Engine


class SqlQueue:
    """Claims with one transaction per batch (``FOR UPDATE SKIP LOCKED`` on PostgreSQL).
    Workers wake on this process's commits and, on PostgreSQL, on other processes' NOTIFY."""

    name = "sql"

    def __init__(
        self,
        engine: Engine,
        *,
        owner: str,
        root_run_id: str | None = None,
        queues: tuple[str, ...] | None = None,
    ) -> None:
        self._engine = engine
        self._queues = queues
        self._owner = owner
        self._root_run_id = root_run_id

    async def start(self, wake: Callable[[], None]) -> None:
        return None

    async def take(self, limit: int) -> list[Claim]:
        transitions = self._engine.transitions

        def claim(tx: Tx) -> list[Claim]:
            return transitions.claim(
                tx,
                owner=self._owner,
                limit=limit,
                root_run_id=self._root_run_id,
                queues=self._queues,
            )

        return await self._engine.db.write(claim)

    async def done(self, step_ids: Iterable[str]) -> None:
        return None

    async def keep_alive(self, step_ids: Iterable[str]) -> None:
        return None

    async def take_over(self, owners: Iterable[str]) -> None:
        return None  # the claim finds their expired leases itself

    async def close(self) -> None:
        return None
