"""Workspaces' own egress policies in the store, on both engines: one row per workspace, replaced
whole, gone with its workspace; the tools' cached view; the migration matches the model."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect

from agentmill.store.db import Database
from agentmill.store.egress_policies import DatabaseEgress
from agentmill.store.migrate import alembic_config, upgrade
from agentmill.store.models import Base
from agentmill.store.repositories import egress, workspaces
from tests.store.test_providers import _on_connection, new_workspace


async def put(db: Database, ws: str, hosts: list[str], networks: list[str] = []) -> None:  # noqa: B006
    await db.write(
        lambda tx: egress.set_egress(
            tx, ws, hosts=hosts, networks=networks, ports=[443], updated_by=None
        )
    )


async def test_a_policy_is_replaced_whole_and_kept_per_workspace(db: Database) -> None:
    mine, theirs = await new_workspace(db), await new_workspace(db)
    assert await db.read(lambda tx: egress.get_egress(tx, mine)) is None

    await put(db, mine, ["api.example.com"], ["10.1.0.0/16"])
    await put(db, mine, ["*.example.org"])  # a second PUT replaces the row

    record = await db.read(lambda tx: egress.get_egress(tx, mine))
    assert record is not None
    assert record.as_settings() == {"hosts": ["*.example.org"], "networks": [], "ports": [443]}
    assert await db.read(lambda tx: egress.get_egress(tx, theirs)) is None

    await db.write(lambda tx: egress.clear_egress(tx, mine))
    assert await db.read(lambda tx: egress.get_egress(tx, mine)) is None


async def test_the_policy_goes_with_its_workspace(db: Database) -> None:
    ws = await new_workspace(db)
    await put(db, ws, ["api.example.com"])
    await db.write(lambda tx: workspaces.delete_workspace(tx, ws))
    assert await db.read(lambda tx: egress.get_egress(tx, ws)) is None


async def test_the_cached_view_answers_from_memory_until_forgotten(db: Database) -> None:
    ws = await new_workspace(db)
    source = DatabaseEgress(db, ttl=3600)
    assert await source.egress(ws) is None  # no policy of its own, and that is cached too

    await put(db, ws, ["api.example.com"])
    assert await source.egress(ws) is None  # still the cached answer
    source.forget(ws)
    assert await source.egress(ws) == {"hosts": ["api.example.com"], "networks": [], "ports": [443]}

    assert await DatabaseEgress(db, ttl=0).egress(ws) is not None  # no cache: always read


def _differences(conn: Connection) -> list[str]:
    diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    return [str(d) for d in diffs if "workspace_egress" in str(d)]


async def test_the_migration_builds_the_models_table_and_goes_down_and_up_again(
    own_database_url: str,
) -> None:
    url = own_database_url  # migrated to head by the fixture
    assert await _on_connection(url, _differences) == []

    def down(conn: Connection) -> set[str]:
        command.downgrade(alembic_config(conn), "0009")
        return set(inspect(conn).get_table_names())

    assert "workspace_egress" not in await _on_connection(url, down)
    await upgrade(Database(url))
    assert await _on_connection(url, _differences) == []
