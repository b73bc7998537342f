"""steps.wait_until: when a waiting human step times out

Revision ID: 0012
Revises: 0011

The worker's periodic sweep finds overdue waiting steps through the partial index, which holds
only waiting steps that have a deadline.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from agentmill.store import types as am

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_WHERE = sa.text("status = 'WAITING' AND wait_until IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table("steps", schema=None) as batch_op:
        batch_op.add_column(sa.Column("wait_until", am.UtcDateTime(), nullable=True))
    op.create_index(
        "ix_steps_wait_until",
        "steps",
        ["wait_until"],
        unique=False,
        sqlite_where=_WHERE,
        postgresql_where=_WHERE,
    )


def downgrade() -> None:
    op.drop_index("ix_steps_wait_until", table_name="steps")
    with op.batch_alter_table("steps", schema=None) as batch_op:
        batch_op.drop_column("wait_until")
