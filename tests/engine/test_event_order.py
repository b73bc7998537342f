"""Decision 8: a run's events commit in id order, so a reader that resumes after the last id it
saw (SSE ``Last-Event-ID``) never misses one, even with several workers writing at once."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from sqlalchemy import text

from agentmill.api.follow import follow
from agentmill.config import Settings
from agentmill.engine.engine import Engine
from agentmill.store.db import Database, Tx
from agentmill.store.queries import list_events
from tests.factories import start
from tests.waiting import until

WIDE = """
name: wide
inputs:
  items: {type: array}
agents:
  worker: {model: scripted/w, options: {latency: 0.001, reply: "done {{ prompt }}"}}
steps:
  - id: each
    over: "{{ inputs.items }}"
    concurrency: 64
    step:
      agent: worker
      prompt: "#{{ item }}"
  - id: count
    needs: [each]
    value: "{{ steps.each.output | length }}"
outputs:
  count: "{{ steps.count.output }}"
"""


async def test_a_live_reader_sees_every_event_of_a_run_worked_by_two_workers(
    database_url: str, settings: Settings
) -> None:
    # Two engines with their own connections; the reader shares the first one's, so it also
    # wakes on that engine's commits and reads while the other is writing.
    databases = [Database(database_url) for _ in range(2)]
    for database in databases:
        await database.start()
    reader_db = databases[0]
    engines = [Engine(database, settings=settings) for database in databases]
    try:
        run_id = await start(engines[0], WIDE, {"items": list(range(150))})
        seen: list[int] = []

        def fetch(tx: Tx, after: int) -> list[dict[str, Any]]:
            return list_events(tx, root_run_id=run_id, after=after, limit=7)

        async def read_live() -> None:
            async for event in follow(reader_db, fetch, after=0, until_run=run_id):
                if event is not None:
                    seen.append(event["id"])

        stop = asyncio.Event()
        workers = [
            asyncio.create_task(engine.worker(concurrency=16, poll_interval=0.001).run(stop))
            for engine in engines
        ]
        await asyncio.wait_for(read_live(), timeout=60)
        stop.set()
        await asyncio.gather(*workers)

        logged = [e["id"] for e in await engines[0].events(run_id=run_id)]
        assert len(logged) > 450  # created, 150 x (queued, started, succeeded), …
        assert seen == logged
    finally:
        for database in databases:
            await database.close()


PAIR = """
name: pair
agents:
  worker: {model: scripted/w, options: {reply: done}}
steps:
  - {id: one, agent: worker, prompt: "1"}
  - {id: two, agent: worker, prompt: "2"}
  - {id: three, agent: worker, prompt: "3"}
"""

# Makes a transaction that set ``agentmill.test_slow`` stall at COMMIT, after its events got
# their ids: the moment a later transaction could commit a higher id first.
SLOW_COMMIT = """
CREATE OR REPLACE FUNCTION agentmill_test_slow_commit() RETURNS trigger AS $$
BEGIN
  IF current_setting('agentmill.test_slow', true) = 'on' THEN PERFORM pg_sleep(0.3); END IF;
  RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE CONSTRAINT TRIGGER agentmill_test_slow_commit AFTER INSERT ON events
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION agentmill_test_slow_commit();
"""


async def test_a_transaction_cannot_commit_a_later_event_id_before_an_earlier_one(
    pg_database: str, settings: Settings
) -> None:
    admin = await asyncpg.connect(pg_database)
    await admin.execute(SLOW_COMMIT)
    databases = [Database(pg_database) for _ in range(3)]
    for database in databases:
        await database.start()
    slow_engine, fast_engine = (Engine(database, settings=settings) for database in databases[:2])
    try:
        run_id = await start(slow_engine, PAIR)
        # One claim first, so the run is already running and the claims below touch only
        # their own steps' rows (nothing else makes them wait for each other).
        await fast_engine.db.write(
            lambda tx: fast_engine.transitions.claim(tx, owner="w", limit=1, root_run_id=run_id)
        )
        created = [e["id"] for e in await slow_engine.events(run_id=run_id)]

        def claim_slowly(tx: Tx) -> Any:
            tx.conn.execute(text("SET LOCAL agentmill.test_slow = 'on'"))
            return slow_engine.transitions.claim(tx, owner="slow", limit=1, root_run_id=run_id)

        def claim(tx: Tx) -> Any:
            return fast_engine.transitions.claim(tx, owner="fast", limit=1, root_run_id=run_id)

        slow = asyncio.create_task(slow_engine.db.write(claim_slowly))

        async def stalled_at_commit() -> bool:  # the slow claim holds its step, in pg_sleep
            found = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event = 'PgSleep'"
            )
            return bool(found)

        await until(stalled_at_commit, message="the slow claim never stalled at COMMIT")
        fast = asyncio.create_task(fast_engine.db.write(claim))
        # A reader that resumes from the last id it saw, as SSE does with Last-Event-ID.
        after = created[-1]
        seen: list[int] = []
        while True:
            both_committed = slow.done() and fast.done()
            batch = await databases[2].read(
                lambda tx, after=after: list_events(tx, root_run_id=run_id, after=after)
            )
            seen += [e["id"] for e in batch]
            after = seen[-1] if seen else after
            if both_committed:
                break
            await asyncio.sleep(0.02)
        assert [len(await slow), len(await fast)] == [1, 1]
        logged = [e["id"] for e in await slow_engine.events(run_id=run_id)]
        assert seen == logged[len(created) :]
    finally:
        for database in databases:
            await database.close()
        await admin.execute("DROP TRIGGER agentmill_test_slow_commit ON events")
        await admin.close()
