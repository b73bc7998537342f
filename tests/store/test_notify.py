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
from tests.waiting import until

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


async def _first_event(db: Database, run_id: str, after: int, reads: list[int]) -> dict[str, Any]:
    def fetch(tx: Tx, since: int) -> list[dict[str, Any]]:
        found = list_events(tx, root_run_id=run_id, after=since)
        reads.append(len(found))  # a read that found nothing: the follower now waits
        return found

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
    reads: list[int] = []
    following = asyncio.create_task(_first_event(reader.db, run_id, last, reads))
    await until(lambda: bool(reads) and not any(reads), message="the follower never read the log")
    await reader.db.remote_ready()

    await writer.cancel(run_id)

    event = await asyncio.wait_for(following, timeout=10)
    assert event["type"] == "step.cancelled"  # the first thing the cancel logged


async def test_an_idle_worker_wakes_when_another_process_queues_a_step(
    two_processes: tuple[Engine, Engine],
) -> None:
    worker_side, api_side = two_processes
    stop = asyncio.Event()
    idle = worker_side.worker(name="w")
    takes: list[int] = []
    take = idle.queue.take

    async def counted(limit: int) -> Any:
        claims = await take(limit)
        takes.append(len(claims))
        return claims

    idle.queue.take = counted  # type: ignore[method-assign]
    worker = asyncio.create_task(idle.run(stop))
    # Its first claim found nothing; from then on it waits (for a minute) unless woken.
    await until(lambda: bool(takes) and not any(takes), message="the worker never claimed")
    await worker_side.db.remote_ready()
    try:
        run_id = await start(api_side, ONE_STEP)
        statuses: list[RunStatus] = []

        async def ended() -> bool:
            statuses.append((await api_side.get_run(run_id)).status)
            return statuses[-1].is_final

        await until(ended, message="the run never ended")
        assert statuses[-1] == RunStatus.COMPLETED
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
    reads: list[int] = []
    following = asyncio.create_task(_first_event(reader.db, run_id, last, reads))
    await until(lambda: bool(reads) and not any(reads), message="the follower never read the log")
    await reader.db.remote_ready()
    listeners = (
        "SELECT pid FROM pg_stat_activity"
        " WHERE query LIKE 'LISTEN%' AND datname = current_database()"
    )
    admin = await asyncpg.connect(pg_database)
    try:
        killed = {row["pid"] for row in await admin.fetch(listeners)}
        await admin.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) pid", killed)
        assert len(killed) >= 1

        async def listening_again() -> bool:  # both engines, on connections of their own
            pids = {row["pid"] for row in await admin.fetch(listeners)}
            return len(pids - killed) >= len(killed)

        await until(listening_again, message="the listeners never came back")
    finally:
        await admin.close()
    await reader.db.remote_ready()

    await writer.cancel(run_id)

    event = await asyncio.wait_for(following, timeout=10)
    assert event["type"] == "step.cancelled"  # the first thing the cancel logged
