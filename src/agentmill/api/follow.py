"""Following the events log live: what SSE and WebSocket streams both read from."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable
from typing import Any

from agentmill.domain.states import FINAL_RUN_EVENTS
from agentmill.store.db import Database, Tx
from agentmill.store.notify import EVENTS_CHANNEL

Fetch = Callable[[Tx, int], list[dict[str, Any]]]
# Events committed by other processes are seen at least this often (on PostgreSQL their
# NOTIFY wakes the follower at once; this covers SQLite and lost notifications).
POLL_SECONDS = 1.0


def _reader(fetch: Fetch, after: int) -> Callable[[Tx], list[dict[str, Any]]]:
    return lambda tx: fetch(tx, after)


async def follow(
    db: Database, fetch: Fetch, *, after: int, until_run: str | None = None
) -> AsyncGenerator[dict[str, Any] | None]:
    """Events ``fetch(tx, after)`` returns, as they commit, in id order. Wakes on this
    process's commits and polls for other processes'. Yields None after each idle wait (a
    caller's chance to send a keep-alive or notice its client left), and ends once the log
    holds nothing after the final event of ``until_run`` (the events its end wrote, such as the
    steps it cancelled, come first; a run that was re-driven goes on with ``run.resumed``)."""
    wake = asyncio.Event()
    unsubscribe_local = db.subscribe(lambda _events: wake.set())
    unsubscribe_remote = db.subscribe_remote(
        lambda channel, _root: wake.set() if channel == EVENTS_CHANNEL else None
    )
    ended = False
    try:
        while True:
            wake.clear()
            batch = await db.read(_reader(fetch, after))
            for event in batch:
                after = event["id"]
                yield event
                if until_run and event["run_id"] == until_run:
                    if event["type"] in FINAL_RUN_EVENTS:
                        ended = True
                    elif event["type"] == "run.resumed":
                        ended = False
            if batch:
                continue  # there may be more right away
            if ended:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=POLL_SECONDS)
            yield None
    finally:
        unsubscribe_local()
        unsubscribe_remote()
