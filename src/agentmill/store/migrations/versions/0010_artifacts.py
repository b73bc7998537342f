"""artifacts: files steps write, kept per run (their bytes live in the artifacts directory)

Revision ID: 0010
Revises: 0009

One row per (run, name); writing a name again replaces its row. No foreign keys: like
memories, rows of the ``local`` workspace (``agentmill run``) have no workspace row, and
deleting a workspace deletes its artifacts explicitly.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from agentmill.store import types as am

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "artifacts",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("run_id", sa.String(length=40), nullable=False),
        sa.Column("root_run_id", sa.String(length=40), nullable=False),
        sa.Column("workspace_id", sa.String(length=40), nullable=False),
        sa.Column("step_key", sa.String(length=96), nullable=True),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("media_type", sa.String(length=255), nullable=False),
        sa.Column("created_at", am.UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "name", name="uq_artifacts_run_name"),
    )
    op.create_index("ix_artifacts_workspace", "artifacts", ["workspace_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_artifacts_workspace", table_name="artifacts")
    op.drop_table("artifacts")
