"""The engine rides out database trouble: dropped PostgreSQL connections mid-run."""

from __future__ import annotations

import asyncio

import asyncpg

from agentmill.config import Settings
from agentmill.domain.states import RunStatus
from agentmill.engine.engine import Engine
from agentmill.store.db import Database
from tests.conftest import PG_ADMIN_URL
from tests.factories import start

CHAIN = (
    "name: chain\nagents:\n  m: {model: scripted/m, options: {latency: 0.05}}\nsteps:\n"
    + "".join(
        f"  - id: s{i}\n"
        + (f"    needs: [s{i - 1}]\n" if i else "")
        + "    agent: m\n    prompt: step\n"
        for i in range(30)
    )
)


async def test_a_run_survives_its_postgresql_connections_being_killed(pg_database: str) -> None:
    db = Database(pg_database)
    await db.start()
    engine = Engine(db, settings=Settings(poll_interval=0.05))
    try:
        run_id = await start(engine, CHAIN)
        work = asyncio.create_task(engine.run_until_settled(run_id))
        name = pg_database.rsplit("/", 1)[1]
        admin = await asyncpg.connect(PG_ADMIN_URL)
        killed = 0
        try:
            for _ in range(3):  # three times, while steps keep finishing
                await asyncio.sleep(0.3)
                killed += await admin.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = $1 AND pid <> pg_backend_pid()",
                    name,
                )
        finally:
            await admin.close()
        run = await asyncio.wait_for(work, timeout=60)
    finally:
        await db.close()

    assert killed > 0
    assert run.status == RunStatus.COMPLETED, run.error
    steps = await _steps(pg_database, run_id)
    assert len(steps) == 30
    assert all(s.status == "SUCCEEDED" for s in steps)


async def _steps(url: str, run_id: str) -> list:  # type: ignore[type-arg]
    db = Database(url)
    await db.start()
    try:
        return await Engine(db).steps(run_id)
    finally:
        await db.close()
