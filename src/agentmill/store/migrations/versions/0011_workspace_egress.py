"""workspace egress: each workspace's own allowlist for the http_request tool

Revision ID: 0011
Revises: 0010

One row per workspace that set its own policy; no row means the operator's default applies.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from agentmill.store import types as am

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "workspace_egress",
        sa.Column("workspace_id", sa.String(length=40), nullable=False),
        sa.Column("hosts", _JSON, nullable=False),
        sa.Column("networks", _JSON, nullable=False),
        sa.Column("ports", _JSON, nullable=False),
        sa.Column("updated_by", sa.String(length=40), nullable=True),
        sa.Column("updated_at", am.UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["workspace_id"], ["workspaces.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("workspace_id"),
    )


def downgrade() -> None:
    op.drop_table("workspace_egress")
