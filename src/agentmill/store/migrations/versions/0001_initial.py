"""runs, steps, events, workflows

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from agentmill.store import types as am

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("run_id", sa.String(length=40), nullable=False),
        sa.Column("root_run_id", sa.String(length=40), nullable=False),
        sa.Column("step_key", sa.String(length=96), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("level", sa.String(length=8), nullable=False),
        sa.Column("ts", am.UtcDateTime(), nullable=False),
        sa.Column(
            "data",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_events_subrun",
            ["root_run_id", "id"],
            unique=False,
            sqlite_where=sa.text("root_run_id <> run_id"),
            postgresql_where=sa.text("root_run_id <> run_id"),
        )
        batch_op.create_index("ix_events_run", ["run_id", "id"], unique=False)

    op.create_table(
        "llm_calls",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("run_id", sa.String(length=40), nullable=False),
        sa.Column("step_id", sa.String(length=40), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("turn", sa.Integer(), nullable=False),
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=160), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost", am.Money(), nullable=False),
        sa.Column("latency_ms", sa.Double(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", am.UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("llm_calls", schema=None) as batch_op:
        batch_op.create_index("ix_llm_calls_run", ["run_id"], unique=False)

    op.create_table(
        "workflows",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("workspace_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("latest_version", sa.Integer(), nullable=False),
        sa.Column("created_at", am.UtcDateTime(), nullable=False),
        sa.Column("updated_at", am.UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("workspace_id", "name", name="uq_workflows_workspace_name"),
    )
    op.create_table(
        "workflow_versions",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("workflow_id", sa.String(length=40), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("checksum", sa.String(length=64), nullable=False),
        sa.Column(
            "spec",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("source", sa.Text(), nullable=True),
        sa.Column("created_at", am.UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["workflow_id"], ["workflows.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("workflow_id", "version"),
    )
    with op.batch_alter_table("workflow_versions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_workflow_versions_checksum"), ["checksum"], unique=False
        )

    op.create_table(
        "runs",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("workspace_id", sa.String(length=40), nullable=False),
        sa.Column("workflow_id", sa.String(length=40), nullable=False),
        sa.Column("version_id", sa.String(length=40), nullable=False),
        sa.Column("spec_path", sa.String(length=255), nullable=False),
        sa.Column("root_run_id", sa.String(length=40), nullable=False),
        sa.Column("parent_run_id", sa.String(length=40), nullable=True),
        sa.Column("parent_step_id", sa.String(length=40), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column(
            "inputs",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "outputs",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("pending_steps", sa.Integer(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost", am.Money(), nullable=False),
        sa.Column("created_at", am.UtcDateTime(), nullable=False),
        sa.Column("started_at", am.UtcDateTime(), nullable=True),
        sa.Column("finished_at", am.UtcDateTime(), nullable=True),
        sa.Column("deadline_at", am.UtcDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["workflow_versions.id"],
        ),
        sa.ForeignKeyConstraint(["workflow_id"], ["workflows.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_runs_deadline",
            ["deadline_at"],
            unique=False,
            sqlite_where=sa.text("deadline_at IS NOT NULL"),
            postgresql_where=sa.text("deadline_at IS NOT NULL"),
        )
        batch_op.create_index("ix_runs_root", ["root_run_id"], unique=False)
        batch_op.create_index(
            "ix_runs_workspace_created", ["workspace_id", "created_at"], unique=False
        )
        batch_op.create_index("ix_runs_status_created", ["status", "created_at"], unique=False)

    op.create_table(
        "step_joins",
        sa.Column("run_id", sa.String(length=40), nullable=False),
        sa.Column("step_key", sa.String(length=96), nullable=False),
        sa.Column("remaining", sa.Integer(), nullable=False),
        sa.Column("ran", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "step_key"),
    )
    op.create_table(
        "steps",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("run_id", sa.String(length=40), nullable=False),
        sa.Column("root_run_id", sa.String(length=40), nullable=False),
        sa.Column("step_key", sa.String(length=96), nullable=False),
        sa.Column("spec_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("parent_step_id", sa.String(length=40), nullable=True),
        sa.Column("map_index", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.Column("lease_expires_at", am.UtcDateTime(), nullable=True),
        sa.Column("available_at", am.UtcDateTime(), nullable=False),
        sa.Column(
            "input",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "output",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("child_count", sa.Integer(), nullable=True),
        sa.Column("children_started", sa.Integer(), nullable=True),
        sa.Column("children_done", sa.Integer(), nullable=True),
        sa.Column("child_run_id", sa.String(length=40), nullable=True),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost", am.Money(), nullable=False),
        sa.Column("duration_ms", sa.Double(), nullable=True),
        sa.Column("created_at", am.UtcDateTime(), nullable=False),
        sa.Column("started_at", am.UtcDateTime(), nullable=True),
        sa.Column("finished_at", am.UtcDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "step_key"),
    )
    with op.batch_alter_table("steps", schema=None) as batch_op:
        batch_op.create_index(
            "ix_steps_leased",
            ["lease_expires_at"],
            unique=False,
            sqlite_where=sa.text("status = 'RUNNING' AND lease_expires_at IS NOT NULL"),
            postgresql_where=sa.text("status = 'RUNNING' AND lease_expires_at IS NOT NULL"),
        )
        batch_op.create_index(
            "ix_steps_parent",
            ["parent_step_id", "map_index"],
            unique=False,
            sqlite_where=sa.text("parent_step_id IS NOT NULL"),
            postgresql_where=sa.text("parent_step_id IS NOT NULL"),
        )
        batch_op.create_index(
            "ix_steps_ready",
            ["available_at"],
            unique=False,
            sqlite_where=sa.text("status IN ('QUEUED', 'RETRYING')"),
            postgresql_where=sa.text("status IN ('QUEUED', 'RETRYING')"),
        )


def downgrade() -> None:
    op.drop_table("step_joins")
    with op.batch_alter_table("steps", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_steps_ready",
            sqlite_where=sa.text("status IN ('QUEUED', 'RETRYING')"),
            postgresql_where=sa.text("status IN ('QUEUED', 'RETRYING')"),
        )
        batch_op.drop_index("ix_steps_parent")
        batch_op.drop_index(
            "ix_steps_leased",
            sqlite_where=sa.text("status = 'RUNNING' AND lease_expires_at IS NOT NULL"),
            postgresql_where=sa.text("status = 'RUNNING' AND lease_expires_at IS NOT NULL"),
        )

    op.drop_table("steps")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index("ix_runs_status_created")
        batch_op.drop_index("ix_runs_workspace_created")
        batch_op.drop_index("ix_runs_root")
        batch_op.drop_index(
            "ix_runs_deadline",
            sqlite_where=sa.text("deadline_at IS NOT NULL"),
            postgresql_where=sa.text("deadline_at IS NOT NULL"),
        )

    op.drop_table("runs")
    with op.batch_alter_table("workflow_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_workflow_versions_checksum"))

    op.drop_table("workflow_versions")
    op.drop_table("workflows")
    with op.batch_alter_table("llm_calls", schema=None) as batch_op:
        batch_op.drop_index("ix_llm_calls_run")

    op.drop_table("llm_calls")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_run")
        batch_op.drop_index("ix_events_subrun")

    op.drop_table("events")
