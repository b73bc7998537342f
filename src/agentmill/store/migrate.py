"""Alembic, driven from code: ``agentmill db upgrade`` and the embedded mode's automatic upgrade."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from agentmill.store import pgvector
from agentmill.store.db import Database

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _upgrade(connection: Connection, revision: str) -> None:
    command.upgrade(alembic_config(connection), revision)


def _is_current(connection: Connection) -> bool:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    return MigrationContext.configure(connection).get_current_revision() == head


async def upgrade(db: Database, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (idempotent; concurrent starters are serialized)."""
    if db.dialect == "sqlite":
        engine = db.sync_engine()
        try:
            with engine.begin() as conn:  # BEGIN IMMEDIATE: one migrator at a time
                if not _is_current(conn):
                    _upgrade(conn, revision)
        finally:
            engine.dispose()
        return
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine_async = create_async_engine(db.url)
    try:
        async with engine_async.begin() as conn:
            # Serialize migrators across processes; the lock ends with the transaction.
            await conn.execute(text("SELECT pg_advisory_xact_lock(7262656)"))
            if not await conn.run_sync(_is_current):
                await conn.run_sync(_upgrade, revision)
            if revision == "head":
                await conn.run_sync(pgvector.enable)
    finally:
        await engine_async.dispose()


def upgrade_sync(url: str, revision: str = "head") -> None:
    async def main() -> None:
        db = Database(url)
        await upgrade(db, revision)

    asyncio.run(main())
