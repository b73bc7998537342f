"""pgvector where the server has it: the upgrade enables it, a trigger keeps the vector column
in step with the JSON embedding, and memory search ranks in the database. Runs against a real
PostgreSQL 16 with pgvector (``tests/pgvector_server.py``) and, for the fallbacks, the
machine's PostgreSQL without it."""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import structlog
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, text
from sqlalchemy.exc import SAWarning

from agentmill.gateway import Gateway
from agentmill.ids import new_id
from agentmill.store import pgvector
from agentmill.store.db import Database
from agentmill.store.migrate import upgrade
from agentmill.store.models import Base, described_by_models
from agentmill.store.repositories import memories
from agentmill.tools.memory import MemoryStore
from tests.conftest import _pg_url, new_pg_database, started

EMBED = "scripted/embed"


@pytest.fixture
async def vector_db(pgvector_database: str) -> AsyncIterator[Database]:
    async with started(pgvector_database) as db:
        yield db


async def vector_text(db: Database, memory_id: str) -> str | None:
    query = text(f"SELECT CAST({pgvector.COLUMN} AS text) FROM memories WHERE id = :id")
    value: str | None = await db.read(lambda tx: tx.conn.execute(query, {"id": memory_id}).scalar())
    return value


async def test_the_upgrade_enables_pgvector_and_a_trigger_fills_the_vector(
    vector_db: Database,
) -> None:
    installed = await vector_db.read(
        lambda tx: tx.conn.execute(
            text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        ).scalar()
    )
    assert installed is not None
    ws = new_id("ws")
    record = await vector_db.write(
        lambda tx: memories.add_memory(
            tx, ws, text="three numbers", embedding=[0.5, -1.0, 2.0], embedding_model=EMBED
        )
    )
    assert await vector_text(vector_db, record.id) == "[0.5,-1,2]"
    bare = await vector_db.write(lambda tx: memories.add_memory(tx, ws, text="no embedding"))
    assert await vector_text(vector_db, bare.id) is None
    await vector_db.write(
        lambda tx: tx.conn.execute(
            text("UPDATE memories SET embedding = CAST(:e AS jsonb) WHERE id = :id"),
            {"e": "[1, 2]", "id": record.id},
        )
    )
    assert await vector_text(vector_db, record.id) == "[1,2]"  # kept in step on update too


async def test_search_by_meaning_ranks_in_the_database(vector_db: Database) -> None:
    store = MemoryStore(vector_db, Gateway(), EMBED)
    ws = new_id("ws")
    honey = await store.add(ws, "The bees make honey in the summer meadow.")
    backup = await store.add(ws, "The backup server restarts every night at two.")
    assert (await store.search(ws, "when does the backup server restart"))[0].memory.id == backup.id

    # Point the honey row's vector (not its JSON) at the backup's: only a search that ranks
    # with the database's vectors now finds the two equally close.
    await vector_db.write(
        lambda tx: tx.conn.execute(
            text(
                f"UPDATE memories SET {pgvector.COLUMN} = (SELECT {pgvector.COLUMN} FROM memories"
                " WHERE id = :backup) WHERE id = :honey"
            ),
            {"backup": backup.id, "honey": honey.id},
        )
    )
    hits = await store.search(ws, "when does the backup server restart", limit=2)
    assert {hit.memory.id for hit in hits} == {honey.id, backup.id}
    assert hits[0].score == pytest.approx(hits[1].score)
    assert hits[0].memory.id == backup.id  # equal scores: the newer first


