"""The tools' view of workspaces' own egress policies: read from the database, kept for a few
seconds per process (like the gateway's policies in ``gateway_policies``)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from agentmill.store.db import Database
from agentmill.store.repositories.egress import get_egress


class DatabaseEgress:
    """A :class:`agentmill.tools.registry.EgressSource` reading the database.

    A workspace's policy is cached for ``ttl`` seconds: an agent's http_request calls cost no
    query, and a change applies in every process within that time. ``forget`` drops one at
    once (the API process that changed it calls it).
    """

    def __init__(self, db: Database, *, ttl: float = 5.0) -> None:
        self.db = db
        self.ttl = ttl
        self._cache: dict[str, tuple[float, Mapping[str, Any] | None]] = {}

    def forget(self, workspace_id: str) -> None:
        self._cache.pop(workspace_id, None)

    async def egress(self, workspace_id: str) -> Mapping[str, Any] | None:
        cached = self._cache.get(workspace_id)
        if cached is not None and time.monotonic() - cached[0] < self.ttl:
            return cached[1]
        record = await self.db.read(lambda tx: get_egress(tx, workspace_id), point=True)
        settings = None if record is None else record.as_settings()
        self._cache[workspace_id] = (time.monotonic(), settings)
        return settings
