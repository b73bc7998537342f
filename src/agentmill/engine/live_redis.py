"""Ephemeral run events between processes over Redis pub/sub (see engine/live.py).

One channel per root run, subscribed only while this process has a follower of that run, so
``PUBSUB NUMSUB`` tells a publisher whether anyone listens and a worker publishes nothing for a
run nobody watches. Redis trouble never reaches a step: live events are best effort, and the
durable log has everything that matters.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import Callable
from typing import Any

import structlog
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from agentmill.domain.backoff import backoff_delay
from agentmill.redis_pool import redis_client

log = structlog.get_logger("agentmill.live")

_PREFIX = "agentmill:live:"
_SUBSCRIBE_WAIT_SECONDS = 2.0
_READ_SECONDS = 1.0
_NUMSUB_BATCH = 1000  # channels asked about in one PUBSUB NUMSUB

Deliver = Callable[[str, dict[str, Any]], None]


def channel(root_run_id: str) -> str:
    return _PREFIX + root_run_id


class RedisRelay:
    """Publishes a bus's events to Redis and delivers other buses' events to it."""

    def __init__(self, url: str, bus_id: str, deliver: Deliver) -> None:
        self._redis = redis_client(url)
        self._bus_id = bus_id
        self._deliver = deliver
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._confirmed: dict[str, asyncio.Event] = {}
        self._pending: set[asyncio.Task[Any]] = set()
        # Who-follows lookups waiting for the next PUBSUB NUMSUB: one future per channel.
        self._asked: dict[str, asyncio.Future[int | None]] = {}
        self._asking: asyncio.Task[None] | None = None

    async def publish(self, root_run_id: str, event: dict[str, Any]) -> None:
        message = json.dumps({"bus": self._bus_id, "root": root_run_id, "event": event})
        try:
            await self._redis.publish(channel(root_run_id), message)
        except (RedisError, OSError) as exc:
            log.warning("cannot publish a live event", run_id=root_run_id, error=str(exc))

    async def others_subscribed(self, root_run_id: str) -> bool:
        """Whether a process other than this one subscribes to the run's channel (False if
        Redis cannot tell). Lookups asked for together (a worker starting thousands of steps)
        share one PUBSUB NUMSUB: a round trip for all of them, not one each."""
        name = channel(root_run_id)
        asked = self._asked.get(name)
        if asked is None:
            asked = self._asked[name] = asyncio.get_running_loop().create_future()
            if self._asking is None or self._asking.done():
                self._asking = asyncio.create_task(self._ask_numsub(), name="agentmill-live-numsub")
        count = await asyncio.shield(asked)  # a caller cancelled does not fail the others
        if count is None:
            return False
        own = self._pubsub is not None and name.encode() in self._pubsub.channels
        return count - (1 if own else 0) > 0

    async def _ask_numsub(self) -> None:
        """Answer every lookup asked for so far, and those asked for meanwhile, in batches."""
        while self._asked:
            batch = dict(itertools.islice(self._asked.items(), _NUMSUB_BATCH))
            for name in batch:
                del self._asked[name]
            counts: dict[str, int] = {}
            try:
                for raw, count in await self._redis.pubsub_numsub(*batch):
                    counts[raw.decode() if isinstance(raw, bytes) else str(raw)] = int(count)
            except (RedisError, OSError) as exc:
                log.warning("cannot ask Redis who follows runs", runs=len(batch), error=str(exc))
            finally:  # answered, or None: unknown (also when this task is cancelled)
                for name, future in batch.items():
                    if not future.done():
                        future.set_result(counts.get(name))

    async def subscribe(self, root_run_id: str) -> None:
        """Subscribe, and wait (briefly) until Redis confirms, so what is published next
        arrives."""
        name = channel(root_run_id)
        confirmed = self._confirmed.setdefault(name, asyncio.Event())
        try:
            if self._pubsub is None:
                self._pubsub = self._redis.pubsub()
            await self._pubsub.subscribe(name)
        except (RedisError, OSError) as exc:
            log.warning("cannot follow a run's live events", run_id=root_run_id, error=str(exc))
            return
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read(), name="agentmill-live-relay")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(confirmed.wait(), timeout=_SUBSCRIBE_WAIT_SECONDS)

    def unsubscribe(self, root_run_id: str) -> None:
        name = channel(root_run_id)
        self._confirmed.pop(name, None)
        if self._pubsub is None:
            return
        task = asyncio.create_task(self._unsubscribe(self._pubsub, name))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def aclose(self) -> None:
        if self._asking is not None:
            self._asking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._asking
        for future in self._asked.values():
            future.set_result(None)
        self._asked.clear()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        for task in list(self._pending):
            with contextlib.suppress(Exception):
                await task
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.aclose()
        await self._redis.aclose()

    @staticmethod
    async def _unsubscribe(pubsub: PubSub, name: str) -> None:
        with contextlib.suppress(RedisError, OSError):
            await pubsub.unsubscribe(name)

    async def _read(self) -> None:
        pubsub = self._pubsub
        assert pubsub is not None
        failures = 0
        while True:
            try:
                message = await pubsub.get_message(timeout=_READ_SECONDS)
            except (RedisError, OSError) as exc:  # it reconnects and resubscribes on next read
                failures += 1
                delay = backoff_delay(failures + 1, base=0.1, cap=5.0)
                log.warning("live relay lost Redis", error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                continue
            failures = 0
            if message is not None:
                self._handle(message)

    def _handle(self, message: dict[str, Any]) -> None:
        name = message["channel"]
        name = name.decode() if isinstance(name, bytes) else str(name)
        if message["type"] == "subscribe":
            confirmed = self._confirmed.get(name)
            if confirmed is not None:
                confirmed.set()
            return
        if message["type"] != "message":
            return
        try:
            body = json.loads(message["data"])
            if body["bus"] == self._bus_id:  # our own, already delivered in memory
                return
            self._deliver(str(body["root"]), dict(body["event"]))
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed live event", channel=name)
