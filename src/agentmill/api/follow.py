"""Following the events log live: what SSE and WebSocket streams both read from."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, Callable
from typing import Any

from agentmill.api.closing import Closing
from agentmill.domain.states import FINAL_RUN_EVENTS
from agentmill.engine.live import LiveBus, LiveEvent
from agentmill.store.db import Database, Tx
from agentmill.store.notify import EVENTS_CHANNEL

Fetch = Callable[[Tx, int], list[dict[str, Any]]]
# Events committed by other processes are seen at least this often (on PostgreSQL their
# NOTIFY wakes the follower at once; this covers SQLite and lost notifications).
POLL_SECONDS = 1.0


# A follower that reads slower than a step writes loses its oldest live events, not memory.
_LIVE_BACKLOG = 1000
# Durable events after which a step attempt's live events are stale (they raced its result).
_ATTEMPT_ENDS = frozenset({"step.succeeded", "step.failed", "step.retrying", "step.cancelled"})


def _reader(fetch: Fetch, after: int) -> Callable[[Tx], list[dict[str, Any]]]:
    return lambda tx: fetch(tx, after)


class _Signals:
    """What woke a follower: its log grew (read it) or a live event came (no read needed)."""

    def __init__(self) -> None:
        self.wake = asyncio.Event()
        self.log_grew = True
        self.live: deque[LiveEvent] = deque(maxlen=_LIVE_BACKLOG)
        self.closing = False

    def on_closing(self) -> None:
        self.closing = True
        self.wake.set()

    def on_log(self) -> None:
        self.log_grew = True
        self.wake.set()

    def on_live(self, event: LiveEvent) -> None:
        self.live.append(event)
        self.wake.set()

    def take_live(self) -> list[LiveEvent]:
        taken = list(self.live)
        self.live.clear()
        return taken


async def follow(
    db: Database,
    fetch: Fetch,
    *,
    after: int,
    until_run: str | None = None,
    live: LiveBus | None = None,
    closing: Closing | None = None,
) -> AsyncGenerator[dict[str, Any] | None]:
    """Events ``fetch(tx, after)`` returns, as they commit, in id order. Wakes on this
    process's commits and polls for other processes'. Yields None after each idle wait (a
    caller's chance to send a keep-alive or notice its client left), and ends once the log
    holds nothing after the final event of ``until_run`` (the events its end wrote, such as the
    steps it cancelled, come first; a run that was re-driven goes on with ``run.resumed``).

    With ``live``, the ephemeral events of ``until_run`` (token deltas, tool notices; marked
    ``"ephemeral": True``, without an id) are merged in as they come; one that arrives after
    the durable end of its step attempt is dropped.

    It also ends, after what it has read, once ``closing`` is set (the server is stopping)."""
    signals = _Signals()
    unsubscribe_local = db.subscribe(lambda _events: signals.on_log())
    unsubscribe_remote = db.subscribe_remote(
        lambda channel, _root: signals.on_log() if channel == EVENTS_CHANNEL else None
    )
    unsubscribe_live: Callable[[], None] | None = None
    unsubscribe_closing = closing.subscribe(signals.on_closing) if closing else lambda: None
    ended = False
    finished: set[tuple[str, str, int]] = set()  # step attempts whose end was sent
    try:
        if live is not None and until_run is not None:
            unsubscribe_live = await live.subscribe(until_run, signals.on_live)
        while True:
            signals.wake.clear()
            # Taken before the read: they were published before anything it may return.
            notices = signals.take_live()
            batch: list[dict[str, Any]] = []
            if signals.log_grew:
                signals.log_grew = False
                batch = await db.read(_reader(fetch, after))
            for notice in notices:
                if (notice["run_id"], notice["step_key"], notice["attempt"]) not in finished:
                    yield notice
            for event in batch:
                after = event["id"]
                yield event
                if unsubscribe_live is not None and event["type"] in _ATTEMPT_ENDS:
                    finished.add((event["run_id"], event["step_key"], event["attempt"]))
                if until_run and event["run_id"] == until_run:
                    if event["type"] in FINAL_RUN_EVENTS:
                        ended = True
                    elif event["type"] == "run.resumed":
                        ended = False
            if batch:
                signals.log_grew = True  # there may be more right away
                continue
            if notices:
                continue
            if ended or signals.closing:
                return
            try:
                await asyncio.wait_for(signals.wake.wait(), timeout=POLL_SECONDS)
            except TimeoutError:
                signals.log_grew = True  # look for other processes' commits
            yield None
    finally:
        unsubscribe_local()
        unsubscribe_remote()
        unsubscribe_closing()
        if unsubscribe_live is not None:
            unsubscribe_live()
