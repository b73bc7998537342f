"""Commit notifications between processes, over PostgreSQL ``LISTEN``/``NOTIFY``.

A transaction that appends to a run's log or makes steps ready sends ``NOTIFY`` in the same
transaction, so the notification leaves only if the commit happens, and right after it. Other
processes (API processes serving streams, workers waiting for work) hear it within milliseconds
instead of polling. Notifications are hints: a listener that misses one (its connection dropped)
still finds the work on its next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import structlog
from sqlalchemy.engine import make_url

from agentmill.domain.backoff import backoff_delay

log = structlog.get_logger("agentmill.notify")

EVENTS_CHANNEL = "agentmill_events"  # payload: the root run id whose log grew
STEPS_CHANNEL = "agentmill_steps"  # payload: seconds until the steps are ready ("0": now)
CHANNELS = (EVENTS_CHANNEL, STEPS_CHANNEL)

Listener = Callable[[str, str], None]


class PgListener:
    """One connection that ``LISTEN``s on our channels and calls ``listener(channel, payload)``
    on the event loop; it reconnects with backoff when the connection drops."""

    def __init__(self, url: str) -> None:
        parsed = make_url(url).set(drivername="postgresql")
        self._dsn = parsed.render_as_string(hide_password=False)
        self._listeners: list[Listener] = []
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="agentmill-listen")
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    async def wait_ready(self) -> None:
        """Wait until the ``LISTEN`` is in place (tests, and callers that must not miss one)."""
        await self._ready.wait()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _dispatch(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        for listener in list(self._listeners):
            try:
                listener(channel, payload)
            except Exception:  # one bad listener must not silence the others
                log.exception("notification listener failed", channel=channel)

    async def _run(self) -> None:
        import asyncpg  # PostgreSQL only: SQLite runs never load it

        failures = 0
        while True:
            try:
                conn = await asyncpg.connect(self._dsn)
            except (OSError, asyncpg.PostgresError) as exc:
                failures += 1
                delay = backoff_delay(failures + 1, base=0.1, cap=5.0)
                log.warning("cannot listen for notifications", error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                continue
            failures = 0
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
            try:
                for channel in CHANNELS:
                    await conn.add_listener(channel, self._dispatch)
                self._ready.set()
                # Anything committed while we were not listening is found by the next poll;
                # tell listeners to look now rather than wait for it.
                for channel in CHANNELS:
                    self._dispatch(conn, 0, channel, "")
                await lost.wait()
                log.warning("notification connection lost; reconnecting")
            finally:
                self._ready.clear()
                with contextlib.suppress(Exception):
                    await conn.close(timeout=1)