async def test_vectors_of_another_length_or_model_are_never_compared(vector_db: Database) -> None:
    ws = new_id("ws")

    rows = [
        ("same direction", [1.0, 0.0, 0.0], EMBED),
        ("opposite", [-1.0, 0.0, 0.0], EMBED),
        ("two long", [1.0, 0.0], EMBED),
        ("other model", [1.0, 0.0, 0.0], "other/embed"),
    ]
    for name, vector, model in rows:
        await vector_db.write(
            lambda tx, name=name, vector=vector, model=model: memories.add_memory(
                tx, ws, text=name, embedding=vector, embedding_model=model
            )
        )
    hits = await vector_db.read(lambda tx: memories.nearest(tx, ws, EMBED, [2.0, 0.0, 0.0], 10))
    assert [(hit.memory.text, round(hit.score, 6)) for hit in hits] == [
        ("same direction", 1.0),
        ("opposite", -1.0),
    ]
    # A zero query has no direction: every score is 0 (as in the process), newest first.
    hits = await vector_db.read(lambda tx: memories.nearest(tx, ws, EMBED, [0.0, 0.0, 0.0], 10))
    assert [(hit.memory.text, hit.score) for hit in hits] == [
        ("opposite", 0.0),
        ("same direction", 0.0),
    ]


async def test_a_server_that_gains_pgvector_later_gets_it_at_the_next_start(
    pgvector_admin_url: str,
) -> None:
    async with new_pg_database(pgvector_admin_url) as url, started(url) as db:
        # As if the database had been made before the server had pgvector.
        await db.write(
            lambda tx: [
                tx.conn.execute(text(statement))
                for statement in (
                    "DROP TRIGGER memories_embedding_vector ON memories",
                    "DROP FUNCTION memories_embedding_vector()",
                    "DROP EXTENSION vector CASCADE",
                )
            ]
        )
        ws = new_id("ws")
        store = MemoryStore(db, Gateway(), EMBED)
        old = await store.add(ws, "The backup server restarts every night at two.")
        assert not await db.read(lambda tx: pgvector.has_vector_column(tx.conn, cached=False))
        assert (await store.search(ws, "backup server"))[0].memory.id == old.id  # in-process

        await upgrade(Database(url))  # what every process does when it starts

        assert await vector_text(db, old.id) is not None  # rows from before are filled
        assert await db.read(lambda tx: pgvector.has_vector_column(tx.conn, cached=False))
        assert (await store.search(ws, "backup server"))[0].memory.id == old.id
        assert await db.read(lambda tx: _models_match(tx.conn)) == []


def _models_match(conn: Connection) -> list:
    context = MigrationContext.configure(conn, opts={"include_name": described_by_models})
    with warnings.catch_warnings():
        # Reflection reads every column before the filter drops this one, and SQLAlchemy has
        # no type for pgvector's (nothing outside this test reflects the table).
        warnings.filterwarnings("ignore", "Did not recognize type 'vector'", SAWarning)
        return list(compare_metadata(context, Base.metadata))


async def test_a_role_that_may_not_create_the_extension_still_starts_and_searches(
    pgvector_admin_url: str, tmp_path: Path
) -> None:
    role = f"plain_{new_id('r')[-8:].lower()}"
    name = f"agentmill_test_{role}"
    admin = await asyncpg.connect(pgvector_admin_url)
    await admin.execute(f'CREATE ROLE "{role}" LOGIN')  # not a superuser
    await admin.execute(f'CREATE DATABASE "{name}" OWNER "{role}"')
    await admin.close()
    url = _pg_url(name, pgvector_admin_url).replace("postgres@", f"{role}@")
    try:
        with structlog.testing.capture_logs() as logs:
            await upgrade(Database(url))
        warning = next(entry for entry in logs if entry["log_level"] == "warning")
        assert "CREATE EXTENSION vector" in warning["event"]
        assert "permission denied" in warning["error"]
        async with started(url) as db:
            assert not await db.read(lambda tx: pgvector.has_vector_column(tx.conn, cached=False))
            store = MemoryStore(db, Gateway(), EMBED)
            ws = new_id("ws")
            await store.add(ws, "The bees make honey in the summer meadow.")
            kept = await store.add(ws, "The backup server restarts every night at two.")
            assert (await store.search(ws, "backup server restarts"))[0].memory.id == kept.id
    finally:
        admin = await asyncpg.connect(pgvector_admin_url)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()


async def test_without_pgvector_the_upgrade_changes_nothing(db: Database) -> None:
    assert not await db.read(lambda tx: pgvector.has_vector_column(tx.conn, cached=False))
    assert not await db.read(lambda tx: memories.can_rank_by_vector(tx, [1.0, 0.0]))
