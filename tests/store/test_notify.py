"""On PostgreSQL, other processes hear of a commit through NOTIFY: a stream or an idle worker
wakes at once instead of waiting for its next poll (here the polls are a minute apart)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from agentmill.api import follow as follow_module
from agentmill.api.follow import follow
from agentmill.config import Settings
from agentmill.domain.states import RunStatus
from agentmill.engine.engine import Engine
from agentmill.store.db import Database, Tx
from agentmill.store.queries import list_events
from tests.factories import start

ONE_STEP = """
name: one
agents:
  a: {model: scripted/a, options: {reply: hi}}
steps:
  - {id: ask, agent: a, prompt: hello}
"""
NEVER = 60.0  # seconds: longer than any wait below, so only a notification can wake


@pytest.fixture
async def two_processes(pg_database: str) -> AsyncIterator[tuple[Engine, Engine]]:
    """Two engines with their own connections and listeners, as two processes would have."""
    databases = [Database(pg_database), Database(pg_database)]
    for db in databases:
        await db.start()
    settings = Settings(lease_seconds=30, poll_interval=NEVER)
    yield Engine(databases[0], settings=settings), Engine(databases[1], settings=settings)
    for db in databases:
        await db.close()


async def _first_event(db: Database, run_id: str, after: int) -> dict[str, Any]:
    def fetch(tx: Tx, since: int) -> list[dict[str, Any]]:
        return list_events(tx, root_run_id=run_id, after=since)

    async for event in follow(db, fetch, after=after):
        if event is not None:
            return event
    raise AssertionError("the follower ended")


async def test_a_stream_wakes_on_another_process_commit(
    two_processes: tuple[Engine, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(follow_module, "POLL_SECONDS", NEVER)
    reader, writer = two_processes
    run_id = await start(writer, ONE_STEP)
    last = (await writer.events(run_id=run_id))[-1]["id"]
    following = asyncio.create_task(_first_event(reader.db, run_id, last))
    await asyncio.sleep(0.2)  # the follower has read everything and waits
    await reader.db.remote_ready()

    await writer.cancel(run_id)

    event = await asyncio.wait_for(following, timeout=10)
    assert event["type"] == "step.cancelled"  # the first thing the cancel logged


async def test_an_idle_worker_wakes_when_another_process_queues_a_step(
    two_processes: tuple[Engine, Engine],
) -> None:
    worker_side, api_side = two_processes
    stop = asyncio.Event()
    worker = asyncio.create_task(worker_side.worker(name="w").run(stop))
    await asyncio.sleep(0.2)  # its first claim found nothing; now it waits (for a minute)
    await worker_side.db.remote_ready()
    try:
        run_id = await start(api_side, ONE_STEP)
        for _ in range(200):
            run = await api_side.get_run(run_id)
            if run.status.is_final:
                break
            await asyncio.sleep(0.05)
        assert run.status == RunStatus.COMPLETED
    finally:
        stop.set()
        await worker


async def test_the_listener_reconnects_after_its_connection_is_killed(
    two_processes: tuple[Engine, Engine], pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(follow_module, "POLL_SECONDS", NEVER)
    reader, writer = two_processes
    run_id = await start(writer, ONE_STEP)
    last = (await writer.events(run_id=run_id))[-1]["id"]
    following = asyncio.create_task(_first_event(reader.db, run_id, last))
    await asyncio.sleep(0.2)
    await reader.db.remote_ready()
    admin = await asyncpg.connect(pg_database)
    try:
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE query LIKE 'LISTEN%' AND datname = current_database()"
        )
    finally:
        await admin.close()
    assert killed >= 1
    await asyncio.sleep(0.3)
    await reader.db.remote_ready()  # listening again on a new connection

    await writer.cancel(run_id)

    event = await asyncio.wait_for(following, timeout=10)
    assert event["type"] == "step.cancelled"  # the first thing the cancel logged
