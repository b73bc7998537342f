"""gateway: usage records for every call (who, tokens by kind, cost and price, outcome), who
started a run, budgets, rate limits, and each workspace's price markup

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from agentmill.store import types as am

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("llm_calls", schema=None) as batch_op:
        batch_op.alter_column("run_id", existing_type=sa.String(length=40), nullable=True)
        batch_op.alter_column("step_id", existing_type=sa.String(length=40), nullable=True)
        batch_op.alter_column("attempt", existing_type=sa.Integer(), nullable=True)
        batch_op.alter_column("turn", existing_type=sa.Integer(), nullable=True)
        batch_op.add_column(sa.Column("workspace_id", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("user_id", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("api_key_id", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("agent", sa.String(length=96), nullable=True))
        for column in ("cached_tokens", "cache_write_tokens", "reasoning_tokens"):
            batch_op.add_column(
                sa.Column(column, sa.BigInteger(), nullable=False, server_default="0")
            )
        batch_op.add_column(sa.Column("price", am.Money(), nullable=False, server_default="0"))
        batch_op.add_column(
            sa.Column("outcome", sa.String(length=16), nullable=False, server_default="ok")
        )
        batch_op.add_column(sa.Column("status", sa.Integer(), nullable=True))
        batch_op.create_index("ix_llm_calls_workspace_created", ["workspace_id", "created_at"])
    # Calls recorded before this revision were all made by runs: they take their run's workspace.
    op.execute(
        "UPDATE llm_calls SET workspace_id = "
        "(SELECT runs.workspace_id FROM runs WHERE runs.id = llm_calls.run_id)"
    )
    op.execute("UPDATE llm_calls SET price = cost, outcome = 'error' WHERE error IS NOT NULL")
    op.execute("UPDATE llm_calls SET price = cost WHERE error IS NULL")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("started_by", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("api_key_id", sa.String(length=40), nullable=True))
    with op.batch_alter_table("workspaces", schema=None) as batch_op:
        batch_op.add_column(sa.Column("markup", am.Money(), nullable=False, server_default="0"))
    op.create_table(
        "budgets",
        sa.Column("id", sa.String(length=40), primary_key=True),
        sa.Column(
            "workspace_id",
            sa.String(length=40),
            sa.ForeignKey("workspaces.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("subject_id", sa.String(length=40), nullable=True),
        sa.Column("period", sa.String(length=16), nullable=False),
        sa.Column("limit_usd", am.Money(), nullable=False),
        sa.Column("soft_ratio", am.Money(), nullable=False),
        sa.Column("created_at", am.UtcDateTime(), nullable=False),
    )
    op.create_index("ix_budgets_workspace", "budgets", ["workspace_id"])
    op.create_table(
        "rate_limits",
        sa.Column("id", sa.String(length=40), primary_key=True),
        sa.Column(
            "workspace_id",
            sa.String(length=40),
            sa.ForeignKey("workspaces.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("subject_id", sa.String(length=40), nullable=True),
        sa.Column("requests_per_minute", sa.Integer(), nullable=True),
        sa.Column("tokens_per_minute", sa.Integer(), nullable=True),
        sa.Column("created_at", am.UtcDateTime(), nullable=False),
    )
    op.create_index("ix_rate_limits_workspace", "rate_limits", ["workspace_id"])


def downgrade() -> None:
    op.drop_index("ix_rate_limits_workspace", table_name="rate_limits")
    op.drop_table("rate_limits")
    op.drop_index("ix_budgets_workspace", table_name="budgets")
    op.drop_table("budgets")
    with op.batch_alter_table("workspaces", schema=None) as batch_op:
        batch_op.drop_column("markup")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("api_key_id")
        batch_op.drop_column("started_by")
    with op.batch_alter_table("llm_calls", schema=None) as batch_op:
        batch_op.drop_index("ix_llm_calls_workspace_created")
        for column in (
            "status",
            "outcome",
            "price",
            "reasoning_tokens",
            "cache_write_tokens",
            "cached_tokens",
            "agent",
            "api_key_id",
            "user_id",
            "workspace_id",
        ):
            batch_op.drop_column(column)
        batch_op.alter_column("turn", existing_type=sa.Integer(), nullable=False)
        batch_op.alter_column("attempt", existing_type=sa.Integer(), nullable=False)
        batch_op.alter_column("step_id", existing_type=sa.String(length=40), nullable=False)
        batch_op.alter_column("run_id", existing_type=sa.String(length=40), nullable=False)
