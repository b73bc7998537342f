"""Workspace providers in the store, on both engines: scoped by workspace, keys encrypted, and
read back as decrypted ProviderConfigs for the gateway; the migration matches the model."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect, select, update
from sqlalchemy.ext.asyncio import create_async_engine

from agentmill.errors import ConfigError, Conflict, NotFound
from agentmill.gateway.config import ProviderConfig
from agentmill.store.db import Database, Tx
from agentmill.store.migrate import alembic_config, upgrade
from agentmill.store.models import Base, workspace_providers
from agentmill.store.repositories import accounts, providers, workspaces

SECRET = "store-test-secret"
T = TypeVar("T")


async def new_workspace(db: Database) -> str:
    def arrange(tx: Tx) -> str:
        email = f"{uuid.uuid4().hex[:12]}@example.com"
        user = accounts.create_user(tx, email=email, name="Owner", password_hash="x")
        return workspaces.create_workspace(tx, name="Acme", owner_id=user.id).id

    return await db.write(arrange)


async def add(db: Database, ws: str, name: str, **fields: Any) -> providers.ProviderRecord:
    values: dict[str, Any] = {"kind": "openai", "api_key": f"sk-{name}", **fields}
    return await db.write(
        lambda tx: providers.create_provider(tx, ws, name=name, secret_key=SECRET, **values)
    )


async def test_a_provider_is_stored_with_its_key_encrypted_and_read_back_decrypted(
    db: Database,
) -> None:
    ws = await new_workspace(db)

    created = await add(
        db,
        ws,
        "mine",
        kind="openai_compatible",
        base_url="https://llm.example.com/v1",
        api_key="sk-plain-key-123",
        timeout=12.5,
        headers={"X-Team": "research"},
    )
    stored = await db.read(
        lambda tx: tx.conn.execute(
            select(workspace_providers).where(workspace_providers.c.id == created.id)
        ).one()
    )
    configs = await providers.workspace_provider_configs(db, ws, secret_key=SECRET)

    assert created.has_api_key is True
    assert "api_key" not in created.__dict__
    assert stored.api_key_encrypted.startswith("v1.")
    assert "sk-plain-key-123" not in stored.api_key_encrypted
    assert dict(configs) == {
        "mine": ProviderConfig(
            name="mine",
            kind="openai_compatible",
            base_url="https://llm.example.com/v1",
            api_key="sk-plain-key-123",
            timeout=12.5,
            headers={"X-Team": "research"},
        )
    }


async def test_another_workspace_sees_none_of_it(db: Database) -> None:
    mine, theirs = await new_workspace(db), await new_workspace(db)
    await add(db, mine, "openai")

    assert await db.read(lambda tx: providers.list_providers(tx, theirs)) == []
    assert dict(await providers.workspace_provider_configs(db, theirs, secret_key=SECRET)) == {}
    for attempt in (
        lambda tx: providers.get_provider(tx, theirs, "openai"),
        lambda tx: providers.update_provider(tx, theirs, "openai", {"timeout": 1.0}),
        lambda tx: providers.delete_provider(tx, theirs, "openai"),
    ):
        with pytest.raises(NotFound, match=re.escape("provider 'openai' not found")):
            await db.write(attempt)
    kept = await db.read(lambda tx: providers.get_provider(tx, mine, "openai"))
    assert (kept.timeout, kept.has_api_key) == (60.0, True)


async def test_names_are_unique_within_a_workspace_only(db: Database) -> None:
    first, second = await new_workspace(db), await new_workspace(db)
    await add(db, first, "openai")

    with pytest.raises(Conflict, match="provider 'openai' already exists in this workspace"):
        await add(db, first, "openai")
    await add(db, second, "openai")  # the same name elsewhere is fine

    assert [p.name for p in await db.read(lambda tx: providers.list_providers(tx, second))] == [
        "openai"
    ]


async def test_update_changes_only_what_it_is_given_and_none_removes_the_key(
    db: Database,
) -> None:
    ws = await new_workspace(db)
    before = await add(db, ws, "p", headers={"X-A": "1"})

    changed = await db.write(
        lambda tx: providers.update_provider(
            tx, ws, "p", {"api_key": "sk-new", "timeout": 5.0}, secret_key=SECRET
        )
    )
    configs = await providers.workspace_provider_configs(db, ws, secret_key=SECRET)
    assert (configs["p"].api_key, configs["p"].timeout, configs["p"].headers) == (
        "sk-new",
        5.0,
        {"X-A": "1"},
    )
    assert changed.updated_at >= before.updated_at
    assert changed.created_at == before.created_at

    removed = await db.write(
        lambda tx: providers.update_provider(tx, ws, "p", {"api_key": None}, secret_key=SECRET)
    )
    assert removed.has_api_key is False
    assert (await providers.workspace_provider_configs(db, ws, secret_key=SECRET))[
        "p"
    ].api_key is None


async def test_a_wrong_secret_key_fails_that_provider_only_and_clearly(db: Database) -> None:
    ws = await new_workspace(db)
    await add(db, ws, "openai")
    await add(db, ws, "local", kind="ollama", api_key=None, base_url="http://127.0.0.1:11434")

    configs = await providers.workspace_provider_configs(db, ws, secret_key="another-secret")

    assert sorted(configs) == ["local", "openai"]
    assert "openai" in configs  # without decrypting
    assert configs.get("openai-compat") is None  # a miss, as the gateway asks for each call
    assert configs.get("nope", "default") == "default"
    local = configs.get("local")
    assert local is not None
    assert local.kind == "ollama"
    assert configs["local"].base_url == "http://127.0.0.1:11434"
    with pytest.raises(
        ConfigError,
        match="^"
        + re.escape(
            "workspace provider 'openai': "
            "cannot decrypt provider credentials: AGENTMILL_SECRET_KEY changed?"
        )
        + "$",
    ):
        configs["openai"]


async def test_a_key_copied_into_another_workspaces_row_does_not_decrypt(db: Database) -> None:
    victim, thief = await new_workspace(db), await new_workspace(db)
    await add(db, victim, "openai", api_key="sk-victim")
    await add(db, thief, "openai", api_key="sk-thief")
    c = workspace_providers.c

    def copy(tx: Tx) -> None:
        stolen = tx.conn.scalar(select(c.api_key_encrypted).where(c.workspace_id == victim))
        tx.conn.execute(
            update(workspace_providers)
            .where(c.workspace_id == thief)
            .values(api_key_encrypted=stolen)
        )

    await db.write(copy)
    configs = await providers.workspace_provider_configs(db, thief, secret_key=SECRET)

    with pytest.raises(ConfigError, match="cannot decrypt provider credentials"):
        configs["openai"]


async def test_deleting_a_provider_or_its_workspace_deletes_its_row(db: Database) -> None:
    ws = await new_workspace(db)
    await add(db, ws, "a")
    await add(db, ws, "b")

    await db.write(lambda tx: providers.delete_provider(tx, ws, "a"))
    assert sorted(await providers.workspace_provider_configs(db, ws, secret_key=SECRET)) == ["b"]
    await db.write(lambda tx: workspaces.delete_workspace(tx, ws))

    left = await db.read(
        lambda tx: tx.conn.execute(
            select(workspace_providers.c.name).where(workspace_providers.c.workspace_id == ws)
        ).all()
    )
    assert left == []


async def _on_connection(url: str, fn: Callable[[Connection], T]) -> T:
    """Run ``fn`` on a plain connection in one transaction, as the migrator does."""
    db = Database(url)
    if db.dialect == "sqlite":
        engine = db.sync_engine()
        try:
            with engine.begin() as conn:
                return fn(conn)
        finally:
            engine.dispose()
    engine_async = create_async_engine(db.url)
    try:
        async with engine_async.begin() as conn_async:
            return await conn_async.run_sync(fn)
    finally:
        await engine_async.dispose()


def _differences(conn: Connection) -> list[str]:
    """How the database's workspace_providers differs from the model's (empty: not at all)."""
    diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    return [str(d) for d in diffs if "workspace_providers" in str(d)]


async def test_the_migration_builds_the_models_table_and_goes_down_and_up_again(
    own_database_url: str,
) -> None:
    url = own_database_url  # migrated to head by the fixture
    assert await _on_connection(url, _differences) == []

    def down(conn: Connection) -> set[str]:
        command.downgrade(alembic_config(conn), "0007")
        return set(inspect(conn).get_table_names())

    assert "workspace_providers" not in await _on_connection(url, down)
    await upgrade(Database(url))
    assert await _on_connection(url, _differences) == []
