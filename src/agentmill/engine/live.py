"""Ephemeral run events: what a running step is doing right now (token deltas, tool calls).

They are high-volume and only worth something to whoever watches at that moment, so they are not
rows in the events log (decision 8 keeps that log for what happened, not for every token): they
go from the worker that produces them to the run's live followers and are then gone. A follower
that connects late sees no past deltas; the step's output arrives with ``step.succeeded``.

Within one process (embedded mode: API and workers together) they are handed over in memory.
Across processes they travel over Redis pub/sub, one channel per root run, when a Redis URL is
configured; without Redis, followers in other processes see only the durable log. Nothing is
published to a run nobody follows: :meth:`LiveBus.watched` says whether anyone does.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:  # Redis loads only when live events cross processes
    from agentmill.engine.live_redis import RedisRelay

log = structlog.get_logger("agentmill.live")

LiveEvent = dict[str, Any]
LiveListener = Callable[[LiveEvent], None]

DELTA = "step.delta"  # a piece of a model's answer (coalesced)
TOOL = "step.tool"  # a tool call started or ended (its audit record stays in the events log)
# Whether another process follows a run is asked of Redis at most this often per run.
_WATCH_CACHE_SECONDS = 1.0


def live_event(
    *,
    run_id: str,
    step_key: str,
    attempt: int,
    type: str,
    data: dict[str, Any],
    level: str = "info",
) -> LiveEvent:
    """An ephemeral event, shaped like a durable one on the wire but with no id."""
    return {
        "run_id": run_id,
        "step_key": step_key,
        "attempt": attempt,
        "type": type,
        "level": level,
        "ts": datetime.now(UTC).isoformat(),
        "data": data,
        "ephemeral": True,
    }


class LiveBus:
    """Routes ephemeral events by root run id to this process's listeners and, with Redis, to
    other processes' buses."""

    def __init__(self, redis_url: str | None = None) -> None:
        self.id = os.urandom(8).hex()  # a bus ignores what it published itself via Redis
        self._listeners: dict[str, list[LiveListener]] = {}
        self._relay: RedisRelay | None = None
        if redis_url:
            from agentmill.engine.live_redis import RedisRelay

            self._relay = RedisRelay(redis_url, self.id, self._deliver)
        self._remote_cache: dict[str, tuple[float, bool]] = {}

    async def subscribe(self, root_run_id: str, listener: LiveListener) -> Callable[[], None]:
        """Call ``listener`` with the run's (and its sub-runs') ephemeral events until the
        returned function is called. Returns once other processes' events can arrive too."""
        listeners = self._listeners.setdefault(root_run_id, [])
        listeners.append(listener)
        if self._relay is not None and len(listeners) == 1:
            await self._relay.subscribe(root_run_id)

        def unsubscribe() -> None:
            current = self._listeners.get(root_run_id, [])
            if listener in current:
                current.remove(listener)
            gone = not current and self._listeners.pop(root_run_id, None) is not None
            if gone and self._relay is not None:
                self._relay.unsubscribe(root_run_id)

        return unsubscribe

    async def watched(self, root_run_id: str) -> bool:
        """Whether anyone follows the run now (here, or in another process via Redis)."""
        if self._listeners.get(root_run_id):
            return True
        return await self._remote_watched(root_run_id)

    async def publish(self, root_run_id: str, event: LiveEvent) -> None:
        """Hand ``event`` to the run's followers; never raises (live events are best effort)."""
        self._deliver(root_run_id, event)
        if self._relay is not None and await self._remote_watched(root_run_id):
            await self._relay.publish(root_run_id, event)

    async def aclose(self) -> None:
        if self._relay is not None:
            await self._relay.aclose()

    async def _remote_watched(self, root_run_id: str) -> bool:
        if self._relay is None:
            return False
        now = time.monotonic()
        cached = self._remote_cache.get(root_run_id)
        if cached is not None and now - cached[0] < _WATCH_CACHE_SECONDS:
            return cached[1]
        watched = await self._relay.others_subscribed(root_run_id)
        if len(self._remote_cache) > 10_000:  # runs come and go; keep the cache bounded
            self._remote_cache.clear()
        self._remote_cache[root_run_id] = (now, watched)
        return watched

    def _deliver(self, root_run_id: str, event: LiveEvent) -> None:
        for listener in list(self._listeners.get(root_run_id, ())):
            try:
                listener(event)
            except Exception:  # one broken follower must not break the step or the others
                log.exception("live listener failed", run_id=root_run_id)
