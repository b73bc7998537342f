"""Alembic environment: migrations run on the connection AgentMill hands over."""

from __future__ import annotations

from alembic import context

from agentmill.store.models import Base, described_by_models

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `agentmill db upgrade`")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    transaction_per_migration=False,
    include_name=described_by_models,
)
context.run_migrations()
