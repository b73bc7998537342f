"""Alembic, driven from code: ``agentmill db upgrade`` and the embedded mode's automatic upgrade."""

from __future__ import annotations

import asyncio
import re
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, inspect, text

from agentmill.store import pgvector
from agentmill.store.db import Database

if TYPE_CHECKING:  # alembic loads only when the schema has to change (80 ms at every start)
    from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"
_REVISION = re.compile(r'^(down_revision|revision)\s*=\s*(?:"([^"]*)"|None)', re.MULTILINE)


def alembic_config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _upgrade(connection: Connection, revision: str) -> None:
    from alembic import command

    command.upgrade(alembic_config(connection), revision)


@cache
def script_head() -> str:
    """The newest migration, read from the files' ``revision``/``down_revision`` lines: the one
    revision no other names as its parent. (Asking alembic costs its import at every start.)"""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        for name, value in _REVISION.findall(path.read_text(encoding="utf-8")):
            (revisions if name == "revision" else parents).add(value)
    heads = revisions - parents
    if len(heads) != 1:
        raise RuntimeError(f"the migrations have {len(heads)} heads: {sorted(heads)}")
    return heads.pop()


def _is_current(connection: Connection) -> bool:
    if not inspect(connection).has_table("alembic_version"):  # a new database
        return False
    current = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return current == script_head()


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
