"""A step's model call made as a stream while someone watches the run: the answer's pieces go
to the run's live followers as coalesced ``step.delta`` events, and the call returns the same
response a plain call would have (the agent loop cannot tell the difference)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

from agentmill.engine.live import DELTA, LiveBus, live_event
from agentmill.gateway import ChatRequest, ChatResponse, Gateway
from agentmill.gateway.gateway import Sink
from agentmill.gateway.types import ChatDelta, StreamCollector

# A delta event leaves at most this long after its first piece arrived, or once it holds this
# many characters: a few events a second per step, whatever the provider's chunking.
FLUSH_SECONDS = 0.05
FLUSH_CHARS = 2000


class DeltaPublisher:
    """Coalesces one model call's deltas into ``step.delta`` events."""

    def __init__(self, bus: LiveBus, audience: tuple[str, ...], base: dict[str, Any]) -> None:
        self._bus = bus
        self._audience = audience  # the followed runs (by id) the events go to
        self._base = base  # run_id, step_key, attempt, and the data every event carries
        self._text: list[str] = []
        self._size = 0
        self._calls: list[dict[str, Any]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._sending: asyncio.Task[None] | None = None

    async def add(self, delta: ChatDelta) -> None:
        if delta.text:
            self._text.append(delta.text)
            self._size += len(delta.text)
        for piece in delta.tool_calls:
            if piece.name:  # names only: arguments come with the tool's own notice
                self._calls.append({"index": piece.index, "id": piece.id, "name": piece.name})
        if not (self._text or self._calls):
            return
        if self._size >= FLUSH_CHARS:
            await self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self._on_timer)

    async def flush(self) -> None:
        """Send what is buffered now (and wait until it is sent)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        sending = self._sending
        if sending is not None and sending is not asyncio.current_task():
            await sending  # keep events in order
        if not (self._text or self._calls):
            return
        data = dict(self._base["data"], text="".join(self._text))
        if self._calls:
            data["tool_calls"] = self._calls
        self._text, self._size, self._calls = [], 0, []
        event = live_event(
            run_id=self._base["run_id"],
            step_key=self._base["step_key"],
            attempt=self._base["attempt"],
            type=DELTA,
            data=data,
        )
        for run_id in self._audience:
            await self._bus.publish(run_id, event)

    def cancel(self) -> None:
        """The call failed or was cancelled: drop what is buffered, send nothing more."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sending is not None:
            self._sending.cancel()

    def _on_timer(self) -> None:
        if self._sending is not None and not self._sending.done():
            # Still sending the previous event (a slow Redis): look again shortly.
            self._timer = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self._on_timer)
            return
        self._timer = None
        self._sending = asyncio.create_task(self.flush())


async def stream_chat(
    gateway: Gateway, request: ChatRequest, sink: Sink, publisher: DeltaPublisher
) -> ChatResponse:
    """``gateway.chat`` made as ``gateway.stream``: the same response, accounting and notices.
    Unlike a plain call, it cannot fail over once text has arrived; the engine then retries
    the step, as for any retryable failure."""
    started = time.perf_counter()
    collector = StreamCollector(request.model)
    notices: tuple[str, ...] = ()
    try:
        async for delta in gateway.stream(request, sink=sink):
            collector.add(delta)
            if delta.model is not None:
                collector.model = delta.model
            notices += delta.notices
            await publisher.add(delta)
    except BaseException:
        publisher.cancel()
        raise
    await publisher.flush()  # before the step's result commits: its followers see it first
    response = collector.response(latency_ms=(time.perf_counter() - started) * 1000)
    return replace(response, notices=notices)
