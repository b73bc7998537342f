"""dead letters: the step that ended a run, and an index of failed steps

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("failed_step", sa.String(length=96), nullable=True))
    with op.batch_alter_table("steps", schema=None) as batch_op:
        batch_op.create_index(
            "ix_steps_failed",
            ["finished_at"],
            unique=False,
            sqlite_where=sa.text("status = 'FAILED'"),
            postgresql_where=sa.text("status = 'FAILED'"),
        )


def downgrade() -> None:
    with op.batch_alter_table("steps", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_steps_failed",
            sqlite_where=sa.text("status = 'FAILED'"),
            postgresql_where=sa.text("status = 'FAILED'"),
        )
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("failed_step")
